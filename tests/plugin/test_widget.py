"""The ITACLIP dock widget, headless with a real napari viewer and the tiny model."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

RUN_TIMEOUT = 20_000  # ms; a tiny-model run on a 64 x 64 image takes well under a second
VOCAB_BG = "background: sky, wall\ncat, feline\ndog"


class SlowSegmenter:
    """Delegates to a real Segmenter, sleeping after each yielded progress step."""

    def __init__(self, inner, delay=0.05):
        self.inner = inner
        self.delay = delay
        self.config = inner.config
        self.steps = 0
        self.closed = 0

    def iter_segment(self, image, vocabulary, *, config=None):
        gen = self.inner.iter_segment(image, vocabulary, config=config)
        try:
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    return stop.value
                self.steps += 1
                time.sleep(self.delay)
                yield p
        except GeneratorExit:
            self.closed += 1
            raise


class FailingSegmenter:
    """A segmenter whose model cannot load: raises the engine's ModelError."""

    config = None

    def iter_segment(self, image, vocabulary, *, config=None):
        from napari_itaclip.engine.segmenter import Progress
        from napari_itaclip.errors import ModelError

        yield Progress("load", 0, 1)
        raise ModelError("unknown model 'ViT-Nope'; open_clip knows ViT-B-16, ...")


@pytest.fixture
def widget_factory(make_napari_viewer, tiny_segmenter, tiny_config):
    from _widgets import open_widget

    def make(*, segmenter=None):
        viewer = make_napari_viewer()
        widget = open_widget(viewer)
        widget.use_segmenter(segmenter or tiny_segmenter)
        widget.set_config(tiny_config)
        return viewer, widget

    return make


def _rgb(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2:] = (40, 40, 200)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def _run(qtbot, widget, timeout=RUN_TIMEOUT):
    widget.run_btn.click()
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records
            if n.severity == NotificationSeverity.ERROR]


def test_widget_from_manifest_full_run(widget_factory, qtbot):
    from napari.layers import Image, Labels

    from napari_itaclip.plugin.widget import ITACLIPWidget

    viewer, widget = widget_factory()
    assert isinstance(widget, ITACLIPWidget)
    src = viewer.add_image(_rgb(64, 80), name="photo", scale=(2.0, 0.5), translate=(10, -3))
    assert widget.image_panel.layer_picker.current_choice == "photo"
    widget.set_vocabulary(VOCAB_BG)
    _run(qtbot, widget)

    labels = viewer.layers["photo labels"]
    heat = viewer.layers["photo heatmaps"]
    assert isinstance(labels, Labels) and isinstance(heat, Image)
    assert labels.data.shape == (64, 80) and labels.data.dtype == np.uint8  # smallest type
    assert heat.data.shape == (3, 64, 80)
    np.testing.assert_allclose(labels.scale, src.scale)
    np.testing.assert_allclose(labels.translate, src.translate)
    np.testing.assert_allclose(heat.scale, (1.0, *src.scale))
    np.testing.assert_allclose(heat.translate, (0.0, *src.translate))
    assert heat.axis_labels[0] == "class"
    assert heat.metadata["itaclip"]["class_names"] == ["background", "cat", "dog"]
    assert list(labels.features["class_name"]) == ["background", "cat", "dog"]
    assert list(labels.features["index"]) == [0, 1, 2]
    assert set(np.unique(labels.data)) <= {0, 1, 2}
    # background value 0 is transparent, classes have distinct opaque colours
    cmap = labels.colormap
    assert cmap.map(np.array([0]))[0][3] == 0
    c1, c2 = cmap.map(np.array([1]))[0], cmap.map(np.array([2]))[0]
    assert c1[3] == 1 and c2[3] == 1 and not np.allclose(c1, c2)
    assert widget.progress_bar.value() == 1000
    assert widget.status_label.text().startswith("Done")
    assert [widget.heatmaps.combo.itemText(i) for i in range(3)] == ["background", "cat", "dog"]
    # choosing a class in the heatmap picker moves the class slider
    widget.heatmaps.combo.setCurrentIndex(2)
    assert viewer.dims.current_step[0] == 2
    # (a name with glyphs napari has not drawn yet appears in steps, a few new ones a paint)
    qtbot.waitUntil(lambda: viewer.text_overlay.text == "heatmap: dog", timeout=2000)
    assert viewer.text_overlay.visible
    # and moving the class slider names the class on the canvas and in the picker
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: viewer.text_overlay.text == "heatmap: cat", timeout=2000)
    assert widget.heatmaps.combo.currentText() == "cat"
    # the Labels layer is an ordinary paintable layer
    labels.paint((5, 5), 2, refresh=True)
    assert labels.data[5, 5] == 2


