"""The OPC UA server the smoke and publish sections measure: n tags of synthetic cabinets, served
on a free loopback port."""

from __future__ import annotations

from typing import Any

from bench import citygen
from bench.harness import free_port


async def serving_hmi(n: int) -> tuple[Any, list[str], Any, Any, str, Any]:
    """(config, tag names, kinds, TagDB, url, HmiServer) for a configuration of ``n`` tags, the
    server started; the caller stops it."""
    from scada.opcua.server import HmiServer
    from scada.tagdb import TagDB

    config = citygen.load_config(n)
    names, kinds, deadbands = config.tag_table()
    db = TagDB(names, kinds, deadbands)
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    hmi = HmiServer(config, db, url)
    await hmi.start()
    return config, names, kinds, db, url, hmi
