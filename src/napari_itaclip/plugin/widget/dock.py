"""The ITACLIP dock widget: assembles the panels; runs, cancels and shows the results.

Everything heavy runs in a ``napari.qt.threading`` worker: the engine over the planes
(:func:`~.runs.segmentation_job`), then the output plan (arrays in their final dtype,
tables, colours, new layers). The GUI thread reads plain values from the panels at click
time and, at the end, only assigns the plan, in short turns of the event loop
(:class:`~.apply.Applier`). torch loads in the worker on first use, not when the widget
is built.

napari hands the widget a proxy of the viewer; viewer objects are compared and kept
through :mod:`~napari_itaclip.plugin.refs` (never with ``is`` on a proxy). Closing the
dock (its X, ``remove_dock_widget``, or the viewer's window) tears the widget down:
the running job is cancelled, every viewer callback disconnected, the kept maps and
exemplars freed.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, Qt, QTimer
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
from ...stack import RunProgress
from ...vocabulary import Vocabulary
from .. import gc_pauses, view3d
from ..layers import suggested_model
from ..output_plan import OutputPlan
from ..refs import LayerRef, same
from . import lifecycle
from .advanced import AdvancedPanel
from .apply import Applier
from .heatmaps import HeatmapBrowser
from .links import EventLinks
from .live import LiveRerun
from .llm_fill import AuxFill, start_aux
from .measure import MeasurePanel
from .panels import ImagePanel, ModelPanel, ThresholdPanel, VocabularyPanel
from .relabel import Relabeller
from .results import RunResults
from .runs import (
    RunArgs,
    applied,
    launch,
    plan_run,
    returned,
    run_ended,
    segmentation_job,
    visible_region,
)
from .scale import ScalePanel
from .teach import TeachPanel
from .tiled import TileWriter, tiled_aborted, tiled_errored
from .workers import shielded

if TYPE_CHECKING:
    import napari

__all__ = ["ITACLIPWidget", "ProgressBar", "segmentation_job"]


class ProgressBar(QProgressBar):
    """A progress bar whose new value is painted with the next paint of the window.

    ``QProgressBar.setValue`` repaints at once, and painting a widget of napari's window
    composes the whole window, its OpenGL canvas included: each progress step cost a
    canvas frame on the GUI thread (150 to 600 ms with a Labels layer larger than one
    texture, or in the 3D view, under software OpenGL).
    """

    def setValue(self, value: int) -> None:  # noqa: N802 (Qt's name)
        """Set the value; it is painted with the window's next paint."""
        if value == self.value():
            return
        self.setUpdatesEnabled(False)  # the immediate repaint does nothing ...
        try:
            super().setValue(value)
        finally:
            self.setUpdatesEnabled(True)
        self.update()  # ... and a paint is scheduled instead


