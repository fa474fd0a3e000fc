"""Communes a user does not see (``see_other_communes: false``): their nodes left out everywhere.

A user limited to some communes who does not see the others gets, for every node of another
commune, what a client gets for a node that does not exist: Browse leaves the references to it
out (and browsing it answers ``BadNodeIdUnknown``), TranslateBrowsePaths finds no target there,
Read and CreateMonitoredItems answer ``BadNodeIdUnknown`` per item, and its condition events
are not delivered to that user's subscriptions (scada/opcua/conditions/delivery.py).

**Which node is whose.** Every NodeId of the tags namespace is a path whose first segment is
the commune (``Dijon``, ``Dijon/lighting``, ``Dijon/lighting/LC-DIJ-001/power``,
``.../Alarms/hot``), except the shared roots (:data:`SHARED_ROOTS`: the City folder, the
types folder, the server's own alarms). So a node is hidden when its first segment is neither
one of the user's communes nor a shared root: one ``str.partition`` and one set lookup per
node, against a set made once per identity. Anything unknown (a root added later) is hidden
from a restricted user rather than shown: the check fails closed. ns 0 (the standard nodes)
and numeric NodeIds are never a commune's.

**Cost.** One ContextVar read per request; an identity that sees everything (the usual case)
stops there. The rest is paid only by restricted identities.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from asyncua import Server, ua

from scada.opcua.address_space import ROOT_NAME
from scada.opcua.asyncua_private.browse import hook_browse_visibility
from scada.opcua.asyncua_private.read import hook_monitored_item_visibility
from scada.opcua.typed_ua import StatusCode
from scada.security.context import current
from scada.security.identity import Identity

TYPES_FOLDER = "_types"  # the equipment types' shared nodes (address_space.py), under City
SERVER_ALARMS = "Server"  # the server's own conditions: ``Server/Alarms/<name>`` (conditions/nodes.py)
SHARED_ROOTS = frozenset({ROOT_NAME, TYPES_FOLDER, SERVER_ALARMS})

UNKNOWN = ua.StatusCodes.BadNodeIdUnknown

Roots = frozenset[str]  # the first segments a restricted identity sees (its communes, the shared roots)


@functools.lru_cache(maxsize=1024)
def visible_roots(identity: Identity) -> Roots | None:
    """What ``identity`` sees: None when every commune (one check), else its roots (cached per identity)."""
    if identity.see_other_communes or identity.communes is None:
        return None
    return identity.communes | SHARED_ROOTS


def request_roots() -> Roots | None:
    """The roots the current request's identity sees, or None: everything (no request, no security
    layer, or an identity that sees every commune)."""
    ctx = current()
    return None if ctx is None else visible_roots(ctx.identity)


def hides(nodeid: ua.NodeId, roots: Roots) -> bool:
    """Is ``nodeid`` a node of a commune outside ``roots``?"""
    ident = nodeid.Identifier
    if nodeid.NamespaceIndex == 0 or type(ident) is not str:
        return False
    return ident.partition("/")[0] not in roots


def hidden_mask(nodeids: Sequence[ua.NodeId], roots: Roots) -> list[bool]:
    """:func:`hides` of each NodeId."""
    out = []
    for n in nodeids:
        ident = n.Identifier
        out.append(n.NamespaceIndex != 0 and type(ident) is str and ident.partition("/")[0] not in roots)
    return out


# One answer for every hidden node of every Read (a DataValue costs ~10 µs to make; the
# responses only encode it, nothing edits it).
_UNKNOWN_VALUE = ua.DataValue(StatusCode=StatusCode(UNKNOWN))


def unknown_data_value() -> ua.DataValue:
    """A Read's answer for a hidden node: as for a node that does not exist (shared: never edit it)."""
    return _UNKNOWN_VALUE


# -- the services' filters (installed by :func:`install_visibility`) --------------------------


def browse_filter(params: ua.BrowseParameters, results: list[ua.BrowseResult]) -> list[ua.BrowseResult]:
    """Browse results without the hidden nodes: a hidden node browsed answers BadNodeIdUnknown,
    references to hidden nodes are left out."""
    roots = request_roots()
    if roots is None:
        return results
    out = []
    for desc, res in zip(params.NodesToBrowse, results, strict=True):
        if hides(desc.NodeId, roots):
            out.append(ua.BrowseResult(StatusCode=StatusCode(UNKNOWN)))
            continue
        refs = res.References
        if refs:
            kept = [r for r, hidden in zip(refs, hidden_mask([r.NodeId for r in refs], roots)) if not hidden]
            if len(kept) != len(refs):
                res = ua.BrowseResult(
                    StatusCode=res.StatusCode, ContinuationPoint=res.ContinuationPoint, References=kept
                )
        out.append(res)
    return out


def translate_filter(paths: list[ua.BrowsePath], results: list[ua.BrowsePathResult]) -> list[ua.BrowsePathResult]:
    """TranslateBrowsePaths without the hidden nodes: from a hidden node BadNodeIdUnknown, hidden
    targets left out (none left: BadNoMatch, as for a path that leads nowhere)."""
    roots = request_roots()
    if roots is None:
        return results
    out = []
    for path, res in zip(paths, results, strict=True):
        if hides(path.StartingNode, roots):
            res = ua.BrowsePathResult(StatusCode=StatusCode(UNKNOWN))
        elif res.Targets:
            kept = [t for t in res.Targets if not hides(t.TargetId, roots)]
            if not kept:
                res = ua.BrowsePathResult(StatusCode=StatusCode(ua.StatusCodes.BadNoMatch))
            elif len(kept) != len(res.Targets):
                res = ua.BrowsePathResult(StatusCode=res.StatusCode, Targets=kept)
        out.append(res)
    return out


def monitored_items_hidden(items: Sequence[ua.MonitoredItemCreateRequest]) -> list[bool] | None:
    """Per item of a CreateMonitoredItems, whether its node is hidden; None: none can be."""
    roots = request_roots()
    if roots is None:
        return None
    return hidden_mask([i.ItemToMonitor.NodeId for i in items], roots)


def install_visibility(server: Server) -> None:
    """Hide the communes a request's identity does not see from Browse, TranslateBrowsePaths and
    CreateMonitoredItems (Read: scada/opcua/tag_read.py; events: conditions/delivery.py)."""
    hook_browse_visibility(server, browse_filter, translate_filter)
    hook_monitored_item_visibility(server, monitored_items_hidden, StatusCode(UNKNOWN))
