"""The dock's result bookkeeping, Qt-free: the kept maps per source layer.

The kept maps (three C x H x W float32 arrays per plane) are what lets relabel and a
live run work without a model run; :class:`RunResults` holds them per source layer,
remembers which layer was segmented last and which one the running job is for, which
output layers each result was written to, and forgets what belongs to layers no longer
in the viewer. Layers are kept as :class:`~napari_itaclip.plugin.refs.LayerRef` (by
identity, through napari's proxies), so renaming a layer, even during a run, keeps its
results with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...stack import StackResult
from ..refs import LayerRef

__all__ = ["Kept", "RunResults"]


@dataclass
class Kept:
    """One source layer's kept maps and the output layers they were written to."""

    source: LayerRef
    stack: StackResult
    labels: LayerRef | None = None
    heatmaps: LayerRef | None = None

    def refs(self) -> tuple[LayerRef, ...]:
        """The source and output layers this entry belongs to."""
        return tuple(r for r in (self.source, self.labels, self.heatmaps) if r is not None)


class RunResults:
    """Kept :class:`~napari_itaclip.stack.StackResult` per source layer.

    Attributes
    ----------
    last_source : LayerRef or None
        The layer segmented last (what relabel and a live run act on).
    run_source : LayerRef or None
        The layer the running job segments.
    """

    def __init__(self) -> None:
        self._kept: dict[LayerRef, Kept] = {}
        self.last_source: LayerRef | None = None
        self.run_source: LayerRef | None = None

    def entry(self, layer) -> Kept | None:
        """The entry of a source layer (any handle, or a LayerRef), or None."""
        if layer is None:
            return None
        return self._kept.get(layer if isinstance(layer, LayerRef) else LayerRef(layer))

    def stack_of(self, layer) -> StackResult | None:
        """The kept maps of a source layer, or None."""
        kept = self.entry(layer)
        return None if kept is None else kept.stack

    def sources(self) -> list[str]:
        """The current names of the layers with kept maps."""
        return [k.source.name for k in self._kept.values() if k.source.name is not None]

    def merged(self, source: LayerRef, stack: StackResult) -> StackResult:
        """``stack`` merged into the planes kept for ``source`` (nothing stored)."""
        previous = self.stack_of(source)
        return previous.merge(stack) if previous is not None else stack

    def keep(self, source: LayerRef, stack: StackResult, labels=None, heatmaps=None) -> None:
        """Keep ``stack`` for ``source``, now the last one segmented, with its output layers."""
        self._kept[source] = Kept(source, stack, LayerRef.of(labels), LayerRef.of(heatmaps))
        self.last_source = source

    def last(self) -> Kept | None:
        """The entry of the layer segmented last, if any."""
        return self.entry(self.last_source)

    @property
    def has_last(self) -> bool:
        """Whether the layer segmented last still has kept maps."""
        return self.last() is not None

    def prune(self, present: Iterable) -> bool:
        """Forget entries whose source or output layers are no longer among ``present``
        (layer handles). Returns whether the last source was forgotten.
        """
        alive = {LayerRef(layer) for layer in present}
        for source, kept in list(self._kept.items()):
            if not all(r in alive for r in kept.refs()):
                del self._kept[source]
        if self.last_source is not None and self.last_source not in self._kept:
            self.last_source = None
            return True
        return False

    def forget(self, source) -> bool:
        """Forget the entry of a source layer (its data was replaced); whether it was the
        last one segmented.
        """
        ref = source if isinstance(source, LayerRef) else LayerRef(source)
        if self._kept.pop(ref, None) is None:
            return False
        if self.last_source == ref:
            self.last_source = None
            return True
        return False

    def clear(self) -> None:
        """Forget every kept map."""
        self._kept.clear()
        self.last_source = None

    def __len__(self) -> int:
        return len(self._kept)
