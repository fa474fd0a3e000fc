"""asyncua internals: condition events delivered to the subscriptions' event items by us
(scada/opcua/conditions/delivery.py says why); checked by tests/unit/test_asyncua_private_events.py."""

from __future__ import annotations

from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import WhereClauseEvaluator

__all__ = ["SubtypeWhere", "WhereClauseEvaluator", "event_items", "pending_events"]


def event_items(sub: InternalSubscription) -> dict[ua.NodeId, list[int]]:
    """Notifier NodeId -> ids of the subscription's event monitored items on it.

    ``monitored_item_srv._monitored_events``: asyncua's own table of event items, kept by its
    CreateMonitoredItems/DeleteMonitoredItems services.
    """
    return sub.monitored_item_srv._monitored_events


def pending_events(sub: InternalSubscription) -> int:
    """Events queued in a subscription and not yet published (``_triggered_events``).

    The alarm sender's backpressure: without it an alarm storm fills the subscription faster
    than Publish empties it and the client's watchdog drops the link.
    """
    return sum(len(v) for v in sub._triggered_events.values())


class SubtypeWhere(WhereClauseEvaluator):
    """asyncua's where clause evaluator, with OfType true for subtypes too (Part 4 7.7.3).

    Overrides the private ``_eval_el(index, event)`` and calls ``_eval_op(operand, event)``;
    ``event.ancestors`` is the set of the event's type and its supertypes (our events carry it).
    """

    def _eval_el(self, index: int, event: Any) -> Any:
        el = self.elements[index]
        if el.FilterOperator == ua.FilterOperator.OfType:
            return self._eval_op(el.FilterOperands[0], event) in event.ancestors
        return super()._eval_el(index, event)

    @classmethod
    def of(cls, evaluator: WhereClauseEvaluator, aspace: AddressSpace) -> SubtypeWhere:
        """The same where clause as asyncua's ``evaluator`` (its ``logger`` and ``elements``)."""
        return cls(evaluator.logger, aspace, ua.ContentFilter(Elements=evaluator.elements))
