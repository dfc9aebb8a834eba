"""What a run reads from an image layer: the pyramid level, the working resolution, the
planes, whether it runs in memory or tile by tile, and the outputs' geometry.

- **Pyramid level.** A multiscale layer (``layer.data`` a list of levels, finest first)
  is read at the coarsest level that serves: with an object size, the coarsest level
  whose (whole) downsample factor divides the working factor, which it then only
  has to reduce by the rest; with a ``short_side`` resize, the coarsest level whose
  planes are at least that large; at native resolution, level 0. Levels that are not a
  pyramid (a level larger than the one before it) are refused.
- **Working resolution.** ``config.object_size`` (in level-0 pixels) sets the whole
  factor :func:`~napari_itaclip.engine.scale.working_factor`; the outputs are written at
  the working resolution, with a scale and a translate that put each output pixel at
  the centre of the input block it stands for, so they overlay the image exactly.
- **Memory or tiles.** A run whose estimated peak fits the memory bound runs in memory
  (each plane whole); a larger one is segmented tile by tile by the one tiled runner
  (:mod:`napari_itaclip.chunked.tiles`), reading the layer one region at a time.

No Qt here; napari only for the layer's attributes (duck-typed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.scale import working_factor, working_shape
from ..planes import COMPOSITE, ImageLayout
from .refs import LayerRef

__all__ = ["SECONDS_PER_VIEW", "LayerSource", "choose_level", "describe_run", "engine_shape",
           "layer_pixel_size", "level_factors", "run_estimate", "source_for", "tiles_needed",
           "window_count"]


def layer_pixel_size(layer) -> tuple[float, str | None]:
    """(size of one pixel, unit) of a layer's last axis: (1.0, None) without units."""
    from .measure_layers import layer_unit

    if layer is None:
        return 1.0, None
    unit = layer_unit(layer)
    if unit is None:
        return 1.0, None
    scale = [float(s) for s in layer.scale[-2:]]
    return (scale[0] * scale[1]) ** 0.5, unit


def _levels(layer) -> list:
    data = layer.data
    return list(data) if getattr(layer, "multiscale", False) else [data]


def level_factors(layer) -> list[tuple[float, float]]:
    """Level-0 pixels per level pixel, (rows, columns), of each level; ValueError when the
    levels are not a pyramid (same dimensions, sizes never growing).
    """
    levels = _levels(layer)
    shapes = [tuple(int(n) for n in lev.shape) for lev in levels]
    rgb = bool(getattr(layer, "rgb", False))
    for k in range(1, len(shapes)):
        prev, cur = shapes[k - 1], shapes[k]
        spatial = slice(-3, -1) if rgb else slice(-2, None)
        if len(cur) != len(prev) or any(c > p for c, p in zip(cur[spatial], prev[spatial])):
            raise ValueError(f"the levels of '{layer.name}' are not a pyramid: level {k} "
                             f"{cur} is not smaller than level {k - 1} {prev}")
    y, x = (-3, -2) if rgb else (-2, -1)
    return [(shapes[0][y] / s[y], shapes[0][x] / s[x]) for s in shapes]


def choose_level(layer, config) -> tuple[int, int]:
    """``(level, factor)``: the level to read and the whole factor reducing it further.

    See the module docstring. For a layer of one level: ``(0, working factor)``.
    """
    factors = level_factors(layer)
    total = working_factor(config.object_size)
    if config.object_size is not None:
        best = 0
        for k, (fy, fx) in enumerate(factors):
            f = round(fy)
            if abs(fy - f) < 0.02 and abs(fx - f) < 0.02 and f <= total and total % f == 0:
                best = k if f > round(factors[best][0]) else best
        return best, total // round(factors[best][0])
    if config.short_side is not None and len(factors) > 1:
        shapes = [lev.shape for lev in _levels(layer)]
        rgb = bool(getattr(layer, "rgb", False))
        sides = [min(s[-3:-1] if rgb else s[-2:]) for s in shapes]
        fits = [k for k, side in enumerate(sides) if side >= config.short_side]
        return (max(fits) if fits else 0), 1
    return 0, 1


@dataclass
class LayerSource:
    """What one run reads from an image layer (see the module docstring).

    Attributes
    ----------
    layer : LayerRef
        The layer.
    data : array-like
        The level read (numpy, dask, zarr ...; read plane by plane or region by region).
    layout : ImageLayout
        Axis roles of ``data`` with the channel choice.
    level : int
        Which level of a multiscale layer (0 otherwise).
    level_factor : tuple of float
        Level-0 pixels per pixel of ``data`` (rows, columns).
    factor : int
        The working reduction of ``data`` (1 at its own resolution).
    geometry : dict
        Scale, translate, axis labels and units of the outputs (at the working grid).
    """

    layer: LayerRef
    data: Any
    layout: ImageLayout
    level: int
    level_factor: tuple[float, float]
    factor: int
    geometry: dict = field(default_factory=dict)

    @property
    def work_shape(self) -> tuple[int, ...]:
        """Shape of the outputs: the planes at the working resolution."""
        h, w = working_shape(self.layout.plane_shape, self.factor)
        return (*self.layout.leading_shape, h, w)

    @property
    def out_layout(self) -> ImageLayout:
        """The layout of the working planes' outputs (what the output plan writes)."""
        from ..chunked.tiles import working_layout

        if self.factor == 1:
            return self.layout
        return working_layout(self.layout, self.factor)

    def describe(self) -> str:
        """e.g. ``level 2 of 4 (1/4), working 1/8: 2500 × 2500``."""
        parts = []
        if self.level:
            parts.append(f"level {self.level} (1/{round(self.level_factor[0]):d})")
        total = round(self.level_factor[0]) * self.factor
        h, w = self.work_shape[-2:]
        scale = f"1/{total}" if total > 1 else "native"
        return ", ".join([*parts, f"working {scale}: {h} × {w}"])