def test_rerun_updates_in_place_and_reuses_model(widget_factory, qtbot, tiny_segmenter):
    viewer, widget = widget_factory()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB_BG)
    _run(qtbot, widget)
    labels, heat = viewer.layers["img labels"], viewer.layers["img heatmaps"]
    n_layers = len(viewer.layers)
    loaded_model = tiny_segmenter.model
    widget.set_vocabulary("cat\ndog\nbird\nfish")  # no background, 4 classes
    _run(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["img labels"] is labels
    assert viewer.layers["img heatmaps"] is heat
    assert tiny_segmenter.model is loaded_model  # not reloaded
    assert heat.data.shape == (4, 64, 64)
    # no background: values are class + 1, 0 is unused and means "unlabelled"
    assert list(labels.features["class_name"]) == ["(unlabelled)", "cat", "dog", "bird", "fish"]
    assert list(labels.features["class_index"]) == [-1, 0, 1, 2, 3]
    assert labels.data.min() >= 1 and labels.data.max() <= 4
    assert labels.metadata["itaclip"]["label_offset"] == 1


def test_relabel_by_sliders_without_running_model(widget_factory, qtbot, tiny_segmenter,
                                                  monkeypatch):
    viewer, widget = widget_factory()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB_BG)
    widget.threshold_panel.prob.setValue(0.0)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    before = labels.data.copy()
    assert (before > 0).any()

    def boom(*a, **k):
        raise AssertionError("the model must not run on relabel")

    monkeypatch.setattr(tiny_segmenter, "iter_segment", boom)
    # every pixel's best probability is < 1: threshold 1.0 sends all to background
    widget.threshold_panel.prob.setValue(1.0)
    qtbot.waitUntil(lambda: not (labels.data > 0).any(), timeout=2000)
    assert viewer.layers["img labels"] is labels
    assert widget.threshold_panel.prob.value() == 1.0
    widget.threshold_panel.prob.setValue(0.0)
    qtbot.waitUntil(lambda: np.array_equal(labels.data, before), timeout=2000)
    # the area threshold: at 0.5 at most one non-background class survives
    widget.threshold_panel.area.setValue(0.5)
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Relabelled: probability "
                                                                  "≥ 0.00, area > 0.50"),
                    timeout=2000)
    assert len(set(np.unique(labels.data)) - {0}) <= 1
    assert widget.threshold_panel.area.value() == 0.5


def test_kept_maps_are_dropped_with_their_layers(widget_factory, qtbot):
    viewer, widget = widget_factory()
    viewer.add_image(_rgb(), name="a")
    viewer.add_image(_rgb(seed=1), name="b")
    widget.set_vocabulary(VOCAB_BG)
    for name in ("a", "b"):
        widget.image_panel.layer_picker.value = viewer.layers[name]
        _run(qtbot, widget)
    assert set(widget.results.sources()) == {"a", "b"}
    # removing an output layer drops its source's maps, the other source keeps its own
    viewer.layers.remove("a heatmaps")
    assert set(widget.results.sources()) == {"b"}
    # removing the source layer drops them too; relabelling then does nothing
    viewer.layers.remove("b")
    assert len(widget.results) == 0
    widget.threshold_panel.prob.setValue(widget.threshold_panel.prob.value() + 0.1)
    widget.relabel()
    assert "b labels" in viewer.layers  # left as it was, no error
    # closing the widget frees what is kept
    widget.image_panel.layer_picker.value = viewer.layers["a"]
    _run(qtbot, widget)
    assert set(widget.results.sources()) == {"a"}
    widget.close()
    assert len(widget.results) == 0


