"""Contract of scada/opcua/asyncua_private/browse.py (the Browse service: the reference type
test once per request, results encoded by us) with the installed asyncua.
"""

from __future__ import annotations

import inspect

from asyncua import ua

from scada.opcua.asyncua_private import browse as P
from tests.asyncua_contract import OI, params, relied_on, running

relies = relied_on("scada/opcua/asyncua_private/browse.py")


def test_the_browse_service_has_the_shape_relied_on():
    from asyncua.server.address_space import ViewService

    relies(params(ViewService.browse) == ["self", "params"], "ViewService.browse(params)")
    relies(
        params(ViewService._suitable_reftype) == ["self", "ref1", "ref2", "subtypes"],
        "ViewService._suitable_reftype(ref1, ref2, subtypes)",
    )
    relies(
        "self._suitable_reftype(" in inspect.getsource(ViewService._is_suitable_ref),
        "ViewService._is_suitable_ref tests the reference type with self._suitable_reftype",
    )
    relies("self._is_suitable_ref(" in inspect.getsource(ViewService._browse), "ViewService._browse filters per ref")


async def test_the_browse_hook_answers_as_asyncua_on_a_live_server():
    """Browse with the reference type test remembered per request gives asyncua's answers (every
    reference type, with and without subtypes, both directions)."""
    async with running() as own:
        view = own.server.iserver.view_service
        starts = [ua.NodeId(OI.ObjectsFolder), ua.NodeId(OI.Server), own.nodeid, ua.NodeId(OI.RootFolder)]
        reftypes = [
            ua.NodeId(),
            ua.NodeId(OI.HierarchicalReferences),
            ua.NodeId(OI.HasComponent),
            ua.NodeId(OI.Organizes),
        ]
        descs = [
            ua.BrowseDescription(NodeId=n, BrowseDirection=d, ReferenceTypeId=t, IncludeSubtypes=s, NodeClassMask=m)
            for n in starts
            for d in (ua.BrowseDirection.Forward, ua.BrowseDirection.Inverse, ua.BrowseDirection.Both)
            for t in reftypes
            for s in (True, False)
            for m in (0, int(ua.NodeClass.Object))
        ]
        stock = view.browse(ua.BrowseParameters(NodesToBrowse=descs))
        P.hook_browse_reftypes(own.server)
        P.hook_browse_reftypes(own.server)  # idempotent
        hooked = view.browse(ua.BrowseParameters(NodesToBrowse=descs))
        relies(hooked == stock, "Browse answers with the reference type test remembered per request")
        relies(sum(len(r.References) for r in hooked) > len(descs), "the Browse found references")
        folders = await own.client.nodes.objects.get_children()
        relies(own.nodeid in [c.nodeid for c in folders], "a client's Browse through the hooked service")
        # Outside a Browse (TranslateBrowsePaths), the test is asyncua's, not remembered.
        relies(view._suitable_reftype(ua.NodeId(OI.HierarchicalReferences), ua.NodeId(OI.Organizes), True), "subtype")


async def test_pre_encoded_browse_results_reach_the_client_as_asyncua_sends_them():
    from asyncua.ua.ua_binary import list_to_binary

    calls = []

    def encode(results: list[ua.BrowseResult]) -> bytes:
        calls.append(len(results))
        return list_to_binary(ua.BrowseResult, results)

    async with running() as own:
        before = [(r.NodeId, r.BrowseName, r.DisplayName) for r in await own.client.nodes.objects.get_references()]
        P.hook_browse_encoding(own.server, encode)
        P.hook_browse_encoding(own.server, encode)  # idempotent
        P.hook_browse_reftypes(own.server)  # either order
        after = [(r.NodeId, r.BrowseName, r.DisplayName) for r in await own.client.nodes.objects.get_references()]
        relies(calls == [1], "a client's Browse is sent through the encoder given")
        relies(after == before and own.nodeid in [a[0] for a in after], "the client decodes the same references")
        relies(await own.client.get_node(own.nodeid).read_value() == 42.0, "other responses are asyncua's")
        [res] = await own.server.iserver.isession.browse(
            ua.BrowseParameters(NodesToBrowse=[ua.BrowseDescription(NodeId=ua.NodeId(OI.ObjectsFolder))])
        )
        relies(own.nodeid in [r.NodeId for r in res.References], "an internal session's Browse gets a plain list")


def test_translate_browse_paths_has_the_shape_relied_on():
    from asyncua.server.address_space import ViewService
    from asyncua.server.internal_session import InternalSession

    relies(
        params(ViewService.translate_browsepaths_to_nodeids) == ["self", "browsepaths"],
        "ViewService.translate_browsepaths_to_nodeids(browsepaths)",
    )
    for name in ("browse", "translate_browsepaths_to_nodeids"):
        relies(
            f"self.iserver.view_service.{name}(" in inspect.getsource(getattr(InternalSession, name)),
            f"InternalSession.{name} looks up view_service.{name} per request",
        )


async def test_the_visibility_hook_filters_browse_and_translate_results_on_a_live_server():
    """Browse and TranslateBrowsePaths results go through the filters given, with the encoding
    hook on either side; installing again replaces the filters."""
    from asyncua.ua.ua_binary import list_to_binary

    def encode(results: list[ua.BrowseResult]) -> bytes:
        return list_to_binary(ua.BrowseResult, results)

    seen: list[str] = []

    def drop_ours(p: ua.BrowseParameters, results: list[ua.BrowseResult]) -> list[ua.BrowseResult]:
        seen.append("browse")
        return [
            ua.BrowseResult(
                StatusCode=r.StatusCode, References=[x for x in r.References if x.NodeId.NamespaceIndex == 0]
            )
            for r in results
        ]

    def no_match(paths: list[ua.BrowsePath], results: list[ua.BrowsePathResult]) -> list[ua.BrowsePathResult]:
        seen.append("translate")
        return [ua.BrowsePathResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadNoMatch)) for _ in results]

    async with running() as own:
        P.hook_browse_encoding(own.server, encode)
        P.hook_browse_visibility(own.server, lambda p, r: r, lambda p, r: r)
        P.hook_browse_visibility(own.server, drop_ours, no_match)  # replaces the filters, one hook
        P.hook_browse_reftypes(own.server)
        P.hook_browse_encoding(own.server, encode)  # still installed once: no second wrapper
        children = [c.nodeid for c in await own.client.nodes.objects.get_children()]
        relies(own.nodeid not in children and children, "a client's Browse gets the filtered references")
        relies(seen == ["browse"], "the filter given last, once per Browse request")
        path = ua.BrowsePath(
            StartingNode=ua.NodeId(OI.RootFolder),
            RelativePath=ua.RelativePath(
                Elements=[
                    ua.RelativePathElement(
                        ReferenceTypeId=ua.NodeId(OI.Organizes),
                        IsInverse=False,
                        TargetName=ua.QualifiedName("Objects", 0),
                    )
                ]
            ),
        )
        [res] = await own.client.uaclient.translate_browsepaths_to_nodeids([path])
        relies(res.StatusCode.value == ua.StatusCodes.BadNoMatch, "a client's TranslateBrowsePaths is filtered")
        relies(seen == ["browse", "translate"], "the translate filter given last, once per request")
