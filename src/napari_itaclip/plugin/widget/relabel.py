"""Relabelling from the kept maps when a threshold slider moves (no model run).

The new labels of each plane are computed in a worker thread (thresholds, argmax and
closing over C x H x W maps: a second on a 6000 x 6000 plane), the shown plane first,
and written into the Labels layer in place on the GUI thread in row bands of at most
:data:`RELABEL_SLICE_S` per event-loop turn, so a slider drag over a big stack or a
large plane stays responsive. A new request cancels a running one. Pixels the user
edited keep their values (:mod:`~napari_itaclip.plugin.edits`); the layer's undo
history restarts, as after every write of the plugin.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ...stack import StackResult
from ..assign import plane_bands
from ..edits import record_of, reset_undo
from ..layers import current_slice
from .results import Kept
from .workers import shielded

__all__ = ["RELABEL_DEBOUNCE_MS", "RELABEL_SLICE_S", "Relabeller", "relabel_planes"]

RELABEL_DEBOUNCE_MS = 60  # wait this long after the last slider move
RELABEL_SLICE_S = 0.03  # GUI-thread time per relabel step


def relabel_planes(stack: StackResult, order, prob: float, area: float | None, record,
                   dtype) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """(Worker) ``(plane, layer values)`` for each plane of ``order``, in ``dtype``."""
    for idx in order:
        values = record.to_layer(stack.relabel_plane(idx, prob, area))
        yield idx, np.asarray(values).astype(dtype, copy=False)


class Relabeller(QObject):
    """Relabels the last run's Labels layer: a worker computes, the GUI writes in steps.

    Parameters
    ----------
    request : callable
        Called (debounced) after :meth:`schedule`; it calls :meth:`relabel`.
    done : callable
        Called with ``(prob, area)`` when every plane has been written.

    A failed computation writes the planes that arrived before it and emits
    ``message(text, True)`` instead of calling ``done``.
    """

    message = Signal(str, bool)

    def __init__(self, request: Callable[[], None], done: Callable[[float, float | None], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._done = done
        self._worker = None
        self._queue: deque = deque()
        self._bands: Iterator | None = None
        self._layer = None
        self._record = None
        self._thresholds: tuple[float, float | None] = (0.0, None)
        self._refreshed = False
        self._failed: str | None = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(RELABEL_DEBOUNCE_MS)
        self._debounce.timeout.connect(request)
        self._stepper = QTimer(self)
        self._stepper.setSingleShot(True)
        self._stepper.setInterval(0)
        self._stepper.timeout.connect(self._step)

    @property
    def running(self) -> bool:
        """Whether planes are still being computed or written."""
        return self._worker is not None or self._layer is not None

    def schedule(self) -> None:
        """Ask for a relabel after the debounce interval (restarts it)."""
        self._debounce.start()

    def relabel(self, viewer, kept: Kept, prob: float, area: float | None) -> bool:
        """Relabel ``kept``'s Labels layer with these thresholds; False (nothing done) when
        the layer is gone or no longer the plugin's.
        """
        from napari.qt.threading import create_worker

        self.stop()
        layer = kept.labels.in_viewer(viewer) if kept.labels is not None else None
        record = record_of(layer)
        data = getattr(layer, "data", None)
        if (record is None or not isinstance(data, np.ndarray) or not data.flags.writeable
                or tuple(data.shape) != tuple(kept.stack.layout.out_shape)):
            return False
        order = list(kept.stack.results)
        source = kept.source.in_viewer(viewer)
        try:
            shown = current_slice(source, kept.stack.layout, viewer) if source else None
        except Exception:  # an odd transform: just go in order
            shown = None
        if shown in kept.stack.results:
            order.remove(shown)
            order.insert(0, shown)
        self._layer, self._record, self._thresholds = layer, record, (prob, area)
        self._refreshed, self._failed = False, None
        worker = create_worker(shielded, relabel_planes, kept.stack, order, prob, area,
                               record, data.dtype, _start_thread=False, _connect={
                                   "errored": lambda exc: self._on_errored(worker, exc)})
        worker.yielded.connect(lambda item: self._on_plane(worker, item))
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        worker.start()
        return True

    def stop(self) -> None:
        """Drop the running job (planes written so far stay)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.quit()
        self._queue.clear()
        self._bands = None
        self._layer = self._record = None
        self._stepper.stop()

    def _on_plane(self, worker, item) -> None:
        if worker is not self._worker or self._layer is None:
            return  # a cancelled job's plane
        self._queue.append(item)
        self._stepper.start()

    def _on_errored(self, worker, exc: BaseException) -> None:
        if worker is self._worker:
            self._failed = f"Relabelling failed: {exc}"

    def _on_finished(self, worker) -> None:
        if worker is self._worker:
            self._worker = None
            self._stepper.start()

    def _writes(self) -> Iterator[bool]:
        """Band writes of the queued planes; yields True after each plane."""
        while self._queue:
            idx, values = self._queue.popleft()
            for rows in plane_bands(values.shape, values.itemsize * 3):
                self._record.write_band(self._layer.data, idx, rows, values[rows])
                yield False
            yield True

    def _step(self) -> None:
        if self._layer is None:
            return
        t0 = time.perf_counter()
        if self._bands is None:
            self._bands = self._writes()
        for plane_done in self._bands:
            if plane_done and not self._refreshed:  # show the shown plane at once
                self._refreshed = True
                self._layer.refresh()
                break
            if time.perf_counter() - t0 > RELABEL_SLICE_S:
                break
        else:
            self._bands = None
            if self._worker is None and not self._queue:
                self._finish()
                return
        if self._queue or self._bands is not None:
            self._stepper.start()

    def _finish(self) -> None:
        layer, prob_area = self._layer, self._thresholds
        self._layer = self._record = None
        reset_undo(layer)
        layer.refresh()
        if self._failed is not None:
            self.message.emit(self._failed + " (the planes done before were written).", True)
        else:
            self._done(*prob_area)
