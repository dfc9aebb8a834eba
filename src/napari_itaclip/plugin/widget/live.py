"""The widget's *live* option: re-segment by itself after the vocabulary is edited.

Only when the picked layer was the last one segmented and every plane of the run has
its image features cached (the worker checks before computing anything: a live run
never starts the ViT), so it costs the scoring, PAMR and the post-processing. Edits
are debounced (:data:`LIVE_DELAY_MS` after the last keystroke); an edit made while a
run is in flight is acted on once that run has finished. Off by default: a result that
changes while one types would surprise a user who did not ask for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QCheckBox

if TYPE_CHECKING:
    from .dock import ITACLIPWidget

__all__ = ["LIVE_DELAY_MS", "LiveRerun", "NOT_CACHED_TEXT"]

LIVE_DELAY_MS = 800  # wait this long after the last vocabulary edit
NOT_CACHED_TEXT = ("Live: this layer's image features are not cached (edited layer, "
                   "other plane, model or image settings); press Run.")


class LiveRerun(QObject):
    """Owns the *Live* check box and its debounce timer; asks the widget for live runs."""

    def __init__(self, widget: ITACLIPWidget) -> None:
        super().__init__(widget)
        self.widget = widget
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
        w = self.widget
        if not self.enabled:
            return
        if w.busy:  # never while a run is in flight: once it has finished
            self.pending = True
            return
        self.pending = False
        layer = w.image_panel.settings().layer
        if layer is None or layer.name != w._last_source:
            return  # segment this layer once with Run first
        try:
            w.vocabulary()
        except ValueError:
            return  # the vocabulary panel shows what is wrong
        w.run(live=True)

    def run_finished(self) -> None:
        """Called when any run ends: act on an edit made during it."""
        if self.pending:
            self.pending = False
            self.schedule()
