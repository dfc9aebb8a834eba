"""How an n-dimensional image maps onto the engine's 2D images, and the per-plane results.

Shared by the napari plugin, the command line and chunked mode (no Qt, no napari).

An image can be 2D grey, RGB(A) (the last axis holds the colour), or nD with leading
axes (time, Z, ...) and optionally a channel axis. The engine segments one 2D plane at a
time; :class:`ImageLayout` names the planes ("slice indices": one integer per leading
axis), cuts them out of the data (numpy, or lazily from dask / zarr) and describes the
outputs, which have the source's shape without its colour / channel axis.
:func:`iter_segment_slices` drives the engine over some planes and returns a
:class:`StackResult`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .config import ITACLIPConfig
    from .vocabulary import Vocabulary

__all__ = ["COMPOSITE", "STAGE_TEXT", "ImageLayout", "RunProgress", "StackResult",
           "iter_segment_slices", "planes_cached"]

#: Channel choice that merges the channels of a multichannel image into one picture.
COMPOSITE = "composite"


@dataclass(frozen=True)
class ImageLayout:
    """Axis roles of an image array.

    Parameters
    ----------
    shape : tuple of int
        Shape of the full data array (including the colour axis of an RGB layer).
    rgb : bool
        Whether the last axis holds RGB(A) colour (napari's ``layer.rgb``).
    channel_axis : int or None
        Axis of the data holding channels (a non-RGB multichannel image), or None.
    channel : int or str
        Which channel to segment when ``channel_axis`` is set: an index, or
        ``"composite"``: up to three channels become an RGB picture (channel 0 red,
        1 green, 2 blue, each rescaled to its own 0.5-99.5 percentiles); more than
        three are merged by the maximum of the rescaled channels.
    """

    shape: tuple[int, ...]
    rgb: bool = False
    channel_axis: int | None = None
    channel: int | str = COMPOSITE

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        nd = len(self.shape)
        if self.rgb and (nd < 3 or self.shape[-1] not in (3, 4)):
            raise ValueError(f"an RGB image needs a last axis of 3 or 4, got shape {self.shape}")
        if self.rgb and self.channel_axis is not None:
            raise ValueError("an RGB layer has no separate channel axis")
        if self.channel_axis is not None:
            ax = int(self.channel_axis)
            if ax < 0:
                ax += nd
            if not 0 <= ax < nd:
                raise ValueError(f"channel_axis {self.channel_axis} is out of range for {nd}D data")
            object.__setattr__(self, "channel_axis", ax)
            if nd - 1 < 2:
                raise ValueError("a multichannel image needs two spatial axes besides its channels")
            if ax >= nd - 2:
                raise ValueError("the channel axis cannot be one of the last two (spatial) axes")
            if self.channel != COMPOSITE:
                c = int(self.channel)
                if not 0 <= c < self.shape[ax]:
                    raise ValueError(f"channel {c} is out of range: the image has "
                                     f"{self.shape[ax]} channels")
                object.__setattr__(self, "channel", c)
        if len(self.out_shape) < 2:
            raise ValueError(f"cannot segment an image of shape {self.shape}: need 2 spatial axes")

    # -- axes ---------------------------------------------------------------------
    @property
    def kept_axes(self) -> tuple[int, ...]:
        """Data axes that appear in the outputs (all but colour / channel)."""
        nd = len(self.shape) - (1 if self.rgb else 0)
        return tuple(a for a in range(nd) if a != self.channel_axis)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the label volume: the source's shape without colour / channel axis."""
        return tuple(self.shape[a] for a in self.kept_axes)

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the slice grid (output axes before the last two)."""
        return self.out_shape[:-2]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every plane."""
        return self.out_shape[-2], self.out_shape[-1]

    @property
    def n_slices(self) -> int:
        """How many 2D planes the whole image holds."""
        return int(np.prod(self.leading_shape, dtype=np.int64))

    def all_slices(self) -> list[tuple[int, ...]]:
        """Every slice index, in C order (``[()]`` for a 2D image)."""
        return list(itertools.product(*(range(n) for n in self.leading_shape)))

    def keep(self, values: Sequence) -> tuple:
        """Per-axis values of the layer (scale, translate, axis labels) for the outputs.

        ``values`` has one entry per layer dimension (napari excludes the colour axis
        of an RGB layer); the channel axis's entry is dropped.
        """
        values = tuple(values)
        return tuple(values[a] for a in self.kept_axes)

    def slice_from_point(self, data_point: Sequence[float]) -> tuple[int, ...]:
        """The slice index holding a point given in data coordinates (one per layer dim)."""
        point = self.keep(data_point)[:-2]
        return tuple(int(np.clip(round(float(p)), 0, n - 1))
                     for p, n in zip(point, self.leading_shape))

    # -- data ---------------------------------------------------------------------
    def plane_key(self, index: Sequence[int]) -> tuple:
        """The indexing tuple that cuts one slice out of the data (lazy data stays lazy).

        For a channel composite the channel axis is kept (it is merged by
        :meth:`get_plane`).
        """
        index = tuple(int(i) for i in index)
        if len(index) != len(self.leading_shape):
            raise ValueError(f"slice index {index} does not match the slice grid "
                             f"{self.leading_shape}")
        key: list = [slice(None)] * (len(self.shape) - (1 if self.rgb else 0))
        leading = self.kept_axes[:-2]
        for ax, i in zip(leading, index):
            key[ax] = i
        if self.channel_axis is not None and self.channel != COMPOSITE:
            key[self.channel_axis] = int(self.channel)
        return tuple(key)

    def get_plane(self, data, index: Sequence[int]) -> np.ndarray:
        """The 2D image (H, W) or (H, W, 3|4) the engine segments for one slice.

        Raw values are passed through (the engine normalises dtypes), except for a
        channel composite, which is rescaled per channel and returned as uint8 (the
        engine uses uint8 as it is, so this per-channel rescale is the only one).
        """
        plane = np.asarray(data[self.plane_key(index)])
        if self.channel_axis is not None and self.channel == COMPOSITE:
            # the channel axis is now the only axis left besides (H, W)
            plane = _composite(np.moveaxis(plane, 0, -1))
        return plane


def _composite(stack: np.ndarray) -> np.ndarray:
    """(H, W, C) channels -> an RGB (C <= 3) or grey (C > 3) uint8 picture.

    Each channel is rescaled to its own 0.5-99.5 percentiles. The result is uint8
    (0..255) because the engine uses uint8 images as they are: a float picture would
    be stretched a second time by the engine's global percentiles, which undoes the
    per-channel balance.
    """
    stack = stack.astype(np.float32, copy=False)
    chans = []
    for c in range(stack.shape[-1]):
        ch = stack[..., c]
        finite = ch[np.isfinite(ch)]
        if finite.size == 0:
            chans.append(np.zeros_like(ch))
            continue
        lo, hi = np.percentile(finite, (0.5, 99.5))
        scaled = (ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch)
        chans.append(np.clip(np.nan_to_num(scaled), 0.0, 1.0).astype(np.float32))
    if len(chans) == 1:
        out = chans[0]
    elif len(chans) <= 3:
        while len(chans) < 3:
            chans.append(np.zeros_like(chans[0]))
        out = np.stack(chans, axis=-1)
    else:
        out = np.max(np.stack(chans, axis=0), axis=0)
    return np.round(out * 255).astype(np.uint8)


# -- per-plane results ------------------------------------------------------------
#: Human-readable stage names of the engine's ``Progress.stage``.
STAGE_TEXT = {
    "load": "loading model",
    "text": "encoding text",
    "image": "segmenting",
    "image-cached": "image features reused",
    "refine": "refining (PAMR)",
    "post": "post-processing",
}


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


def planes_cached(segmenter, data, layout: ImageLayout, indices: Sequence[tuple[int, ...]],
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
