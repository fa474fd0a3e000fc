"""Browse results in OPC UA binary (Part 6), written directly: the bytes of asyncua's encoder.

asyncua encodes a BrowseResponse with its generic dataclass serializer: a function call per
field and per nested field, ~25-35 µs per ReferenceDescription here, the largest share of a
Browse of many nodes (a tree walk of a city returns hundreds of thousands of references).
This writes the same bytes with one ``struct`` call per reference for the common shapes
(numeric and string NodeIds, no namespace URI or server index, a text without locale), and
hands anything else to asyncua's own serializers (``nodeid_binary``, ``string_binary``), so
the output is asyncua's for every input (tests/unit/test_opcua_browse_codec.py compares them
on random references of every shape). The results are sent through
``scada.opcua.asyncua_private.browse.hook_browse_encoding``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from asyncua import ua

from scada.opcua.asyncua_private.binary import nodeid_binary, string_binary

_TWO, _FOUR, _NUMERIC, _STRING = (
    ua.NodeIdType.TwoByte,
    ua.NodeIdType.FourByte,
    ua.NodeIdType.Numeric,
    ua.NodeIdType.String,
)
_EXPANDED = ua.ExpandedNodeId
_NONE = b"\xff\xff\xff\xff"  # a null String or ByteString
_i32 = struct.Struct("<i").pack
_u32 = struct.Struct("<I").pack
_two = struct.Struct("<BB").pack
_four = struct.Struct("<BBH").pack
_numeric = struct.Struct("<BHI").pack
_string_head = struct.Struct("<BHi").pack  # NodeIdType, namespace, length of the identifier
_qname_head = struct.Struct("<hi").pack  # namespace (asyncua: Int16), length of the name


def nodeid(n: ua.NodeId) -> bytes:
    """``n`` (a NodeId or an ExpandedNodeId) as asyncua's ``nodeid_to_binary`` writes it."""
    if type(n) is _EXPANDED and (n.NamespaceUri or n.ServerIndex):
        return nodeid_binary(n)
    t = n.NodeIdType
    if t is _STRING:
        ident = n.Identifier
        if type(ident) is str and ident.isascii():  # its UTF-8 length is its length
            return _string_head(3, n.NamespaceIndex, len(ident)) + ident.encode()
    elif t is _NUMERIC:
        return _numeric(2, n.NamespaceIndex, n.Identifier)
    elif t is _FOUR:
        return _four(1, n.NamespaceIndex, n.Identifier)
    elif t is _TWO:
        return _two(0, n.Identifier)
    return nodeid_binary(n)


def _text(s: str | None) -> bytes:
    if type(s) is str and s.isascii():
        return _i32(len(s)) + s.encode()
    return string_binary(s)


def reference(r: ua.ReferenceDescription) -> bytes:
    """One ReferenceDescription, as asyncua's ``struct_to_binary`` writes it."""
    qn, lt = r.BrowseName, r.DisplayName
    name = qn.Name
    if type(name) is str and name.isascii():
        qname = _qname_head(qn.NamespaceIndex, len(name)) + name.encode()
    else:
        qname = struct.pack("<h", qn.NamespaceIndex) + string_binary(name)
    locale, text = lt.Locale, lt.Text
    if locale is None:
        ltext = b"\x00" if text is None else b"\x02" + _text(text)
    else:
        ltext = (b"\x01" if text is None else b"\x03") + _text(locale) + (b"" if text is None else _text(text))
    return b"".join(
        (
            nodeid(r.ReferenceTypeId),
            b"\x01" if r.IsForward else b"\x00",
            nodeid(r.NodeId),
            qname,
            ltext,
            _i32(r.NodeClass),
            nodeid(r.TypeDefinition),
        )
    )


def browse_results(results: Sequence[ua.BrowseResult]) -> bytes:
    """A BrowseResponse's ``Results`` (the list, its length first), as asyncua writes it."""
    parts = [_i32(len(results))]
    for res in results:
        cp = res.ContinuationPoint
        refs = res.References
        parts.append(_u32(res.StatusCode.value))
        parts.append(_NONE if cp is None else _i32(len(cp)) + cp)
        if refs is None:
            parts.append(_NONE)
            continue
        parts.append(_i32(len(refs)))
        parts.extend(map(reference, refs))
    return b"".join(parts)
