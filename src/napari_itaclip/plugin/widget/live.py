"""The widget's *live* option: re-segment by itself after the vocabulary is edited.

Only when the picked layer was the last one segmented and every plane of the run has
its image features cached (the worker checks before computing anything: a live run
never starts the ViT), so it costs the scoring, PAMR and the post-processing. Edits
are debounced (:data:`LIVE_DELAY_MS` after the last keystroke); an edit made while a
run is in flight is acted on once that run has finished. Off by default: a result that
changes while one types would surprise a user who did not ask for it.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QCheckBox

__all__ = ["LIVE_DELAY_MS", "LiveRerun", "NOT_CACHED_TEXT"]

LIVE_DELAY_MS = 800  # wait this long after the last vocabulary edit
NOT_CACHED_TEXT = ("Live: this layer's image features are not cached (edited layer, "
                   "other plane, model or image settings); press Run.")


class LiveRerun(QObject):
    """Owns the *Live* check box and its debounce timer; starts live runs by callbacks.

    Parameters
    ----------
    busy : callable
        ``busy()``: whether a run is in flight (a live run then waits for its end).
    may_run : callable
        ``may_run()``: whether a live run makes sense now (the picked layer was the last
        one segmented and the vocabulary is valid).
    run : callable
        ``run()`` starts the live run (the worker checks the features are cached).
    parent : QObject, optional
        The Qt parent (the widget).
    """

    def __init__(self, busy: Callable[[], bool], may_run: Callable[[], bool],
                 run: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._busy, self._may_run, self._run = busy, may_run, run
        self.checkbox = QCheckBox("Live")
        self.checkbox.setToolTip(
            "Re-segment by itself shortly after the vocabulary is edited, when the image "
            "features of the last run are cached (no ViT run: only the new texts, PAMR "
            "and the labels are computed).")
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(LIVE_DELAY_MS)
        self.timer.timeout.connect(self.fire)
        self.pending = False

    @property
    def enabled(self) -> bool:
        """Whether the option is on."""
        return self.checkbox.isChecked()

    def schedule(self) -> None:
        """A vocabulary edit: (re)start the debounce timer when the option is on."""
        if self.enabled:
            self.timer.start()

    def fire(self) -> None:
        """The edits have settled: start a live run if it may (else wait or do nothing)."""
        if not self.enabled:
            return
        if self._busy():  # never while a run is in flight: once it has finished
            self.pending = True
            return
        self.pending = False
        if self._may_run():
            self._run()

    def run_finished(self) -> None:
        """Called when any run ends: act on an edit made during it."""
        if self.pending:
            self.pending = False
            self.schedule()
