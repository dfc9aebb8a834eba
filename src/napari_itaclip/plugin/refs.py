"""Comparing and keeping viewer objects the way napari hands them to a plugin.

napari gives a plugin widget a ``PublicOnlyProxy`` of the viewer (the Plugins menu,
``add_plugin_dock_widget``). Objects reached through it are proxies too, but not all
of them: iterating ``viewer.layers`` yields the layers themselves while
``viewer.layers.selection.active`` or ``viewer.layers["name"]`` yield new proxies, one
per access. So ``a is b`` between two handles of one layer is often False, and an
object used as a dictionary key or kept in a list may be a proxy that nothing else
compares equal to.

The rule of this package: compare viewer objects with :func:`same` (identity of the
objects behind the proxies), key dictionaries with :func:`unwrap`, and keep layers with
:class:`LayerRef` (a weak reference that follows renames and never keeps a removed
layer alive). No napari import here.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["LayerRef", "find_same", "same", "unwrap"]


def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (``obj`` itself when not proxied).

    The proxy's ``__wrapped__`` is public API of ``wrapt`` proxies and survives every
    level of proxying.
    """
    for _ in range(8):  # proxies never nest in napari; bounded all the same
        if type(obj).__name__ not in ("PublicOnlyProxy", "CallablePublicOnlyProxy"):
            return obj
        obj = obj.__wrapped__
    return obj


def same(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are handles of one object (through proxies or not)."""
    return a is not None and b is not None and unwrap(a) is unwrap(b)


def find_same(items, obj: Any) -> Any:
    """The element of ``items`` that is the same object as ``obj`` (see :func:`same`), or None."""
    if obj is None:
        return None
    target = unwrap(obj)
    for item in items:
        if unwrap(item) is target:
            return item
    return None


class LayerRef:
    """A weak handle of one layer: follows renames, does not keep a removed layer alive.

    Two refs of one layer are equal and hash alike (usable as dictionary keys, whichever
    proxy they were made from).
    """

    __slots__ = ("__weakref__", "_id", "_ref")

    def __init__(self, layer: Any) -> None:
        real = unwrap(layer)
        self._ref = weakref.ref(real)
        self._id = id(real)

    @classmethod
    def of(cls, layer: Any) -> LayerRef | None:
        """A ref of ``layer`` (None for None)."""
        return None if layer is None else cls(layer)

    def layer(self) -> Any:
        """The layer object, or None once it has been garbage-collected."""
        return self._ref()

    def is_(self, layer: Any) -> bool:
        """Whether ``layer`` (any handle) is this ref's layer."""
        real = self._ref()
        return real is not None and layer is not None and unwrap(layer) is real

    def in_viewer(self, viewer) -> Any:
        """This layer as it is in ``viewer.layers`` now (any name), or None if removed."""
        real = self._ref()
        if real is None or viewer is None:
            return None
        return find_same(viewer.layers, real)

    @property
    def name(self) -> str | None:
        """The layer's current name (None once it is gone)."""
        real = self._ref()
        return None if real is None else str(real.name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerRef):
            return NotImplemented
        mine = self._ref()
        return mine is not None and mine is other._ref()

    def __hash__(self) -> int:
        return self._id

    def __repr__(self) -> str:
        return f"LayerRef({self.name!r})"
