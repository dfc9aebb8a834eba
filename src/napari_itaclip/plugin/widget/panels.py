"""The dock widget's panels: image, vocabulary, model and thresholds.

Each panel is a small ``QGroupBox`` that owns its controls and returns ONE value object
(:class:`ImageSettings`, a :class:`~napari_itaclip.Vocabulary`, :class:`ModelSettings`,
:class:`Thresholds`), so the dock's ``run()`` reads one object per panel. Panels report
to the user through their ``message`` signal ``(text, is_error)``. The advanced
settings are in :mod:`.advanced`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
)
from superqt import QLabeledDoubleSlider

from ...config import AUX_KINDS, METHODS, ITACLIPConfig, describe_method, field_info, list_presets
from ...identity import ModelIdentity
from ...planes import COMPOSITE, ImageLayout
from ...vocabulary import Vocabulary
from ..edits import split_painted
from ..layers import VOCAB_METADATA_KEY, layout_for_layer
from ..refs import find_same, same

if TYPE_CHECKING:
    import napari

__all__ = ["ImagePanel", "ImageSettings", "ModelPanel", "ModelSettings", "ThresholdPanel",
           "Thresholds", "VocabularyPanel"]

#: open_clip names offered after the catalogue's entries (any other name can be typed)
MODELS = ["ViT-B-16-quickgelu", "ViT-B-32", "ViT-L-14", "ViT-L-14-336"]
PRETRAINED = ["openai", "laion2b_s34b_b88k", "laion2b_s32b_b82k", "datacomp_xl_s13b_b90k"]
DEVICES = ["auto", "cuda", "mps", "cpu"]
SLICES_CURRENT = "current slice"
SLICES_ALL = "all slices"
_CHANNEL_LABELS = ("c", "ch", "channel", "channels")
_PLACEHOLDER = """One class per line, synonyms separated by commas, e.g.
background: sky, wall, floor
cat, feline >= a small domesticated carnivorous mammal
person"""


# -- value objects -------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSettings:
    """What to segment: the layer, its channel choice and which planes."""

    layer: Any
    channel_axis: int | None
    channel: int | str
    all_slices: bool

    def layout(self) -> ImageLayout:
        """The axis roles of the layer under these choices (ValueError if impossible)."""
        return layout_for_layer(self.layer, self.channel_axis, self.channel)


@dataclass(frozen=True)
class ModelSettings(ModelIdentity):
    """Which model: read on the GUI thread at click time, handed to the worker."""

    def key(self) -> ModelIdentity:
        """The key of this model in the process-wide Segmenter registry."""
        return self.identity


@dataclass(frozen=True)
class Thresholds:
    """The relabel thresholds (``area`` None = off)."""

    prob: float
    area: float | None


# -- panels ----------------------------------------------------------------------------
class ImagePanel(QGroupBox):
    """The image layer (a magicgui layer picker), channel choice and planes.

    ``layer_changed`` is emitted with the picked layer (or None).
    """

    layer_changed = Signal(object)
    message = Signal(str, bool)

    def __init__(self, viewer: napari.Viewer, parent=None) -> None:
        import napari
        from magicgui.widgets import create_widget

        super().__init__("Image", parent)
        self._viewer = viewer
        self.layer_picker = create_widget(annotation=napari.layers.Image, label="layer",
                                          options={"choices": self._choices})
        self.layer_picker.tooltip = "The image layer to segment"
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "For a multichannel (non-RGB) image: the axis holding the channels")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip(
            "Segment one channel, or a composite (<= 3 channels as RGB, more by maximum)")
        self.slices_combo = QComboBox()
        self.slices_combo.addItems([SLICES_CURRENT, SLICES_ALL])
        self.slices_combo.setToolTip("For stacks and time series: the shown plane or every plane")
        self.shape_label = QLabel("")
        self.shape_label.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("layer", self.layer_picker.native)
        form.addRow("channel axis", self.channel_axis_combo)
        form.addRow("channel", self.channel_combo)
        form.addRow("slices", self.slices_combo)
        form.addRow(self.shape_label)
        self.layer_picker.changed.connect(self._on_layer)
        self.channel_axis_combo.currentIndexChanged.connect(self._on_channel_axis)
        self.channel_combo.currentIndexChanged.connect(self._update_shape_label)

    def _choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        # our own heatmap layers are images too, but not something to segment
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Image) and "itaclip" not in layer.metadata]

    @property
    def layer(self):
        """The picked image layer, or None."""
        return self.layer_picker.value

    def reset_choices(self, event=None) -> None:
        """Refresh the layer picker from the viewer's layers (keeps the pick if present)."""
        self.layer_picker.reset_choices()
        if self.layer_picker.value is None:
            self._on_layer(None)

    def refresh(self) -> None:
        """Fill the channel options and the shape line for the picked layer (a layer that
        was in the viewer before the widget opened was picked without a change event).
        """
        self._on_layer(self.layer)

    def select(self, layer) -> None:
        """Pick ``layer`` if it is one of the choices (the viewer's active layer, a new
        image layer); compared through napari's proxies (:func:`~..refs.find_same`).
        """
        if layer is None:
            return
        self.layer_picker.reset_choices()  # a layer just inserted may not be listed yet
        found = find_same(self.layer_picker.choices, layer)
        if found is not None and not same(found, self.layer_picker.value):
            self.layer_picker.value = found

    def settings(self) -> ImageSettings:
        """The panel's value: layer, channel choice and whether to segment every plane."""
        axis = self.channel_axis_combo.currentData()
        channel = self.channel_combo.currentData() if axis is not None else COMPOSITE
        return ImageSettings(self.layer, axis, COMPOSITE if channel is None else channel,
                             self.slices_combo.currentText() == SLICES_ALL)

    def _on_layer(self, layer) -> None:
        self._update_channel_options(layer)
        if layer is None:
            self.shape_label.setText("Add an image layer (File ▸ Open Sample ▸ napari-itaclip).")
        self.layer_changed.emit(layer)

    def _update_channel_options(self, layer) -> None:
        combo = self.channel_axis_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("none", None)
        multichannel = layer is not None and not layer.rgb and layer.ndim >= 3
        guess = None
        if multichannel:
            labels = list(getattr(layer, "axis_labels", ()) or ())
            for ax in range(layer.ndim - 2):
                label = labels[ax] if ax < len(labels) else str(ax)
                combo.addItem(f"axis {ax} ({label}, {layer.data.shape[ax]})", ax)
                if str(label).lower() in _CHANNEL_LABELS:
                    guess = ax
        if guess is not None:
            combo.setCurrentIndex(combo.findData(guess))
        combo.blockSignals(False)
        combo.setEnabled(multichannel)
        self._on_channel_axis()

    def _on_channel_axis(self, *args) -> None:
        layer, axis = self.layer, self.channel_axis_combo.currentData()
        self.channel_combo.blockSignals(True)
        self.channel_combo.clear()
        self.channel_combo.addItem(COMPOSITE, COMPOSITE)
        if layer is not None and axis is not None:
            for c in range(layer.data.shape[axis]):
                self.channel_combo.addItem(f"channel {c}", c)
        self.channel_combo.blockSignals(False)
        self.channel_combo.setEnabled(axis is not None)
        self._update_shape_label()

    def _update_shape_label(self, *args) -> None:
        settings = self.settings()
        if settings.layer is None:
            return
        try:
            layout = settings.layout()
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