def test_cancel_mid_run_leaves_no_layers(widget_factory, qtbot, tiny_segmenter):
    slow = SlowSegmenter(tiny_segmenter, delay=0.1)
    viewer, widget = widget_factory(segmenter=slow)
    viewer.add_image(_rgb(96, 96), name="img")
    widget.set_vocabulary(VOCAB_BG)
    widget.run_btn.click()
    qtbot.waitUntil(lambda: slow.steps >= 2, timeout=RUN_TIMEOUT)
    assert widget.cancel_btn.isEnabled()
    steps_at_cancel = slow.steps
    widget.cancel_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    assert slow.steps <= steps_at_cancel + 1  # stops within one batch
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert "Cancelled" in widget.status_label.text()
    assert widget.run_btn.isEnabled() and not widget.cancel_btn.isEnabled()
    # a full run needs many more steps than were done: it really was cut short
    full = SlowSegmenter(tiny_segmenter, delay=0.0)
    widget.use_segmenter(full)
    _run(qtbot, widget)
    assert full.steps > steps_at_cancel + 1
    assert "img labels" in viewer.layers


def test_cancel_after_previous_run_keeps_old_layers(widget_factory, qtbot, tiny_segmenter):
    viewer, widget = widget_factory()
    viewer.add_image(_rgb(96, 96), name="img")
    widget.set_vocabulary(VOCAB_BG)
    _run(qtbot, widget)
    old = viewer.layers["img labels"].data.copy()
    slow = SlowSegmenter(tiny_segmenter, delay=0.1)
    widget.use_segmenter(slow)
    widget.set_vocabulary("cat\ndog")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: slow.steps >= 2, timeout=RUN_TIMEOUT)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=5000)
    np.testing.assert_array_equal(viewer.layers["img labels"].data, old)
    assert viewer.layers["img heatmaps"].data.shape[0] == 3


def test_engine_error_becomes_notification(widget_factory, qtbot):
    viewer, widget = widget_factory(segmenter=FailingSegmenter())
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary("cat, dog")
    _run(qtbot, widget)
    assert any("unknown model 'ViT-Nope'" in m for m in _errors())
    assert "unknown model 'ViT-Nope'" in widget.status_label.text()
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert widget.run_btn.isEnabled()


def test_invalid_inputs_are_reported_without_starting(widget_factory):
    viewer, widget = widget_factory()
    widget.set_vocabulary("cat")
    widget.run()  # no image layer
    assert not widget.busy
    assert any("image layer" in m for m in _errors())
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary("cat\ncat")
    assert "duplicate" in widget.vocab_panel.status.text()
    widget.run()
    assert not widget.busy
    assert any("duplicate name 'cat'" in m for m in _errors())
    widget.set_vocabulary("cat")
    widget.advanced_panel.fields["mid_layers"].setText("7, x")
    widget.run()
    assert not widget.busy
    assert any("mid_layers" in m for m in _errors())


def _run_with_ticks(qtbot, widget):
    """Run the widget while a 10 ms QTimer records when the GUI event loop ticks."""
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    # ticks while the worker computes (napari's own layer creation at the end, which
    # cannot be split, is measured by benchmarks/bench_gui.py, not here)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter())
                          if widget._worker is not None and not widget.applier.running
                          else None)
    timer.start()
    t0 = time.perf_counter()
    _run(qtbot, widget)
    elapsed = time.perf_counter() - t0
    timer.stop()
    return t0, ticks, elapsed


def test_viewer_stays_responsive_during_run(widget_factory, qtbot, tiny_segmenter):

    slow = SlowSegmenter(tiny_segmenter, delay=0.05)
    viewer, widget = widget_factory(segmenter=slow)
    viewer.add_image(_rgb(96, 96), name="img")
    widget.set_vocabulary(VOCAB_BG)
    t0, ticks, elapsed = _run_with_ticks(qtbot, widget)
    assert elapsed > 0.3
    # the GUI thread kept running its event loop: ticks throughout, no long gap
    assert len(ticks) >= 10
    gaps = np.diff([t0, *ticks])
    assert gaps.max() < 0.25, f"event loop blocked for {gaps.max():.2f} s"


