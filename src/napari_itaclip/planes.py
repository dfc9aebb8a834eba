"""How an n-dimensional image maps onto the engine's 2D images, and the per-plane results.

Shared by the napari plugin, the command line and chunked mode (no Qt, no napari).

An image can be 2D grey, RGB(A) (the last axis holds the colour), or nD with leading
axes (time, Z, ...) and optionally a channel axis. The engine segments one 2D plane at a
time; :class:`ImageLayout` names the planes ("slice indices": one integer per leading
axis), cuts them out of the data (numpy, or lazily from dask / zarr) and describes the
outputs, which have the source's shape without its colour / channel axis.
Driving the engine over some planes is :mod:`napari_itaclip.stack`'s job.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .progress import STAGE_TEXT

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


# The multi-plane runner and its result moved to :mod:`napari_itaclip.stack`; these names
# stay importable from here.
from .stack import RunProgress, StackResult, iter_segment_slices, planes_cached  # noqa: E402