class VocabularyPanel(QGroupBox):
    """The vocabulary editor, its file buttons and the LLM buttons.

    ``generate_requested`` is emitted with ``"definitions"`` or ``"synonyms"``.
    """

    generate_requested = Signal(str)
    message = Signal(str, bool)

    def __init__(self, parent=None) -> None:
        super().__init__("Vocabulary", parent)
        self._auto_text = ""  # the last vocabulary filled in from a layer's metadata
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText(_PLACEHOLDER)
        self.editor.setMinimumHeight(90)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.load_btn = QPushButton("Load…")
        self.save_btn = QPushButton("Save…")
        self.generate_btns = {kind: QPushButton(f"Generate {kind}") for kind in AUX_KINDS}
        box = QVBoxLayout(self)
        box.addWidget(self.editor)
        box.addWidget(self.status)
        for buttons in ((self.load_btn, self.save_btn), tuple(self.generate_btns.values())):
            row = QHBoxLayout()
            for b in buttons:
                row.addWidget(b)
            box.addLayout(row)
        for kind, b in self.generate_btns.items():
            b.setToolTip(f"Ask an LLM for {kind} of the classes (fills the '>=' parts; "
                         "review them before running)")
            b.clicked.connect(lambda _=False, k=kind: self.generate_requested.emit(k))
        self.editor.textChanged.connect(self.revalidate)
        self.load_btn.clicked.connect(lambda: self.load())
        self.save_btn.clicked.connect(lambda: self.save())

    def vocabulary(self) -> Vocabulary:
        """The panel's value: the editor's vocabulary (VocabularyError with the reason).

        Lines under the painted-classes marker (exemplar-only classes, named by the
        user; :func:`~napari_itaclip.plugin.edits.split_painted`) are not part of it.
        """
        return Vocabulary.coerce(split_painted(self.editor.toPlainText())[0])

    def set_vocabulary(self, vocab: Vocabulary | str) -> None:
        """Replace the editor's text."""
        self.editor.setPlainText(vocab.format() if isinstance(vocab, Vocabulary) else str(vocab))

    def suggest_from(self, layer) -> bool:
        """Fill in the layer's suggested vocabulary unless the editor holds the user's own."""
        suggestion = str(layer.metadata.get(VOCAB_METADATA_KEY) or "").strip()
        current = self.editor.toPlainText().strip()
        if suggestion and current in ("", self._auto_text) and current != suggestion:
            self.editor.setPlainText(suggestion)
            self._auto_text = suggestion
            return True
        return False

    def revalidate(self) -> None:
        """Check the editor's text again and say what it holds (or what is wrong)."""
        text = self.editor.toPlainText()
        if not text.strip():
            self.status.setText("")
            return
        try:
            vocab_text, painted = split_painted(text)
            v = Vocabulary.coerce(vocab_text)
        except (ValueError, TypeError) as exc:
            self.status.setText(f"<span style='color:#e55'>{exc}</span>")
            return
        bg = " incl. background" if v.has_background else " (no background class)"
        aux = len(v.aux_texts)
        self.status.setText(f"{len(v)} classes{bg}" + (f", {aux} with '>=' text" if aux else "")
                            + (f", {len(painted)} painted" if painted else ""))

    def load(self, path: str | Path | None = None) -> None:
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
            self.message.emit(f"Cannot load vocabulary from {path}: {exc}", True)
            return
        self.editor.setPlainText(text.rstrip("\n"))
        self.message.emit(f"Loaded vocabulary from {Path(path).name}.", False)

    def save(self, path: str | Path | None = None) -> None:
        """Write the editor's vocabulary to a file in the text form."""
        try:
            vocab = self.vocabulary()
        except (ValueError, TypeError) as exc:
            self.message.emit(f"Cannot save: {exc}", True)
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save vocabulary", "vocabulary.txt",
                                                  "Vocabulary (*.txt);;All files (*)")
            if not path:
                return
        try:
            vocab.save(path)
        except OSError as exc:
            self.message.emit(f"Cannot save vocabulary to {path}: {exc}", True)
            return
        self.message.emit(f"Saved vocabulary to {Path(path).name}.", False)


