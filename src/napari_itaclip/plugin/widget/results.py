"""The dock's result bookkeeping, Qt-free: the kept maps per source layer.

The kept maps (three C x H x W float32 arrays per plane) are what lets relabel and a
live run work without a model run; :class:`RunResults` holds them per source layer
name, remembers which layer was segmented last and which one the running job is
for, and forgets what belongs to layers no longer in the viewer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ...stack import StackResult
from ..layers import heatmaps_name, labels_name

__all__ = ["RunResults"]


class RunResults:
    """Kept :class:`~napari_itaclip.stack.StackResult` per source layer name.

    Attributes
    ----------
    by_source : dict of str to StackResult
        The kept maps (merged over runs of other planes of the same layer).
    last_source : str or None
        The layer segmented last (what relabel and a live run act on).
    run_source : str or None
        The layer the running job segments.
    outputs : dict of str to (str, str)
        The Labels and heatmap layer names each source's maps were written to (they are
        ``<image> labels [2]`` etc. when a layer of the usual name was not ours).
    """

    def __init__(self) -> None:
        self.by_source: dict[str, StackResult] = {}
        self.outputs: dict[str, tuple[str, str]] = {}
        self.last_source: str | None = None
        self.run_source: str | None = None

    def merged(self, source: str, stack: StackResult) -> StackResult:
        """``stack`` merged into the planes kept for ``source`` (nothing stored)."""
        previous = self.by_source.get(source)
        return previous.merge(stack) if previous is not None else stack

    def keep(self, source: str, stack: StackResult,
             outputs: tuple[str, str] | None = None) -> None:
        """Keep ``stack`` (see :meth:`merged`) for ``source``, now the last one segmented;
        ``outputs``: the names of the Labels and heatmap layers it was written to.
        """
        self.by_source[source] = stack
        self.last_source = source
        if outputs is not None:
            self.outputs[source] = tuple(outputs)

    def layer_names(self, source: str) -> tuple[str, ...]:
        """The layers a kept result belongs to: its source and the outputs it was
        written to (by default ``<source> labels`` and ``<source> heatmaps``).
        """
        return (source, *self.outputs.get(source, (labels_name(source), heatmaps_name(source))))

    def last(self) -> StackResult | None:
        """The kept maps of the layer segmented last, if any."""
        return self.by_source.get(self.last_source or "")

    @property
    def has_last(self) -> bool:
        """Whether the layer segmented last still has kept maps."""
        return self.last_source in self.by_source

    def prune(self, present: Iterable[str], removed: str | None,
              names_of: Callable[[str], tuple[str, ...]]) -> bool:
        """Forget entries whose layers (``names_of(source)``) are gone or ``removed``.

        Returns whether the last source was forgotten.
        """
        present = set(present)
        for source in list(self.by_source):
            names = names_of(source)
            if removed in names or not all(n in present for n in names):
                del self.by_source[source]
                self.outputs.pop(source, None)
        if self.last_source not in self.by_source:
            self.last_source = None
            return True
        return False

    def clear(self) -> None:
        """Forget every kept map."""
        self.by_source.clear()
        self.outputs.clear()
        self.last_source = None