def test_presets_and_advanced_settings(widget_factory):
    from napari_itaclip import ITACLIPConfig

    _viewer, widget = widget_factory()
    widget.model_panel.preset_combo.setCurrentText("voc21")
    voc = ITACLIPConfig.preset("voc21")
    assert widget.config() == voc
    assert widget.thresholds() == (0.1, 0.1)
    widget.model_panel.preset_combo.setCurrentText("fast")
    assert widget.config() == ITACLIPConfig.preset("fast")
    widget.advanced_panel.expand()
    assert widget.advanced_panel.isExpanded() or not widget.isVisible()
    f = widget.advanced_panel.fields
    f["stride"].setValue(28)
    f["short_side"].setValue(0)
    f["attention"].setCurrentText("q-k")
    f["mid_layers"].setText("3, 4")
    f["image_engineering"].setChecked(True)
    cfg = widget.config()
    assert (cfg.stride, cfg.short_side, cfg.attention, cfg.mid_layers,
            cfg.image_engineering) == (28, None, "q-k", (3, 4), True)


def test_method_picker_lists_each_methods_presets(widget_factory):
    """ITACLIP first; picking a method lists its presets, applies the first and says what
    the method changes; every switch survives the advanced settings (crop None too)."""
    from napari_itaclip import ITACLIPConfig
    from napari_itaclip.config import DATASETS, describe_method, list_presets

    _viewer, widget = widget_factory()
    panel = widget.model_panel
    methods = [panel.method_combo.itemData(i) for i in range(panel.method_combo.count())]
    assert methods == ["itaclip", "sclip", "naclip", "clearclip"]
    assert panel.method_combo.itemText(3) == "ClearCLIP"
    presets = [panel.preset_combo.itemText(i) for i in range(panel.preset_combo.count())]
    assert presets == list_presets("itaclip") and panel.preset_combo.currentText() == "balanced"
    assert panel.method_label.text() == describe_method("itaclip")

    panel.method_combo.setCurrentIndex(2)  # NACLIP
    presets = [panel.preset_combo.itemText(i) for i in range(panel.preset_combo.count())]
    assert presets == [f"naclip-{d}" for d in DATASETS]
    assert panel.method_label.text() == describe_method("naclip")
    assert "Gaussian" in panel.method_label.text()
    cfg = ITACLIPConfig.preset("naclip-voc21")  # the first one, applied
    assert widget.config() == cfg and widget.config().crop is None
    assert widget.thresholds() == (0.1, None)
    panel.preset_combo.setCurrentText("naclip-cityscapes")
    assert widget.config() == ITACLIPConfig.preset("naclip-cityscapes")

    panel.method_combo.setCurrentIndex(3)  # ClearCLIP
    assert widget.config() == ITACLIPConfig.preset("clearclip-voc21")
    assert widget.config().pad_to_patch and widget.thresholds() == (0.5, None)
    panel.method_combo.setCurrentIndex(0)  # back to ITACLIP: the interactive default
    assert panel.preset_combo.currentText() == "balanced"
    assert widget.config() == ITACLIPConfig.preset("balanced")


def test_model_settings_build_cached_segmenter(widget_factory, qtbot, tiny_segmenter,
                                               monkeypatch):
    """Runs (the Run button's path) get their Segmenter from the registry, built once."""
    from napari_itaclip.engine import registry

    made = []

    class FakeSegmenter:
        def __init__(self, **kw):
            made.append(kw)

        def iter_segment(self, image, vocabulary, *, config=None):
            return (yield from tiny_segmenter.iter_segment(image, vocabulary, config=config))

    monkeypatch.setattr("napari_itaclip.engine.segmenter.Segmenter", FakeSegmenter)
    registry.clear()
    viewer, widget = widget_factory()
    widget.use_segmenter(None)
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB_BG)
    widget.model_panel.model_combo.setCurrentText("ViT-L-14")
    widget.model_panel.pretrained_combo.setCurrentText("/data/ckpt.pt")
    widget.model_panel.device_combo.setCurrentText("cpu")
    _run(qtbot, widget)
    _run(qtbot, widget)
    assert widget.status_label.text().startswith("Done"), widget.status_label.text()
    a = registry.get_segmenter(widget.model_panel.settings().key())
    assert isinstance(a, FakeSegmenter) and len(made) == 1
    assert made[0] == {"model": "ViT-L-14", "pretrained": "/data/ckpt.pt", "device": "cpu",
                       "half": False, "batch_memory_mb": None}
    widget.model_panel.device_combo.setCurrentText("auto")
    _run(qtbot, widget)
    assert registry.get_segmenter(widget.model_panel.settings().key()) is not a
    assert len(made) == 2
    registry.clear()


