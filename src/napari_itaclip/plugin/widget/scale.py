"""The widget's "Scale" panel: object size, visible region, and what a Run will do.

- **object size**: the typical size of the objects, in the layer's physical units when
  it has a scale and units (the spin box says which), else in pixels; it sets the
  working resolution (``ITACLIPConfig.object_size``, in level-0 pixels; docs/models.md,
  "Object size"). Off: the preset's ``short_side`` decides, as before.
- **visible region only**: segment only the tiles the canvas shows (at the working
  resolution), to explore a whole slide before running it whole.
- a line saying, before Run, which pyramid level is read, the working resolution, the
  windows and views, whether it runs in memory or in tiles, and the estimated time and
  peak memory (:func:`napari_itaclip.plugin.sources.describe_run`).
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel

from ...engine.scale import MIN_OBJECT_PX
from ..sources import layer_pixel_size

__all__ = ["ScalePanel", "layer_pixel_size"]


class ScalePanel(QGroupBox):
    """Object size, visible region only, and the run's description (``changed`` on edits)."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__("Scale", parent)
        self._layer = None
        self.object_size = QDoubleSpinBox()
        self.object_size.setRange(0.0, 1.0e6)
        self.object_size.setDecimals(2)
        self.object_size.setSpecialValueText("off (preset's short side)")
        self.object_size.setToolTip(
            "Typical size of the objects (diameter), in the layer's units: the image is "
            "reduced so that objects span two to four 16-px patches of the model, and "
            "segmented at that working resolution. Off: the preset's resize.")
        self.visible_only = QCheckBox("visible region only")
        self.visible_only.setToolTip("Segment only the tiles the canvas shows, at the "
                                     "working resolution (explore a large image first)")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("object size", self.object_size)
        form.addRow(self.visible_only)
        form.addRow(self.summary)
        self.object_size.valueChanged.connect(lambda _v: self.changed.emit())
        self.visible_only.toggled.connect(lambda _v: self.changed.emit())

    def set_layer(self, layer) -> None:
        """The picked layer: its units name the object size."""
        self._layer = layer
        size, unit = layer_pixel_size(layer)
        self.object_size.setSuffix(f" {unit}" if unit else " px")
        self.object_size.setSingleStep(1.0 if unit is None else max(size, 1e-3))

    def object_size_px(self) -> float | None:
        """The object size in the picked layer's level-0 pixels (None: off)."""
        value = float(self.object_size.value())
        if value <= 0:
            return None
        size, _unit = layer_pixel_size(self._layer)
        return value / size

    def set_object_size_px(self, pixels: float | None) -> None:
        """Show an object size given in pixels (None: off)."""
        size, _unit = layer_pixel_size(self._layer)
        self.object_size.setValue(0.0 if pixels is None else float(pixels) * size)

    @property
    def minimum_px(self) -> int:
        """The smallest object size (one patch at the image's own resolution)."""
        return MIN_OBJECT_PX
