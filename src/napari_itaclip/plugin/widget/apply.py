"""Driving a step generator on the GUI thread in short turns of the event loop.

:func:`~napari_itaclip.plugin.output_plan.apply_plan` (a run's outputs) and the
relabel writer are generators whose every ``next()`` does a short piece of GUI-thread
work. :class:`Applier` runs pieces until :data:`TURN_S` has passed, or until a piece
marked :data:`~napari_itaclip.plugin.output_plan.HEAVY` (one napari call that adds,
removes or redraws a layer: napari's own cost, which cannot be split; the generator
marks the turn boundary before and after each such call), then lets the
event loop run (a zero-delay timer) before the next turn. So the plugin's own work takes
at most about ``TURN_S`` per turn, and napari's heavy calls get a turn each, during which
a worker thread still running gets the GIL less often (:data:`HEAVY_SWITCH_S`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import QObject, QTimer

from ..output_plan import HEAVY

__all__ = ["HEAVY_SWITCH_S", "TURN_S", "Applier"]

TURN_S = 0.04  # GUI-thread time of the plugin's pieces per event-loop turn
#: the interpreter's switch interval while napari's heavy call runs: a worker that is
#: still computing (a tiled run adds its layers after the first tile) takes the GIL
#: from the GUI thread every 5 ms by default and makes the call longer
#: (docs/benchmarks.md, "GUI responsiveness")
HEAVY_SWITCH_S = 0.05


def _holding_gil(gen: Generator[str, None, Any]) -> str:
    """``next(gen)`` (a heavy napari call) with :data:`HEAVY_SWITCH_S`."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(max(old, HEAVY_SWITCH_S))
    try:
        return next(gen)
    finally:
        sys.setswitchinterval(old)


class Applier(QObject):
    """Runs one step generator at a time on the event loop (see the module docstring)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._gen: Generator[str, None, Any] | None = None
        self._done: Callable[[Any], None] | None = None
        self._failed: Callable[[BaseException], None] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._turn)
        self._heavy_next = False  # the next turn starts with a heavy napari call
        # the longest turn of the last job (benchmarks, tests), and within turns the
        # longest time in the plugin's own pieces and in one heavy napari call
        self.longest_turn_s = self.longest_own_turn_s = self.longest_napari_turn_s = 0.0

    @property
    def running(self) -> bool:
        """Whether a generator is being run."""
        return self._gen is not None

    def start(self, gen: Generator[str, None, Any], done: Callable[[Any], None],
              failed: Callable[[BaseException], None]) -> None:
        """Run ``gen``; then ``done(its return value)``, or ``failed(exception)``."""
        self.stop()
        self._gen, self._done, self._failed = gen, done, failed
        self.longest_turn_s = self.longest_own_turn_s = self.longest_napari_turn_s = 0.0
        self._timer.start()

    def stop(self) -> None:
        """Drop the running generator (closing it) without calling back."""
        gen, self._gen, self._heavy_next = self._gen, None, False
        self._timer.stop()
        if gen is not None:
            gen.close()

    def finish_now(self) -> None:
        """Run the rest of the generator at once (a teardown that must not leave it half
        done), calling back as usual.
        """
        while self._gen is not None:
            self._turn(budget=float("inf"))

    def _turn(self, budget: float = TURN_S) -> None:
        gen = self._gen
        if gen is None:
            return
        t0 = time.perf_counter()
        steps, kind, napari_s = 0, None, 0.0
        try:
            while True:
                t_step, before = time.perf_counter(), kind
                kind = next(gen) if steps or not self._heavy_next else _holding_gil(gen)
                steps += 1
                now = time.perf_counter()
                if kind == HEAVY and before == HEAVY:  # the piece was the napari call
                    napari_s += now - t_step
                spent = now - t0
                # a HEAVY mark comes before and after each heavy napari call: it gets a
                # turn of its own (unless nothing has been done in this turn yet)
                if (kind == HEAVY and (steps > 1 or spent > 0.005)) or spent > budget:
                    break
        except StopIteration as stop:
            self._end(t0, napari_s, self._done, stop.value)
            return
        except Exception as exc:  # reported to the caller, who shows it
            self._end(t0, napari_s, self._failed, exc)
            return
        self._heavy_next = kind == HEAVY and not napari_s  # the call comes next turn
        self._record(time.perf_counter() - t0, napari_s)
        self._timer.start()

    def _record(self, spent: float, napari_s: float) -> None:
        self.longest_turn_s = max(self.longest_turn_s, spent)
        self.longest_napari_turn_s = max(self.longest_napari_turn_s, napari_s)
        self.longest_own_turn_s = max(self.longest_own_turn_s, spent - napari_s)

    def _end(self, t0: float, napari_s: float, callback, value) -> None:
        self._record(time.perf_counter() - t0, napari_s)
        self._gen, self._heavy_next = None, False
        if callback is not None:
            callback(value)
