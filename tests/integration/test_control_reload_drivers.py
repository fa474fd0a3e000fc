"""The command pipeline writes through the drivers that run, after every reload path (review of
issue 15, finding 3): a failed reload's rollback rebuilds the drivers, and the pipeline follows."""

from __future__ import annotations

import pytest

from scada.app import drivers_by_name
from tests.integration.helpers import running_app


async def test_after_a_rolled_back_reload_the_pipeline_writes_through_the_running_drivers(tmp_path, monkeypatch):
    from scada import app as app_module

    async with running_app(tmp_path, "inline") as (app, old, new, _):
        real = app_module.build_drivers

        def broken(config, tagdb):
            if config is new:
                raise RuntimeError("injected: a driver cannot be built")
            return real(config, tagdb)

        monkeypatch.setattr(app_module, "build_drivers", broken)
        with pytest.raises(RuntimeError, match="injected"):
            await app.reload(new)
        assert app.config is old
        running = drivers_by_name(app.drivers)
        assert running and all(app.commands.drivers[n] is d for n, d in running.items())
