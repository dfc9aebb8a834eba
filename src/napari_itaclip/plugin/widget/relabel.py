"""Relabelling from the kept maps when a threshold slider moves (no model run).

The work runs on the GUI thread in steps of at most :data:`RELABEL_SLICE_S`, the
shown plane first, written into the Labels layer in place, so a slider drag over a big
stack stays responsive. A new request replaces a running one. Pixels the user edited
keep their values (:mod:`~napari_itaclip.plugin.edits`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, QTimer

from ...stack import StackResult
from ..edits import LabelsRecord, labels_target, record_of
from ..layers import current_slice, labels_name, labels_writable_in_place, write_labels

__all__ = ["RELABEL_DEBOUNCE_MS", "RELABEL_SLICE_S", "RelabelJob", "Relabeller", "relabel_job"]

RELABEL_DEBOUNCE_MS = 60  # wait this long after the last slider move
RELABEL_SLICE_S = 0.03  # GUI-thread time per relabel step (at least one plane)


@dataclass
class RelabelJob:
    """One relabel in progress: which planes of which layer, with which thresholds."""

    stack: StackResult
    layer: Any
    prob: float
    area: float | None
    planes: Iterator[tuple[int, ...]]
    record: LabelsRecord | None = None
    first_step: bool = True

    def step(self, budget_s: float) -> bool:
        """Write planes for about ``budget_s`` seconds (at least one); True when done.

        The first step holds the shown plane; the layer is refreshed after it and at
        the end (cheap in 2D, and no reload per step in 3D).
        """
        t0 = time.perf_counter()
        done = True
        record = self.record if self.record is not None else record_of(self.layer)
        for idx in self.planes:
            values = self.stack.relabel_plane(idx, self.prob, self.area)
            if record is None:  # not written by the plugin: nothing to keep
                self.layer.data[idx] = values
            else:
                record.write(self.layer.data, idx, record.to_layer(values))
            if time.perf_counter() - t0 > budget_s:
                done = False
                break
        if done or self.first_step:
            self.layer.refresh()
            self.first_step = False
        return done


def relabel_job(viewer, source, stack: StackResult, prob: float, area: float | None
                ) -> RelabelJob | None:
    """The job relabelling ``source``'s Labels layer plane by plane, the shown plane first.

    Without a Labels layer that can be written in place, a new one is written at once
    and None is returned.
    """
    from napari.layers import Labels

    layer, _name = labels_target(viewer.layers, labels_name(source.name), Labels,
                                 stack.layout.out_shape)
    if layer is None or not labels_writable_in_place(layer, stack):
        values = layer.metadata.get("itaclip", {}).get("values") if layer is not None else None
        write_labels(viewer, source, stack.relabel(prob_threshold=prob, area_threshold=area),
                     values=values)
        return None
    order = list(stack.results)
    try:
        shown = current_slice(source, stack.layout, viewer)
    except Exception:  # an odd transform: just go in order
        shown = None
    if shown in stack.results:
        order.remove(shown)
        order.insert(0, shown)
    return RelabelJob(stack, layer, prob, area, iter(order), record_of(layer))


class Relabeller(QObject):
    """Runs :class:`RelabelJob` s in steps on the event loop, after a short debounce.

    Parameters
    ----------
    request : callable
        Called (debounced) after :meth:`schedule`; it builds and :meth:`start` s a job.
    done : callable
        Called with ``(prob, area)`` when a job has written every plane.
    """

    def __init__(self, request: Callable[[], None], done: Callable[[float, float | None], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._done = done
        self.job: RelabelJob | None = None
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
        """Whether a job is still writing planes."""
        return self.job is not None

    def schedule(self) -> None:
        """Ask for a relabel after the debounce interval (restarts it)."""
        self._debounce.start()

    def relabel(self, viewer, source, stack: StackResult, prob: float,
                area: float | None) -> None:
        """Relabel ``source``'s Labels layer from ``stack`` (see :func:`relabel_job`)."""
        job = relabel_job(viewer, source, stack, prob, area)
        if job is None:  # written at once
            self._done(prob, area)
        else:
            self.start(job)

    def start(self, job: RelabelJob) -> None:
        """Replace any running job by ``job`` and take its first step now."""
        self.stop()
        self.job = job
        self._step()

    def stop(self) -> None:
        """Drop the running job (its planes written so far stay)."""
        self.job = None
        self._stepper.stop()

    def _step(self) -> None:
        job = self.job
        if job is None:
            return
        if job.step(RELABEL_SLICE_S):
            self.job = None
            self._done(job.prob, job.area)
        else:
            self._stepper.start()
