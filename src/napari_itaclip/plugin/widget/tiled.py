"""Large layers in the widget: a tiled run in the worker, its tiles written as they finish.

A layer whose run does not fit the memory bound (or a run of the visible region) is
segmented by :func:`napari_itaclip.plugin.tiled_run.tiled_job` in the worker (the one
tiled runner, reading the layer one region at a time). This module is the GUI side:

1. the plan of the empty layers, yielded after the first tile, is assigned (the layers
   appear);
2. each finished tile is written where the user has not edited
   (:func:`~..assign.write_tile`), a few tiles per turn of the event loop, and the layers
   are redrawn at most every :data:`REDRAW_S`, or :data:`REDRAW_FACTOR` times what the
   last redraw cost (the labels and the heatmaps in turns of their own: each is one
   napari texture upload), and once more when the last tile is written;
3. Cancel stops after the current engine batch: the tiles written stay, and the status
   line says how many.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer

from ...chunked.tiles import TileDone
from ...stack import StackResult
from ..assign import write_tile
from ..edits import reset_undo
from ..output_plan import OutputPlan
from ..tiled_run import (
    DEFAULT_TILE,
    HEAT_BUDGET_BYTES,
    KEEP_BUDGET_FRACTION,
    TiledDone,
    tiled_job,
)

__all__ = ["DEFAULT_TILE", "HEAT_BUDGET_BYTES", "KEEP_BUDGET_FRACTION", "REDRAW_FACTOR",
           "REDRAW_S", "TileWriter", "TiledDone", "tiled_aborted", "tiled_errored",
           "tiled_item", "tiled_job", "tiled_returned"]

REDRAW_S = 0.5  # redraw the layers at most this often while tiles arrive
#: ... and at most every REDRAW_FACTOR times what the last redraw cost (napari's redraw
#: of both layers and the paint after it): a layer too large for one texture (napari
#: downsamples it on every redraw: about a second at 65536² under software OpenGL) is
#: redrawn every few seconds, not after every tile (docs/widget.md, "Scale")
REDRAW_FACTOR = 5
TILE_TURN_S = 0.04  # GUI-thread time of tile writes per turn of the event loop
#: pixels of a tile written in one piece (a tile is written in row bands of at most
#: this many: about 30 ms each; a whole 2048² tile was 125 ms in one piece)
TILE_BAND_PX = 2**20


def tile_bands(done: TileDone, max_px: int | None = None) -> list[TileDone]:
    """``done`` cut in row bands of at most ``max_px`` pixels (:data:`TILE_BAND_PX`), each
    a tile of its own for :func:`~..assign.write_tile` (placed by its rows and columns).
    """
    max_px = TILE_BAND_PX if max_px is None else max_px
    h = done.rows.stop - done.rows.start
    w = max(done.cols.stop - done.cols.start, 1)
    step = max(1, max_px // w)
    if step >= h:
        return [done]
    return [dataclasses.replace(done, rows=slice(done.rows.start + r, done.rows.start
                                                 + min(r + step, h)),
                                labels=done.labels[r:r + step],
                                similarity=done.similarity[:, r:r + step])
            for r in range(0, h, step)]


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
        self._heat_due = False  # the heatmaps' redraw comes on the next turn
        self._dirty = False  # tiles written since the last redraw
        self._mid_tile = False  # some bands of a tile are written, not all
        self._redraw_t0: float | None = None  # a redraw's start, until its cost is known
        self.redraw_every = REDRAW_S  # seconds between redraws (see REDRAW_FACTOR)
        self.redraws = 0
        self._due = QTimer(self)  # a redraw that waits for its time (no tile is queued)
        self._due.setSingleShot(True)
        self._due.timeout.connect(self._step)
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
        self._dirty, self._redraw_t0, self.redraw_every, self.redraws = False, None, REDRAW_S, 0
        self._applier.start(apply_plan(self._viewer, plan, hold_in_3d=True), self._ready, failed)

    def add(self, done: TileDone) -> None:
        """Queue a finished tile (in row bands: see :data:`TILE_BAND_PX`)."""
        bands = tile_bands(done)  # (band, whether it is the tile's last)
        self._queue.extend((band, k == len(bands) - 1) for k, band in enumerate(bands))
        if self.layers is not None:
            self._timer.start()

    def end(self, ended: Callable[[], None], clim=None) -> None:
        """The worker is done: call ``ended`` once every queued tile is written;
        ``clim``: the similarity's range over the tiles (the heatmaps' contrast).
        """
        self._ended, self._clim = ended, clim
        self._timer.start()

    def stop(self) -> None:
        """Drop what is queued (the tiles written stay; a tile half written is finished,
        so that each tile is in the layers whole or not at all).
        """
        if self.layers is not None and self.plan is not None:
            while self._mid_tile and self._queue:  # shown at napari's next redraw
                self._write_next(*self.layers)
        self._mid_tile = self._dirty = False
        self._queue.clear()
        self._timer.stop()
        self._due.stop()
        self.plan, self._ended, self._heat_due = None, None, False

    def _ready(self, layers) -> None:
        self.layers = layers
        self._timer.start()

    def _step(self) -> None:
        if self.layers is None:
            if self._ended is not None and self.plan is None:
                self._finish()
            return
        labels, heat = self.layers
        now = time.perf_counter()
        if self._heat_due:  # the second half of a redraw, a turn of its own
            self._heat_due = False
            heat.refresh()
            self._timer.start()  # the next turn measures the redraw's cost
            return
        if self._redraw_t0 is not None:  # the turn after a redraw: what it cost
            cost, self._redraw_t0 = now - self._redraw_t0, None
            self.redraw_every = max(REDRAW_S, REDRAW_FACTOR * cost)
        while self._queue:  # one band at least, more while the turn's time lasts
            self._write_next(labels, heat)
            if time.perf_counter() - now >= TILE_TURN_S:
                break
        wait = self._last_redraw + self.redraw_every - time.perf_counter()
        last = self._ended is not None and not self._queue
        if self._dirty and (wait <= 0 or last):
            self._dirty, self._last_redraw = False, time.perf_counter()
            self._redraw_t0 = self._last_redraw
            self.redraws += 1
            labels.refresh()  # the heatmaps on the next turn
            self._heat_due = True
            self._timer.start()
        elif self._queue:
            self._timer.start()
        elif self._dirty:  # nothing queued: redraw when its time has come
            self._due.start(max(1, int(1e3 * wait)))
        elif self._ended is not None:
            self._finish()

    def _write_next(self, labels, heat) -> None:
        """Write the next queued band (the last band of a tile counts the tile)."""
        band, last = self._queue.popleft()
        write_tile(labels, heat, band, self.plan.heat_step)
        self.written += last
        self._mid_tile = not last
        self._dirty = True

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


def tiled_errored(widget, message: str) -> bool:
    """A tiled run failed (a tile's region could not be read, say) after writing tiles:
    the tiles finished before stay, the message says so (True); False if none was.
    """
    if not widget.tiles.running:
        return False

    def ended() -> None:
        widget._error(f"{message} (the {widget.tiles.written} tile(s) finished before are "
                      "written; nothing else was changed)")
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
    widget.heatmaps.set_source(source, heat, names, held=done.plan.heat_held)
    widget.measure_panel.reset_choices()
    widget.progress_bar.setValue(1000)
    kept = ("" if done.stack is not None else "; the maps are not kept (too large, or a "
            "region): moving a threshold needs a new Run")
    widget.status_label.setText(
        f"Done: {done.tiles} of {done.total} tile(s) of '{done.plan.targets.source_name}' "
        f"written to '{labels.name}'{kept}{done.plan.held_text}.")
    widget._run_ended()