#: How the method picker names the methods of :data:`~napari_itaclip.config.METHODS`.
METHOD_LABELS = {"itaclip": "ITACLIP", "sclip": "SCLIP", "naclip": "NACLIP",
                 "clearclip": "ClearCLIP"}
_PRESET_TIPS = {
    "itaclip": "voc21 … cityscapes: the paper's settings; balanced: stride 56, interactive "
               "default; fast: quick preview",
}


class ModelPanel(QGroupBox):
    """Method, preset, model, weights and device. ``preset_changed`` carries the preset's
    config; the method picker lists that method's presets and says what it changes.
    """

    preset_changed = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__("Model", parent)
        self.method_combo = QComboBox()
        for key in METHODS:  # ITACLIP first
            self.method_combo.addItem(METHOD_LABELS.get(key, key), key)
        self.method_combo.setToolTip("Training-free method: ITACLIP or one of its siblings "
                                     "(SCLIP, NACLIP, ClearCLIP), each with its authors' "
                                     "dataset presets")
        self.method_label = QLabel()
        self.method_label.setWordWrap(True)
        self.preset_combo = QComboBox()
        self._fill_presets("itaclip", "balanced")
        self.model_combo = _editable_combo(
            [], "A catalogue model (domain after the dash; docs/models.md) or any open_clip "
                "model name, hf-hub:org/name or local-dir:/path/to/folder")
        _add_model_items(self.model_combo)
        self.model_combo.lineEdit().setCursorPosition(0)
        self.pretrained_combo = _editable_combo(
            PRETRAINED, "open_clip pretrained tag, or a local checkpoint file; empty for "
                        "hf-hub:/local-dir: models (their own weights)")
        self.pretrained_combo.lineEdit().setPlaceholderText("(the model's own weights)")
        self.browse_btn = QToolButton()
        self.browse_btn.setText("…")
        self.browse_btn.setToolTip("Choose a local checkpoint file")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.half_check = QCheckBox("half precision (CUDA)")
        form = QFormLayout(self)
        form.addRow("method", self.method_combo)
        form.addRow(self.method_label)
        form.addRow("preset", self.preset_combo)
        form.addRow("model", self.model_combo)
        form.addRow("pretrained", _row(self.pretrained_combo, self.browse_btn))
        form.addRow("device", _row(self.device_combo, self.half_check))
        self.preset_combo.currentTextChanged.connect(self._on_preset)
        self.method_combo.currentIndexChanged.connect(self._on_method)
        self.model_combo.currentTextChanged.connect(self._on_model_text)
        self.browse_btn.clicked.connect(self._browse_checkpoint)

    def preset(self) -> ITACLIPConfig:
        """The chosen preset's configuration."""
        return ITACLIPConfig.preset(self.preset_combo.currentText())

    def method(self) -> str:
        """The chosen method (a key of :data:`~napari_itaclip.config.METHODS`)."""
        return self.method_combo.currentData()

    def _fill_presets(self, method: str, current: str | None = None) -> None:
        """Show ``method``'s presets (signals blocked) and its description."""
        names = list_presets(method)
        self.preset_combo.blockSignals(True)
        self.preset_combo.clear()
        self.preset_combo.addItems(names)
        self.preset_combo.setCurrentText(current if current in names else names[0])
        self.preset_combo.blockSignals(False)
        self.preset_combo.setToolTip(_PRESET_TIPS.get(
            method, f"{METHOD_LABELS.get(method, method)} with its authors' settings for "
                    "each dataset; named <method>-<dataset>"))
        self.method_label.setText(describe_method(method))

    def _on_method(self, _index: int) -> None:
        """Another method: list its presets, pick the first (ITACLIP: balanced) and apply it."""
        method = self.method()
        self._fill_presets(method, "balanced" if method == "itaclip" else None)
        self._on_preset(self.preset_combo.currentText())

    def settings(self) -> ModelSettings:
        """The panel's value (read on the GUI thread); a catalogue label becomes its id."""
        from ...catalogue import resolve

        model, pretrained = resolve(self.model_combo.currentText().strip(),
                                    self.pretrained_combo.currentText().strip() or None)
        return ModelSettings(model, pretrained, self.device_combo.currentText(),
                             self.half_check.isChecked())

    def _on_model_text(self, text: str) -> None:
        """A catalogue entry picked: show its pretrained tag (empty: the model's own weights)."""
        from ...catalogue import find_entry

        entry = find_entry(text)
        if entry is not None and text.strip().lower() != entry.model.lower():
            self.pretrained_combo.setCurrentText(entry.pretrained or "")
        self.model_combo.lineEdit().setCursorPosition(0)  # show a long label's start

    def _on_preset(self, name: str) -> None:
        try:
            self.preset_changed.emit(ITACLIPConfig.preset(name))
        except ValueError:
            return

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", "",
                                              "Checkpoints (*.pt *.pth *.bin *.safetensors);;"
                                              "All files (*)")
        if path:
            self.pretrained_combo.setCurrentText(path)