def test_run_reads_model_fields_on_gui_thread_at_click(widget_factory, qtbot,
                                                       tiny_segmenter, monkeypatch):
    """The worker gets the model settings of the click; no widget is read off the GUI thread."""
    from qtpy.QtCore import QThread
    from qtpy.QtWidgets import QApplication

    from napari_itaclip.engine import registry

    viewer, widget = widget_factory()
    widget.use_segmenter(None)
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB_BG)
    widget.model_panel.model_combo.setCurrentText("ViT-L-14")
    widget.model_panel.pretrained_combo.setCurrentText("/data/ckpt.pt")
    widget.model_panel.device_combo.setCurrentText("cpu")
    off_thread = []

    def on_gui_thread():
        return QThread.currentThread() is QApplication.instance().thread()

    panel = widget.model_panel
    for w, method in ((panel.model_combo, "currentText"), (panel.pretrained_combo, "currentText"),
                      (panel.device_combo, "currentText"), (panel.half_check, "isChecked")):
        orig = getattr(w, method)

        def spy(*a, _orig=orig, _name=method):
            if not on_gui_thread():
                off_thread.append(_name)
            return _orig(*a)

        monkeypatch.setattr(w, method, spy)
    calls = []

    def fake_get_segmenter(key, **kw):
        calls.append((key, on_gui_thread()))
        return tiny_segmenter

    monkeypatch.setattr(registry, "get_segmenter", fake_get_segmenter)
    widget.run_btn.click()
    widget.model_panel.model_combo.setCurrentText("ViT-B-32")  # changed after the click
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    assert widget.status_label.text().startswith("Done"), widget.status_label.text()
    assert calls == [(registry.SegmenterKey("ViT-L-14", "/data/ckpt.pt", "cpu", False), False)]
    assert off_thread == []


def test_layer_picker_follows_layer_list(widget_factory):
    viewer, widget = widget_factory()
    picker = widget.image_panel.layer_picker

    def names():
        return [layer.name for layer in picker.choices]

    assert names() == []
    viewer.add_image(_rgb(), name="a")
    viewer.add_image(_rgb(), name="b")
    viewer.add_points(name="pts")
    assert names() == ["a", "b"]
    viewer.layers["a"].name = "renamed"
    # magicgui re-adds a renamed choice at the end; the name is what matters
    assert sorted(names()) == ["b", "renamed"]
    assert "renamed" in [picker.native.itemText(i) for i in range(picker.native.count())]
    viewer.layers.remove("b")
    assert len(picker.choices) == 1
    assert widget.image_panel.layer is viewer.layers["renamed"]


def test_close_disconnects_viewer_and_layer_callbacks(widget_factory, qtbot):
    viewer, widget = widget_factory()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB_BG)
    _run(qtbot, widget)
    heat = viewer.layers["img heatmaps"]
    emitters = [viewer.layers.events.inserted, viewer.layers.events.removed,
                viewer.layers.events.moved, viewer.layers.selection.events.active,
                viewer.dims.events.current_step, viewer.layers["img"].events.name,
                heat.events.visible]

    def ours(emitter):
        return [cb for cb in emitter.callbacks
                if getattr(cb, "__self__", None) in (widget, widget.heatmaps)
                or (isinstance(cb, tuple) and cb[0]() in (widget, widget.heatmaps))]

    assert all(ours(e) for e in emitters), [e for e in emitters if not ours(e)]
    widget.close()
    assert [e for e in emitters if ours(e)] == []
    assert len(widget.results) == 0
    viewer.add_image(_rgb(), name="after")  # nothing of the closed widget is called


