"""The server's status line (Application._status_loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

from city_scada import load_config
from scada import status as st
from scada.app import Application
from scada.tagdb import TagDB
from tests.integration.helpers import DEADLINE, until

ROOT = Path(__file__).resolve().parents[2]


async def test_the_change_rate_never_goes_negative_when_a_reload_replaces_the_tag_table(tmp_path) -> None:
    """A reload carries the counters into the new table (TagDB.carry_from), then the old one may
    count a few more changes until the drivers move to the new one."""
    config = load_config(ROOT)
    app = Application(config, data_dir=tmp_path, status_interval=0.05)
    old = app.tagdb
    with capture_logs() as logs:
        lines = lambda: [e for e in logs if e["event"] == "status"]  # noqa: E731
        task = asyncio.create_task(app._status_loop())
        try:
            await until(lambda: len(lines()) >= 1, DEADLINE, "a first status line")
            new = TagDB(*config.tag_table())
            new.carry_from(old)
            ids = np.arange(10)
            old.update(ids, np.full(10, 5.0), st.GOOD)  # after the carry, on the old table
            seen = len(lines())
            await until(lambda: len(lines()) > seen, DEADLINE, "a status line counting them")
            app.tagdb = new  # the reload swaps the tables
            seen = len(lines())
            await until(lambda: len(lines()) >= seen + 2, DEADLINE, "status lines after the swap")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            app.journal.close()
    rates = [e["changes_per_s"] for e in lines()]
    assert min(rates) >= 0, rates
    assert max(rates) > 0, rates  # the changes were counted
