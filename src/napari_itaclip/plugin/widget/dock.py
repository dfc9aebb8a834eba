"""The ITACLIP dock widget: assembles the panels; runs, cancels and shows the results.

Everything heavy runs in a ``napari.qt.threading`` worker over
:func:`napari_itaclip.stack.iter_segment_slices` (or an LLM fill); the worker gets
plain values read from the panels on the GUI thread at click time and touches no
widget. torch loads in the worker on first use, not when the widget is built.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ...config import ITACLIPConfig
from ...stack import RunProgress, StackResult, iter_segment_slices, planes_cached
from ...vocabulary import Vocabulary
from ..layers import (
    current_slice,
    find_layer,
    labels_name,
    layer_data,
    resolve_slices,
    suggested_model,
    write_layers,
)
from ..scripting import class_values
from .advanced import AdvancedPanel
from .heatmaps import HeatmapBrowser
from .links import EventLinks
from .live import NOT_CACHED_TEXT, LiveRerun
from .llm_fill import AuxFill, aux_job, llm_settings
from .measure import MeasurePanel
from .panels import ImagePanel, ModelPanel, ModelSettings, ThresholdPanel, VocabularyPanel
from .relabel import Relabeller
from .results import RunResults
from .teach import TeachPanel, TeachRequest

if TYPE_CHECKING:
    import napari

__all__ = ["ITACLIPWidget", "segmentation_job"]


def segmentation_job(model: ModelSettings, segmenter, data, layout, indices, vocab, config,
                     cached_only: bool = False, teach: TeachRequest | None = None):
    """The worker's generator: get the model (from the registry), segment the planes.

    With ``cached_only`` (a live run), return ``None`` at once unless every plane's
    image features are cached (the planes holding strokes too). With ``teach``, its
    exemplars are built first and scored with the text.
    """
    from ...engine import registry

    yield RunProgress("load", 0, 0, 0, len(indices))
    seg = segmenter if segmenter is not None else registry.get_segmenter(model.key())
    planes = [*indices, *(teach.planes if teach is not None else ())]
    if cached_only and not planes_cached(seg, data, layout, planes, config):
        return None
    if teach is not None:
        seg = yield from teach.bind(seg, data, layout, config)
    return (yield from iter_segment_slices(seg, data, layout, indices, vocab, config))


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
        self._links = EventLinks()
        self._worker = None  # the running worker: the one notion of "busy"
        self._segmenter_override = None
        self.results = RunResults()  # kept maps and output layer names per source layer
        self._teach: TeachRequest | None = None  # the running job's exemplars
        self._error_prefix = ""
        self._aux: AuxFill | None = None
        self._aux_pending: tuple[str, Any] | None = None
        self.image_panel = ImagePanel(napari_viewer)
        self.vocab_panel = VocabularyPanel()
        self.model_panel = ModelPanel()
        self.threshold_panel = ThresholdPanel()
        self.advanced_panel = AdvancedPanel()
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("Ready")
        self.heatmaps = HeatmapBrowser(napari_viewer, self._links)
        self.relabeller = Relabeller(self.relabel, self._relabel_done, self)
        self.live = LiveRerun(lambda: self.busy, lambda: _live_may_run(self),
                              lambda: self.run(live=True), self)
        self.teach = TeachPanel(napari_viewer, self._links, self.results.by_source.get,
                                self.thresholds)
        self.measure_panel = MeasurePanel(napari_viewer, lambda: self.image_panel.settings().layer)
        self._assemble()
        self._connect()
        self.image_panel.reset_choices()
        self.set_config(self.model_panel.preset())

    # -- building -----------------------------------------------------------------------
    def _assemble(self) -> None:
        inner = QWidget()
        root = QVBoxLayout(inner)
        for panel in (self.image_panel, self.vocab_panel, self.model_panel,
                      self.threshold_panel, self.teach, self.advanced_panel):
            root.addWidget(panel)
        row = QHBoxLayout()
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        row.addWidget(self.live.checkbox)
        root.addLayout(row)
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        root.addWidget(self.progress_bar)
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)
        root.addWidget(self.heatmaps)
        root.addWidget(self.measure_panel)
        root.addStretch(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(_scrolled(inner))
        self.setMinimumWidth(inner.sizeHint().width() + 40)
        self._update_enabled()

    def _connect(self) -> None:
        layers = self.viewer.layers
        for emitter in (layers.events.inserted, layers.events.removed, layers.events.moved):
            self._links.connect(emitter, self._on_layers_changed)
        self._links.connect(layers.events.removed, self._prune_results)
        self._links.connect(layers.selection.events.active, self._on_active_layer)
        self.image_panel.layer_changed.connect(self._on_layer_picked)
        for panel in (self.image_panel, self.vocab_panel, self.teach, self.measure_panel):
            panel.message.connect(self._message)
        self.teach.edited.connect(lambda: self.teach.learning and self.live.schedule())
        self.vocab_panel.generate_requested.connect(self.generate_aux)
        self.vocab_panel.editor.textChanged.connect(self.live.schedule)
        self.model_panel.preset_changed.connect(self.set_config)
        self.threshold_panel.changed.connect(self._on_threshold)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)

    # -- viewer sync ------------------------------------------------------------------------
    def _on_layers_changed(self, event=None) -> None:
        for layer in self.viewer.layers:  # keep names in the picker current
            self._links.connect(layer.events.name, self._on_layers_changed)
        self.image_panel.reset_choices()

    def _on_active_layer(self, event=None) -> None:
        self.image_panel.select(self.viewer.layers.selection.active)

    def _on_layer_picked(self, layer) -> None:
        if layer is None:
            return
        if self.vocab_panel.suggest_from(layer):
            self.status_label.setText(f"Loaded the vocabulary suggested by '{layer.name}'.")
        entry = suggested_model(layer)
        if entry is not None and self.model_panel.settings().model != entry.model:
            self.status_label.setText(f"'{layer.name}' suits the {entry.short_name} model "
                                      f"({entry.domain}): pick it under Model to use it.")

    def _prune_results(self, event=None) -> None:
        """Forget kept maps whose source or output layers are no longer in the viewer.

        The kept maps (three C x H x W float32 arrays per plane) are what makes relabel
        work without a model run; once a layer they belong to is gone they are dead
        weight, so they are dropped.
        """
        present = [layer.name for layer in self.viewer.layers]
        removed_name = getattr(getattr(event, "value", None), "name", None)
        if self.results.prune(present, removed_name, self.results.layer_names):
            self.relabeller.stop()

    def clear_results(self) -> None:
        """Forget every kept map (relabelling then needs a new run)."""
        self.relabeller.stop()
        self.results.clear()

    def closeEvent(self, event) -> None:
        """Free the kept maps and disconnect every viewer and layer callback."""
        self.clear_results()
        self._links.disconnect_all()
        super().closeEvent(event)

    # -- settings -----------------------------------------------------------------------------
    def vocabulary(self) -> Vocabulary:
        """The vocabulary in the editor (raises VocabularyError with the reason)."""
        return self.vocab_panel.vocabulary()

    def set_vocabulary(self, vocab: Vocabulary | str) -> None:
        """Replace the editor's text."""
        self.vocab_panel.set_vocabulary(vocab)

    def load_vocabulary(self, path=None) -> None:
        """Read a vocabulary file into the editor (asks for a file when ``path`` is None)."""
        self.vocab_panel.load(path)

    def save_vocabulary(self, path=None) -> None:
        """Write the editor's vocabulary to a file in the text form."""
        self.vocab_panel.save(path)

    def set_config(self, cfg: ITACLIPConfig) -> None:
        """Show ``cfg`` in the advanced section and the threshold sliders."""
        self.advanced_panel.set_config(cfg)
        self.threshold_panel.set_thresholds(cfg.prob_threshold, cfg.area_threshold)

    def thresholds(self) -> tuple[float, float | None]:
        """(prob_threshold, area_threshold) from the sliders (area 0 = None)."""
        t = self.threshold_panel.thresholds()
        return t.prob, t.area

    def config(self) -> ITACLIPConfig:
        """The configuration of the next run (advanced fields + threshold sliders)."""
        prob, area = self.thresholds()
        return self.advanced_panel.config().replace(prob_threshold=prob, area_threshold=area)

    def use_segmenter(self, segmenter) -> None:
        """Run with this Segmenter instead of the registry's for the model fields (or None)."""
        self._segmenter_override = segmenter

    # -- running -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a worker (segmentation or LLM) is running."""
        return self._worker is not None

    def _update_enabled(self) -> None:
        busy = self.busy
        for w in (self.run_btn, self.image_panel.layer_picker.native,
                  *self.vocab_panel.generate_btns.values()):
            w.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def run(self, live: bool = False) -> None:
        """Segment the picked layer in a worker thread (returns at once); ``live``: only
        if its image features are cached (see :mod:`.live`).
        """
        if self.busy:
            return
        image = self.image_panel.settings()
        if image.layer is None:
            self._error("Choose an image layer to segment.")
            return
        try:
            args, indices, teach = _plan_run(self, image)
        except (ValueError, TypeError) as exc:
            self._error(str(exc))
            return
        self._remember_edited_aux(args[3])
        self.results.run_source = image.layer.name
        self._launch(args, indices, live, teach)

    def _launch(self, args: tuple, indices, live: bool = False, teach=None) -> None:
        """Start the worker on ``args`` = (model, data, layout, vocab, config)."""
        self._teach = teach
        job = segmentation_job(*args[:1], self._segmenter_override, *args[1:3], indices,
                               *args[3:], live, teach)
        self._start(job, returned=self._on_returned, yielded=self._on_progress,
                    message="Starting…", error_prefix="ITACLIP failed")

    def _start(self, job, *, returned, yielded, message: str, error_prefix: str) -> None:
        from napari.qt.threading import create_worker

        self._error_prefix = error_prefix
        self.progress_bar.setValue(0)
        self.status_label.setText(message)
        def work():  # a generator function: napari makes it a cancellable GeneratorWorker
            return (yield from job)

        self._worker = create_worker(work, _start_thread=False, _connect={
            "yielded": yielded, "returned": returned, "errored": self._on_errored,
            "aborted": self._on_aborted, "finished": self._on_finished})
        self._update_enabled()
        self._worker.start()

    def cancel(self) -> None:
        """Ask the running worker to stop; it does so at its next progress step."""
        if self._worker is not None:
            self.status_label.setText("Cancelling…")
            self._worker.quit()

    def _on_progress(self, p: RunProgress) -> None:
        self.progress_bar.setValue(int(round(1000 * p.fraction)))
        self.status_label.setText(p.describe())

    def _on_returned(self, stack: StackResult | None) -> None:
        if stack is None:  # a live run whose features were not cached: nothing was run
            self.status_label.setText(NOT_CACHED_TEXT)
            return
        self.relabeller.stop()  # a pending relabel would write stale planes
        run_source = self.results.run_source
        source = find_image(self.viewer, run_source)
        if source is None:
            self._error(f"The layer '{run_source}' was removed during the run.")
            return
        merged = self.results.merged(source.name, stack)
        # writing may replace an output layer (its removal prunes the old entry), so
        # the merged result is stored after writing
        labels, heat = write_layers(self.viewer, source, stack,
                                    values=_class_values(self._teach, stack, self.teach.layer))
        self.results.keep(source.name, merged, outputs=(labels.name, heat.name))
        self.teach.ran(self._teach, labels)
        self._prune_results()  # e.g. entries of renamed layers
        self.heatmaps.set_source(source.name, heat, stack.class_names)
        self.progress_bar.setValue(1000)
        self.status_label.setText(_done_text(stack, labels, source))

    def _on_errored(self, exc: BaseException) -> None:
        self._error(f"{self._error_prefix}: {exc}")

    def _on_aborted(self) -> None:
        self.progress_bar.setValue(0)
        self.status_label.setText("Cancelled; no layer was changed.")

    def _on_finished(self) -> None:
        self._worker = None
        self._update_enabled()
        _after_run(self)

    def _message(self, text: str, is_error: bool) -> None:
        (self._error if is_error else self.status_label.setText)(text)

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"<span style='color:#e55'>{message}</span>")
        show_error(message)

    # -- relabel ------------------------------------------------------------------------------
    def _on_threshold(self) -> None:
        if self.results.has_last:
            self.relabeller.schedule()

    def relabel(self) -> None:
        """Recompute the labels of the last run from its kept maps (no model run).

        The shown plane is relabelled at once; the other planes follow in short steps
        on the event loop (see :attr:`relabelling`), written into the Labels layer in
        place. A new call restarts with the current thresholds.
        """
        self.relabeller.stop()
        stack = self.results.last()
        source = find_image(self.viewer, self.results.last_source)
        if stack is None or source is None:
            return
        self.relabeller.relabel(self.viewer, source, stack, *self.thresholds())

    @property
    def relabelling(self) -> bool:
        """Whether a relabel is still writing planes."""
        return self.relabeller.running

    def _relabel_done(self, prob: float, area: float | None) -> None:
        self.status_label.setText(f"Relabelled: probability ≥ {prob:.2f}, area "
                                  f"{'off' if area is None else f'> {area:.2f}'}.")

    # -- heatmaps and the LLM fill ------------------------------------------------------------
    def current_heatmap_class(self) -> str | None:
        """Class name of the heatmap the viewer shows (the class slider's position)."""
        return self.heatmaps.current_class()

    def generate_aux(self, kind: str) -> None:
        """Fill the ``>=`` texts with LLM-written definitions or synonyms (in a worker)."""
        if self.busy:
            return
        try:
            vocab = self.vocabulary()
            settings = llm_settings()
        except (ValueError, TypeError, ImportError) as exc:
            self._error(str(exc))
            return
        self._aux_pending = (kind, settings)
        self._start(aux_job(vocab, kind, settings), returned=self._on_aux_returned,
                    yielded=self._on_aux_progress, message=f"Asking the LLM for {kind}…",
                    error_prefix=f"Generating {kind} failed")

    def _on_aux_progress(self, p: tuple[int, int, str]) -> None:
        self.progress_bar.setValue(int(1000 * p[0] / max(p[1], 1)))
        self.status_label.setText(f"{self._aux_pending[0]}: {p[0]}/{p[1]} ({p[2]})")

    def _on_aux_returned(self, vocab: Vocabulary) -> None:
        kind, settings = self._aux_pending
        self._aux = AuxFill(kind, settings, vocab)
        self.set_vocabulary(vocab)
        self.progress_bar.setValue(1000)
        self.status_label.setText(f"Filled {len(vocab.aux_texts)} {kind}: review "
                                  "and edit them, then Run.")

    def _remember_edited_aux(self, vocab: Vocabulary) -> None:
        """Record texts the user edited after an LLM fill, so generation keeps them."""
        if self._aux is not None:
            self._aux.remember_edits(vocab)


