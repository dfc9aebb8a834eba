"""Large layers in the widget: a tiled run in the worker, its tiles written as they finish.

A layer whose run does not fit the memory bound (or a run of the visible region) is
segmented by the one tiled runner (:func:`napari_itaclip.chunked.tiles.iter_tiles`),
one tile after the other in the worker, reading the layer one region at a time:

1. after the first tile (which names the classes), the worker builds the output plan of
   empty layers at the working resolution (:class:`~..output_plan.EmptyStack`) and
   yields it; the GUI thread assigns it (the layers appear);
2. each finished tile is yielded with its labels already in the layer's values; the GUI
   thread writes it where the user has not edited (:func:`~..assign.write_tile`), a few
   tiles per turn of the event loop, and redraws the layers at most every
   :data:`REDRAW_S`;
3. Cancel stops after the current engine batch: the tiles written stay, and the status
   line says how many of how many.

The heatmaps keep every ``heat_step``-th pixel of the working grid when all of them
would exceed :data:`HEAT_BUDGET_BYTES` (never C x H x W float32 at native size: at the
native resolution the step is at least 2); the layer's scale says so. The maps a relabel
needs are kept when they fit :data:`KEEP_BUDGET_FRACTION` of the available memory.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ...chunked.tiles import (
    TileDone,
    inner_config,
    iter_tiles,
    plan_tiles,
    plane_uint8,
    tile_jobs,
)
from ...stack import RunProgress, StackResult
from ..assign import write_tile
from ..edits import reset_undo
from ..output_plan import EmptyStack, OutputPlan, build_plan
from ..scripting import class_values

__all__ = ["HEAT_BUDGET_BYTES", "KEEP_BUDGET_FRACTION", "REDRAW_S", "TileWriter", "TiledDone",
           "tiled_aborted", "tiled_item", "tiled_job", "tiled_returned"]

HEAT_BUDGET_BYTES = 512 * 2**20  # heatmaps of a tiled run, at most
KEEP_BUDGET_FRACTION = 0.25  # of the available memory, for the maps a relabel needs
REDRAW_S = 0.5  # redraw the layers at most this often while tiles arrive
TILE_TURN_S = 0.04  # GUI-thread time of tile writes per turn of the event loop
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
        from ...engine.postprocess import labels_and_probabilities
        from ...engine.result import SegmentationResult

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
    from ...engine import registry

    yield RunProgress("load", 0, 0, 0, len(indices))
    seg = segmenter if segmenter is not None else registry.get_segmenter(model.key())
    grid = plan_tiles(source.layout.plane_shape, config, chunk, factor=source.factor)
    inner = inner_config(config) if config.object_size is not None else config
    if teach is not None:
        from ...chunked.tiles import WorkingPlanes, working_layout

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


class TileWriter(QObject):
    """Writes a tiled run's tiles into its layers on the GUI thread, in short steps.

    Parameters
    ----------
    applier : Applier
        Runs the plan of the empty layers (the same one a run's outputs use).
    viewer : napari.Viewer
    """

    def __init__(self, applier, viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._applier, self._viewer = applier, viewer
        self._queue: deque = deque()
        self.layers: tuple[Any, Any] | None = None
        self.plan: OutputPlan | None = None
        self.written = 0
        self._last_redraw = 0.0
        self._ended: Callable[[], None] | None = None
        self._clim = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._step)

    @property
    def running(self) -> bool:
        """Whether a tiled run's layers or tiles are still being written."""
        return self.plan is not None

    def start(self, plan: OutputPlan, failed: Callable[[BaseException], None]) -> None:
        """Assign the empty layers of ``plan``; tiles queued meanwhile follow."""
        from ..assign import apply_plan

        self.plan, self.layers, self.written = plan, None, 0
        self._applier.start(apply_plan(self._viewer, plan), self._ready, failed)

    def add(self, done: TileDone) -> None:
        """Queue a finished tile."""
        self._queue.append(done)
        if self.layers is not None:
            self._timer.start()

    def end(self, ended: Callable[[], None], clim=None) -> None:
        """The worker is done: call ``ended`` once every queued tile is written;
        ``clim``: the similarity's range over the tiles (the heatmaps' contrast).
        """
        self._ended, self._clim = ended, clim
        self._timer.start()

    def stop(self) -> None:
        """Drop what is queued (the tiles written stay)."""
        self._queue.clear()
        self._timer.stop()
        self.plan, self._ended = None, None

    def _ready(self, layers) -> None:
        self.layers = layers
        self._timer.start()

    def _step(self) -> None:
        if self.layers is None:
            if self._ended is not None and self.plan is None:
                self._finish()
            return
        labels, heat = self.layers
        t0 = time.perf_counter()
        while self._queue and time.perf_counter() - t0 < TILE_TURN_S:
            write_tile(labels, heat, self._queue.popleft(), self.plan.heat_step)
            self.written += 1
        if time.perf_counter() - self._last_redraw > REDRAW_S or not self._queue:
            self._redraw()
        if self._queue:
            self._timer.start()
        elif self._ended is not None:
            self._finish()

    def _redraw(self) -> None:
        labels, heat = self.layers
        self._last_redraw = time.perf_counter()
        labels.refresh()
        heat.refresh()

    def _finish(self) -> None:
        ended, self._ended = self._ended, None
        if self.layers is not None:
            labels, heat = self.layers
            reset_undo(labels)
            if self._clim is not None:
                heat.contrast_limits_range = self._clim
                heat.contrast_limits = self._clim
        self.plan = None
        if ended is not None:
            ended()


# -- the dock's side -------------------------------------------------------------------
def tiled_item(widget, item) -> None:
    """A tiled run's yielded item: the empty layers' plan, a finished tile, or progress."""
    if widget.closed:
        return
    if isinstance(item, OutputPlan):
        widget.tiles.start(item, lambda exc: _failed(widget, exc))
    elif isinstance(item, TileDone):
        widget.tiles.add(item)
    else:
        widget._on_progress(item)


def tiled_returned(widget, done: TiledDone) -> None:
    """The worker has finished every tile: once they are written, the run is done."""
    if widget.closed or done.plan is None:
        return
    widget.tiles.end(lambda: _applied(widget, done), done.clim)


def tiled_aborted(widget) -> bool:
    """Cancel of a tiled run that has written tiles: keep them and say so (True)."""
    if not widget.tiles.running:
        return False
    total = widget.tiles.plan.targets.source_name

    def ended() -> None:
        widget.status_label.setText(
            f"Cancelled after {widget.tiles.written} tile(s) of '{total}': those are written "
            "(where you had not edited); the rest of the layers is unchanged.")
        widget._run_ended()

    widget.tiles.end(ended)
    return True


def _failed(widget, exc: BaseException) -> None:
    widget.tiles.stop()
    if widget._worker is not None:
        widget._worker.quit()
    widget._error(str(exc))
    widget._run_ended()


def _applied(widget, done: TiledDone) -> None:
    labels, heat = widget.tiles.layers
    source = done.plan.targets.source
    names = done.plan.stack.class_names
    if done.stack is not None:
        widget.results.keep(source, done.stack, labels, heat)
    else:  # too large to keep (or a region only): relabelling needs a new run
        widget.results.keep(source, StackResult(done.plan.stack.layout), labels, heat)
    widget.teach.ran(widget._run.teach if widget._run is not None else None, labels)
    widget.heatmaps.set_source(source, heat, names)
    widget.measure_panel.reset_choices()
    widget.progress_bar.setValue(1000)
    kept = ("" if done.stack is not None else "; the maps are not kept (too large, or a "
            "region): moving a threshold needs a new Run")
    widget.status_label.setText(
        f"Done: {done.tiles} of {done.total} tile(s) of '{done.plan.targets.source_name}' "
        f"written to '{labels.name}'{kept}.")
    widget._run_ended()
