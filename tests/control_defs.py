"""Commands and interlocks of the shipped equipment types, built as objects (scada.control.model)
for the pipeline's tests, until tags.yaml's ``commands:`` (the config helper's parser) lands.

They follow the issue: cabinet SetMode, SetDimLevel, ResetTrip (critical here: resetting a
protection is the select-before-operate case these tests need on the Modbus simulator);
junction SetPlan, SetMode; bollard Raise, Lower, EmergencyLower.
"""

from __future__ import annotations

import dataclasses

from scada.control.model import (
    BAD_REQUEST_NOT_ALLOWED,
    ArgDef,
    CommandDef,
    ControlConfig,
    ControlSettings,
    InterlockDef,
    RateLimit,
    Step,
)

CABINET, JUNCTION, BOLLARD = "lighting_cabinet", "traffic_junction", "access_bollard"


def _cmd(type_name: str, name: str, args=(), writes=(), confirm=(), timeout=5.0, **kw) -> CommandDef:
    return CommandDef(name, type_name, tuple(args), tuple(writes), tuple(confirm), timeout, **kw)


def commands(timeout: float = 5.0, bollard_timeout: float = 15.0) -> dict[str, dict[str, CommandDef]]:
    level = ArgDef("level", "float", range=(0, 100), unit="%")
    until = ArgDef("until", "datetime")
    cab = {
        "SetDimLevel": _cmd(
            CABINET,
            "SetDimLevel",
            [level, until],
            [Step("mode", 3.0), Step("dim_setpoint", arg="level")],
            [Step("dim_level", arg="level")],
            timeout,
            interlocks=("no_trip",),
        ),
        "SetMode": _cmd(
            CABINET,
            "SetMode",
            [ArgDef("mode", "enum", enum=((0, "auto"), (1, "forced_on"), (2, "forced_off")))],
            [Step("mode", arg="mode")],
            [Step("mode", arg="mode")],
            timeout,
        ),
        "ResetTrip": _cmd(
            CABINET,
            "ResetTrip",
            [],
            [Step("reset_trip", 1.0)],
            [Step("earth_leakage_trip", 0.0)],
            timeout,
            critical=True,
            role="Engineer",
        ),
    }
    junction = {
        "SetPlan": _cmd(
            JUNCTION,
            "SetPlan",
            [ArgDef("plan", "enum", enum=((1, "day"), (2, "peak"), (3, "night")))],
            [Step("plan", arg="plan")],
            [Step("plan", arg="plan")],
            timeout,
            interlocks=("no_conflict",),
        ),
        "SetMode": _cmd(
            JUNCTION,
            "SetMode",
            [ArgDef("mode", "enum", enum=((1, "flashing"), (2, "normal")))],
            [Step("mode", arg="mode")],
            [Step("mode", arg="mode")],
            timeout,
            interlocks=("no_conflict",),
        ),
    }
    bollard = {
        "Raise": _cmd(
            BOLLARD,
            "Raise",
            [],
            [Step("command", 1.0)],
            [Step("position", 2.0)],
            bollard_timeout,
            interlocks=("no_vehicle", "no_emergency"),
        ),
        "Lower": _cmd(BOLLARD, "Lower", [], [Step("command", 0.0)], [Step("position", 0.0)], bollard_timeout),
        "EmergencyLower": _cmd(
            BOLLARD, "EmergencyLower", [], [Step("command", 2.0)], [Step("position", 0.0)], bollard_timeout
        ),
    }
    return {CABINET: cab, JUNCTION: junction, BOLLARD: bollard}


INTERLOCKS = {
    CABINET: {"no_trip": InterlockDef("no_trip", "not earth_leakage_trip", "the earth-leakage protection has tripped")},
    JUNCTION: {
        "no_conflict": InterlockDef(
            "no_conflict",
            "not conflict_fault",
            "the conflict monitor is in fault: a reset on site is needed",
            status=BAD_REQUEST_NOT_ALLOWED,
        )
    },
    BOLLARD: {
        "no_vehicle": InterlockDef("no_vehicle", "not vehicle", "a vehicle is on the loop"),
        "no_emergency": InterlockDef("no_emergency", "not emergency", "an emergency lowering is active"),
    },
}


GENEROUS = RateLimit(600.0, 100)


def control(
    select_timeout: float = 10.0,
    user_rate: RateLimit = GENEROUS,
    device_rate: RateLimit = GENEROUS,
    timeout: float = 5.0,
    bollard_timeout: float = 15.0,
) -> ControlConfig:
    """The control configuration of the shipped types (generous rates unless a test sets them)."""
    return ControlConfig(
        commands=commands(timeout, bollard_timeout),
        interlocks=INTERLOCKS,
        settings=ControlSettings(select_timeout=select_timeout, user_rate=user_rate, device_rate=device_rate),
    )


def with_control(config, ctl: ControlConfig | None = None):
    """``config`` with these commands (a new Config: its Control tags follow)."""
    return dataclasses.replace(config, control=ctl if ctl is not None else control())


def shipped_control(config, **settings):
    """``config`` with its own commands (tags.yaml ``commands:``) when it has some, else these
    definitions; ``settings``: ControlSettings fields to override (rates, select_timeout)."""
    base = config.control if config.control.commands else control()
    if not config.control.commands:
        settings = {"user_rate": GENEROUS, "device_rate": GENEROUS, **settings}
    return dataclasses.replace(
        config, control=dataclasses.replace(base, settings=dataclasses.replace(base.settings, **settings))
    )
