"""Browsing the similarity heatmaps: a class picker tied to the heatmap layer's class axis."""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from ..refs import LayerRef
from .lifecycle import soon
from .links import EventLinks

__all__ = ["GLYPHS_PER_PAINT", "PREPARE_MS", "HeatmapBrowser", "reveal_steps"]

#: characters the canvas has not drawn yet that one step of the class name may add. napari
#: renders a glyph the first time it draws it, on the CPU, in the paint that shows it
#: (a signed distance field: about 9 ms a glyph on the project machine; 260 ms for the
#: first "heatmap: background", with vispy's reference glyphs and shader build), so a new
#: name appears in steps, one paint each.
GLYPHS_PER_PAINT = 4
#: ms between two steps (long enough for a paint in between)
STEP_MS = 30
#: ms the blank text of :meth:`HeatmapBrowser.prepare_text` stays (a paint or more)
PREPARE_MS = 250
_drawn: set[str] = set()  # the characters the text overlay was given (process-wide, as
# napari's glyph cache is)


def reveal_steps(text: str, drawn: set[str], per_step: int = GLYPHS_PER_PAINT) -> list[str]:
    """Prefixes of ``text`` that each add at most ``per_step`` characters not in ``drawn``
    (the last one is ``text``).
    """
    steps: list[str] = []
    new: set[str] = set()
    for i, ch in enumerate(text):
        if ch not in drawn and ch not in new and not ch.isspace():
            if len(new) == per_step:
                steps.append(text[:i])
                drawn = drawn | new
                new = set()
            new.add(ch)
    return [*steps, text]


