"""Contract of scada/opcua/asyncua_private/request_decoding.py (requests decoded by us) with
the installed asyncua.
"""

from __future__ import annotations

import inspect

from asyncua import ua

from scada.opcua.asyncua_private import binary as private_binary
from scada.opcua.asyncua_private import request_decoding as P
from tests.asyncua_contract import params, relied_on, running

relies = relied_on("scada/opcua/asyncua_private/request_decoding.py")


def test_requests_are_decoded_through_the_name_relied_on():
    from asyncua.server import uaprocessor
    from asyncua.ua import ua_binary

    src = inspect.getsource(uaprocessor.UaProcessor._process_message)
    for cls in ("ReadParameters", "BrowseParameters"):
        relies(f"struct_from_binary(ua.{cls}, body)" in src, f"UaProcessor._process_message decodes {cls} by name")
    relies(
        uaprocessor.struct_from_binary in (ua_binary.struct_from_binary, P._struct_from_binary),
        "asyncua.server.uaprocessor.struct_from_binary is ua_binary's",
    )
    relies(params(ua_binary.struct_from_binary) == ["objtype", "data"], "struct_from_binary(objtype, data)")
    buf = P._Buffer(b"abcdef", 1, 4)
    relies((buf.cur_pos, len(buf), buf._data) == (1, 4, b"abcdef"), "Buffer(data, start, size): cur_pos, len, _data")
    buf.skip(2)
    relies((buf.cur_pos, len(buf)) == (3, 2), "Buffer.skip(n)")


async def test_decoded_requests_reach_the_services_and_the_rest_is_asyncuas():
    from asyncua.server import uaprocessor

    seen: list[int] = []

    def decode(data: bytes, pos: int) -> tuple[ua.ReadParameters, int] | None:
        obj, end = private_binary.decode_struct(ua.ReadParameters, data, pos)
        seen.append(len(obj.NodesToRead))
        return (obj, end) if len(obj.NodesToRead) == 1 else None  # None: asyncua decodes it

    def broken(data: bytes, pos: int) -> None:
        raise RuntimeError("a defect of the decoder")

    async with running() as own:
        before = P._DECODERS.copy()
        try:
            P.hook_request_decoding({ua.ReadParameters: decode, ua.BrowseParameters: broken})
            P.hook_request_decoding({ua.ReadParameters: decode, ua.BrowseParameters: broken})  # idempotent
            relies(uaprocessor.struct_from_binary is P._struct_from_binary, "the processor's decoder is replaced")
            node = own.client.get_node(own.nodeid)
            relies(await node.read_value() == 42.0, "a Read decoded by ours")
            values = await own.client.read_values([node, node])
            relies(values == [42.0, 42.0], "a Read left to asyncua (ours answered None)")
            relies(seen == [1, 2], "the decoder saw each Read's parameters")
            children = await own.client.nodes.objects.get_children()
            relies(own.nodeid in [c.nodeid for c in children], "a decoder that raises: asyncua decodes the request")
        finally:
            P._DECODERS.clear()
            P._DECODERS.update(before)
