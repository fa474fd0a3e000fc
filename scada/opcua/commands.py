"""The equipment types' commands as OPC UA methods on every device of the type.

Lean, as the conditions' methods are (the memory target is per tag): one set of method nodes per
(equipment type, command), under ``_types/<type>/_commands/``, and every device of the type
references them (HasComponent, so Browse shows them under the device). A client calls a method
with the device as ObjectId; the callback finds the device from it.

A non-critical command ``NAME(args) -> Result``; a critical one (select-before-operate) is three
methods: ``NAME_Select(args) -> SelectToken``, ``NAME_Operate(SelectToken) -> Result``,
``NAME_Cancel(SelectToken)``. Arguments are typed (float: Double, int: Int32, bool: Boolean,
enum: Int32 with its labels in the Argument's description, datetime: DateTime).

Nothing is decided here: the call becomes a :class:`~scada.control.model.CommandRequest` sent to
the core (``request("command", ...)``), whose pipeline authorises, checks, writes, confirms and
audits ("command"); the call's status code is the result's. The front refuses only what it can
tell alone (a method called on a device of another type, missing or mistyped arguments), and
audits those refusals itself. The calls are not audited again as "call" (scada/opcua/authorise.py:
``self_audited``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from asyncua import Server, ua

from scada.config import Config, Device
from scada.control.model import (
    BAD_INTERNAL_ERROR,
    BAD_SHUTDOWN,
    ArgDef,
    Caller,
    CommandDef,
    CommandRequest,
    CommandResult,
)
from scada.opcua.address_space import AddressSpaceBuilder, unlink_nodes
from scada.opcua.asyncua_private.nodes import NodeData, address_space
from scada.opcua.authorise import audit_value, authorisation
from scada.opcua.typed_ua import NodeId, StatusCode
from scada.security.context import RequestContext, current
from scada.security.identity import Role

log = structlog.get_logger("scada.opcua")

SC = ua.StatusCodes
Request = Callable[..., Awaitable[Any]]  # the front's channel: request(op, *args) -> the core's answer

COMMANDS_FOLDER = "_commands"
SELECT, OPERATE, CANCEL = "_Select", "_Operate", "_Cancel"

_DATATYPE = {
    "float": ua.ObjectIds.Double,
    "int": ua.ObjectIds.Int32,
    "bool": ua.ObjectIds.Boolean,
    "enum": ua.ObjectIds.Int32,
    "datetime": ua.ObjectIds.DateTime,
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def argument(name: str, datatype: int, description: str = "", array: bool = False) -> ua.Argument:
    return ua.Argument(
        Name=name,
        DataType=NodeId(datatype),
        ValueRank=ua.ValueRank.OneDimension if array else ua.ValueRank.Scalar,
        ArrayDimensions=[0] if array else [],
        Description=ua.LocalizedText(description),
    )


def input_argument(a: ArgDef) -> ua.Argument:
    """An ArgDef as an OPC UA Argument: its range, unit and enum labels in the description."""
    parts = [a.description] if a.description else []
    if a.range is not None:
        parts.append(f"range [{a.range[0]:g}, {a.range[1]:g}]{' ' + a.unit if a.unit else ''}")
    elif a.unit:
        parts.append(a.unit)
    if a.enum:
        parts.append("; ".join(f"{v}={label}" for v, label in a.enum))
    return argument(a.name, _DATATYPE[a.type], ". ".join(parts))


RESULT = argument("Result", ua.ObjectIds.String, "the command's result: its status and message")
TOKEN = argument("SelectToken", ua.ObjectIds.String, "what Select returned: Operate or Cancel with it")


def caller_of(ctx: RequestContext | None, session: str = "") -> Caller:
    """Who calls, as the core's pipeline needs it (from the request's identity).

    No request context: a server without a security layer (embedding, unit tests), where every
    act is allowed, as everywhere else in the front.
    """
    if ctx is None:
        return Caller("opcua:anonymous", tuple(r.value for r in Role), None, session, "", True)
    ident = ctx.identity
    communes = None if ident.communes is None else tuple(sorted(ident.communes))
    user = f"{ident.user}@{ctx.client_address}" if ident.anonymous else ident.user
    return Caller(
        user,
        tuple(sorted(r.value for r in ident.roles)),
        communes,
        ctx.session_id,
        ctx.client_address,
        ident.anonymous,
    )


def in_process(commands: Any, progress: Callable[..., None] | None = None) -> Request:
    """The ``commands`` request of an HmiServer in the core's own loop (``scada run --front
    inline``): the app's command service (scada.control.service.Commands) called directly, with
    the answers the channel would carry. ``progress``: the group progress callback (the server's
    ``groups.progress``, looked up when called: pass a lambda)."""
    from scada.control.model import CommandRequest as Req
    from scada.control.model import GroupRequest

    async def request(op: str, payload: tuple) -> Any:
        if op == "command":
            return (await commands.execute(Req.from_wire(payload))).to_wire()
        if op == "group_command":
            results = await commands.run_group(GroupRequest.from_wire(payload), progress)
            return [r.to_wire() for r in results]
        raise ValueError(f"unknown request {op!r}")

    return request


class ArgumentError(Exception):
    """A call's input arguments do not fit the declaration: (status, per-argument statuses)."""

    def __init__(self, status: int, per_argument: Sequence[int] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.per_argument = list(per_argument)


INT32_RANGE = (-(2**31), 2**31 - 1)  # an int or enum argument is declared Int32


def argument_value(a: ArgDef, v: Any) -> float:
    """One input Variant's value as the request carries it (a number; datetime: ns), or TypeError.

    The front judges the type, the core the declared range and enumeration (BadOutOfRange). A
    value that is no number of the declared type is a type mismatch (TypeError): a text, a
    fraction for an int or enum (2.5), and also NaN or an infinity for any number (the core's
    validation says the same: BadTypeMismatch, "must be a finite number"), and for an int or
    enum a whole number outside Int32, the argument's declared DataType (no Int32 holds it,
    whatever range the command declares).
    """
    value = v.Value if isinstance(v, ua.Variant) else v
    if a.type == "datetime":
        if value is None:
            return 0.0
        if not isinstance(value, dt.datetime):
            raise TypeError(a.name)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # OPC UA DateTime is UTC
        if value <= _EPOCH:
            return 0.0  # a client's "no time" (MinDateTime)
        return float((value - _EPOCH) // dt.timedelta(microseconds=1) * 1000)
    if a.type == "bool":
        if not isinstance(value, bool):
            raise TypeError(a.name)
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(a.name)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (no Variant carries one; fail closed)
        raise TypeError(a.name) from None
    if not math.isfinite(number):
        raise TypeError(a.name)
    if a.type in ("int", "enum") and not (number.is_integer() and INT32_RANGE[0] <= number <= INT32_RANGE[1]):
        raise TypeError(a.name)
    return number


def arguments(defs: Sequence[ArgDef], given: Sequence[Any]) -> dict[str, float]:
    """The request's ``args`` from a call's inputs (see :func:`argument_value`), or ArgumentError."""
    if len(given) < len(defs):
        raise ArgumentError(SC.BadArgumentsMissing)
    if len(given) > len(defs):
        raise ArgumentError(SC.BadTooManyArguments)
    out: dict[str, float] = {}
    codes = []
    for a, v in zip(defs, given):
        try:
            out[a.name] = argument_value(a, v)
            codes.append(SC.Good)
        except TypeError:
            codes.append(SC.BadTypeMismatch)
    if any(codes):
        raise ArgumentError(SC.BadInvalidArgument, codes)
    return out


def call_result(status: int, outputs: list[ua.Variant] | None = None, per_argument: Sequence[int] = ()) -> Any:
    res = ua.CallMethodResult()
    res.StatusCode = StatusCode(status)
    res.OutputArguments = outputs or []
    res.InputArgumentResults = [StatusCode(c) for c in per_argument]
    return res


async def ask_core(request: Request, op: str, payload: tuple) -> Any:
    """The core's answer, or a status when the channel failed (BadShutdown: the core is gone)."""
    try:
        return await request(op, payload)
    except ConnectionError:
        return BAD_SHUTDOWN
    except Exception as exc:  # noqa: BLE001 - the client gets a status, the session lives
        log.error("opcua_command_request_failed", op=op, error=repr(exc))
        return BAD_INTERNAL_ERROR


class CommandMethods:
    """The command method nodes of a server, their references from the devices, their callbacks."""

    def __init__(self, server: Server, ns: int, request: Request) -> None:
        self.server = server
        self.ns = ns
        self.request = request
        self.aspace = address_space(server)
        self.node_count = 0
        self.methods: set[ua.NodeId] = set()  # every command method node (the audit skips them)
        self._devices: dict[str, Device] = {}  # device object path -> device
        self._refs: dict[str, list[ua.ReferenceDescription]] = {}  # type -> the devices' references
        self._folders: list[ua.NodeId] = []  # the _commands folders built

    # -- building ---------------------------------------------------------------------------

    def install(self, config: Config) -> None:
        """Method nodes for every type with commands, referenced from each of its devices."""
        builder = AddressSpaceBuilder(self.server, self.ns)
        for type_name, commands in config.control.commands.items():
            tnode = self.aspace.get(NodeId(f"_types/{type_name}", self.ns))
            if tnode is None:  # no device of this type, hence no type node: nothing to call
                continue
            folder = builder.add_object(tnode, f"_types/{type_name}/{COMMANDS_FOLDER}", COMMANDS_FOLDER, folder=True)
            self._folders.append(folder.nodeid)
            refs: list[ua.ReferenceDescription] = []
            for cmd in commands.values():
                for nd in self._command_nodes(builder, folder, cmd):
                    self.methods.add(nd.nodeid)
                    refs.extend(r for r in folder.references if r.IsForward and r.NodeId == nd.nodeid)
            self._refs[type_name] = refs
        self.node_count += builder.node_count
        for d in config.controlled:
            self._attach(config, d)
        authz = authorisation(self.server)
        if authz is not None:  # audited by the core's pipeline ("command"), not again as "call"
            authz.self_audited.update(self.methods)

    def _attach(self, config: Config, d: Device) -> None:
        path = f"{d.commune}/{config.types[d.type].cls}/{d.name}"
        nd = self.aspace.get(NodeId(path, self.ns))
        refs = self._refs.get(d.type)
        if nd is None or not refs:
            return
        self._devices[path] = d
        nd.references.extend(refs)  # the same ReferenceDescription objects on every device

    def _command_nodes(self, builder: AddressSpaceBuilder, folder: NodeData, cmd: CommandDef) -> list[NodeData]:
        base = f"_types/{cmd.type_name}/{COMMANDS_FOLDER}/{cmd.name}"
        inputs = [input_argument(a) for a in cmd.arguments]
        desc = cmd.description or cmd.name
        if not cmd.critical:
            nd = builder.add_method(folder, base, cmd.name, desc, inputs, [RESULT])
            self.aspace.add_method_callback(nd.nodeid, self._callback(cmd, "execute"))
            return [nd]
        out = []
        for suffix, phase, ins, outs, what in (
            (SELECT, "select", inputs, [TOKEN], "select (then Operate within the select timeout)"),
            (OPERATE, "operate", [TOKEN], [RESULT], "operate what Select chose"),
            (CANCEL, "cancel", [TOKEN], [], "cancel a Select"),
        ):
            nd = builder.add_method(folder, base + suffix, cmd.name + suffix, f"{desc}: {what}", ins, outs)
            self.aspace.add_method_callback(nd.nodeid, self._callback(cmd, phase))
            out.append(nd)
        return out

    def detach(self) -> None:
        """Remove the devices' references and the method nodes (before a reload installs again)."""
        authz = authorisation(self.server)
        if authz is not None:
            authz.self_audited.difference_update(self.methods)
        for path in self._devices:
            nd = self.aspace.get(NodeId(path, self.ns))
            if nd is not None:
                nd.references[:] = [r for r in nd.references if r.NodeId not in self.methods]
        gone = set(self.methods) | set(self._folders)
        for nid in self.methods:  # their InputArguments / OutputArguments properties
            nd = self.aspace.get(nid)
            if nd is not None:
                gone.update(r.NodeId for r in nd.references if r.IsForward)
        unlink_nodes(self.aspace, gone)
        self.methods.clear()
        self._devices.clear()
        self._refs.clear()
        self._folders.clear()

    def reload(self, config: Config) -> None:
        self.detach()
        self.install(config)

    # -- calls ------------------------------------------------------------------------------

    def device_of(self, object_id: ua.NodeId) -> Device | None:
        if object_id.NamespaceIndex != self.ns or not isinstance(object_id.Identifier, str):
            return None
        return self._devices.get(object_id.Identifier)

    def _callback(self, cmd: CommandDef, phase: str) -> Callable[..., Awaitable[Any]]:
        async def call(object_id: ua.NodeId, *inputs: Any) -> Any:
            try:
                return await self._call(cmd, phase, object_id, inputs)
            except Exception as exc:  # noqa: BLE001 - a client gets a status, the session lives
                log.error("opcua_command_failed", command=cmd.name, phase=phase, error=repr(exc))
                return call_result(SC.BadInternalError)

        return call

    async def _call(self, cmd: CommandDef, phase: str, object_id: ua.NodeId, inputs: Sequence[Any]) -> Any:
        device = self.device_of(object_id)
        if device is None or device.type != cmd.type_name:
            # Part 4: the method is not a component of this object.
            return self._refused(cmd, phase, object_id.to_string(), inputs, SC.BadMethodInvalid)
        token = ""
        try:
            if phase in ("operate", "cancel"):
                if len(inputs) != 1:
                    raise ArgumentError(SC.BadArgumentsMissing if not inputs else SC.BadTooManyArguments)
                token = inputs[0].Value if isinstance(inputs[0], ua.Variant) else inputs[0]
                if not isinstance(token, str):
                    raise ArgumentError(SC.BadInvalidArgument, [SC.BadTypeMismatch])
                args: dict[str, float] = {}
            else:
                args = arguments(cmd.arguments, inputs)
        except ArgumentError as err:
            return self._refused(cmd, phase, device.name, inputs, err.status, err.per_argument)
        request = CommandRequest(device.name, cmd.name, args, caller_of(current()), phase=phase, token=token)
        answer = await ask_core(self.request, "command", request.to_wire())
        result = CommandResult(device.name, answer) if isinstance(answer, int) else CommandResult.from_wire(answer)
        log.info(
            "opcua_command",
            device=device.name,
            command=cmd.name,
            phase=phase,
            user=request.caller.user,
            status=f"0x{result.status:08X}",
            message=result.message,
        )
        if phase == "select":
            return call_result(result.status, [ua.Variant(result.token, ua.VariantType.String)] if result.good else [])
        if phase == "cancel":
            return call_result(result.status)
        text = result.message or ("Good" if result.good else "")
        return call_result(result.status, [ua.Variant(text, ua.VariantType.String)])

    def _refused(
        self, cmd: CommandDef, phase: str, target: str, inputs: Sequence[Any], status: int, per_arg: Sequence[int] = ()
    ) -> Any:
        """A call the front refuses alone: audited as the core audits its refusals ("command")."""
        authz = authorisation(self.server)
        if authz is not None:
            authz.refuse(
                "command",
                target,
                {"command": cmd.name, "phase": phase, "arguments": [audit_value(v) for v in inputs]},
                status,
                current(),
            )
        return call_result(status, per_argument=per_arg)


def type_arguments(config: Config, cls: str, command: str) -> Mapping[str, ArgDef]:
    """The arguments of ``command`` on the first type of class ``cls`` that has it (a group
    action's signature), by name; empty when no type of the class has it."""
    for name, commands in config.control.commands.items():
        t = config.types.get(name)
        if t is not None and t.cls == cls and command in commands:
            return {a.name: a for a in commands[command].arguments}
    return {}