class HeatmapBrowser(QWidget):
    """"heatmap of [class]": moves the class slider, names the shown class on the canvas.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer showing the heatmaps.
    links : EventLinks
        Where the viewer / layer callbacks are recorded (disconnected on close).
    """

    def __init__(self, viewer, links: EventLinks, parent=None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._links = links
        self.source: LayerRef | None = None  # the source layer whose heatmaps are browsed
        self.heat: LayerRef | None = None  # their layer (whatever it is called now)
        self.combo = QComboBox()
        self.combo.setToolTip("Show this class's similarity map (moves the class slider)")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("heatmap of"))
        row.addWidget(self.combo, 1)
        self.combo.currentIndexChanged.connect(self.show_class)
        links.connect(viewer.dims.events.current_step, self.sync)
        links.connect(viewer.dims.events.ndisplay, self._on_ndisplay)
        self._held: list[LayerRef] = []  # new heatmaps left hidden in the 3D view
        self._class_after = 0  # the class to show once they are shown
        self._steps: list[str] = []  # the rest of the overlay text being revealed
        self._shown: str | None = None  # the overlay text the last step set
        self._target: str | None = None  # the whole text being revealed
        self._expected: str | None = None  # the overlay text as the reveal left it
        self._step_timer = QTimer(self)
        self._step_timer.setSingleShot(True)
        self._step_timer.setInterval(STEP_MS)
        self._step_timer.timeout.connect(self._next_step)

    def prepare_text(self) -> None:
        """Draw the canvas text once, blank, if nothing in this napari drew text before and
        the window is on screen: napari's first text (vispy's reference glyphs and its text
        shader) is one paint of 150 to 230 ms on the project machine, better while the user
        sets up a run (the widget calls this once docked) than at a run's end.
        """
        overlay = self._viewer.text_overlay
        window = self.window()
        if _drawn or overlay.visible or overlay.text or window is self or not window.isVisible():
            return
        overlay.text = " "
        overlay.visible = True
        soon(self, "_end_prepare", PREPARE_MS)

    def _end_prepare(self) -> None:
        overlay = self._viewer.text_overlay
        _drawn.add(" ")
        if self._target is None and overlay.text == " " and overlay.visible:  # still ours
            overlay.visible = False
            overlay.text = ""

    def _layer(self):
        return self.heat.in_viewer(self._viewer) if self.heat is not None else None

    def set_source(self, source: LayerRef | None, heat_layer=None, names=(), *,
                   held: bool = False) -> None:
        """Browse the heatmaps ``heat_layer`` of ``source`` (None: nothing), whose classes
        are ``names``. ``held``: the run left them hidden because the 3D view displays
        their class axis (:func:`~..assign.class_axis_shown`); they are shown when the
        view is 2D again, unless their visibility was changed meanwhile.
        """
        self.source = source
        self.heat = LayerRef.of(heat_layer) if source is not None else None
        if held and heat_layer is not None and not any(r.is_(heat_layer) for r in self._held):
            self._held.append(LayerRef.of(heat_layer))  # (a re-run keeps an earlier hold)
        if heat_layer is not None:
            self._links.connect(heat_layer.events.visible, self.sync)
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(list(names))
        self.combo.blockSignals(False)
        if self.heat is not None:
            self.show_class(0)
        else:
            self.sync()

    def _on_ndisplay(self, event=None) -> None:
        if self._viewer.dims.ndisplay == 3 or not self._held:
            return
        held, self._held = self._held, []
        self._class_after = self.combo.currentIndex()  # before sync follows the slider
        for ref in held:
            heat = ref.in_viewer(self._viewer)
            if heat is not None and not heat.visible:
                heat.visible = True
        soon(self, "_picked_class")  # napari sets the sliders after this event

    def _picked_class(self) -> None:
        """Move the class slider back to the picked class (the 3D view moved it)."""
        self.show_class(self._class_after)

    def show_class(self, index: int) -> None:
        """Move the viewer's class slider to class ``index``."""
        heat = self._layer()
        if index < 0 or heat is None:
            return
        dims = self._viewer.dims
        axis = dims.ndim - heat.ndim
        if 0 <= axis < dims.ndim and index < heat.data.shape[0]:
            dims.set_current_step(axis, index)
        self.sync()

    def current_class(self) -> str | None:
        """Class name of the heatmap the viewer shows (the class slider's position)."""
        heat = self._layer()
        if heat is None or not heat.visible:
            return None
        names = heat.metadata.get("itaclip", {}).get("class_names", [])
        dims = self._viewer.dims
        axis = dims.ndim - heat.ndim
        if not 0 <= axis < dims.ndim or not names:
            return None
        index = int(dims.current_step[axis])
        return names[index] if 0 <= index < len(names) else None

    def sync(self, event=None) -> None:
        """Name the shown heatmap's class on the canvas and in the picker."""
        name = self.current_class()
        overlay = self._viewer.text_overlay
        # heatmaps shown meanwhile (by the user) are theirs: nothing to do later
        self._held = [r for r in self._held if not getattr(r.in_viewer(self._viewer),
                                                           "visible", True)]
        if name is None:
            self._steps, self._target = [], None
            self._step_timer.stop()
            if overlay.text.startswith("heatmap: "):
                overlay.visible = False
            return
        target = f"heatmap: {name}"
        if target != self._target or overlay.text != self._expected:
            self._target, self._shown, self._expected = target, None, overlay.text
            self._steps = reveal_steps(target, _drawn)
            if self._viewer.dims.ndisplay == 3:  # a 3D frame costs far more than glyphs
                self._steps = [target]
            elif not _drawn:  # the first text drawn also renders vispy's 10 reference glyphs
                self._steps.insert(0, " ")  # (line height): a paint of their own
            self._step_timer.start()  # the first step in a turn of its own, too
        index = self.combo.findText(name)
        if index >= 0 and index != self.combo.currentIndex():
            self.combo.blockSignals(True)
            self.combo.setCurrentIndex(index)
            self.combo.blockSignals(False)

    def _next_step(self) -> None:
        """Show the next prefix of the overlay text (see :data:`GLYPHS_PER_PAINT`); the
        characters of the one before count as drawn once a step's time has passed.
        """
        overlay = self._viewer.text_overlay
        if overlay.text != self._expected:  # someone else changed the text: theirs stays
            self._steps, self._target = [], None
            return
        if self._shown is not None:
            _drawn.update(self._shown)
        if not self._steps:
            return
        self._shown = self._expected = self._steps.pop(0)
        overlay.text = self._shown
        overlay.visible = True
        self._step_timer.start()  # the next step, or (after the last) the confirmation
