"""asyncua internals: the server's subscriptions and their monitored items (see the package's docstring).

Relied on (checked by tests/unit/test_asyncua_private_subscriptions.py):

* ``InternalSubscription``: ``data.SubscriptionId``, ``session_id``, ``monitored_item_srv``
  and ``enqueue_event(mid, EventFieldList, queue_size)`` (events are delivered by us, see
  scada/opcua/conditions/delivery.py for why).
* ``MonitoredItemData``: ``filter`` (EventFilter), ``where_clause_evaluator``,
  ``client_handle``, ``queue_size``; for the fast data change path (scada/opcua/fastqueue.py)
  ``mode``, ``read_value_id`` (``IndexRange``), ``callback_handle``, ``monitored_item_id``;
  ``queue_size`` 0 means the subscription's ``max_queue_size``.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from asyncua import Server

# Re-exported as they are (no wrapper on hot paths).
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemData

__all__ = ["InternalSubscription", "MonitoredItemData", "monitored_item", "subscriptions"]


def subscriptions(server: Server) -> MutableMapping[int, InternalSubscription]:
    """SubscriptionId -> subscription (``iserver.subscription_service.subscriptions``).

    Condition events are delivered to the subscriptions' event items by us (asyncua's event
    generator matches OfType by exact type and copies per item); there is no public list.
    """
    return server.iserver.subscription_service.subscriptions


def monitored_item(sub: InternalSubscription, mid: int) -> MonitoredItemData | None:
    """The monitored item ``mid`` of a subscription (filter, where clause, client handle, queue
    size), or None once deleted (``monitored_item_srv._monitored_items``)."""
    return sub.monitored_item_srv._monitored_items.get(mid)