def _live_may_run(widget: ITACLIPWidget) -> bool:
    """Whether a live run makes sense: the picked layer was segmented last, and the
    vocabulary is valid (else the vocabulary panel shows what is wrong).
    """
    layer = widget.image_panel.settings().layer
    if layer is None or layer.name != widget.results.last_source:
        return False  # segment this layer once with Run first
    try:
        widget.vocabulary()
    except ValueError:
        return False
    return True


def _plan_run(widget: ITACLIPWidget, image) -> tuple[tuple, list, TeachRequest | None]:
    """What a Run does: ``(model, data, layout, vocab, config)``, its planes, its exemplars.

    Raises ValueError / TypeError with what is wrong. New painted classes get their
    line in the vocabulary editor here.
    """
    vocab, cfg, layout = widget.vocabulary(), widget.config(), image.layout()
    mode = "all" if layout.n_slices <= 1 or image.all_slices else "current"
    indices = resolve_slices(image.layer, layout, mode, widget.viewer)
    kept = widget.results.by_source.get(image.layer.name)
    editor = widget.vocab_panel.editor
    teach, text, indices = widget.teach.request(
        image.layer, vocab, editor.toPlainText(), indices,
        current_slice(image.layer, layout, widget.viewer),
        list(kept.results) if kept is not None else [])
    if text != editor.toPlainText():  # new painted classes, for the user to name; not
        editor.blockSignals(True)  # an edit of the user's (no Live re-run for it)
        editor.setPlainText(text)
        editor.blockSignals(False)
        widget.vocab_panel._validate()
    model = dataclasses.replace(widget.model_panel.settings(),
                                feature_cache_mb=widget.advanced_panel.feature_cache_mb())
    args = (model, layer_data(image.layer), layout, vocab, cfg)
    if teach is not None:
        teach.args = args
    return args, indices, teach


