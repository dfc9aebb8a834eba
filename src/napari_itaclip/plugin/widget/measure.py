"""The dock's Measure section: class table (with each class's colour), objects layer, CSV.

**Measure** reads a Labels layer as it is now (a user's edits and a relabel included:
``layer.data``, never the kept model result): the one the combo box names, which is the
layer the last run of the picked image wrote (``<image> labels`` or ``<image> labels
[2]`` ...) unless the user picks another. It measures it in a
worker thread (:func:`napari_itaclip.measure`: 0.08 s for a 1024 x 1024 plane, 0.3 s
for 2048 x 2048, twice that with an RGB image, per plane of a stack; see
``benchmarks/bench_measure.py``), then writes the
``<image> objects`` Labels layer and fills the table. **Save CSV** writes the class
and object tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..layers import class_color, labels_name
from ..measure_layers import measure_inputs, write_objects_layer
from ..refs import LayerRef, same

__all__ = ["MeasurePanel", "csv_paths"]

HEADERS = ("", "class", "pixels", "area", "% image", "% labelled", "objects", "mean")


def csv_paths(path: str | Path) -> tuple[Path, Path]:
    """``X_classes.csv`` and ``X_objects.csv`` for a chosen ``X.csv`` (or ``X``)."""
    path = Path(path)
    stem = path.name[:-4] if path.name.lower().endswith(".csv") else path.name
    for end in ("_classes", "_objects"):
        stem = stem[: -len(end)] if stem.endswith(end) else stem
    return path.with_name(f"{stem}_classes.csv"), path.with_name(f"{stem}_objects.csv")


def _job(inputs: dict):
    from ...measurements import measure

    return measure(**inputs)


class MeasurePanel(QWidget):
    """Measure button, class table and Save CSV button.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the Labels layers are read and the objects layer is written.
    links : EventLinks
        Where viewer callbacks are recorded (disconnected when the widget closes).
    current_image : callable
        Returns the image layer picked in the widget (or None).
    labels_of : callable
        ``labels_of(image)``: the Labels layer the last run of ``image`` wrote, or None.
    """

    #: (text, is_error) for the widget's status line
    message = Signal(str, bool)

    def __init__(self, viewer, links, current_image: Callable[[], object],
                 labels_of: Callable[[object], object] = lambda image: None):
        super().__init__()
        self.viewer = viewer
        self._links = links
        self._current_image = current_image
        self._labels_of = labels_of
        self._worker = None
        self._labels_layer: LayerRef | None = None
        self._chosen: LayerRef | None = None  # a layer the user picked in the combo box
        self.measurements = None
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The Labels layer Measure reads: the last run's for the "
                                    "picked image, or the one you choose")
        self.layer_combo.activated.connect(self._on_chosen)
        self.measure_btn = QPushButton("Measure")
        self.measure_btn.setToolTip("Class areas and objects of the picked image's Labels "
                                    "layer as it is now (your edits included), in the "
                                    "layer's physical units; adds '<image> objects'.")
        self.save_btn = QPushButton("Save CSV…")
        self.save_btn.setEnabled(False)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setVisible(False)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.measure_btn)
        row.addWidget(self.layer_combo, 1)
        row.addWidget(self.save_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        self.measure_btn.clicked.connect(lambda: self.measure())
        self.save_btn.clicked.connect(lambda: self.save_csv())

    @property
    def busy(self) -> bool:
        """Whether a measurement is running."""
        return self._worker is not None

    def labels_layer(self):
        """The Labels layer Measure reads (the combo box's), or None."""
        ref = self.layer_combo.currentData()
        return ref.in_viewer(self.viewer) if isinstance(ref, LayerRef) else None

    def _default(self):
        """The last run's Labels layer of the picked image, else ``<image> labels``."""
        image = self._current_image()
        if image is None:
            return None
        layer = self._labels_of(image)
        if layer is None:
            base = labels_name(image.name)
            layer = next((x for x in self._candidates() if x.name == base), None)
        return layer

    def _candidates(self) -> list:
        from napari.layers import Labels

        return [x for x in self.viewer.layers if isinstance(x, Labels)
                and x.metadata.get("itaclip", {}).get("kind") != "objects"]

    def _on_chosen(self, index: int) -> None:
        ref = self.layer_combo.itemData(index)
        default = self._default()
        self._chosen = None if ref is None or ref.is_(default) else ref

    def reset_choices(self) -> None:
        """List the Labels layers; select the user's choice, else the default."""
        layers = self._candidates()
        chosen = self._chosen.in_viewer(self.viewer) if self._chosen is not None else None
        pick = chosen if chosen is not None else self._default()
        self._chosen = LayerRef.of(chosen)
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in layers:
            self.layer_combo.addItem(layer.name, LayerRef(layer))
            if same(layer, pick):
                self.layer_combo.setCurrentIndex(self.layer_combo.count() - 1)
        if pick is None:
            self.layer_combo.setCurrentIndex(-1)
        self.layer_combo.blockSignals(False)

    def teardown(self) -> None:
        """Stop a running measurement (the widget is closing); its result is dropped."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.quit()
        self.measurements = None

    def measure(self, **options) -> bool:
        """Measure the picked image's Labels layer in a worker; False if there is none.

        ``options`` go to :func:`napari_itaclip.measure` (``min_size`` ...).
        """
        if self.busy:
            return False
        image = self._current_image()
        layer = self.labels_layer()
        if layer is None:
            name = getattr(image, "name", None)
            self.message.emit("Nothing to measure: run a segmentation first" + (
                f" (no '{labels_name(name)}' layer)." if name else "."), True)
            return False
        try:
            inputs = measure_inputs(layer, image, self.viewer)
        except ValueError as exc:
            self.message.emit(str(exc), True)
            return False
        inputs.update(options)
        from napari.qt.threading import create_worker

        self._labels_layer = LayerRef(layer)
        self.measure_btn.setEnabled(False)
        self.message.emit(f"Measuring '{layer.name}'…", False)
        self._worker = create_worker(_job, inputs, _start_thread=False, _connect={
            "returned": self._on_returned, "errored": self._on_errored,
            "finished": self._on_finished})
        self._worker.start()
        return True

    def _on_returned(self, m) -> None:
        if self._worker is None:  # torn down
            return
        ref = self._labels_layer
        layer = ref.in_viewer(self.viewer) if ref is not None else None
        if layer is None:
            self.message.emit("The Labels layer was removed while measuring.", True)
            return
        self.measurements = m
        write_objects_layer(self.viewer, layer, m)
        self.show_table(m, layer)
        self.save_btn.setEnabled(True)
        n = len(m.objects)
        self.message.emit(f"Measured '{layer.name}': {n} object(s); areas in {m.unit}².", False)

    def _on_errored(self, exc: BaseException) -> None:
        self.message.emit(f"Measure failed: {exc}", True)

    def _on_finished(self) -> None:
        self._worker = None
        self.measure_btn.setEnabled(True)

    def show_table(self, m, layer=None) -> None:
        """Fill the table with the class rows (summed over the planes of a stack)."""
        cols = [c for c in ("class", "class_name") if c in m.classes.columns]
        sums = m.classes.groupby(cols, sort=True)[["pixels", "area", "objects"]].sum()
        total = float(sums["pixels"].sum()) or 1.0
        labelled = float(sums.loc[sums.index.get_level_values(0) != 0, "pixels"].sum())
        mean_col = next((c for c in m.classes.columns if c.startswith("mean_intensity")), None)
        self.table.setRowCount(len(sums))
        self.table.setHorizontalHeaderItem(3, QTableWidgetItem(f"area ({m.unit}²)"))
        for r, ((value, name), row) in enumerate(sums.iterrows()):
            swatch = QTableWidgetItem("")
            if value != 0:
                swatch.setBackground(QColor.fromRgbF(*_colour(layer, value)))
            cells = [name, f"{int(row['pixels'])}", f"{row['area']:.4g}",
                     f"{100 * row['pixels'] / total:.2f}",
                     "" if value == 0 or not labelled else f"{100 * row['pixels'] / labelled:.2f}",
                     f"{int(row['objects'])}",
                     _class_mean(m.classes, value, mean_col)]
            self.table.setItem(r, 0, swatch)
            for c, text in enumerate(cells, start=1):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.table.setVisible(True)
        self.summary.setText(f"{len(m.objects)} objects; spacing {m.spacing[0]:g} x "
                             f"{m.spacing[1]:g} {m.unit}")

    def save_csv(self, path: str | Path | None = None, *, overwrite: bool = False) -> list[Path]:
        """Write ``X_classes.csv`` and ``X_objects.csv`` (asks for ``X`` when None).

        Existing files are not replaced unless ``overwrite`` (the dialog asks).
        """
        if self.measurements is None:
            self.message.emit("Measure first.", True)
            return []
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save measurements (CSV)",
                                                  "measurements.csv", "CSV (*.csv)")
            if not path:
                return []
            overwrite = self._confirm(csv_paths(path))
            if not overwrite and any(p.exists() for p in csv_paths(path)):
                return []
        targets = csv_paths(path)
        taken = [str(p) for p in targets if p.exists()]
        if taken and not overwrite:
            self.message.emit(f"Not saved: {', '.join(taken)} exist(s).", True)
            return []
        written = self.measurements.to_csv(*targets)
        self.message.emit("Saved " + ", ".join(p.name for p in written), False)
        return written

    def _confirm(self, targets) -> bool:
        taken = [p.name for p in targets if p.exists()]
        if not taken:
            return False
        answer = QMessageBox.question(self, "Replace files?",
                                      f"{', '.join(taken)} exist(s). Replace?")
        return answer == QMessageBox.StandardButton.Yes


def _colour(layer, value: int) -> tuple[float, float, float, float]:
    try:
        rgba = np.asarray(layer.get_color(int(value)), float)
        if rgba.shape == (4,) and rgba[3] > 0:
            return tuple(float(v) for v in rgba)
    except Exception:  # no layer, or an older napari without get_color
        pass
    return tuple(float(v) for v in class_color(int(value)))


def _class_mean(classes, value: int, column: str | None) -> str:
    if column is None:
        return ""
    rows = classes[classes["class"] == value]
    weights = rows["pixels"].to_numpy(float)
    if weights.sum() == 0:
        return ""
    return f"{float(np.nansum(rows[column].to_numpy() * weights) / weights.sum()):.4g}"
