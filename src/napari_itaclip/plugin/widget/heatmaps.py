"""Browsing the similarity heatmaps: a class picker tied to the heatmap layer's class axis."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from ..refs import LayerRef
from .links import EventLinks

__all__ = ["HeatmapBrowser"]


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

    def _layer(self):
        return self.heat.in_viewer(self._viewer) if self.heat is not None else None

    def set_source(self, source: LayerRef | None, heat_layer=None, names=()) -> None:
        """Browse the heatmaps ``heat_layer`` of ``source`` (None: nothing), whose classes
        are ``names``.
        """
        self.source = source
        self.heat = LayerRef.of(heat_layer) if source is not None else None
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
        if name is None:
            if overlay.text.startswith("heatmap: "):
                overlay.visible = False
            return
        overlay.text = f"heatmap: {name}"
        overlay.visible = True
        index = self.combo.findText(name)
        if index >= 0 and index != self.combo.currentIndex():
            self.combo.blockSignals(True)
            self.combo.setCurrentIndex(index)
            self.combo.blockSignals(False)
