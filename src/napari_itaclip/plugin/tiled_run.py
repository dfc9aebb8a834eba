"""A tiled run of a napari layer, Qt-free: the worker's generator the widget and
``segment_layer`` share (see :mod:`napari_itaclip.plugin.widget.tiled` for the widget's
side, and :mod:`napari_itaclip.chunked.tiles` for the runner itself).

:func:`tiled_job` segments the tiles one after the other, reading the layer one region
at a time. After the first tile (which names the classes) it yields the output plan of
empty layers at the working resolution, then each finished tile with its labels already
in the layer's values; it returns a :class:`TiledDone`. The heatmaps keep every
``heat_step``-th pixel when all of them would exceed :data:`HEAT_BUDGET_BYTES` (never
C x H x W float32 at native size: at the native resolution the step is at least 2 once
they are large); the maps a relabel needs are kept when they fit the budget given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..chunked.tiles import TileDone, inner_config, iter_tiles, plan_tiles, plane_uint8, tile_jobs
from ..stack import RunProgress, StackResult
from .layers import prepare_first_labels_layer
from .output_plan import EmptyStack, OutputPlan, build_plan, class_values

__all__ = ["DEFAULT_TILE", "HEAT_BUDGET_BYTES", "KEEP_BUDGET_FRACTION", "TiledDone",
           "heat_step", "tiled_job"]

HEAT_BUDGET_BYTES = 512 * 2**20  # heatmaps of a tiled run, at most
KEEP_BUDGET_FRACTION = 0.25  # of the available memory, for the maps a relabel needs
DEFAULT_TILE = 1024  # tile core side, working pixels


@dataclass
class TiledDone:
    """What a tiled run returns: the kept maps (None when too large) and the tile count."""

    stack: StackResult | None
    tiles: int
    plan: OutputPlan | None
    total: int = 0
    clim: tuple[float, float] | None = None


def heat_step(n_bytes: int, factor: int) -> int:
    """Every how many pixels the heatmaps keep (see the module docstring)."""
    step = max(1, math.ceil(math.sqrt(n_bytes / HEAT_BUDGET_BYTES)))
    return max(step, 2) if factor == 1 and n_bytes > HEAT_BUDGET_BYTES // 4 else step


class _Kept:
    """The working-resolution maps of every plane, assembled from the tiles' cores."""

    def __init__(self, layout, indices, budget: int | None) -> None:
        self.layout, self.indices, self.budget = layout, list(indices), budget
        self.planes: dict | None = None

    def add(self, done: TileDone) -> None:
        if self.planes is None:
            h, w = self.layout.plane_shape
            c = len(done.class_names)
            need = len(self.indices) * h * w * (3 * 4 * c + 4)
            if self.budget is not None and need > self.budget:
                self.planes = {}  # too large: no relabel without a run
                self.indices = []
                return
            self.planes = {idx: (np.zeros((h, w), np.int32), np.zeros((c, h, w), np.float32),
                                 np.zeros((c, h, w), np.float32)) for idx in self.indices}
        if done.index in self.planes:
            lab, sim, raw = self.planes[done.index]
            lab[done.rows, done.cols] = done.labels
            sim[:, done.rows, done.cols] = done.similarity
            raw[:, done.rows, done.cols] = done.probabilities

    def stack(self, first: TileDone | None, config, complete: bool) -> StackResult | None:
        if not self.planes or first is None or not complete:
            return None
        from ..engine.postprocess import labels_and_probabilities
        from ..engine.result import SegmentationResult

        out = StackResult(self.layout)
        for idx, (lab, sim, raw) in self.planes.items():
            probs = labels_and_probabilities(raw, config)[1] if config.renormalize_probs else raw
            out.results[idx] = SegmentationResult(lab, probs, sim, list(first.class_names),
                                                  first.vocabulary, config, raw)
        return out


def tiled_job(model, segmenter, source, indices, vocab, config, targets, teach=None,
              chunk: int = DEFAULT_TILE, keep_budget: int | None = None, region=None):
    """The worker's generator of a tiled run (see the module docstring); ``region``: the
    visible region's tiles only.
    """
    from ..engine import registry

    yield RunProgress("load", 0, 0, 0, len(indices))
    prepare_first_labels_layer()  # napari's first Labels layer, lighter on the GUI thread
    seg = segmenter if segmenter is not None else registry.get_segmenter(model.key())
    grid = plan_tiles(source.layout.plane_shape, config, chunk, factor=source.factor)
    inner = inner_config(config) if config.object_size is not None else config
    if teach is not None:
        from ..chunked.tiles import WorkingPlanes, working_layout

        seg = yield from teach.bind(seg, WorkingPlanes(source.data, source.layout, source.factor),
                                    working_layout(source.layout, source.factor), inner)
    planes: dict = {}

    def plane(idx):
        if idx not in planes:
            planes.clear()
            planes[idx] = plane_uint8(source.data, source.layout, idx)
        return planes[idx]

    kept = _Kept(source.out_layout, indices, keep_budget if region is None else 0)
    plan = first = None
    n, lo, hi = 0, np.inf, -np.inf
    total = sum(1 for _ in tile_jobs(grid, indices, region))
    for item in iter_tiles(seg, plane, indices, grid, vocab, inner, region=region):
        if not isinstance(item, TileDone):
            yield item
            continue
        if plan is None:
            first = item
            plan = _empty_plan(source, targets, item, teach, len(indices))
            yield plan
        kept.add(item)
        item.labels = _layer_values(item.labels, plan)
        lo, hi = min(lo, float(item.similarity.min())), max(hi, float(item.similarity.max()))
        n += 1
        yield item
    return TiledDone(kept.stack(first, inner, n == total), n, plan, total,
                     (lo, hi) if hi > lo else None)


def _empty_plan(source, targets, first: TileDone, teach, n_planes: int) -> OutputPlan:
    stack = EmptyStack(source.out_layout, list(first.class_names), first.has_background)
    values = None
    if teach is not None:
        values = class_values(stack, teach.n_text, targets.feature_values, teach.preferred)
    h, w = source.out_layout.plane_shape
    step = heat_step(len(first.class_names) * n_planes * h * w * 4, source.factor)
    return build_plan(stack, targets, values, heat_step=step)


def _layer_values(labels: np.ndarray, plan: OutputPlan) -> np.ndarray:
    values = labels + (0 if plan.stack.has_background else 1)
    if plan.lut is not None:
        values = plan.lut[np.clip(values, 0, len(plan.lut) - 1)]
    return values.astype(plan.dtype, copy=False)
