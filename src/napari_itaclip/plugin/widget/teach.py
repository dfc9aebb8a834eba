"""The widget's "Correct and teach" panel: edited pixels counted, discarded, and learnt from.

- **Edited pixels** (see :mod:`~napari_itaclip.plugin.edits`) are counted after every
  ``paint`` / ``set_data`` / ``data`` event of the output Labels layer (on the next turn
  of the event loop: napari emits ``paint`` before writing the stroke) and after every
  run, in row bands of :data:`COUNT_BAND_PIXELS` on the event loop (at most
  :data:`COUNT_SLICE_S` of GUI time per turn): the shown plane first, then the other
  planes of a stack, so painting on a large plane or a big stack stays smooth.
- **Discard edits** gives the edited pixels back to the model's current labels (the
  kept maps relabelled with the sliders' thresholds).
- **Learn from edits** (off by default: the output is then pure ITACLIP): a Run or a
  Live re-run first turns the edited pixels into exemplars (:class:`TeachRequest`, in
  the worker), then scores them with the text. A painted value that is no class of the
  vocabulary becomes an exemplar-only class, listed under
  :data:`~napari_itaclip.plugin.edits.PAINTED_MARKER` in the vocabulary editor where
  the user can rename it. On a stack the shown plane is re-scored first, the other
  planes in a second worker run.
- **Save / Load exemplars**: the exemplars of the last run to a file, and a file's
  exemplars used by every later Run (until *Forget*).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from ..edits import (
    labels_target,
    ours_for,
    record_of,
    reset_undo,
    split_painted,
    stroke_image,
    stroke_masks,
    strokes,
    with_painted,
)
from ..layers import labels_name
from ..refs import LayerRef
from .workers import shielded

__all__ = ["COUNT_BAND_PIXELS", "COUNT_SLICE_S", "LEARN_TEXT", "TeachPanel", "TeachRequest"]

LEARN_TEXT = "Learn from edits"
COUNT_SLICE_S = 0.02  # GUI-thread time per turn of the event loop for the edit count
COUNT_BAND_PIXELS = 1 << 21  # pixels compared per band (a few ms each)
_FILTER = "Exemplars (*.itaclip-exemplars);;All files (*)"


@dataclass
class TeachRequest:
    """The exemplars of one Run: strokes read on the GUI thread, built in the worker.

    Attributes
    ----------
    planes : list
        Slice indices holding strokes (their image features make the prototypes).
    masks : dict
        Class name -> boolean mask (``(H, W)``, or ``(planes, H, W)``).
    preferred : dict
        Name -> painted layer value of each exemplar-only class.
    n_text : int
        Classes of the vocabulary (exemplar-only classes come after them).
    loaded : Exemplars or None
        Exemplars loaded from a file, merged in.
    rest : list
        Planes to re-score after the first run (the shown plane's), in a second run.
    """

    planes: list[tuple[int, ...]]
    masks: dict[str, np.ndarray]
    preferred: dict[str, int]
    n_text: int
    loaded: Any = None
    rest: list[tuple[int, ...]] = field(default_factory=list)
    exemplars: Any = None  # built by the worker (reused by the second run)
    args: tuple = ()  # the run's (model, data, layout, vocab, config), for the second run

    def bind(self, segmenter, data, layout, config) -> Iterator[Any]:
        """(Worker) build the exemplars once; return ``segmenter`` scoring them."""
        from ...planes import RunProgress
        from ..scripting import WithExemplars

        if self.exemplars is None:
            ex = None
            if self.masks:
                image = stroke_image(data, layout, self.planes)
                gen = segmenter.iter_exemplars(image, self.masks, config=config)
                while True:
                    try:
                        p = next(gen)
                    except StopIteration as stop:
                        ex = stop.value
                        break
                    yield RunProgress(str(p.stage), int(p.done), int(p.total), 0, 1)
            if self.loaded is not None:
                ex = self.loaded if ex is None else ex | self.loaded
            self.exemplars = ex
        return WithExemplars(segmenter, self.exemplars)


class TeachPanel(QGroupBox):
    """Edited-pixel count, Discard edits, Learn from edits, save / load exemplars.

    Parameters
    ----------
    viewer : napari.Viewer
    links : EventLinks
        Where layer callbacks are recorded (disconnected when the widget closes).
    kept : callable
        ``kept(source_name)`` -> the kept ``StackResult`` of that source, or None.
    thresholds : callable
        ``thresholds()`` -> ``(prob, area)`` of the sliders.

    ``edited`` is emitted after an edit event of the watched layer; ``message`` as the
    other panels' (``text, is_error``).
    """

    edited = Signal()
    message = Signal(str, bool)

    def __init__(self, viewer, links, kept: Callable, thresholds: Callable, parent=None) -> None:
        super().__init__("Correct and teach", parent)
        self._viewer, self._links = viewer, links
        self._kept, self._thresholds = kept, thresholds
        self._layer: LayerRef | None = None  # the watched output Labels layer
        self.loaded = None  # exemplars loaded from a file
        self.last = None  # the exemplars of the last run
        self.pending: TeachRequest | None = None  # a second run still to start
        self._counts: dict[tuple[int, ...], int] = {}  # plane -> edited pixels
        self._shown: tuple[int, ...] | None = None  # the plane counted first
        self._signature: tuple = ()  # which pixels of the shown plane are edited
        self._job: Iterator[None] | None = None  # the count in progress (one band a step)
        self._check: tuple | None = None  # signature before a layer event (see edited)
        self._discarding = None  # the worker computing the model's labels to give back
        self._discarded = 0
        self._discard_error: str | None = None
        self.edits_label = QLabel("Edited pixels: none yet (Run first)")
        self.edits_label.setWordWrap(True)
        self.discard_btn = QPushButton("Discard edits")
        self.discard_btn.setToolTip("Give the pixels you edited back to the model's labels")
        self.learn_check = QCheckBox(LEARN_TEXT)
        self.learn_check.setToolTip(
            "Use your edited pixels as examples of their class on the next Run or Live "
            "re-run (a new label value becomes a new class, named in the vocabulary "
            "editor); erased pixels are no examples. Off: pure ITACLIP.")
        self.load_btn = QPushButton("Load exemplars…")
        self.save_btn = QPushButton("Save exemplars…")
        self.forget_btn = QPushButton("Forget")
        self.forget_btn.setToolTip("Stop using the loaded exemplars")
        self.exemplar_label = QLabel("")
        self.exemplar_label.setWordWrap(True)
        box = QVBoxLayout(self)
        for widgets in ((self.edits_label, self.discard_btn), (self.learn_check,),
                        (self.load_btn, self.save_btn, self.forget_btn), (self.exemplar_label,)):
            row = QHBoxLayout()
            for w in widgets:
                row.addWidget(w, 1 if w is widgets[0] else 0)
            box.addLayout(row)
        self._stepper = QTimer(self)
        self._stepper.setSingleShot(True)
        self._stepper.setInterval(0)
        self._stepper.timeout.connect(self._count_step)
        self._event_timer = QTimer(self)
        self._event_timer.setSingleShot(True)
        self._event_timer.setInterval(0)
        self._event_timer.timeout.connect(self._after_layer_event)
        self.discard_btn.clicked.connect(lambda: self.discard())
        self.load_btn.clicked.connect(lambda: self.load())
        self.save_btn.clicked.connect(lambda: self.save())
        self.forget_btn.clicked.connect(self.forget)
        links.connect(viewer.dims.events.current_step, self.refresh)
        self._show_exemplars()

    @property
    def learning(self) -> bool:
        """Whether *Learn from edits* is on."""
        return self.learn_check.isChecked()

    # -- watching and counting ---------------------------------------------------------
    @property
    def layer(self):
        """The watched output Labels layer (None when there is none or it was removed)."""
        return self._layer.in_viewer(self._viewer) if self._layer is not None else None

    def watch(self, layer) -> None:
        """Count the edits of this output Labels layer (after each of its edit events)."""
        self._layer = LayerRef(layer)
        for emitter in (layer.events.paint, layer.events.set_data, layer.events.data):
            self._links.connect(emitter, self._on_layer_event)
        self.refresh()

    def _on_layer_event(self, event=None) -> None:
        """An event of the layer: recount on the next turn of the event loop.

        napari emits ``paint`` before it writes the stroke into the data, so the count
        waits until the handlers have returned (and many events make one recount).
        """
        self._event_timer.start()

    def _after_layer_event(self) -> None:
        """Recount; ``edited`` once the shown plane is counted, if its edits changed.

        The plugin's own writes refresh the layer too (``set_data``) but never change
        which pixels are edited, so they do not count as edits (no Live loop).
        """
        if self._check is None:  # events during a count compare with the state before it
            self._check = self._signature
        self.refresh()

    def _watched(self):
        layer = self.layer
        return (None, None) if layer is None else (layer, record_of(layer))

    def shown_plane(self, layer) -> tuple[int, ...]:
        """The slice index of ``layer`` the viewer shows."""
        lead = layer.data.shape[:-2]
        if not lead:
            return ()
        point = layer.world_to_data(self._viewer.dims.point)[:len(lead)]
        return tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(point, lead))

    def refresh(self, event=None) -> None:
        """Count the edits again: the shown plane first, then the other planes, in row
        bands on the event loop (the first step now: a small plane is counted at once).
        """
        self._stepper.stop()
        layer, record = self._watched()
        if record is None:
            self._job = self._check = None
            self.edits_label.setText("Edited pixels: none yet (Run first)")
            return
        shown = self.shown_plane(layer)
        self._job = _counting(layer, record, shown,
                              lambda n, digest: self._shown_done(layer, shown, n, digest),
                              lambda idx, n: self._counts.__setitem__(idx, n))
        self._count_step()

    def _shown_done(self, layer, shown, n: int, digest: bytes) -> None:
        self._shown, self._counts = shown, {shown: n}
        self._shown_counted((id(layer), shown, digest))

    def _shown_counted(self, signature: tuple) -> None:
        """The shown plane is counted: show it; ``edited`` if a layer event changed its
        edits (the same layer and plane as before the event: a new layer's or plane's
        first count is no edit).
        """
        self._signature = signature
        self._show_count()
        before, self._check = self._check, None
        if before is not None and before[:2] == signature[:2] and signature != before:
            self.edited.emit()

    def _count_step(self) -> None:
        """Bands of the count for at most :data:`COUNT_SLICE_S`, then the next turn."""
        if self._job is None:
            return
        if self._watched()[1] is None:  # the layer went, or was resized: recount
            self.refresh()
            return
        t0 = time.perf_counter()
        for _ in self._job:
            if time.perf_counter() - t0 > COUNT_SLICE_S:
                self._stepper.start()
                return
        self._job = None
        self._show_count()

    @property
    def counting(self) -> bool:
        """Whether a count (the shown plane's, or the rest of a stack's) is in progress."""
        return self._job is not None

    def _show_count(self) -> None:
        if self._shown not in self._counts:
            return
        n_shown = self._counts[self._shown]
        layer = self.layer
        if layer is None or len(layer.data.shape) == 2:
            self.edits_label.setText(f"Edited pixels: {n_shown}")
            return
        total = "counting…" if self.counting else f"{sum(self._counts.values())} in the stack"
        self.edits_label.setText(f"Edited pixels: {n_shown} on this plane, {total}")

    def edited_count(self) -> int:
        """Edited pixels of the watched layer, every plane (computed now)."""
        layer, record = self._watched()
        if record is None:
            return 0
        return sum(record.count(layer.data, idx) for idx in record.all_slices())

    # -- discard -----------------------------------------------------------------------------
    def discard(self) -> bool:
        """Give every edited pixel back to the model's current labels.

        The model's labels of the edited planes (the kept maps relabelled with the
        sliders' thresholds) are computed in a worker thread; each plane is written when
        it arrives. ``message`` says how many pixels were given back. False when there is
        nothing to do.
        """
        layer, record = self._watched()
        if record is None or self._discarding is not None:
            return False
        from napari.qt.threading import create_worker

        planes = [idx for idx, _mask in record.edited_planes(layer.data)]
        worker = create_worker(shielded, model_planes, self._kept(record.source), record, planes,
                               *self._thresholds(), layer.data.shape[-2:],
                               _start_thread=False, _connect={
                                   "errored": lambda exc: self._discard_failed(worker, exc)})
        self._discarding, self._discarded, self._discard_error = worker, 0, None
        worker.yielded.connect(lambda item: self._discard_plane(worker, *item))
        worker.finished.connect(lambda: self._discard_done(worker))
        self.discard_btn.setEnabled(False)
        worker.start()
        return True

    def _discard_plane(self, worker, idx, values) -> None:
        layer, record = self._watched()
        if worker is not self._discarding or record is None:
            return
        self._discarded += record.discard(layer.data, idx, values)

    def _discard_failed(self, worker, exc: BaseException) -> None:
        if worker is self._discarding:
            self._discard_error = f"Discarding the edits failed: {exc}"

    def _discard_done(self, worker) -> None:
        if worker is not self._discarding:
            return
        self._discarding = None
        self.discard_btn.setEnabled(True)
        layer, _record = self._watched()
        if layer is not None:
            reset_undo(layer)
            layer.refresh()
        self.refresh()
        done = f"Discarded {self._discarded} edited pixel(s)"
        if self._discard_error is not None:
            self.message.emit(f"{self._discard_error} ({done.lower()} before).", True)
        else:
            self.message.emit(done + ".", False)

    # -- learning ------------------------------------------------------------------------------
    def request(self, source, vocab, editor_text: str, indices: list, shown, kept_planes
                ) -> tuple[TeachRequest | None, str, list]:
        """The exemplar request of a Run (None: pure ITACLIP), the editor's new text and
        the planes of the first run.

        With *Learn from edits* on, the edited pixels of ``source``'s Labels layer are
        read here (GUI thread); new painted values get a ``value: class N`` line. On a
        stack the first run re-scores the ``shown`` plane, a second one the other planes
        of ``indices`` and ``kept_planes`` (those segmented before).
        """
        if not self.learning:
            if self.loaded is None:
                return None, editor_text, indices
            return TeachRequest([], {}, {}, len(vocab), self.loaded), editor_text, indices
        from napari.layers import Labels

        layer = ours_for(self._viewer.layers, LayerRef(source), Labels)
        if layer is None:
            layer, _name = labels_target(self._viewer.layers, labels_name(source.name), Labels)
        record = record_of(layer)
        by_value = strokes(layer, record) if record is not None else {}
        offset = 0 if vocab.has_background else 1
        text_names = {i + offset: n for i, n in enumerate(vocab.class_names)}
        _vocab_text, painted = split_painted(editor_text)
        feats = _feature_names(layer)
        new = {v: feats.get(v, f"class {v}") for v in by_value
               if v not in text_names and v not in painted}
        painted.update(new)
        names = {v: text_names.get(v, painted.get(v)) for v in by_value}
        planes, masks = stroke_masks(by_value, names)
        first = [shown] if shown in indices else indices[:1]
        rest = [i for i in dict.fromkeys([*indices, *kept_planes]) if i not in first]
        req = TeachRequest(planes, masks, {n: v for v, n in painted.items()}, len(vocab),
                           self.loaded, rest)
        return req, with_painted(editor_text, new), first

    def ran(self, request: TeachRequest | None, labels) -> None:
        """A run's layers are written: remember its exemplars, watch the layer."""
        if request is not None:
            self.last = request.exemplars
            self.pending = request if request.rest else None
        self.watch(labels)
        self._show_exemplars()

    def take_followup(self) -> tuple[TeachRequest | None, list]:
        """The request whose other planes are still to run, and those planes (once)."""
        req, self.pending = self.pending, None
        if req is None:
            return None, []
        rest, req.rest = req.rest, []
        return req, rest

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> None:
        """Write the exemplars of the last run to a file (asks for one when ``path`` is None)."""
        ex = self.last if self.last is not None else self.loaded
        if ex is None:
            self.message.emit("No exemplars yet: Run with Learn from edits on first.", True)
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save exemplars",
                                                  "exemplars.itaclip-exemplars", _FILTER)
            if not path:
                return
        try:
            ex.save(path)
        except (OSError, ValueError) as exc:
            self.message.emit(f"Cannot save exemplars to {path}: {exc}", True)
            return
        self.message.emit(f"Saved exemplars of {', '.join(ex.names)} to {Path(path).name}.",
                          False)

    def load(self, path: str | Path | None = None) -> None:
        """Read exemplars from a file; every later Run uses them (until Forget)."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load exemplars", "", _FILTER)
            if not path:
                return
        from ... import Exemplars

        try:
            self.loaded = Exemplars.load(path)
        except (OSError, ValueError) as exc:
            self.message.emit(f"Cannot load exemplars from {path}: {exc}", True)
            return
        self._show_exemplars()
        self.message.emit(f"Loaded exemplars of {', '.join(self.loaded.names)}: "
                          "every Run uses them.", False)

    def forget(self) -> None:
        """Stop using the loaded exemplars."""
        self.loaded = None
        self._show_exemplars()

    def teardown(self) -> None:
        """Stop counting and free the exemplars (the widget is closing)."""
        worker, self._discarding = self._discarding, None
        if worker is not None:
            worker.quit()
        self._stepper.stop()
        self._event_timer.stop()
        self._job = self._check = None
        self._layer = None
        self.loaded = self.last = self.pending = None

    def _show_exemplars(self) -> None:
        parts = []
        if self.loaded is not None:
            parts.append(f"loaded (used by Run): {', '.join(self.loaded.names)}")
        if self.last is not None:
            parts.append(f"last run: {', '.join(self.last.names)}")
        self.exemplar_label.setText("Exemplars: " + ("; ".join(parts) if parts else "none"))
        self.forget_btn.setEnabled(self.loaded is not None)


def _counting(layer, record, shown, shown_done: Callable[[int, bytes], None],
              counted: Callable[[tuple, int], None]) -> Iterator[None]:
    """A layer's edit count, one band per ``next``: the shown plane first
    (``shown_done(count, signature of its edited pixels)``), then the other planes of a
    stack (``counted(plane, count)``).
    """
    height, width = layer.data.shape[-2:]
    step = max(1, COUNT_BAND_PIXELS // max(1, width))
    bands = [slice(r, r + step) for r in range(0, height, step)]
    digest, n = hashlib.blake2b(digest_size=16), 0
    for rows in bands:
        mask = record.edited(layer.data, shown, rows)
        n += int(np.count_nonzero(mask))
        digest.update(np.packbits(mask).tobytes())
        yield
    shown_done(n, digest.digest())
    for idx in record.all_slices():
        if idx != shown:
            count = 0
            for rows in bands:
                count += record.count(layer.data, idx, rows)
                yield
            counted(idx, count)


def model_planes(stack, record, planes, prob: float, area, shape):
    """(Worker) ``(plane, the model's layer values)`` for each plane: the kept maps
    relabelled with these thresholds, or, without kept maps (a reopened widget), what the
    plugin wrote there.
    """
    for idx in planes:
        if stack is not None and idx in stack.results:
            yield idx, record.to_layer(stack.relabel_plane(idx, prob, area))
        else:
            yield idx, np.array(np.broadcast_to(record.written(idx), shape))


def _feature_names(layer) -> dict[int, str]:
    feats = getattr(layer, "features", None)
    if feats is None or "class_name" not in feats:
        return {}
    return {int(v): str(n) for v, n in zip(feats["index"], feats["class_name"])}
