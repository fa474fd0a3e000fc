"""What the parts of operations call on each other (the app's ``operations``).

The core's :class:`WorkOrders` service (scada/operations/orders.py) owns the orders and their
journal; the front reaches it through the channel's requests (model.REQUEST_*), the crews'
board (scada/operations/crews.py) through :meth:`WorkOrders.crew_answer`; the orders reach the
crews through :class:`Crews`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from scada.operations.model import CitizenReport, OpsRequest, OpsResult, WorkOrder

Clock = Callable[[], int]  # ns since the epoch: the operations clock (simulated time in a simulated run)


class Crews(Protocol):
    """The crews' board: positions and statuses from the fleet's tags, orders out on MQTT."""

    def propose(self, order: WorkOrder, limit: int = 3) -> list[tuple[str, float]]:
        """The nearest available crews with the order's skill: (vehicle, ETA in s), nearest first."""

    async def send(self, order: WorkOrder, action: str) -> None:
        """Send the order ("assign" or "cancel") to its crew (order.crew, order.correlation_id);
        DriverError subclasses when it cannot go."""


class WorkOrders(Protocol):
    """The core's work-order service."""

    def open_orders(self) -> Sequence[WorkOrder]: ...

    async def apply(self, request: OpsRequest) -> OpsResult:
        """An operator's act (model.OPS): authorised (Permission.DISPATCH, the order's commune),
        journaled, audited; never raises for a refusal."""

    async def citizen_report(self, report: CitizenReport) -> tuple[int, str, str, str]:
        """Store a validated report, attach it to a near open order of its service or create one:
        (status, message, report id, order id)."""

    def crew_answer(self, vehicle: str, payload: Mapping[str, Any]) -> None:
        """A crew's order_status message (model's MQTT contract): the order's transition."""
