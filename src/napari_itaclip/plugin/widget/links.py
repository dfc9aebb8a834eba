"""The viewer and layer callbacks a widget connected, kept so it can disconnect them all."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from ..refs import same, unwrap

__all__ = ["EventLinks"]


class EventLinks:
    """Connect napari event emitters to callbacks and remember each pair.

    :meth:`disconnect_all` (called when the widget closes) leaves no callback of the
    widget on the viewer or its layers, so a closed widget is neither called nor kept
    alive by them.
    """

    def __init__(self) -> None:
        self._links: list[tuple[Any, Callable]] = []

    def connect(self, emitter, callback: Callable) -> None:
        """``emitter.connect(callback)``, once per pair (emitters compared through
        napari's proxies: each access to ``layer.events.name`` through the viewer proxy
        gives a new proxy of the same emitter).
        """
        if any(same(e, emitter) and c == callback for e, c in self._links):
            return
        emitter.connect(callback)
        self._links.append((emitter, callback))

    def disconnect_all(self) -> None:
        """Disconnect every recorded pair (emitters already gone are skipped)."""
        links, self._links = self._links, []
        for emitter, callback in links:
            with contextlib.suppress(RuntimeError, TypeError, ValueError):  # emitter gone
                emitter.disconnect(callback)

    def prune(self, layers) -> None:
        """Disconnect the callbacks on events of layers that are not among ``layers`` (the
        viewer's now): a kept emitter would keep a removed layer, and its data, alive.
        """
        present = {id(unwrap(layer)) for layer in layers}
        keep = []
        for emitter, callback in self._links:
            owner = unwrap(getattr(unwrap(emitter), "source", None))
            if hasattr(owner, "data") and hasattr(owner, "name") and id(owner) not in present:
                with contextlib.suppress(RuntimeError, TypeError, ValueError):
                    emitter.disconnect(callback)
            else:
                keep.append((emitter, callback))
        self._links = keep

    def __len__(self) -> int:
        return len(self._links)