def source_for(layer, config, channel_axis: int | None = None,
               channel: int | str = COMPOSITE) -> LayerSource:
    """The :class:`LayerSource` of ``layer`` for ``config`` (ValueError with the reason)."""
    from .layers import geometry_of

    level, factor = choose_level(layer, config)
    data = _levels(layer)[level]
    layout = ImageLayout(tuple(data.shape), rgb=bool(getattr(layer, "rgb", False)),
                         channel_axis=channel_axis,
                         channel=channel if channel_axis is not None else COMPOSITE)
    fy, fx = level_factors(layer)[level]
    geometry = geometry_of(layer, layout, (fy * factor, fx * factor))
    return LayerSource(LayerRef(layer), data, layout, level, (fy, fx), factor, geometry)


#: rough seconds per crop view (224 px) of ViT-B/16, by device: the time estimate
SECONDS_PER_VIEW = {"cpu": 0.22, "mps": 0.03, "cuda": 0.005}


def engine_shape(source: LayerSource, config) -> tuple[int, int]:
    """(h, w) of the image the engine's windows tile for one plane of ``source``."""
    if config.object_size is not None or config.short_side is None:
        return tuple(source.work_shape[-2:])
    from ..engine.resize import mmseg_resize_shape

    return mmseg_resize_shape(*source.layout.plane_shape, config.short_side)


def window_count(shape, config) -> int:
    """Sliding windows over an ``(h, w)`` image (1 for a whole-image window)."""
    from ..chunked.plan import window_starts

    if config.crop is None:
        return 1
    return (len(window_starts(int(shape[0]), config.crop, config.stride))
            * len(window_starts(int(shape[1]), config.crop, config.stride)))


def run_estimate(source: LayerSource, config, n_queries: int, n_planes: int,
                 device: str = "cpu") -> tuple[int, float, int]:
    """(windows per plane, seconds, peak bytes of one plane in memory), roughly."""
    from ..engine.memory import estimate_peak_bytes

    h, w = engine_shape(source, config)
    windows = window_count((h, w), config)
    views = 5 if config.image_engineering else 1
    crop = config.crop or max(h, w)
    per_view = SECONDS_PER_VIEW.get(device, SECONDS_PER_VIEW["cpu"]) * (crop / 224) ** 2
    seconds = windows * views * per_view * n_planes
    oh, ow = source.work_shape[-2:]
    pixels = max(int(oh) * int(ow), int(h) * int(w))
    peak = estimate_peak_bytes(pixels, n_queries, batch_memory_mb=128) + plane_bytes(source)
    return windows, seconds, peak


def describe_run(source: LayerSource, config, n_queries: int, n_planes: int, tiled: bool,
                 device: str = "cpu") -> str:
    """One line for the widget, before Run: level, working resolution, windows, time,
    memory, tiles.
    """
    from ..chunked.tiles import duration_text

    windows, seconds, peak = run_estimate(source, config, n_queries, n_planes, device)
    views = 5 if config.image_engineering else 1
    text = (f"{source.describe()}; {windows} window(s) × {views} view(s)"
            + (f" × {n_planes} planes" if n_planes > 1 else "")
            + f"; ≈ {duration_text(seconds)} on {device}")
    text += "; in tiles" if tiled else f"; ≈ {peak / 2**30:.1f} GB in memory"
    return text


def plane_bytes(source: LayerSource) -> int:
    """Bytes of one plane of the level read, as the engine holds it (uint8 RGB)."""
    h, w = source.layout.plane_shape
    return int(h) * int(w) * 3


def tiles_needed(source: LayerSource, config, n_queries: int, limit: int | None) -> bool:
    """Whether a plane at the working resolution does not fit in memory (so it is tiled)."""
    from ..engine.memory import estimate_peak_bytes

    if limit is None:
        return False
    h, w = source.work_shape[-2:]
    pixels = int(h) * int(w)
    if config.object_size is None and config.short_side is not None:
        from ..engine.memory import working_pixels

        pixels = working_pixels(*source.layout.plane_shape, config.short_side)
    need = estimate_peak_bytes(pixels, n_queries, batch_memory_mb=128) + plane_bytes(source)
    return need > limit or not math.isfinite(need)


def as_numpy_plane(source: LayerSource, idx) -> np.ndarray:
    """One plane of the level read, as numpy (the whole plane: in-memory runs)."""
    return source.layout.get_plane(source.data, idx)
