"""The one place that touches asyncua's private and internal server API: one module per concern.

asyncua's public API (``Server``, ``Node``, ``ua``) builds nodes one coroutine at a time,
sends events only through its own event generators, and has no hook on HistoryRead, on the
calling session of a method, or on the sessions still open at shutdown. Where the OPC UA
side needs more, it goes through the modules of this package and nothing else: the rest of
scada/opcua imports asyncua's public API and these modules only.

=====================  ==============================================================
module                 the concern, and who uses it
=====================  ==============================================================
``nodes``              the node table: nodes inserted, made on access, removed
                       (address_space.py, virtual_nodes.py, conditions/)
``subscriptions``      the server's subscriptions and their monitored items
``events``             condition events delivered to event items (conditions/delivery.py)
``datachange``         the fast data change path: our queue published by asyncua's
                       subscriptions, chunked CreateMonitoredItems (publisher.py)
``sessions``           the calling session of a method, what a closed session leaves
                       behind, the sessions open at stop (conditions/methods.py,
                       sessions.py, server.py)
``history``            the HistoryRead entry point (history.py)
``browse``             Browse: the reference type test once per request, results
                       encoded by us (server.py, browse_codec.py); Browse and
                       TranslateBrowsePaths results filtered (visibility.py)
``read``               Read: a batch answer for the values we hold (tag_read.py);
                       CreateMonitoredItems refused per item (visibility.py)
``responses``          responses whose Results we encoded, sent by asyncua's processor
``request_decoding``   requests decoded by us (request_codec.py)
``binary``             asyncua's binary encoders and decoder of single values
``activation``         logins: ActivateSession checked before asyncua's activation (off
                       the loop), random session tokens, encrypted passwords (login.py)
``transport``          each chunk's header checked before its body is buffered,
                       connections per client address (bounds.py)
``limits``             per-session caps: operations per request, subscriptions,
                       monitored items, history values, sessions per client (bounds.py)
``request_context``    the request being served (its identity, channel) and the service
                       gate before each request and each method of a Call (authorise.py)
``ownership``          a subscription is its session's: owner checks on the session's
                       subscription services, transfers (authorise.py)
``channels``           the client certificate checked at OpenSecureChannel, CreateSession
                       bound to the channel's certificate (endpoints.py)
``writes``             the Write service routed per node: a writable tag's Write goes
                       to the command pipeline (writes.py)
``concurrent_requests``  a connection's Calls and Writes served beside its next
                       requests (a command waits for the read-back) (server.py)
=====================  ==============================================================

Each name says what it relies on. The contract tests ``tests/unit/test_asyncua_private_*.py``
(one per module) check every one of them against the installed asyncua (attributes,
signatures and behaviour, on a real server and client on loopback), so a release that changes
them fails there, by name, and not somewhere deep in a reload or an alarm storm.
pyproject.toml pins asyncua to the range those tests passed on.

Hot paths (the tree builder, the publisher, event delivery) take the internal objects or
classes from here once and then loop over them directly: no wrapper call per node or value.
"""
