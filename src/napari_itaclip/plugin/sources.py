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

__all__ = ["DRAW_LIMIT_PX", "SECONDS_PER_VIEW", "LayerSource", "choose_level", "describe_run",
           "engine_shape", "layer_pixel_size", "level_factors", "plane_memory", "run_estimate",
           "source_for", "tiles_needed", "window_count"]


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


#: What the plugin's estimate assumes before a model is loaded (torch-free): ViT-B/16's
#: patch and feature width, open_clip's text batch, the CPU's ViT batch bound (MB).
_PATCH, _FEATURE_DIM, _TEXT_BYTES, _BATCH_MB = 16, 768, 2 * 320 * 77 * 512 * 4, 128


def plane_memory(source: LayerSource, config, n_queries: int, n_planes: int = 1,
                 feature_cache_mb: float = 0.0, batch_memory_mb: float = _BATCH_MB):
    """The engine's :class:`~napari_itaclip.engine.memory_model.MemoryEstimate` of one plane
    of ``source`` as the plugin runs it in memory, with the plugin's outputs added.

    The engine's model (:mod:`napari_itaclip.engine.memory_model`) without torch: an
    object size runs the engine on the working plane (read from the level and reduced,
    :class:`~napari_itaclip.chunked.tiles.WorkingPlanes`); otherwise on the level's
    plane with the configuration's resize. Added on top, as the step "holding the
    outputs": the level's plane as read, the results of ``n_planes`` planes at the
    output size (labels and two C × h × w float32 maps each) with the output plan
    (uint8 labels, float32 heatmaps); every step of the last plane also holds the
    earlier planes' results. Classes are counted as queries (the
    most they can be).
    """
    from ..engine.memory_model import Stage, estimate_memory, input_costs, pipeline_shapes

    plane = source.layout.plane_shape
    h, w = (int(n) for n in source.work_shape[-2:])
    cfg = config
    if config.object_size is not None:
        cfg = config.replace(object_size=None, short_side=None)
        engine_in = (h, w)
    else:
        engine_in = tuple(int(n) for n in plane)
    q = max(int(n_queries), 1)
    shapes = pipeline_shapes(engine_in[0], engine_in[1], cfg, q, q)
    ih, iw = shapes.working
    windows = window_count((ih, iw), cfg)
    crop = cfg.crop or max(ih, iw)
    feats = windows * (crop // _PATCH) ** 2 * _FEATURE_DIM * 4 * (
        2 if cfg.image_engineering else 1)
    as_read = (*plane, 3) if source.layout.rgb else tuple(plane)  # a channel: one plane
    conversion, copy = input_costs(as_read, getattr(source.data, "dtype", np.uint8))
    est = estimate_memory(
        shapes, conversion=conversion, image_copy=copy if source.factor == 1 else 3 * h * w,
        batch=int(1.25 * batch_memory_mb * 2**20), batch_kept=int(batch_memory_mb * 2**20),
        text=_TEXT_BYTES, features=feats if feats <= feature_cache_mb * 2**20 else 0,
        pamr_chunk=None, pamr_dilations=cfg.pamr_dilations,
        area_filter=cfg.area_threshold is not None, prob_threshold=cfg.prob_threshold > 0,
        close_size=cfg.close_size, renormalize=cfg.renormalize_probs)
    read = plane_bytes(source)
    per_plane = h * w * (4 + 8 * q)
    during = {"level plane read": read, "results of the planes before": (n_planes - 1) * per_plane}
    stages = tuple(Stage(st.name, {**st.host, **during}) for st in est.stages)
    held = {f"results of {n_planes} plane(s)": n_planes * per_plane,
            "output plan (labels, heatmaps)": n_planes * h * w * (1 + 4 * q)}
    return type(est)(est.shapes, (*stages, Stage("holding the outputs", held)), False)


def run_estimate(source: LayerSource, config, n_queries: int, n_planes: int,
                 device: str = "cpu", feature_cache_mb: float = 0.0) -> tuple[int, float, int]:
    """(windows per plane, seconds, peak host bytes of the run in memory), roughly."""
    h, w = engine_shape(source, config)
    windows = window_count((h, w), config)
    views = 5 if config.image_engineering else 1
    crop = config.crop or max(h, w)
    per_view = SECONDS_PER_VIEW.get(device, SECONDS_PER_VIEW["cpu"]) * (crop / 224) ** 2
    seconds = windows * views * per_view * n_planes
    peak = plane_memory(source, config, n_queries, n_planes, feature_cache_mb).host
    return windows, seconds, peak


#: the largest texture side napari draws a layer with on most systems (software OpenGL
#: included); a larger Labels plane is downsampled on every redraw: 0.4 to 3.2 s per
#: redraw of a 65536² plane measured under Xvfb (docs/benchmarks.md, "GUI responsiveness")
DRAW_LIMIT_PX = 16384


def describe_run(source: LayerSource, config, n_queries: int, n_planes: int, tiled: bool,
                 device: str = "cpu", feature_cache_mb: float = 0.0,
                 region: tuple[slice, slice] | None = None) -> str:
    """One line for the widget, before Run: level, working resolution, windows, time,
    memory, tiles; with ``region`` (rows, columns of the working grid: the visible
    region), its size and its share of the time.
    """
    from ..chunked.tiles import duration_text

    windows, seconds, peak = run_estimate(source, config, n_queries, n_planes, device,
                                          feature_cache_mb)
    views = 5 if config.image_engineering else 1
    text = (f"{source.describe()}; {windows} window(s) × {views} view(s)"
            + (f" × {n_planes} planes" if n_planes > 1 else "")
            + f"; ≈ {duration_text(seconds)} on {device}")
    text += "; in tiles" if tiled else f"; ≈ {peak / 2**30:.1f} GB in memory"
    h, w = source.work_shape[-2:]
    if region is not None:
        rh, rw = (s.stop - s.start for s in region)
        share = rh * rw / max(h * w, 1)
        text += (f"; the visible region only: {rh} × {rw} of it, "
                 f"≈ {duration_text(seconds * share)}")
    if max(h, w) > DRAW_LIMIT_PX:
        text += (f"; outputs {h} × {w}: larger than napari draws in one texture "
                 f"({DRAW_LIMIT_PX} px), each redraw of them takes a second or more "
                 "(a larger object size makes them smaller)")
    return text


def plane_bytes(source: LayerSource) -> int:
    """Bytes of one plane of the level as read (its dtype; the channels a run uses)."""
    h, w = source.layout.plane_shape
    dtype = np.dtype(getattr(source.data, "dtype", np.uint8))
    channels = 3 if source.layout.rgb else 1
    return int(h) * int(w) * channels * dtype.itemsize


def tiles_needed(source: LayerSource, config, n_queries: int, limit: int | None,
                 n_planes: int = 1, feature_cache_mb: float = 0.0) -> bool:
    """Whether the run does not fit ``limit`` bytes in memory (so it is tiled):
    :func:`plane_memory`'s host peak against the limit (None: no limit).
    """
    if limit is None:
        return False
    need = plane_memory(source, config, n_queries, n_planes, feature_cache_mb).host
    return need > limit or not math.isfinite(need)


def as_numpy_plane(source: LayerSource, idx) -> np.ndarray:
    """One plane of the level read, as numpy (the whole plane: in-memory runs)."""
    return source.layout.get_plane(source.data, idx)
