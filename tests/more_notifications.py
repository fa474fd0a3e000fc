"""What the tests of MaxNotificationsPerPublish read on asyncua's client: the MoreNotifications
flag of each NotificationMessage, which its Subscription handler does not show."""

from __future__ import annotations

from asyncua import Client, ua


def record_more_notifications(client: Client, subscription_id: int) -> list[bool]:
    """A list that gets the MoreNotifications of each NotificationMessage with data the
    subscription receives from now on, in order (the client's callback is wrapped)."""
    more: list[bool] = []
    callbacks = client.uaclient._subscription_callbacks
    deliver = callbacks[subscription_id]

    async def record(result: ua.PublishResult) -> None:
        if result.NotificationMessage.NotificationData:
            more.append(result.MoreNotifications)
        await deliver(result)

    callbacks[subscription_id] = record
    return more