class ThresholdPanel(QGroupBox):
    """Probability and area thresholds as labelled sliders; they relabel without a run."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__("Thresholds (relabel without re-running)", parent)
        self.prob = _slider("prob_threshold")
        self.area = _slider("area_threshold", "; 0 = off")
        form = QFormLayout(self)
        form.addRow("probability", self.prob)
        form.addRow("area", self.area)
        self.prob.valueChanged.connect(lambda _v: self.changed.emit())
        self.area.valueChanged.connect(lambda _v: self.changed.emit())

    def thresholds(self) -> Thresholds:
        """The panel's value (area 0 = off)."""
        area = round(float(self.area.value()), 2)
        return Thresholds(round(float(self.prob.value()), 2), area if area > 0 else None)

    def set_thresholds(self, prob: float, area: float | None) -> None:
        """Show these values without emitting ``changed``."""
        for slider, value in ((self.prob, prob), (self.area, area or 0.0)):
            slider.blockSignals(True)
            slider.setValue(float(value))
            slider.blockSignals(False)


def _slider(name: str, tip_suffix: str = "") -> QLabeledDoubleSlider:
    """A relabel slider for config field ``name``: range, step and tooltip from its row
    of the field table (the upper end is ``ui_high`` when set, else ``high``).
    """
    info = field_info()[name]
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setRange(float(info.low or 0.0), float(info.ui_high or info.high))
    s.setDecimals(2)
    s.setSingleStep(info.step or 0.01)
    s.setValue(0.0)
    s.setToolTip(info.help + tip_suffix)
    return s


def _add_model_items(combo: QComboBox) -> None:
    """The catalogue's entries (label, tooltip with towers, size, licence), then MODELS."""
    from ...catalogue import CATALOGUE

    for e in CATALOGUE:
        combo.addItem(e.label)
        combo.setItemData(
            combo.count() - 1,
            f"{e.model}{' / ' + e.pretrained if e.pretrained else ''}\n{e.notes}\n"
            f"vision: {e.vision}; text: {e.text}; {e.image_size} px\nlicence: {e.licence}"
            + ("\nneeds: pip install 'napari-itaclip[hf]'" if e.needs_transformers else ""),
            Qt.ItemDataRole.ToolTipRole)
    combo.addItems(MODELS)


def _editable_combo(items: list[str], tip: str) -> QComboBox:
    combo = QComboBox()
    combo.setEditable(True)
    combo.addItems(items)
    combo.setToolTip(tip)
    # long catalogue labels must not widen the dock: the list pops up at full width
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(14)
    return combo


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, w in enumerate(widgets):
        row.addWidget(w, 1 if i == 0 else 0)
    return row
