"""asyncua internals: the Browse service (the reference type test once per request, results
encoded by us, nodes a user does not see left out); checked by tests/unit/test_asyncua_private_browse.py."""

from __future__ import annotations

from collections.abc import Callable

from asyncua import Server, ua

from scada.opcua.asyncua_private.responses import PreEncoded, wrap_send_response

__all__ = ["hook_browse_encoding", "hook_browse_reftypes", "hook_browse_visibility"]


# -- Browse: the reference type test, once per request --------------------------------------
#
# asyncua's ViewService tests each reference against the Browse's ReferenceTypeId with
# ``_suitable_reftype``, which, with IncludeSubtypes, walks the reference type hierarchy
# (``_get_sub_ref``: a recursive generator over the type nodes' references, a new NodeId per
# step) for *every reference* of every node browsed: ~90 % of a Browse of 1,000 devices,
# measured. Within one Browse request the address space cannot change (the service is
# synchronous), so each (wanted type, reference type, IncludeSubtypes) is answered once per
# request by asyncua's own test and remembered until the request ends.

_BROWSE_MEMO = "_scada_browse_memo"
_ENCODED = "_scada_browse_encoded"


def hook_browse_reftypes(server: Server) -> None:
    """Answer the Browse service's reference type test once per distinct question per request.

    Wraps the server's ``view_service.browse`` (the sessions call it per request) and its
    ``_suitable_reftype`` (which ``_is_suitable_ref`` calls per reference, and
    TranslateBrowsePaths too: outside a Browse it runs unremembered, as before). Idempotent.
    """
    view = server.iserver.view_service
    if getattr(view, _BROWSE_MEMO, None) is not None:
        return
    stock_browse, stock_suitable = view.browse, view._suitable_reftype
    memo: list[dict[tuple[ua.NodeId, ua.NodeId, bool], bool]] = []  # the current request's answers

    def suitable_reftype(ref1: ua.NodeId, ref2: ua.NodeId, subtypes: bool) -> bool:
        if not memo:
            return stock_suitable(ref1, ref2, subtypes)
        answers = memo[-1]
        key = (ref1, ref2, subtypes)
        ok = answers.get(key)
        if ok is None:
            ok = answers[key] = stock_suitable(ref1, ref2, subtypes)
        return ok

    def browse(params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        memo.append({})
        try:
            return stock_browse(params)
        finally:
            memo.pop()

    setattr(view, _BROWSE_MEMO, memo)
    # Instance attributes over the methods: looked up per request and per reference.
    view._suitable_reftype = suitable_reftype  # type: ignore[method-assign]
    view.browse = browse  # type: ignore[method-assign]


def hook_browse_encoding(server: Server, encode: Callable[[list[ua.BrowseResult]], bytes]) -> None:
    """Send this server's Browse results encoded by ``encode`` (see the section comment).

    Wraps the server's ``view_service.browse`` (after :func:`hook_browse_reftypes`, if used:
    either order) so that it returns a :class:`PreEncoded` list, and, once per process,
    ``UaProcessor.send_response``. Idempotent per server.
    """
    view = server.iserver.view_service
    if getattr(view.browse, _ENCODED, False):
        return
    wrap_send_response()
    inner = view.browse

    def browse(params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        return PreEncoded(inner(params), encode)

    setattr(browse, _ENCODED, True)
    view.browse = browse  # type: ignore[method-assign]


# -- Browse and TranslateBrowsePaths: what a user does not see ------------------------------
#
# The view service answers from the whole address space; the results are filtered after it
# (scada/opcua/visibility.py), before they are encoded. ``view_service.browse`` may already be
# wrapped by the hooks above (a PreEncoded list comes back: it stays one, with its encoder).

_VISIBILITY = "_scada_browse_visibility"  # on the view service: (browse filter, translate filter)

BrowseFilter = Callable[[ua.BrowseParameters, list[ua.BrowseResult]], list[ua.BrowseResult]]
TranslateFilter = Callable[[list[ua.BrowsePath], list[ua.BrowsePathResult]], list[ua.BrowsePathResult]]


def hook_browse_visibility(server: Server, browse: BrowseFilter, translate: TranslateFilter) -> None:
    """Pass every Browse's results through ``browse(params, results)`` and every
    TranslateBrowsePaths' through ``translate(paths, results)`` (``view_service.browse`` and
    ``translate_browsepaths_to_nodeids``, which the sessions call per request, synchronously).

    Composes with :func:`hook_browse_reftypes` and :func:`hook_browse_encoding` in any order.
    Idempotent per server (a later call replaces the filters).
    """
    view = server.iserver.view_service
    first = getattr(view, _VISIBILITY, None) is None
    setattr(view, _VISIBILITY, (browse, translate))
    if not first:
        return
    inner_browse, inner_translate = view.browse, view.translate_browsepaths_to_nodeids

    def browse_visible(params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        results = inner_browse(params)
        kept = getattr(view, _VISIBILITY)[0](params, results)
        if kept is results:
            return results
        return PreEncoded(kept, results.encode) if type(results) is PreEncoded else kept

    def translate_visible(browsepaths: list[ua.BrowsePath]) -> list[ua.BrowsePathResult]:
        return getattr(view, _VISIBILITY)[1](browsepaths, inner_translate(browsepaths))

    # Like the hooks above: the encoding hook's mark must be seen through ours.
    setattr(browse_visible, _ENCODED, getattr(inner_browse, _ENCODED, False))
    view.browse = browse_visible  # type: ignore[method-assign]
    view.translate_browsepaths_to_nodeids = translate_visible  # type: ignore[method-assign]
