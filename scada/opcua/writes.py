"""Writes to writable tags (``writable: true``) through the command pipeline.

A Write of the Value of such a tag variable is the implicit command ``Write`` of its point:
``CommandRequest(device, WRITE, {"value": v}, caller, point=...)`` to the core, whose pipeline
authorises, checks, writes, confirms by read-back and audits it; the Write's status is the
result's. Every other Write goes on to asyncua as before (AccessLevel: read-only, refused).

What the front refuses alone, without asking the core (a Write of another attribute than the
Value: BadNotWritable; with an IndexRange: BadWriteNotSupported; a value that is no number, or
an array: BadTypeMismatch), is audited as the core audits its refusals: a "command" record of
the device, command ``Write``, through the bounded refusal sink (Authorisation.refuse), as the
front's command methods audit theirs (scada/opcua/commands.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import structlog
from asyncua import Server, ua

from scada.config import Config
from scada.control.model import WRITE, CommandRequest, CommandResult
from scada.opcua.asyncua_private.writes import hook_writes
from scada.opcua.authorise import audit_value, authorisation
from scada.opcua.commands import Request, ask_core, caller_of
from scada.opcua.typed_ua import StatusCode
from scada.security.context import current

log = structlog.get_logger("scada.opcua")

SC = ua.StatusCodes


def writable_tags(config: Config) -> dict[str, tuple[str, str]]:
    """Tag name -> (device, point) of every writable point."""
    out: dict[str, tuple[str, str]] = {}
    for d in config.devices:
        t = config.types[d.type]
        for p in t.points:
            if p.writable:
                out[config.tag_name(d, p)] = (d.name, p.name)
    return out


def write_value(v: Any) -> float | None:
    """A Write's value as the request carries it (a number), or None (not a number)."""
    value = v.Value.Value if v is not None and v.Value is not None else None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class TagWrites:
    """The route of the Write service (scada/opcua/asyncua_private/writes.py) for one server."""

    def __init__(self, server: Server, ns: int, request: Request) -> None:
        self.server = server
        self.ns = ns
        self.request = request
        self._tags: dict[str, tuple[str, str]] = {}

    def install(self, config: Config) -> None:
        self._tags = writable_tags(config)
        hook_writes(self.server, self.route)

    def reload(self, config: Config) -> None:
        self._tags = writable_tags(config)

    def route(self, wv: ua.WriteValue) -> Awaitable[ua.StatusCode] | None:
        nid = wv.NodeId
        if nid.NamespaceIndex != self.ns or not isinstance(nid.Identifier, str):
            return None
        target = self._tags.get(nid.Identifier)
        if target is None:
            return None
        if wv.AttributeId != ua.AttributeIds.Value or wv.IndexRange:
            code = SC.BadNotWritable if wv.AttributeId != ua.AttributeIds.Value else SC.BadWriteNotSupported
            return _now(self._refused(target[0], target[1], wv, code))
        return self._write(target[0], target[1], wv)

    def _refused(self, device: str, point: str, wv: ua.WriteValue, code: int) -> int:
        """A Write the front refuses alone: audited as the core audits a refused Write ("command",
        the device, command Write), at the refusals' bounded rate."""
        authz = authorisation(self.server)
        if authz is not None:
            variant = wv.Value.Value if wv.Value is not None else None
            arguments: dict[str, Any] = {
                "command": WRITE,
                "point": point,
                "origin": "write",
                "attribute": _attribute_name(wv.AttributeId),
                "value": audit_value(variant) if variant is not None else None,
            }
            if wv.IndexRange:
                arguments["index_range"] = str(wv.IndexRange)
            authz.refuse("command", device, arguments, code, current())
        log.info("opcua_write_refused", device=device, point=point, status=f"0x{code:08X}")
        return code

    async def _write(self, device: str, point: str, wv: ua.WriteValue) -> ua.StatusCode:
        value = write_value(wv.Value)
        if value is None:
            return StatusCode(self._refused(device, point, wv, SC.BadTypeMismatch))
        # A timestamp the client sent is ignored: the tag's time is the device's read-back.
        caller = caller_of(current())
        request = CommandRequest(device, WRITE, {"value": value}, caller, origin="write", point=point)
        answer = await ask_core(self.request, "command", request.to_wire())
        result = CommandResult(device, answer) if isinstance(answer, int) else CommandResult.from_wire(answer)
        log.info("opcua_write", device=device, point=point, user=caller.user, status=f"0x{result.status:08X}")
        return StatusCode(result.status)


async def _now(code: int) -> ua.StatusCode:
    return StatusCode(code)


def _attribute_name(attribute_id: int) -> str:
    try:
        return ua.AttributeIds(attribute_id).name
    except ValueError:
        return str(attribute_id)
