"""Which nodes a user who does not see other communes is shown (scada/opcua/visibility.py)."""

from __future__ import annotations

from asyncua import ua

from scada.opcua import visibility as V
from scada.security.context import REQUEST, RequestContext
from scada.security.identity import Identity, Role

SC = ua.StatusCodes
OBS = frozenset({Role.OBSERVER})
DORA = Identity("dora", OBS, frozenset({"Dijon"}), see_other_communes=False)


def n(ident: str | int, ns: int = 2) -> ua.NodeId:
    return ua.NodeId(ident, ns)


def test_only_an_identity_limited_to_communes_that_does_not_see_the_others_is_restricted() -> None:
    assert V.visible_roots(Identity("olga", OBS)) is None
    assert V.visible_roots(Identity("oscar", OBS, frozenset({"Talant"}))) is None  # sees the others
    assert V.visible_roots(Identity("x", OBS, None, see_other_communes=False)) is None  # every commune its own
    assert V.visible_roots(DORA) == {"Dijon"} | V.SHARED_ROOTS


def test_a_node_is_its_communes_by_its_first_segment_and_unknown_roots_are_hidden() -> None:
    roots = V.visible_roots(DORA)
    assert roots is not None
    hidden = ["Talant", "Talant/lighting", "Talant/lighting/LC-1/power", "Talant/lighting/LC-1/Alarms/hot", "Other"]
    shown = ["Dijon", "Dijon/lighting/LC-2/power", "City", "_types", "Server/Alarms/front_down"]
    assert [V.hides(n(i), roots) for i in hidden] == [True] * len(hidden)
    assert [V.hides(n(i), roots) for i in shown] == [False] * len(shown)
    assert not V.hides(ua.NodeId(ua.ObjectIds.Server), roots) and not V.hides(n(5), roots)
    assert not V.hides(ua.NodeId("Talant", 0), roots)  # ns 0: the standard's nodes, never a commune's
    assert V.hidden_mask([n(i) for i in hidden + shown], roots) == [True] * len(hidden) + [False] * len(shown)


def ref(ident: str) -> ua.ReferenceDescription:
    return ua.ReferenceDescription(NodeId=n(ident), BrowseName=ua.QualifiedName(ident, 2))


def test_browse_results_leave_the_hidden_nodes_out_for_the_request_identity_only() -> None:
    params = ua.BrowseParameters(NodesToBrowse=[ua.BrowseDescription(NodeId=n(x)) for x in ("City", "Talant")])
    results = [
        ua.BrowseResult(References=[ref("_types"), ref("Talant"), ref("Dijon")]),
        ua.BrowseResult(References=[ref("Talant/lighting")]),
    ]
    assert V.browse_filter(params, results) is results  # no request: the server's own
    token = REQUEST.set(RequestContext(Identity("olga", OBS)))
    try:
        assert V.browse_filter(params, results) is results  # sees everything: untouched
    finally:
        REQUEST.reset(token)
    token = REQUEST.set(RequestContext(DORA))
    try:
        city, talant = V.browse_filter(params, results)
    finally:
        REQUEST.reset(token)
    assert [r.NodeId.Identifier for r in city.References] == ["_types", "Dijon"]
    assert talant.StatusCode.value == SC.BadNodeIdUnknown and talant.References == []
    assert len(results[0].References) == 3  # asyncua's results are not edited


def test_translate_results_without_hidden_targets() -> None:
    def path(start: str) -> ua.BrowsePath:
        return ua.BrowsePath(StartingNode=n(start))

    def found(*targets: str) -> ua.BrowsePathResult:
        return ua.BrowsePathResult(Targets=[ua.BrowsePathTarget(TargetId=n(t)) for t in targets])

    paths = [path("City"), path("City"), path("Talant")]
    results = [found("Talant"), found("Dijon", "Talant/x"), found("Talant/lighting")]
    token = REQUEST.set(RequestContext(DORA))
    try:
        none, some, start = V.translate_filter(paths, results)
        items = [
            ua.MonitoredItemCreateRequest(ItemToMonitor=ua.ReadValueId(NodeId=n(x))) for x in ("Talant/a", "Dijon/a")
        ]
        assert V.monitored_items_hidden(items) == [True, False]
    finally:
        REQUEST.reset(token)
    assert none.StatusCode.value == SC.BadNoMatch and none.Targets == []
    assert some.StatusCode.is_good() and [t.TargetId.Identifier for t in some.Targets] == ["Dijon"]
    assert start.StatusCode.value == SC.BadNodeIdUnknown
    assert V.monitored_items_hidden(items) is None