def test_vocabulary_load_save_and_layer_suggestion(widget_factory, tmp_path):
    from napari_itaclip import Vocabulary

    viewer, widget = widget_factory()
    path = tmp_path / "v.txt"
    path.write_text("# my classes\nbackground: floor\ncell >= a unit of life\nnucleus\n")
    widget.load_vocabulary(path)
    assert widget.vocabulary() == Vocabulary.parse(path.read_text())
    assert "3 classes incl. background, 1 with '>=' text" in widget.vocab_panel.status.text()
    widget.set_vocabulary("a, b\nc")
    out = tmp_path / "out.txt"
    widget.save_vocabulary(out)
    assert Vocabulary.load(out) == Vocabulary.parse("a, b\nc")
    widget.load_vocabulary(tmp_path / "missing.txt")
    assert any("Cannot load vocabulary" in m for m in _errors())
    # a layer carrying a suggested vocabulary fills the editor when picked
    viewer.add_image(_rgb(), name="plain")
    widget.set_vocabulary("")
    viewer.add_image(_rgb(), name="suggests", metadata={"itaclip_vocabulary": "cat\ndog"})
    viewer.layers.selection.active = viewer.layers["suggests"]
    assert widget.image_panel.layer_picker.current_choice == "suggests"
    assert widget.vocab_panel.editor.toPlainText() == "cat\ndog"
    # another layer's suggestion replaces an unedited suggestion ...
    viewer.add_image(_rgb(), name="other", metadata={"itaclip_vocabulary": "cell\nnucleus"})
    viewer.layers.selection.active = viewer.layers["other"]
    assert widget.vocab_panel.editor.toPlainText() == "cell\nnucleus"
    # ... but never the user's own text
    widget.set_vocabulary("my, own\nclasses")
    viewer.layers.selection.active = viewer.layers["plain"]
    viewer.layers.selection.active = viewer.layers["suggests"]
    assert widget.image_panel.layer_picker.current_choice == "suggests"
    assert widget.vocab_panel.editor.toPlainText() == "my, own\nclasses"


def test_responsive_with_real_compute(widget_factory, qtbot, tiny_segmenter):
    """The same check with the real tiny model computing (no sleeps) on a larger image."""

    viewer, widget = widget_factory()
    viewer.add_image(_rgb(256, 256), name="big")
    widget.set_vocabulary(VOCAB_BG)
    t0, ticks, elapsed = _run_with_ticks(qtbot, widget)
    assert "big labels" in viewer.layers
    assert len(ticks) >= min(10, int(elapsed / 0.05)), (len(ticks), elapsed)
    gaps = np.diff([t0, *ticks])
    assert gaps.max() < 0.5, f"event loop blocked for {gaps.max():.2f} s (run {elapsed:.2f} s)"


def test_model_picker_with_local_checkpoint(widget_factory, qtbot, tiny_model_json,
                                            tiny_checkpoint):
    """No override: the widget gets (and caches) a Segmenter from its model fields."""
    from napari_itaclip.engine import registry

    registry.clear()
    viewer, widget = widget_factory()
    widget.use_segmenter(None)
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB_BG)
    widget.model_panel.model_combo.setCurrentText(str(tiny_model_json))
    widget.model_panel.pretrained_combo.setCurrentText(str(tiny_checkpoint))
    widget.model_panel.device_combo.setCurrentText("cpu")
    _run(qtbot, widget)
    assert widget.status_label.text().startswith("Done"), widget.status_label.text()
    seg = registry.get_segmenter(widget.model_panel.settings().key())
    assert seg.is_loaded
    loaded = seg.model
    _run(qtbot, widget)  # second run: same Segmenter, model not reloaded
    assert registry.get_segmenter(widget.model_panel.settings().key()) is seg
    assert seg.model is loaded
    widget.model_panel.model_combo.setCurrentText("ViT-Nope-99")
    _run(qtbot, widget)
    assert any("ViT-Nope-99" in m for m in _errors())
    registry.clear()
