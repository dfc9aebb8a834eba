"""The viewer and layer callbacks a widget connected, kept so it can disconnect them all."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

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
        """``emitter.connect(callback)``, once per pair."""
        if any(e is emitter and c == callback for e, c in self._links):
            return
        emitter.connect(callback)
        self._links.append((emitter, callback))

    def disconnect_all(self) -> None:
        """Disconnect every recorded pair (emitters already gone are skipped)."""
        links, self._links = self._links, []
        for emitter, callback in links:
            with contextlib.suppress(RuntimeError, TypeError, ValueError):  # emitter gone
                emitter.disconnect(callback)

    def __len__(self) -> int:
        return len(self._links)
