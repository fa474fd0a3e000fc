"""Part 9 field values as asyncua Variants: the constant ones built once, shared by every event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua

from scada.alarms.states import State
from scada.opcua.typed_ua import NodeId

OI = ua.ObjectIds
VT = ua.VariantType
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _v(value: Any, vtype: ua.VariantType) -> ua.Variant:
    return ua.Variant(value, vtype)


def _text(s: str) -> ua.Variant:
    return _v(ua.LocalizedText(s), VT.LocalizedText)


def _dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


_NULL = ua.Variant()
_TRUE, _FALSE = _v(True, VT.Boolean), _v(False, VT.Boolean)
_BOOL = {True: _TRUE, False: _FALSE}
_TEXTS = {
    s: _text(s)
    for s in (
        "Active",
        "Inactive",
        "Acknowledged",
        "Unacknowledged",
        "Enabled",
        "Suppressed",
        "Unsuppressed",
        "Out of service",
        "In service",
        "Latched",
        "Unlatched",
    )
}
_SHELVING = {
    name: (_text(name), _v(NodeId(nid), VT.NodeId))
    for name, nid in (
        ("Unshelved", OI.ShelvedStateMachineType_Unshelved),
        ("TimedShelved", OI.ShelvedStateMachineType_TimedShelved),
        ("OneShotShelved", OI.ShelvedStateMachineType_OneShotShelved),
    )
}
_SHELVING_TRANSITION = {
    ("Unshelved", "TimedShelved"): ("UnshelvedToTimedShelved", OI.ShelvedStateMachineType_UnshelvedToTimedShelved),
    ("Unshelved", "OneShotShelved"): (
        "UnshelvedToOneShotShelved",
        OI.ShelvedStateMachineType_UnshelvedToOneShotShelved,
    ),
    ("TimedShelved", "Unshelved"): ("TimedShelvedToUnshelved", OI.ShelvedStateMachineType_TimedShelvedToUnshelved),
    ("OneShotShelved", "Unshelved"): (
        "OneShotShelvedToUnshelved",
        OI.ShelvedStateMachineType_OneShotShelvedToUnshelved,
    ),
}
_BRANCH_NULL = _v(NodeId(), VT.NodeId)
_HIDDEN_STATES = (State.SHELVED, State.SUPPRESSED, State.OUT_OF_SERVICE)
