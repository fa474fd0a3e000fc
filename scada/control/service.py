"""The core's command service: the one object the front, the group actions and the schedules call.

``CommandService.execute`` runs one :class:`~scada.control.model.CommandRequest` through the
pipeline (scada/control/pipeline.py: authorise -> validate -> interlocks -> select-before-operate
-> driver write -> read-back) and returns its :class:`~scada.control.model.CommandResult`; it
never raises for a refusal (each has its status code), and audits every attempt.
``run_group`` (scada/control/groups.py) fans a :class:`~scada.control.model.GroupRequest` out
over ``execute``. The front reaches both through the channel's "command" and "group_command"
requests (scada/front/link.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from scada.control.model import CommandRequest, CommandResult, GroupRequest

if TYPE_CHECKING:
    from scada.config import Config
    from scada.control.overrides import Overrides
    from scada.driver_api import Driver
    from scada.tagdb import TagDB


class GroupProgress(Protocol):
    """Told as a group action goes: ``(group, action, user, total, done, failed, finished)``."""

    def __call__(
        self, group: str, action: str, user: str, total: int, done: int, failed: int, finished: bool
    ) -> None: ...


class Commands(Protocol):
    """What callers of the control path rely on (the app's ``commands``)."""

    config: Config
    tagdb: TagDB
    drivers: Mapping[str, Driver]  # by driver name (EquipmentType.driver)
    overrides: Overrides

    async def execute(self, request: CommandRequest) -> CommandResult: ...

    async def run_group(self, request: GroupRequest, progress: GroupProgress | None = None) -> list[CommandResult]: ...

    def reload(self, config: Config, tagdb: TagDB, drivers: Mapping[str, Driver]) -> None: ...


Clock = Callable[[], int]  # ns since the epoch
