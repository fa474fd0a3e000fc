"""asyncua internals: the server's node table (see the package's docstring).

Relied on (checked by tests/unit/test_asyncua_private_nodes.py):

* ``NodeData(nodeid)``: a node of the address space, with ``attributes`` (a dict
  AttributeIds -> AttributeValue, which we set whole and share between nodes) and
  ``references`` (a list of ReferenceDescription, edited in place). asyncua has no public
  way to insert a node without its AddNodes service (a coroutine and a reference scan of the
  parent per node: quadratic under a large folder).
* ``AttributeValue(DataValue)``: one attribute; ``value`` is read by the attribute service
  (a Read, a new monitored item's first value), ``value_callback``/``value_setter`` are
  consulted on read/write, ``datachange_callbacks`` is the dict asyncua fills with
  ``[handle] = callback`` and empties with ``pop(handle)`` (scada.opcua.publisher.TagValue
  replaces it with a dict that keeps the publisher's watched mask in step).
* ``AddressSpace``: the server's node table: ``get``, ``[]``, ``in``, ``del``,
  ``add_method_callback`` (a method node's ``call``), ``add/delete_datachange_callback``.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import TypeVar

from asyncua import Server, ua

# Re-exported as they are (no wrapper on hot paths).
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

__all__ = ["AddressSpace", "AttributeValue", "NodeData", "address_space", "node_table"]


def address_space(server: Server) -> AddressSpace:
    """The server's node table (``server.iserver.aspace``), to read, insert and remove nodes directly.

    The public ``Node`` API costs a coroutine and a service round trip per attribute or node;
    the tag tree and the conditions are hundreds of thousands of nodes.
    """
    return server.iserver.aspace


Table = TypeVar("Table", bound=MutableMapping[ua.NodeId, NodeData])


def node_table(aspace: AddressSpace, kind: type[Table], make: Callable[[dict[ua.NodeId, NodeData]], Table]) -> Table:
    """The address space's node table as a ``kind``: on the first call, ``make(the nodes' dict)``
    replaces it (``AddressSpace._nodes``); later calls return the one installed.

    Every service and every AddressSpace method reads the nodes through ``_nodes`` (``get``,
    ``[]``, ``in``, ``del``, ``keys``), and asyncua itself swaps that dict for a lazy mapping in
    ``load_aspace_shelf``: so a mapping that makes nodes on access (the tag variables,
    scada.opcua.virtual_nodes) serves clients as stored nodes do.
    """
    nodes = aspace._nodes
    if isinstance(nodes, kind):
        return nodes
    if type(nodes) is not dict:
        raise TypeError(f"the address space's node table is already a {type(nodes).__name__}")
    table = make(nodes)
    aspace._nodes = table  # type: ignore[assignment]  # asyncua annotates it dict; it uses it as a mapping
    return table
