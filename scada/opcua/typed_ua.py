"""asyncua's value constructors, typed as they behave.

asyncua annotates NodeId's identifier and namespace index with its own marker subclasses
(``ua.Int32 | ua.String``, ``ua.Int16``), StatusCode's value with ``ua.UInt32`` and
DataValue's timestamps with ``ua.DateTime``, while it takes and stores plain int, str and
datetime (its own code passes them, and its encoder never looks at the subclass). Calling
the classes with plain values is then an ``arg-type`` error at every call site. The names
below are the same classes (a ``cast``, nothing at run time: no wrapper call on hot paths)
with the argument types they really accept.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol, TypeVar, cast

from asyncua import ua

__all__ = ["DataValue", "NodeId", "StatusCode", "data_value"]


class _NodeIdClass(Protocol):
    def __call__(
        self,
        identifier: int | str | bytes | uuid.UUID = ...,
        namespaceidx: int = ...,
        nodeidtype: ua.NodeIdType | None = ...,
    ) -> ua.NodeId: ...


class _StatusCodeClass(Protocol):
    def __call__(self, value: int = ...) -> ua.StatusCode: ...


DV_co = TypeVar("DV_co", bound=ua.DataValue, covariant=True)


class _DataValueClass(Protocol[DV_co]):
    def __call__(
        self,
        Value: ua.Variant | None = ...,
        StatusCode: ua.StatusCode = ...,
        SourceTimestamp: datetime | None = ...,
        SourcePicoseconds: int | None = ...,
        ServerTimestamp: datetime | None = ...,
        ServerPicoseconds: int | None = ...,
    ) -> DV_co: ...


NodeId = cast(_NodeIdClass, ua.NodeId)
"""``ua.NodeId(identifier, namespace)`` with a plain int/str identifier and int namespace."""

StatusCode = cast(_StatusCodeClass, ua.StatusCode)
"""``ua.StatusCode(code)`` with a plain int code (``ua.StatusCodes.X``)."""


def data_value(cls: type[DV_co]) -> _DataValueClass[DV_co]:
    """``cls`` (ua.DataValue or a subclass) typed with plain datetime timestamps."""
    return cast(_DataValueClass[DV_co], cls)


DataValue = data_value(ua.DataValue)
"""``ua.DataValue(...)`` with plain datetime timestamps."""
