"""The ITACLIP dock widget.

Everything heavy runs in a ``napari.qt.threading`` worker over :mod:`napari_itaclip.planes`;
napari and torch are imported inside functions only, so building the widget is cheap
and the module imports without them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ...config import ATTENTION_MODES, ITACLIPConfig, list_presets
from ...planes import COMPOSITE, ImageLayout
from ...vocabulary import Vocabulary
from ..layers import MODEL_METADATA_KEY, VOCAB_METADATA_KEY

if TYPE_CHECKING:
    import napari

    from ...planes import RunProgress, StackResult

__all__ = ["ITACLIPWidget"]


#: open_clip names offered after the catalogue's entries (any other name can be typed)
MODELS = ["ViT-B-16-quickgelu", "ViT-B-32", "ViT-L-14", "ViT-L-14-336"]
PRETRAINED = ["openai", "laion2b_s34b_b88k", "laion2b_s32b_b82k", "datacomp_xl_s13b_b90k"]
DEVICES = ["auto", "cuda", "mps", "cpu"]
RELABEL_DEBOUNCE_MS = 60  # wait this long after the last slider move
RELABEL_SLICE_S = 0.03  # GUI-thread time per relabel step (at least one plane)
SLICES_CURRENT = "current slice"
SLICES_ALL = "all slices"

_PLACEHOLDER = """One class per line, synonyms separated by commas, e.g.
background: sky, wall, floor
cat, feline >= a small domesticated carnivorous mammal
person"""


class _ConfigEditor(QWidget):
    """Form for the ITACLIPConfig fields (the thresholds live in the main panel)."""

    INT_FIELDS = {"crop": (1, 4096), "stride": (1, 4096), "pamr_steps": (0, 100),
                  "close_size": (0, 31)}
    FLOAT_FIELDS = {"mid_weight": (0.0, 1.0, 0.05), "eng_weight": (0.0, 1.0, 0.05),
                    "aux_weight": (0.0, 1.0, 0.05), "logit_scale": (0.1, 1000.0, 5.0)}
    TUPLE_FIELDS = ("mid_layers", "pamr_dilations")
    BOOL_FIELDS = ("drop_last_mlp", "image_engineering")
    CHOICE_FIELDS = {"attention": ATTENTION_MODES, "aux_kind": ("definitions", "synonyms")}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._base = ITACLIPConfig()
        self.fields: dict[str, QWidget] = {}
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        short = QSpinBox()
        short.setRange(0, 8192)
        short.setSpecialValueText("native (no resize)")
        short.setToolTip("Resize so the short side has this many pixels; 0 = native size")
        self.fields["short_side"] = short
        form.addRow("short side", short)
        for name, (lo, hi) in self.INT_FIELDS.items():
            w = QSpinBox()
            w.setRange(lo, hi)
            self.fields[name] = w
            form.addRow(name.replace("_", " "), w)
        for name, choices in self.CHOICE_FIELDS.items():
            w = QComboBox()
            w.addItems(list(choices))
            self.fields[name] = w
            form.addRow(name.replace("_", " "), w)
        for name in self.TUPLE_FIELDS:
            w = QLineEdit()
            w.setToolTip("comma-separated integers")
            self.fields[name] = w
            form.addRow(name.replace("_", " "), w)
        for name, (lo, hi, step) in self.FLOAT_FIELDS.items():
            w = QDoubleSpinBox()
            w.setRange(lo, hi)
            w.setSingleStep(step)
            w.setDecimals(3)
            self.fields[name] = w
            form.addRow(name.replace("_", " "), w)
        for name in self.BOOL_FIELDS:
            w = QCheckBox()
            self.fields[name] = w
            form.addRow(name.replace("_", " "), w)
        self.set_config(self._base)

    def set_config(self, cfg: ITACLIPConfig) -> None:
        """Show ``cfg``'s values (fields this form does not edit are kept from it)."""
        self._base = cfg
        self.fields["short_side"].setValue(cfg.short_side or 0)
        for name in self.INT_FIELDS:
            self.fields[name].setValue(int(getattr(cfg, name)))
        for name in self.FLOAT_FIELDS:
            self.fields[name].setValue(float(getattr(cfg, name)))
        for name in self.TUPLE_FIELDS:
            self.fields[name].setText(", ".join(str(i) for i in getattr(cfg, name)))
        for name in self.BOOL_FIELDS:
            self.fields[name].setChecked(bool(getattr(cfg, name)))
        for name in self.CHOICE_FIELDS:
            self.fields[name].setCurrentText(str(getattr(cfg, name)))

    def config(self) -> ITACLIPConfig:
        """The edited configuration; raises ValueError with the reason if invalid."""
        changes: dict[str, Any] = {"short_side": self.fields["short_side"].value() or None}
        for name in self.INT_FIELDS:
            changes[name] = self.fields[name].value()
        for name in self.FLOAT_FIELDS:
            changes[name] = self.fields[name].value()
        for name in self.TUPLE_FIELDS:
            text = self.fields[name].text().replace(";", ",")
            try:
                changes[name] = tuple(int(t) for t in text.split(",") if t.strip())
            except ValueError:
                raise ValueError(
                    f"{name}: expected comma-separated integers, got {text!r}") from None
        for name in self.BOOL_FIELDS:
            changes[name] = self.fields[name].isChecked()
        for name in self.CHOICE_FIELDS:
            changes[name] = self.fields[name].currentText()
        return dataclasses.replace(self._base, **changes)


