"""The segmentation job behind the widget and :func:`segment_layer` (no Qt at import).

:func:`iter_segment_slices` is a generator that drives the engine's
``Segmenter.iter_segment`` over the 2D planes of an nD image, yields a
:class:`RunProgress` between batches and returns a :class:`StackResult`. The widget
runs it in a ``napari.qt.threading`` worker (:func:`start_worker`), which checks for a
cancel request at every ``yield``, so Cancel stops within one engine batch; scripts
drain it in the calling thread.

Segmenters are cached by :func:`get_segmenter` so the model loads once and is reused
while its settings (model, pretrained, device, half precision) are unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._layout import ImageLayout

if TYPE_CHECKING:
    from .config import ITACLIPConfig
    from .vocabulary import Vocabulary

__all__ = [
    "RunProgress",
    "StackResult",
    "clear_segmenter_cache",
    "get_segmenter",
    "iter_segment_slices",
    "start_worker",
]

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()

#: Human-readable stage names of the engine's ``Progress.stage``.
STAGE_TEXT = {
    "load": "loading model",
    "text": "encoding text",
    "image": "segmenting",
    "refine": "refining (PAMR)",
    "post": "post-processing",
}


def get_segmenter(model: str = "ViT-B-16", pretrained: str | None = "openai",
                  device: str = "auto", half: bool = False):
    """The cached :class:`~napari_itaclip.Segmenter` for these model settings.

    The first call builds it (the model itself loads on first use, in the worker);
    later calls with the same settings return the same instance, so the weights and
    the engine's text-embedding cache are reused across runs.
    """
    from . import Segmenter  # lazy: torch loads here, not when the widget is built

    key = (str(model), None if pretrained in (None, "") else str(pretrained), str(device),
           bool(half))
    with _CACHE_LOCK:
        seg = _CACHE.get(key)
        if seg is None:
            # keep one model in memory: a different model replaces the previous one
            _CACHE.clear()
            seg = Segmenter(model=key[0], pretrained=key[1], device=key[2], half=key[3])
            _CACHE[key] = seg
        return seg


def clear_segmenter_cache() -> None:
    """Forget the cached segmenters (frees their models once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class RunProgress(NamedTuple):
    """Progress of a (possibly multi-slice) run.

    Attributes
    ----------
    stage : str
        The engine's stage: ``load``, ``text``, ``image``, ``refine`` or ``post``.
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
        weight = {"load": 0.0, "text": 0.05, "image": 0.85, "refine": 0.95, "post": 1.0}
        start = {"load": 0.0, "text": 0.0, "image": 0.05, "refine": 0.85, "post": 0.95}
        s = self.stage if self.stage in start else "image"
        part = start[s] + (weight[s] - start[s]) * within
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
        Axis roles of the source image.
    results : dict
        Slice index (tuple, ``()`` for 2D) -> ``SegmentationResult``.
    """

    layout: ImageLayout
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

    def relabel(self, prob_threshold: float | None = None,
                area_threshold: float | None | str = "keep") -> StackResult:
        """New labels from the kept maps with other thresholds (no model run).

        ``area_threshold="keep"`` keeps each result's own; None disables it.
        """
        kwargs: dict[str, Any] = {}
        if prob_threshold is not None:
            kwargs["prob_threshold"] = float(prob_threshold)
        if area_threshold != "keep":
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


def iter_segment_slices(segmenter, data, layout: ImageLayout,
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
        try:
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    out.results[idx] = stop.value
                    break
                yield RunProgress(str(p.stage), int(p.done), int(p.total), k, n)
        finally:
            gen.close()
    yield RunProgress("post", 1, 1, n, n)
    return out


def start_worker(gen_func: Callable[..., Iterator], *args, connect: dict | None = None,
                 **kwargs):
    """Start ``gen_func(*args, **kwargs)`` in a napari ``GeneratorWorker``.

    ``connect`` maps signal names (``yielded``, ``returned``, ``errored``,
    ``aborted``, ``finished``) to callables; they run on the GUI thread. Errors are
    not re-raised in the GUI thread when an ``errored`` handler is given.
    """
    from napari.qt.threading import create_worker

    worker = create_worker(gen_func, *args, _start_thread=False, _connect=connect or {},
                           **kwargs)
    worker.start()
    return worker