def _after_run(widget: ITACLIPWidget) -> None:
    """A run ended: start a stack's other planes (same exemplars), else tell Live."""
    teach, rest = widget.teach.take_followup()
    if teach is not None:
        widget._launch(teach.args, rest, False, teach)
    else:
        widget.live.run_finished()


def _class_values(teach: TeachRequest | None, stack, labels_layer):
    """The layer value of each class (exemplar-only classes keep their painted values)."""
    if teach is None:
        return None
    return class_values(stack, teach.n_text, labels_layer, teach.preferred)


def find_image(viewer, name: str | None):
    """The image layer called ``name`` in ``viewer``, or None."""
    from napari.layers import Image

    return find_layer(viewer, name, Image)


def _scrolled(inner: QWidget) -> QScrollArea:
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    return scroll


def _done_text(stack: StackResult, labels, source) -> str:
    """The status line after a run (says so when the labels went to a new layer)."""
    text = (f"Done: {len(stack.results)} plane(s){_reuse_text(stack)}. "
            f"Pixels per class in them: {_pixel_counts(labels, stack)}")
    if labels.name != labels_name(source.name):
        text += (f". Wrote '{labels.name}': the layer '{labels_name(source.name)}' was not "
                 "written by this session's plugin (loaded from a file?), so it was left as is")
    return text


def _reuse_text(stack: StackResult) -> str:
    """``", image features reused"`` (or for k of n planes) when the ViT was skipped."""
    k, n = stack.n_cached, len(stack.results)
    if not k:
        return ""
    return ", image features reused" + ("" if k == n else f" for {k} of them")


def _pixel_counts(labels, stack: StackResult) -> str:
    """"name: pixels, ..." over the planes of this run (one bincount per plane)."""
    n_values = int(max(labels.features["index"])) + 1
    hist = np.zeros(n_values, dtype=np.int64)
    for idx in stack.results:
        plane = np.asarray(labels.data[idx]).ravel()
        hist += np.bincount(plane[(plane >= 0) & (plane < n_values)],
                            minlength=n_values)[:n_values]
    return ", ".join(
        f"{name}: {int(hist[int(v)])}"
        for v, name in zip(labels.features["index"], labels.features["class_name"])
        if int(v) != 0 or stack.has_background)