class ITACLIPWidget(QWidget):
    """Open-vocabulary segmentation of napari image layers with ITACLIP.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the widget reads and writes.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._busy = False
        self._segmenter_override = None
        self._results: dict[str, StackResult] = {}
        self._last_source: str | None = None
        self._auto_vocab = ""  # the last vocabulary filled in from a layer's metadata
        self._relabel_timer = QTimer(self)
        self._relabel_timer.setSingleShot(True)
        self._relabel_timer.setInterval(RELABEL_DEBOUNCE_MS)
        self._relabel_timer.timeout.connect(self.relabel)
        # relabelling runs on the GUI thread in slices of at most RELABEL_SLICE_S,
        # the shown plane first, so a slider drag over a big stack stays responsive
        self._relabel_job: tuple | None = None
        self._relabel_step_timer = QTimer(self)
        self._relabel_step_timer.setSingleShot(True)
        self._relabel_step_timer.setInterval(0)
        self._relabel_step_timer.timeout.connect(self._relabel_step)
        self._build()
        self._connect_viewer()
        self._refresh_layers()
        self._on_preset(self.preset_combo.currentText())

    # ------------------------------------------------------------------ building UI
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        scroll.setWidget(inner)
        outer.addWidget(scroll)
        root = QVBoxLayout(inner)

        # image and nD options
        image_box = QGroupBox("Image")
        form = QFormLayout(image_box)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The image layer to segment")
        form.addRow("layer", self.layer_combo)
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "For a multichannel (non-RGB) image: the axis holding the channels")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip(
            "Segment one channel, or a composite (<= 3 channels as RGB, more by maximum)")
        form.addRow("channel axis", self.channel_axis_combo)
        form.addRow("channel", self.channel_combo)
        self.slices_combo = QComboBox()
        self.slices_combo.addItems([SLICES_CURRENT, SLICES_ALL])
        self.slices_combo.setToolTip("For stacks and time series: the shown plane or every plane")
        form.addRow("slices", self.slices_combo)
        self.shape_label = QLabel("")
        self.shape_label.setWordWrap(True)
        form.addRow(self.shape_label)
        root.addWidget(image_box)

        # vocabulary
        vocab_box = QGroupBox("Vocabulary")
        vbox = QVBoxLayout(vocab_box)
        self.vocab_edit = QPlainTextEdit()
        self.vocab_edit.setPlaceholderText(_PLACEHOLDER)
        self.vocab_edit.setMinimumHeight(90)
        vbox.addWidget(self.vocab_edit)
        self.vocab_status = QLabel("")
        self.vocab_status.setWordWrap(True)
        vbox.addWidget(self.vocab_status)
        row = QHBoxLayout()
        self.load_vocab_btn = QPushButton("Load…")
        self.save_vocab_btn = QPushButton("Save…")
        row.addWidget(self.load_vocab_btn)
        row.addWidget(self.save_vocab_btn)
        vbox.addLayout(row)
        row = QHBoxLayout()
        self.gen_defs_btn = QPushButton("Generate definitions")
        self.gen_syn_btn = QPushButton("Generate synonyms")
        for b, kind in ((self.gen_defs_btn, "definitions"), (self.gen_syn_btn, "synonyms")):
            b.setToolTip(f"Ask an LLM for {kind} of the classes (fills the '>=' parts; "
                         "review them before running)")
            row.addWidget(b)
        vbox.addLayout(row)
        root.addWidget(vocab_box)

        # model and settings
        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list_presets())
        self.preset_combo.setCurrentText("balanced")
        self.preset_combo.setToolTip("voc21 … cityscapes: the paper's settings; balanced: "
                                     "stride 56, interactive default; fast: quick preview")
        form.addRow("preset", self.preset_combo)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self._add_model_items()
        self.model_combo.setToolTip(
            "A catalogue model (domain after the dash; docs/models.md) or any open_clip model "
            "name, hf-hub:org/name or local-dir:/path/to/folder")
        form.addRow("model", self.model_combo)
        self.pretrained_combo = QComboBox()
        self.pretrained_combo.setEditable(True)
        self.pretrained_combo.addItems(PRETRAINED)
        self.pretrained_combo.setToolTip("open_clip pretrained tag, or a local checkpoint file; "
                                         "empty for hf-hub:/local-dir: models (their own weights)")
        self.pretrained_combo.lineEdit().setPlaceholderText("(the model's own weights)")
        self.model_combo.currentTextChanged.connect(self._on_model_text)
        self.browse_ckpt_btn = QToolButton()
        self.browse_ckpt_btn.setText("…")
        self.browse_ckpt_btn.setToolTip("Choose a local checkpoint file")
        row = QHBoxLayout()
        row.addWidget(self.pretrained_combo, 1)
        row.addWidget(self.browse_ckpt_btn)
        form.addRow("pretrained", row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.half_check = QCheckBox("half precision (CUDA)")
        row = QHBoxLayout()
        row.addWidget(self.device_combo, 1)
        row.addWidget(self.half_check)
        form.addRow("device", row)
        root.addWidget(model_box)

        # thresholds: relabel instantly
        thr_box = QGroupBox("Thresholds (relabel without re-running)")
        form = QFormLayout(thr_box)
        self.prob_slider, self.prob_label = self._slider(100)
        self.prob_slider.setToolTip("Pixels whose best class probability is below this "
                                    "become label 0")
        form.addRow("probability", self._slider_row(self.prob_slider, self.prob_label))
        self.area_slider, self.area_label = self._slider(50)
        self.area_slider.setToolTip("Remove classes covering no more than this fraction of "
                                    "the labelled pixels; 0 = off")
        form.addRow("area", self._slider_row(self.area_slider, self.area_label))
        root.addWidget(thr_box)

        # advanced
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced settings")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        root.addWidget(self.advanced_toggle)
        self.config_editor = _ConfigEditor()
        self.config_editor.setVisible(False)
        root.addWidget(self.config_editor)

        # run
        row = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        root.addWidget(self.progress_bar)
        self.status_label = QLabel("Ready")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)

        # heatmap browsing
        row = QHBoxLayout()
        row.addWidget(QLabel("heatmap of"))
        self.heatmap_combo = QComboBox()
        self.heatmap_combo.setToolTip("Show this class's similarity map (moves the class slider)")
        row.addWidget(self.heatmap_combo, 1)
        root.addLayout(row)
        root.addStretch(1)
        self.setMinimumWidth(inner.sizeHint().width() + 40)

        # signals
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        self.channel_axis_combo.currentIndexChanged.connect(self._on_channel_axis)
        self.vocab_edit.textChanged.connect(self._validate_vocabulary)
        self.load_vocab_btn.clicked.connect(lambda: self.load_vocabulary())
        self.save_vocab_btn.clicked.connect(lambda: self.save_vocabulary())
        self.gen_defs_btn.clicked.connect(lambda: self.generate_aux("definitions"))
        self.gen_syn_btn.clicked.connect(lambda: self.generate_aux("synonyms"))
        self.preset_combo.currentTextChanged.connect(self._on_preset)
        self.browse_ckpt_btn.clicked.connect(self._browse_checkpoint)
        self.prob_slider.valueChanged.connect(self._on_threshold)
        self.area_slider.valueChanged.connect(self._on_threshold)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.heatmap_combo.currentIndexChanged.connect(self._show_heatmap_class)

    @staticmethod
    def _slider(maximum: int) -> tuple[QSlider, QLabel]:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(0, maximum)
        label = QLabel("0.00")
        label.setMinimumWidth(36)
        return s, label

    @staticmethod
    def _slider_row(slider: QSlider, label: QLabel) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(slider, 1)
        row.addWidget(label)
        return row

    def _toggle_advanced(self, on: bool) -> None:
        self.config_editor.setVisible(on)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # ------------------------------------------------------------------ viewer sync
    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layers)
        events.removed.connect(self._refresh_layers)
        events.removed.connect(self._prune_results)
        events.moved.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.dims.events.current_step.connect(self._sync_heatmap_class)

    def _prune_results(self, event=None) -> None:
        """Forget kept maps whose source or output layers are no longer in the viewer.

        The kept maps (three C x H x W float32 arrays per plane) are what makes relabel
        work without a model run; once a layer they belong to is gone they are dead
        weight, so they are dropped.
        """
        from ..layers import heatmaps_name, labels_name

        present = {layer.name for layer in self.viewer.layers}
        removed = getattr(event, "value", None)
        removed_name = getattr(removed, "name", None)
        for source in list(self._results):
            names = (source, labels_name(source), heatmaps_name(source))
            if removed_name in names or not all(n in present for n in names):
                del self._results[source]
        if self._last_source not in self._results:
            self._last_source = None
            self._stop_relabel()

    def clear_results(self) -> None:
        """Forget every kept map (relabelling then needs a new run)."""
        self._stop_relabel()
        self._results.clear()
        self._last_source = None

    def closeEvent(self, event) -> None:
        """Free the kept maps when the widget closes."""
        self.clear_results()
        super().closeEvent(event)

    def _image_layers(self) -> list:
        from napari.layers import Image

        out = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image):
                continue
            if "itaclip" in layer.metadata:  # our own heatmaps
                continue
            out.append(layer)
        return out

    def _refresh_layers(self, event=None) -> None:
        for layer in self.viewer.layers:
            # keep names in the picker current
            # napari's EventEmitter ignores a callback that is already connected
            layer.events.name.connect(self._refresh_layers)
        names = [layer.name for layer in self._image_layers()]
        current = self.layer_combo.currentText()
        if names == [self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]:
            return
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentText() != current:
            self._on_layer_changed(self.layer_combo.currentText())

    def _on_active_layer(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and layer.name in [
                self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]:
            self.layer_combo.setCurrentText(layer.name)

    def selected_layer(self):
        """The image layer chosen in the picker, or None."""
        name = self.layer_combo.currentText()
        for layer in self._image_layers():
            if layer.name == name:
                return layer
        return None

    def _on_layer_changed(self, name: str) -> None:
        layer = self.selected_layer()
        self._update_channel_options(layer)
        if layer is None:
            self.shape_label.setText("Add an image layer (File ▸ Open Sample ▸ napari-itaclip).")
            return
        suggestion = layer.metadata.get(VOCAB_METADATA_KEY)
        current = self.vocab_edit.toPlainText().strip()
        # fill the editor unless it holds the user's own text
        if suggestion and current in ("", self._auto_vocab) and current != str(suggestion).strip():
            self.vocab_edit.setPlainText(str(suggestion).strip())
            self._auto_vocab = str(suggestion).strip()
            self.status_label.setText(f"Loaded the vocabulary suggested by '{layer.name}'.")
        suggested = layer.metadata.get(MODEL_METADATA_KEY)
        if suggested:
            from ...catalogue import find_entry

            entry = find_entry(str(suggested))
            if entry is not None and self._model_settings()[0] != entry.model:
                self.status_label.setText(
                    f"'{layer.name}' suits the {entry.short_name} model ({entry.domain}): "
                    "pick it under Model to use it.")
        self._update_shape_label()

    def _update_channel_options(self, layer) -> None:
        self.channel_axis_combo.blockSignals(True)
        self.channel_axis_combo.clear()
        self.channel_axis_combo.addItem("none", None)
        multichannel = layer is not None and not layer.rgb and layer.ndim >= 3
        guess = None
        if multichannel:
            labels = list(getattr(layer, "axis_labels", ()) or ())
            for ax in range(layer.ndim - 2):
                label = labels[ax] if ax < len(labels) else str(ax)
                self.channel_axis_combo.addItem(f"axis {ax} ({label}, {layer.data.shape[ax]})", ax)
                if str(label).lower() in ("c", "ch", "channel", "channels"):
                    guess = ax
        if guess is not None:
            self.channel_axis_combo.setCurrentIndex(self.channel_axis_combo.findData(guess))
        self.channel_axis_combo.blockSignals(False)
        self.channel_axis_combo.setEnabled(multichannel)
        self._on_channel_axis()

    def _on_channel_axis(self, *args) -> None:
        layer = self.selected_layer()
        axis = self.channel_axis_combo.currentData()
        self.channel_combo.clear()
        self.channel_combo.addItem(COMPOSITE, COMPOSITE)
        if layer is not None and axis is not None:
            for c in range(layer.data.shape[axis]):
                self.channel_combo.addItem(f"channel {c}", c)
        self.channel_combo.setEnabled(axis is not None)
        self._update_shape_label()

    def layout_for(self, layer) -> ImageLayout:
        """The axis roles of ``layer`` given the channel choices in the widget."""
        from ..layers import layout_for_layer

        return layout_for_layer(layer, self.channel_axis_combo.currentData(),
                                self.channel_combo.currentData() or COMPOSITE)

    def _update_shape_label(self) -> None:
        layer = self.selected_layer()
        if layer is None:
            return
        try:
            layout = self.layout_for(layer)
        except ValueError as exc:
            self.shape_label.setText(str(exc))
            self.slices_combo.setEnabled(False)
            return
        kind = "RGB" if layout.rgb else ("multichannel" if layout.channel_axis is not None
                                         else "grey")
        text = f"{kind}, output {' × '.join(map(str, layout.out_shape))}"
        if layout.n_slices > 1:
            text += f" ({layout.n_slices} planes)"
        self.shape_label.setText(text)
        self.slices_combo.setEnabled(layout.n_slices > 1)

    # ------------------------------------------------------------------ vocabulary
    def vocabulary(self) -> Vocabulary:
        """The vocabulary in the editor (raises VocabularyError with the reason)."""
        return Vocabulary.coerce(self.vocab_edit.toPlainText())

    def set_vocabulary(self, vocab: Vocabulary | str) -> None:
        """Replace the editor's text."""
        text = vocab.format() if isinstance(vocab, Vocabulary) else str(vocab)
        self.vocab_edit.setPlainText(text)

    def _validate_vocabulary(self) -> None:
        text = self.vocab_edit.toPlainText()
        if not text.strip():
            self.vocab_status.setText("")
            return
        try:
            v = Vocabulary.coerce(text)
        except (ValueError, TypeError) as exc:
            self.vocab_status.setText(f"<span style='color:#e55'>{exc}</span>")
            return
        bg = " incl. background" if v.has_background else " (no background class)"
        aux = len(v.aux_texts)
        self.vocab_status.setText(f"{len(v)} classes{bg}" + (f", {aux} with '>=' text"
                                                               if aux else ""))

    def load_vocabulary(self, path: str | Path | None = None) -> None:
        """Read a vocabulary file into the editor (asks for a file when ``path`` is None)."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load vocabulary", "",
                                                  "Vocabulary (*.txt);;All files (*)")
            if not path:
                return
        try:
            text = Path(path).read_text(encoding="utf-8")
            Vocabulary.parse(text)
        except (OSError, ValueError) as exc:
            self._error(f"Cannot load vocabulary from {path}: {exc}")
            return
        self.vocab_edit.setPlainText(text.rstrip("\n"))
        self.status_label.setText(f"Loaded vocabulary from {Path(path).name}.")

    def save_vocabulary(self, path: str | Path | None = None) -> None:
        """Write the editor's vocabulary to a file in the text form."""
        try:
            vocab = self.vocabulary()
        except (ValueError, TypeError) as exc:
            self._error(f"Cannot save: {exc}")
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save vocabulary", "vocabulary.txt",
                                                  "Vocabulary (*.txt);;All files (*)")
            if not path:
                return
        try:
            vocab.save(path)
        except OSError as exc:
            self._error(f"Cannot save vocabulary to {path}: {exc}")
            return
        self.status_label.setText(f"Saved vocabulary to {Path(path).name}.")

    # ------------------------------------------------------------------ settings
    def _on_preset(self, name: str) -> None:
        try:
            cfg = ITACLIPConfig.preset(name)
        except ValueError:
            return
        self.set_config(cfg)

    def set_config(self, cfg: ITACLIPConfig) -> None:
        """Show ``cfg`` in the advanced section and the threshold sliders."""
        self.config_editor.set_config(cfg)
        self.prob_slider.blockSignals(True)
        self.area_slider.blockSignals(True)
        self.prob_slider.setValue(round(cfg.prob_threshold * 100))
        self.area_slider.setValue(round((cfg.area_threshold or 0.0) * 100))
        self.prob_slider.blockSignals(False)
        self.area_slider.blockSignals(False)
        self._update_threshold_labels()

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", "",
                                              "Checkpoints (*.pt *.pth *.bin *.safetensors);;"
                                              "All files (*)")
        if path:
            self.pretrained_combo.setCurrentText(path)

    def thresholds(self) -> tuple[float, float | None]:
        """(prob_threshold, area_threshold) from the sliders (area 0 = None)."""
        area = self.area_slider.value() / 100
        return self.prob_slider.value() / 100, (area if area > 0 else None)

    def _update_threshold_labels(self) -> None:
        prob, area = self.thresholds()
        self.prob_label.setText(f"{prob:.2f}")
        self.area_label.setText("off" if area is None else f"{area:.2f}")

    def config(self) -> ITACLIPConfig:
        """The configuration of the next run (advanced fields + threshold sliders)."""
        prob, area = self.thresholds()
        return self.config_editor.config().replace(prob_threshold=prob, area_threshold=area)

    def use_segmenter(self, segmenter) -> None:
        """Run with this Segmenter instead of one built from the model fields (or None)."""
        self._segmenter_override = segmenter

    def _add_model_items(self) -> None:
        """The catalogue's entries (label, tooltip with towers, size, licence), then MODELS."""
        from ...catalogue import CATALOGUE

        for e in CATALOGUE:
            self.model_combo.addItem(e.label)
            self.model_combo.setItemData(
                self.model_combo.count() - 1,
                f"{e.model}{' / ' + e.pretrained if e.pretrained else ''}\n{e.notes}\n"
                f"vision: {e.vision}; text: {e.text}; {e.image_size} px\nlicence: {e.licence}"
                + ("\nneeds: pip install 'napari-itaclip[hf]'" if e.needs_transformers else ""),
                Qt.ItemDataRole.ToolTipRole)
        self.model_combo.addItems(MODELS)

    def _on_model_text(self, text: str) -> None:
        """A catalogue entry picked: show its pretrained tag (empty: the model's own weights)."""
        from ...catalogue import find_entry

        entry = find_entry(text)
        if entry is not None and text.strip().lower() != entry.model.lower():
            self.pretrained_combo.setCurrentText(entry.pretrained or "")

    def _model_settings(self) -> tuple[str, str | None, str, bool]:
        """(model, pretrained, device, half) from the model fields; GUI thread only.

        A catalogue label or short name becomes its open_clip id.
        """
        from ...catalogue import resolve

        pretrained = self.pretrained_combo.currentText().strip() or None
        model, pretrained = resolve(self.model_combo.currentText().strip(), pretrained)
        return (model, pretrained, self.device_combo.currentText(), self.half_check.isChecked())

    def _segmenter(self):
        if self._segmenter_override is not None:
            return self._segmenter_override
        from ...engine.registry import get_segmenter

        return get_segmenter(*self._model_settings()[:3], half=self._model_settings()[3])

    # ------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        """Whether a worker (segmentation or LLM) is running."""
        return self._busy

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for w in (self.run_btn, self.gen_defs_btn, self.gen_syn_btn, self.layer_combo):
            w.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def run(self) -> None:
        """Segment the selected layer in a worker thread (returns at once)."""
        from ...engine.registry import get_segmenter
        from ...planes import RunProgress, iter_segment_slices
        from ..layers import layer_data, resolve_slices

        if self._busy:
            return
        layer = self.selected_layer()
        if layer is None:
            self._error("Choose an image layer to segment.")
            return
        try:
            vocab = self.vocabulary()
            cfg = self.config()
            layout = self.layout_for(layer)
            mode = "all" if (layout.n_slices <= 1 or
                             self.slices_combo.currentText() == SLICES_ALL) else "current"
            indices = resolve_slices(layer, layout, mode, self.viewer)
        except (ValueError, TypeError) as exc:
            self._error(str(exc))
            return
        self._remember_edited_aux(vocab)
        data = layer_data(layer)
        n = len(indices)
        source_name = layer.name
        # read every widget here, on the GUI thread, at click time: the worker thread
        # must not touch Qt widgets
        override = self._segmenter_override
        settings = self._model_settings()

        def job():
            yield RunProgress("load", 0, 0, 0, n)
            seg = override if override is not None else get_segmenter(*settings[:3], half=settings[3])
            return (yield from iter_segment_slices(seg, data, layout, indices, vocab, cfg))

        self._run_source = source_name
        self._start(job, returned=self._on_returned, yielded=self._on_progress,
                    message="Starting…", error_prefix="ITACLIP failed")

    def _start(self, job, *, returned, yielded, message: str, error_prefix: str) -> None:
        from napari.qt.threading import create_worker

        self._error_prefix = error_prefix
        self._set_busy(True)
        self.progress_bar.setValue(0)
        self.status_label.setText(message)
        self._worker = create_worker(job, _start_thread=False, _connect={
            "yielded": yielded, "returned": returned, "errored": self._on_errored,
            "aborted": self._on_aborted, "finished": self._on_finished})
        self._worker.start()

    def cancel(self) -> None:
        """Ask the running worker to stop; it does so at its next progress step."""
        if self._worker is not None and self._busy:
            self.status_label.setText("Cancelling…")
            self._worker.quit()

    def _on_progress(self, p: RunProgress) -> None:
        self.progress_bar.setValue(int(round(1000 * p.fraction)))
        self.status_label.setText(p.describe())

    def _on_returned(self, stack: StackResult) -> None:
        from ..layers import write_layers

        self._stop_relabel()  # a pending relabel would write stale planes
        source = self._find_source(self._run_source)
        if source is None:
            self._error(f"The layer '{self._run_source}' was removed during the run.")
            return
        previous = self._results.get(source.name)
        merged = previous.merge(stack) if previous is not None else stack
        # writing may replace an output layer (its removal prunes the old entry), so
        # the merged result is stored after writing
        labels, heat = write_layers(self.viewer, source, stack)
        self._results[source.name] = merged
        self._last_source = source.name
        self._prune_results()  # e.g. entries of renamed layers
        heat.events.visible.connect(self._sync_heatmap_class)
        self._update_heatmap_combo(stack.class_names)
        self.progress_bar.setValue(1000)
        # one pass per plane of this run (not one per class over the whole volume)
        n_values = len(labels.features["index"])
        hist = np.zeros(n_values, dtype=np.int64)
        for idx in stack.results:
            plane = np.asarray(labels.data[idx]).ravel()
            hist += np.bincount(plane[(plane >= 0) & (plane < n_values)],
                                minlength=n_values)[:n_values]
        counts = ", ".join(
            f"{name}: {int(hist[int(v)])}"
            for v, name in zip(labels.features["index"], labels.features["class_name"])
            if int(v) != 0 or stack.has_background)
        self.status_label.setText(f"Done: {len(stack.results)} plane(s). Pixels per class "
                                  f"in them: {counts}")

    def _find_source(self, name: str | None):
        for layer in self._image_layers():
            if layer.name == name:
                return layer
        return None

    def _on_errored(self, exc: BaseException) -> None:
        self._error(f"{self._error_prefix}: {exc}")

    def _on_aborted(self) -> None:
        self.progress_bar.setValue(0)
        self.status_label.setText("Cancelled; no layer was changed.")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_busy(False)

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"<span style='color:#e55'>{message}</span>")
        show_error(message)

    # ------------------------------------------------------------------ relabel
    def _on_threshold(self, *args) -> None:
        self._update_threshold_labels()
        if self._last_source in self._results:
            self._relabel_timer.start()

    def relabel(self) -> None:
        """Recompute the labels of the last run from its kept maps (no model run).

        The shown plane is relabelled at once; the other planes follow in short steps
        on the event loop (see :attr:`relabelling`), written into the Labels layer in
        place. A new call restarts with the current thresholds.
        """
        from napari.layers import Labels

        from ..layers import (
            current_slice,
            find_layer,
            labels_name,
            labels_writable_in_place,
            write_labels,
        )

        self._stop_relabel()
        stack = self._results.get(self._last_source or "")
        source = self._find_source(self._last_source)
        if stack is None or source is None:
            return
        prob, area = self.thresholds()
        layer = find_layer(self.viewer, labels_name(source.name), Labels)
        if layer is None or not labels_writable_in_place(layer, stack):
            # no usable layer to update plane by plane: write a new one at once
            write_labels(self.viewer, source, stack.relabel(prob_threshold=prob,
                                                            area_threshold=area))
            self._relabel_done(prob, area)
            return
        order = list(stack.results)
        try:
            shown = current_slice(source, stack.layout, self.viewer)
        except Exception:  # an odd transform: just go in order
            shown = None
        if shown in stack.results:
            order.remove(shown)
            order.insert(0, shown)
        self._relabel_job = (stack, layer, prob, area, iter(order), [True])
        self._relabel_step()

    @property
    def relabelling(self) -> bool:
        """Whether a relabel is still writing planes."""
        return self._relabel_job is not None

    def _stop_relabel(self) -> None:
        self._relabel_job = None
        self._relabel_step_timer.stop()

    def _relabel_step(self) -> None:
        import time

        job = self._relabel_job
        if job is None:
            return
        stack, layer, prob, area, planes, first = job
        t0 = time.perf_counter()
        done = True
        for idx in planes:
            layer.data[idx] = stack.relabel_plane(idx, prob, area)
            if time.perf_counter() - t0 > RELABEL_SLICE_S:
                done = False
                break
        if done or first[0]:
            # the first step holds the shown plane; re-slicing once more at the end
            # shows the rest (cheap in 2D, and avoids a reload per step in 3D)
            layer.refresh()
            first[0] = False
        if done:
            self._relabel_job = None
            self._relabel_done(prob, area)
        else:
            self._relabel_step_timer.start()

    def _relabel_done(self, prob: float, area: float | None) -> None:
        self.status_label.setText(f"Relabelled: probability ≥ {prob:.2f}, area "
                                  f"{'off' if area is None else f'> {area:.2f}'}.")

    # ------------------------------------------------------------------ heatmaps
    def _update_heatmap_combo(self, names: list[str]) -> None:
        self.heatmap_combo.blockSignals(True)
        self.heatmap_combo.clear()
        self.heatmap_combo.addItems(list(names))
        self.heatmap_combo.blockSignals(False)
        self._show_heatmap_class(0)

    def _show_heatmap_class(self, index: int) -> None:
        from ..layers import heatmaps_name

        if index < 0 or self._last_source is None:
            return
        name = heatmaps_name(self._last_source)
        if name not in self.viewer.layers:
            return
        heat = self.viewer.layers[name]
        axis = self.viewer.dims.ndim - heat.ndim
        if 0 <= axis < self.viewer.dims.ndim and index < heat.data.shape[0]:
            self.viewer.dims.set_current_step(axis, index)
        self._sync_heatmap_class()

    def current_heatmap_class(self) -> str | None:
        """Class name of the heatmap the viewer shows (the class slider's position)."""
        from ..layers import heatmaps_name

        if self._last_source is None:
            return None
        name = heatmaps_name(self._last_source)
        if name not in self.viewer.layers:
            return None
        heat = self.viewer.layers[name]
        if not heat.visible:
            return None
        names = heat.metadata.get("itaclip", {}).get("class_names", [])
        axis = self.viewer.dims.ndim - heat.ndim
        if not 0 <= axis < self.viewer.dims.ndim or not names:
            return None
        index = int(self.viewer.dims.current_step[axis])
        return names[index] if 0 <= index < len(names) else None

    def _sync_heatmap_class(self, event=None) -> None:
        """Name the shown heatmap's class on the canvas and in the picker."""
        name = self.current_heatmap_class()
        overlay = self.viewer.text_overlay
        if name is None:
            if overlay.text.startswith("heatmap: "):
                overlay.visible = False
            return
        overlay.text = f"heatmap: {name}"
        overlay.visible = True
        index = self.heatmap_combo.findText(name)
        if index >= 0 and index != self.heatmap_combo.currentIndex():
            self.heatmap_combo.blockSignals(True)
            self.heatmap_combo.setCurrentIndex(index)
            self.heatmap_combo.blockSignals(False)

    # ------------------------------------------------------------------ LLM helper
    def generate_aux(self, kind: str) -> None:
        """Fill the ``>=`` texts with LLM-written definitions or synonyms (in a worker)."""
        if self._busy:
            return
        try:
            vocab = self.vocabulary()
        except (ValueError, TypeError) as exc:
            self._error(str(exc))
            return
        try:
            from ...llm import LLMSettings, iter_generate_aux
        except ImportError as exc:
            self._error(f"The LLM helper is not available ({exc}).")
            return
        try:
            settings = LLMSettings.from_env()
        except Exception as exc:  # the module's own errors carry the reason
            self._error(f"LLM settings: {exc}")
            return

        def job():
            return (yield from iter_generate_aux(vocab, kind=kind, settings=settings))

        self._llm_kind = kind
        self._llm_settings = settings

        def on_progress(p) -> None:
            done, total, name = p
            self.progress_bar.setValue(int(1000 * done / max(total, 1)))
            self.status_label.setText(f"{kind}: {done}/{total} ({name})")

        self._start(job, returned=self._on_aux_returned, yielded=on_progress,
                    message=f"Asking the LLM for {kind}…",
                    error_prefix=f"Generating {kind} failed")

    def _remember_edited_aux(self, vocab: Vocabulary) -> None:
        """Record texts the user edited after an LLM fill, so generation keeps them."""
        generated = getattr(self, "_llm_generated", None)
        if generated is None or vocab.aux_texts == generated.aux_texts:
            return
        try:
            from ...llm import remember_aux

            remember_aux(vocab, self._llm_kind, self._llm_settings)
        except Exception as exc:  # a cache problem must never stop a run
            from napari.utils.notifications import show_warning

            # a notification: the status label is overwritten as soon as the run starts
            show_warning(f"Could not record the edited {self._llm_kind}: {exc}")
        self._llm_generated = vocab

    def _on_aux_returned(self, vocab: Vocabulary) -> None:
        self._llm_generated = vocab
        self.set_vocabulary(vocab)
        self.progress_bar.setValue(1000)
        self.status_label.setText(f"Filled {len(vocab.aux_texts)} {self._llm_kind}: review "
                                  "and edit them, then Run.")
