"""Several planes of one image through the engine: the runner and its result.

:func:`iter_segment_slices` segments some planes of an image (named and cut out by an
:class:`~napari_itaclip.planes.ImageLayout`) one after the other, yielding
:class:`RunProgress`, and returns a :class:`StackResult`: the engine's result per plane,
with what the napari layers and the command line need from them. No Qt, no napari, no
torch at import.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .identity import NOT_GIVEN
from .progress import STAGE_SPAN, STAGE_TEXT, mapped

if TYPE_CHECKING:
    from .config import ITACLIPConfig
    from .vocabulary import Vocabulary

__all__ = ["RunProgress", "StackResult", "iter_segment_slices", "planes_cached"]




class RunProgress(NamedTuple):
    """Progress of a (possibly multi-slice) run.

    Attributes
    ----------
    stage : str
        The engine's stage: ``load``, ``text``, ``image`` (or ``image-cached`` when
        the plane's image features were reused), ``refine`` or ``post``.
    done, total : int
        Progress within the stage for the current slice.
    slice_done, n_slices : int
        Slices finished so far, and slices in the run.
    """

    stage: str
    done: int
    total: int
    slice_done: int
    n_slices: int

    @property
    def fraction(self) -> float:
        """Overall fraction done, 0..1 (the ``image`` stage dominates each slice)."""
        within = self.done / self.total if self.total else 0.0
        start, end = STAGE_SPAN.get(self.stage, STAGE_SPAN["image"])
        part = start + (end - start) * within
        return min(1.0, (self.slice_done + part) / max(self.n_slices, 1))

    def describe(self) -> str:
        """One line for the status label, e.g. ``slice 2/5: segmenting 3/8``."""
        text = STAGE_TEXT.get(self.stage, self.stage)
        if self.total:
            text += f" {self.done}/{self.total}"
        if self.n_slices > 1:
            text = f"slice {min(self.slice_done + 1, self.n_slices)}/{self.n_slices}: {text}"
        return text


@dataclass
class StackResult:
    """The engine's results for the segmented planes of one image.

    Attributes
    ----------
    layout : ImageLayout
        Axis roles of the source image (a :class:`~napari_itaclip.planes.ImageLayout`).
    results : dict
        Slice index (tuple, ``()`` for 2D) -> ``SegmentationResult``.
    """

    layout: Any
    results: dict[tuple[int, ...], Any] = field(default_factory=dict)

    @property
    def first(self):
        """Any one of the results (they share vocabulary and config)."""
        return next(iter(self.results.values()))

    @property
    def class_names(self) -> list[str]:
        """Display names, in label order."""
        return list(self.first.class_names)

    @property
    def has_background(self) -> bool:
        """Whether class 0 is a background class."""
        return bool(self.first.has_background)

    @property
    def n_cached(self) -> int:
        """How many of the planes were segmented from cached image features (no ViT run)."""
        return sum(bool(getattr(r, "image_cached", False)) for r in self.results.values())

    @property
    def offset(self) -> int:
        """What is added to the engine's labels in the napari layer (1 without background).

        napari draws label 0 transparent; without a background class, class 0 is a
        real class, so the layer stores ``labels + 1`` and keeps 0 for "unlabelled".
        """
        return 0 if self.has_background else 1

    def merge(self, other: StackResult) -> StackResult:
        """Add ``other``'s slices to these when both come from the same image and classes."""
        if (other.layout != self.layout or other.class_names != self.class_names
                or other.has_background != self.has_background):
            return other
        merged = dict(self.results)
        merged.update(other.results)
        return StackResult(self.layout, merged)

    def relabel(self, prob_threshold: float | None = NOT_GIVEN,
                area_threshold: float | None = NOT_GIVEN) -> StackResult:
        """New labels from the kept maps with other thresholds (no model run).

        Arguments left out keep each result's own values, as
        :meth:`~.engine.segmenter.SegmentationResult.relabel`; ``prob_threshold=None``
        keeps them too; ``area_threshold=None`` disables the area filter.
        """
        kwargs: dict[str, Any] = {}
        if prob_threshold is not NOT_GIVEN and prob_threshold is not None:
            kwargs["prob_threshold"] = float(prob_threshold)
        if area_threshold is not NOT_GIVEN:
            kwargs["area_threshold"] = None if area_threshold is None else float(area_threshold)
        return StackResult(self.layout,
                           {k: r.relabel(**kwargs) for k, r in self.results.items()})

    def relabel_plane(self, index: tuple[int, ...], prob_threshold: float,
                      area_threshold: float | None) -> np.ndarray:
        """The layer values of one plane relabelled with these thresholds, int32."""
        r = self.results[index].relabel(
            prob_threshold=float(prob_threshold),
            area_threshold=None if area_threshold is None else float(area_threshold))
        return np.asarray(r.labels, dtype=np.int32) + self.offset

    def label_plane(self, index: tuple[int, ...]) -> np.ndarray:
        """The layer values of one plane (engine labels + :attr:`offset`), int32."""
        return np.asarray(self.results[index].labels, dtype=np.int32) + self.offset

    def heatmap_plane(self, index: tuple[int, ...]) -> np.ndarray:
        """The (C, H, W) similarity maps of one plane, float32."""
        return np.asarray(self.results[index].similarity, dtype=np.float32)


def iter_segment_slices(segmenter, data, layout,
                        indices: Sequence[tuple[int, ...]], vocabulary: Vocabulary,
                        config: ITACLIPConfig | None = None,
                        ) -> Iterator[RunProgress]:
    """Segment the given planes one after the other, yielding progress between batches.

    Returns (as the generator's ``StopIteration.value``) a :class:`StackResult`.
    Closing the generator stops after the current engine batch and returns nothing.
    """
    indices = [tuple(int(i) for i in idx) for idx in indices]
    if not indices:
        raise ValueError("no slice to segment")
    n = len(indices)
    out = StackResult(layout)
    for k, idx in enumerate(indices):
        image = layout.get_plane(data, idx)
        gen = segmenter.iter_segment(image, vocabulary, config=config)
        out.results[idx] = yield from mapped(
            gen, lambda p, k=k: RunProgress(str(p.stage), int(p.done), int(p.total), k, n))
    yield RunProgress("post", 1, 1, n, n)
    return out


def planes_cached(segmenter, data, layout, indices: Sequence[tuple[int, ...]],
                  config: ITACLIPConfig | None = None) -> bool:
    """Whether every one of these planes' image features is in ``segmenter``'s cache.

    ``False`` for a segmenter without a feature cache (or not loaded yet). Reads (and
    hashes) the planes; computes nothing else.
    """
    check = getattr(segmenter, "has_cached_features", None)
    if check is None:
        return False
    return all(check(layout.get_plane(data, tuple(int(i) for i in idx)), config=config)
               for idx in indices)