class ITACLIPWidget(QWidget):
    """Open-vocabulary segmentation of napari image layers with ITACLIP.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the widget reads and writes (napari passes a proxy).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._links = EventLinks()
        self._worker = None  # the running worker
        self._segmenter_override = None
        self._closed = False
        self._docked = False
        self.window_watch = lifecycle.WindowWatch(self)  # closing the viewer
        self._run: RunArgs | None = None  # the running segmentation
        self._plan: OutputPlan | None = None  # the plan being applied
        self._error_prefix = ""
        self._aux: AuxFill | None = None
        self.results = RunResults()  # kept maps and output layers per source layer
        self.applier = Applier(self)
        self.tiles = TileWriter(self.applier, napari_viewer, self)
        self.image_panel = ImagePanel(napari_viewer)
        self.scale_panel = ScalePanel()
        self.vocab_panel = VocabularyPanel()
        self.model_panel = ModelPanel()
        self.threshold_panel = ThresholdPanel()
        self.advanced_panel = AdvancedPanel()
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.progress_bar = ProgressBar()
        self.status_label = QLabel("Ready")
        self.heatmaps = HeatmapBrowser(napari_viewer, self._links)
        self.relabeller = Relabeller(self.relabel, self._relabel_done, self)
        self.live = LiveRerun(lambda: self.busy, lambda: _live_may_run(self),
                              lambda: self.run(live=True), self)
        self.teach = TeachPanel(napari_viewer, self._links, self.results.stack_of,
                                self.thresholds)
        self.measure_panel = MeasurePanel(napari_viewer, self._links,
                                          lambda: self.image_panel.settings().layer,
                                          self._labels_of)
        self._assemble()
        _wire(self)
        self.image_panel.reset_choices()
        self.image_panel.select(self.viewer.layers.selection.active)  # the list's selection
        self.image_panel.refresh()
        self.set_config(self.model_panel.preset())

    # -- building -----------------------------------------------------------------------
    def _assemble(self) -> None:
        _assemble(self)
        self._update_enabled()

    # -- viewer sync ------------------------------------------------------------------------
    def _on_layers_changed(self, event=None) -> None:
        from napari.layers import Image

        for layer in self.viewer.layers:  # keep names in the pickers current
            self._links.connect(layer.events.name, self._on_layers_changed)
            if isinstance(layer, Image):
                self._links.connect(layer.events.data, self._on_data_replaced)
        self.image_panel.reset_choices()
        self.measure_panel.reset_choices()

    def _on_data_replaced(self, event=None) -> None:
        """An image's data was replaced: its kept maps no longer describe it."""
        layer = getattr(event, "source", None)
        if layer is not None and self.results.forget(layer):
            self.relabeller.stop()
        if same(layer, self.image_panel.layer):
            self.image_panel.refresh()
            self.describe_run()

    def _on_inserted(self, event=None) -> None:
        """A new image layer (added, opened, a sample) becomes the picked layer."""
        self.image_panel.select(getattr(event, "value", None))

    def _on_active_layer(self, event=None) -> None:
        self.image_panel.select(self.viewer.layers.selection.active)

    def _on_layer_picked(self, layer) -> None:
        self.measure_panel.reset_choices()
        self.scale_panel.set_layer(layer)
        if layer is not None:
            _suggest(self, layer)
        self.describe_run()

    def describe_run(self) -> None:
        """Say, before Run, what a Run of the picked layer will do (Scale panel)."""
        _describe(self)

    def _labels_of(self, image) -> Any:
        """The Labels layer the last run of ``image`` wrote (if still there), or None."""
        kept = self.results.entry(image)
        return kept.labels.in_viewer(self.viewer) if kept is not None and kept.labels else None

    def _prune_results(self, event=None) -> None:
        """Forget kept maps whose source or output layers are no longer in the viewer (the
        kept maps are three C x H x W float32 arrays per plane: dead weight once a layer
        they belong to is gone).
        """
        layers = list(self.viewer.layers)
        self._links.prune(layers)
        if self.results.prune(layers):
            self.relabeller.stop()

    def clear_results(self) -> None:
        """Forget every kept map (relabelling then needs a new run)."""
        self.relabeller.stop()
        self.results.clear()

    # -- lifecycle ------------------------------------------------------------------------
    def event(self, e) -> bool:
        """Tear down when napari takes the widget out of its dock (``remove_dock_widget``,
        the dock's X): napari then drops the dock without closing the widget.
        """
        if e.type() == QEvent.Type.ParentChange:
            lifecycle.parent_changed(self)
        return super().event(e)

    def closeEvent(self, event) -> None:
        """Closing the widget tears it down (see :meth:`teardown`) and takes its dock out
        of napari, so that the Plugins menu opens a new, working widget next time.
        """
        self.teardown()
        super().closeEvent(event)
        if self._docked and self.parent() is not None:
            with contextlib.suppress(Exception):  # the window may be closing too
                self.viewer.window.remove_dock_widget(self)

    def teardown(self) -> None:
        """Cancel the running job, disconnect every viewer and layer callback, free the
        kept maps and exemplars. Idempotent; the widget is inert afterwards.
        """
        if self._closed:
            return
        self._closed = True
        lifecycle.teardown(self)

    @property
    def closed(self) -> bool:
        """Whether the widget was torn down."""
        return self._closed

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
        if cfg.object_size is not None:
            self.scale_panel.set_object_size_px(cfg.object_size)

    def thresholds(self) -> tuple[float, float | None]:
        """(prob_threshold, area_threshold) from the sliders (area 0 = None)."""
        t = self.threshold_panel.thresholds()
        return t.prob, t.area

    def config(self) -> ITACLIPConfig:
        """The configuration of the next run (advanced fields + threshold sliders)."""
        prob, area = self.thresholds()
        return self.advanced_panel.config().replace(
            prob_threshold=prob, area_threshold=area,
            object_size=self.scale_panel.object_size_px())

    def use_segmenter(self, segmenter) -> None:
        """Run with this Segmenter instead of the registry's for the model fields (or None)."""
        self._segmenter_override = segmenter

    # -- running -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a job runs (a worker, or a run's outputs being written)."""
        return self._worker is not None or self.applier.running or self.tiles.running

    def _update_enabled(self) -> None:
        busy = self.busy
        for w in (self.run_btn, self.image_panel.layer_picker.native,
                  *self.vocab_panel.generate_btns.values()):
            w.setEnabled(not busy and not self._closed)
        self.cancel_btn.setEnabled(self._worker is not None)

    def run(self, live: bool = False) -> None:
        """Segment the picked layer in a worker thread (returns at once); ``live``: only
        if its image features are cached (see :mod:`.live`).
        """
        if self.busy or self._closed:
            return
        image = self.image_panel.settings()
        if image.layer is None:
            self._error("Choose an image layer to segment.")
            return
        try:
            args = plan_run(self, image)
        except (ValueError, TypeError) as exc:
            self._error(str(exc))
            return
        self._remember_edited_aux(args.vocab)
        self.results.run_source = LayerRef(image.layer)
        args.live = live
        self._launch(args)

    def _launch(self, args: RunArgs) -> None:
        """Start the worker on ``args`` (a tiled run when ``args.source`` is set)."""
        launch(self, args)

    def _start(self, job, *, returned, yielded, message: str, error_prefix: str) -> None:
        from napari.qt.threading import create_worker

        self._error_prefix = error_prefix
        self.progress_bar.setValue(0)
        self.status_label.setText(message)

        # a generator function: napari makes it a cancellable GeneratorWorker
        self._worker = create_worker(shielded, lambda: job, _start_thread=False, _connect={
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
        if self._closed:
            return
        self.progress_bar.setValue(int(round(1000 * p.fraction)))
        self.status_label.setText(p.describe())

    def _on_returned(self, plan: OutputPlan | None) -> None:
        if not self._closed:
            returned(self, plan)

    def _applied(self, layers) -> None:
        plan, self._plan = self._plan, None
        applied(self, plan, *layers)
        self._run_ended()

    def _apply_failed(self, exc: BaseException) -> None:
        self._plan = None
        self.progress_bar.setValue(0)
        self._error(str(exc))
        self._run_ended()

    def _on_errored(self, exc: BaseException) -> None:
        if not self._closed and not tiled_errored(self, f"{self._error_prefix}: {exc}"):
            self._error(f"{self._error_prefix}: {exc}")

    def _on_aborted(self) -> None:
        if not self._closed and not tiled_aborted(self):
            self.progress_bar.setValue(0)
            self.status_label.setText("Cancelled; no layer was changed.")

    def _on_finished(self) -> None:
        if self._closed:
            return
        self._worker = None
        self._run_ended()

    def _run_ended(self) -> None:
        """The worker and the writing are both done: enable the buttons, start what waits."""
        self._update_enabled()
        if not self.busy and not self._closed:
            run_ended(self)

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
        elif not self.busy:
            self.status_label.setText("The thresholds apply to the next Run (no kept maps to "
                                      "relabel).")

    def relabel(self) -> None:
        """Recompute the labels of the last run from its kept maps (no model run).

        The planes are computed in a worker thread, the shown plane first, and written
        into the Labels layer in place in short steps (see :attr:`relabelling`). A new
        call restarts with the current thresholds.
        """
        self.relabeller.stop()
        kept = self.results.last()
        if kept is not None and not self._closed and not self.relabeller.relabel(
                self.viewer, kept, *self.thresholds()):
            self.status_label.setText("Nothing to relabel: the Labels layer of the last run "
                                      "is gone or was replaced, or its maps were too large "
                                      "to keep; press Run.")

    @property
    def relabelling(self) -> bool:
        """Whether a relabel is still computing or writing planes."""
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
        if not self.busy and not self._closed:
            start_aux(self, kind)

    def _remember_edited_aux(self, vocab: Vocabulary) -> None:
        """Record texts the user edited after an LLM fill, so generation keeps them."""
        if self._aux is not None:
            self._aux.remember_edits(vocab)


def _wire(widget: ITACLIPWidget) -> None:
    """Connect the viewer's events (through the widget's links) and the panels' signals."""
    layers = widget.viewer.layers
    for emitter in (layers.events.inserted, layers.events.removed, layers.events.moved):
        widget._links.connect(emitter, widget._on_layers_changed)
    widget._links.connect(layers.events.inserted, widget._on_inserted)
    widget._links.connect(layers.events.removed, widget._prune_results)
    widget._links.connect(layers.events.removed, lambda _e=None: gc_pauses.thaw())
    widget._links.connect(layers.selection.events.active, widget._on_active_layer)
    widget.image_panel.layer_changed.connect(widget._on_layer_picked)
    for panel in (widget.image_panel, widget.vocab_panel, widget.teach, widget.measure_panel,
                  widget.relabeller):
        panel.message.connect(widget._message)
    widget.teach.edited.connect(lambda: widget.teach.learning and widget.live.schedule())
    widget.vocab_panel.generate_requested.connect(widget.generate_aux)
    widget.vocab_panel.editor.textChanged.connect(widget.live.schedule)
    widget.model_panel.preset_changed.connect(widget.set_config)
    widget.scale_panel.changed.connect(widget.describe_run)
    widget.model_panel.preset_changed.connect(lambda _cfg: widget.describe_run())
    widget.image_panel.slices_combo.currentIndexChanged.connect(lambda _i: widget.describe_run())
    widget.threshold_panel.changed.connect(widget._on_threshold)
    widget.run_btn.clicked.connect(lambda: widget.run())
    widget.cancel_btn.clicked.connect(widget.cancel)
    view3d.follow(widget.viewer, widget._links)  # napari 0.9's status bar in 3D
    _follow_view(widget)
    widget._on_layers_changed()


#: the Scale line is described again this long after the view stops moving (pan, zoom,
#: 2D/3D) while "visible region only" is ticked
VIEW_DEBOUNCE_MS = 250


def _follow_view(widget: ITACLIPWidget) -> None:
    """Describe the run again when the view moves and only the visible region is run."""
    timer = QTimer(widget)
    timer.setSingleShot(True)
    timer.setInterval(VIEW_DEBOUNCE_MS)
    timer.timeout.connect(widget.describe_run)

    def moved(_event=None) -> None:
        if not widget.closed and widget.scale_panel.visible_only.isChecked():
            timer.start()

    viewer, camera = widget.viewer, view3d.camera_of(widget.viewer)
    for emitter in (camera.events.center, camera.events.zoom, viewer.dims.events.ndisplay,
                    viewer.dims.events.current_step):
        widget._links.connect(emitter, moved)


def _assemble(widget: ITACLIPWidget) -> None:
    """The panels in a scroll area, and the Run bar pinned below it (always visible)."""
    inner = QWidget()
    root = QVBoxLayout(inner)
    for panel in (widget.image_panel, widget.scale_panel, widget.vocab_panel, widget.model_panel,
                  widget.threshold_panel, widget.teach, widget.advanced_panel,
                  widget.heatmaps, widget.measure_panel):
        root.addWidget(panel)
    root.addStretch(1)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.setSpacing(0)
    outer.addWidget(_scrolled(inner), 1)
    outer.addWidget(_run_bar(widget))
    widget.setMinimumWidth(inner.sizeHint().width() + 40)


def _run_bar(widget: ITACLIPWidget) -> QWidget:
    """Run, Cancel, Live, the progress bar and the status line, never scrolled away."""
    bar = QFrame()
    bar.setFrameShape(QFrame.Shape.StyledPanel)
    box = QVBoxLayout(bar)
    box.setContentsMargins(6, 4, 6, 4)
    row = QHBoxLayout()
    for w in (widget.run_btn, widget.cancel_btn, widget.live.checkbox):
        row.addWidget(w)
    box.addLayout(row)
    widget.progress_bar.setRange(0, 1000)
    widget.progress_bar.setTextVisible(False)
    widget.progress_bar.setMaximumHeight(10)
    box.addWidget(widget.progress_bar)
    widget.status_label.setWordWrap(True)
    widget.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.addWidget(widget.status_label)
    return bar


def _describe(widget: ITACLIPWidget) -> None:
    """The Scale panel's line: level, working resolution, windows, time, memory, tiles."""
    from ...engine.memory import memory_limit
    from ..sources import describe_run, source_for, tiles_needed

    image = widget.image_panel.settings()
    label = widget.scale_panel.summary
    if image.layer is None:
        label.setText("")
        return
    try:
        cfg = widget.config()
        source = source_for(image.layer, cfg, image.channel_axis, image.channel)
        try:
            queries = len(widget.vocabulary().queries)
        except ValueError:
            queries = 3
        planes = source.layout.n_slices if image.all_slices else 1
        cache = widget.advanced_panel.feature_cache_mb()
        region = (visible_region(widget, image.layer, source)
                  if widget.scale_panel.visible_only.isChecked() else None)
        tiled = region is not None or tiles_needed(
            source, cfg, queries, memory_limit()[0], planes, cache)
        device = widget.model_panel.settings().device
        label.setText(describe_run(source, cfg, queries, planes, tiled,
                                   device if device in ("cuda", "mps") else "cpu", cache,
                                   region))
    except (ValueError, TypeError) as exc:
        label.setText(f"<span style='color:#e55'>{exc}</span>")


def _suggest(widget: ITACLIPWidget, layer) -> None:
    """A picked layer's suggested vocabulary (into the editor) and model (named)."""
    if widget.vocab_panel.suggest_from(layer):
        widget.status_label.setText(f"Loaded the vocabulary suggested by '{layer.name}'.")
    entry = suggested_model(layer)
    if entry is not None and widget.model_panel.settings().model != entry.model:
        widget.status_label.setText(f"'{layer.name}' suits the {entry.short_name} model "
                                    f"({entry.domain}): pick it under Model to use it.")


def _live_may_run(widget: ITACLIPWidget) -> bool:
    """Whether a live run makes sense: the picked layer was segmented last, and the
    vocabulary is valid (else the vocabulary panel shows what is wrong).
    """
    layer = widget.image_panel.settings().layer
    last = widget.results.last_source
    if layer is None or last is None or not last.is_(layer):
        return False  # segment this layer once with Run first
    try:
        widget.vocabulary()
    except ValueError:
        return False
    return True


def _scrolled(inner: QWidget) -> QScrollArea:
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    return scroll
