"""The widget's fast path on the image-feature cache, the live option and segment_layer
sharing the registry's cache (issue #11).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

RUN_TIMEOUT = 20_000
VOCAB_BG = "background: sky, wall\ncat, feline\ndog"
VOCAB_2 = "background: sky, wall\ncat, feline >= a small pet\nbird"


def _rgb(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3)).astype(np.uint8)


@pytest.fixture
def make_widget(make_napari_viewer, tiny_clip, tiny_config):
    from _widgets import open_widget

    from napari_itaclip import Segmenter

    def make(segmenter=None):
        viewer = make_napari_viewer()
        widget = open_widget(viewer)
        seg = segmenter or Segmenter(tiny_clip, None, "cpu", tiny_config)
        widget.use_segmenter(seg)
        widget.set_config(tiny_config)
        widget.live.timer.setInterval(30)
        return viewer, widget, seg

    return make


def _run(qtbot, widget):
    widget.run_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    return widget.status_label.text()


def _reference(tiny_clip, tiny_config, image, vocab):
    from napari_itaclip import Segmenter

    return Segmenter(tiny_clip, None, "cpu", tiny_config, feature_cache_mb=0).segment(
        image, vocab, config=tiny_config)


def test_same_layer_new_vocabulary_reuses_features(make_widget, qtbot, tiny_clip, tiny_config):
    viewer, widget, seg = make_widget()
    img = _rgb()
    layer = viewer.add_image(img, name="photo")
    widget.set_vocabulary(VOCAB_BG)
    text = _run(qtbot, widget)
    assert text.startswith("Done: 1 plane(s).") and "reused" not in text
    widget.set_vocabulary(VOCAB_2)
    text = _run(qtbot, widget)
    assert text.startswith("Done: 1 plane(s), image features reused."), text
    ref = _reference(tiny_clip, tiny_config, img, VOCAB_2)
    np.testing.assert_array_equal(viewer.layers["photo labels"].data, ref.labels)
    np.testing.assert_allclose(viewer.layers["photo heatmaps"].data, ref.similarity, atol=1e-6)
    # text-side settings (thresholds, PAMR, logit scale) still reuse them
    widget.set_config(tiny_config.replace(pamr_steps=0, logit_scale=20))
    assert "image features reused" in _run(qtbot, widget)
    # an image-side setting does not
    widget.set_config(tiny_config.replace(stride=8))
    assert "reused" not in _run(qtbot, widget)
    widget.set_config(tiny_config)
    assert "reused" in _run(qtbot, widget)
    # the layer edited in place: its content changed, so do the features
    layer.data[:8, :8] = 255 - layer.data[:8, :8]
    layer.refresh()
    assert "reused" not in _run(qtbot, widget)
    # another model: another Segmenter, its own cache
    from napari_itaclip import Segmenter

    widget.use_segmenter(Segmenter(tiny_clip, None, "cpu", tiny_config))
    assert "reused" not in _run(qtbot, widget)


def _go_to_plane(viewer, k):
    step = list(viewer.dims.current_step)
    step[viewer.dims.ndim - 3] = k  # the heatmaps' class axis comes first once written
    viewer.dims.current_step = tuple(step)


def test_stack_planes_cached_separately(make_widget, qtbot):
    viewer, widget, seg = make_widget()
    stack = np.stack([_rgb(seed=i)[..., 0] for i in range(5)])  # (5, 48, 64) grey planes
    viewer.add_image(stack, name="stack")
    widget.image_panel.slices_combo.setCurrentText("current slice")
    widget.set_vocabulary(VOCAB_BG)
    _go_to_plane(viewer, 1)
    assert "reused" not in _run(qtbot, widget)
    widget.set_vocabulary(VOCAB_2)
    assert "image features reused" in _run(qtbot, widget)
    _go_to_plane(viewer, 2)  # another plane: not cached yet
    assert "reused" not in _run(qtbot, widget)
    _go_to_plane(viewer, 1)  # both planes stay cached (within the bound)
    assert "image features reused" in _run(qtbot, widget)
    assert len(seg.feature_cache) == 2
    widget.image_panel.slices_combo.setCurrentText("all slices")
    text = _run(qtbot, widget)
    assert text.startswith("Done: 5 plane(s), image features reused for 2 of them."), text


def test_live_option_off_by_default_then_reruns_after_an_edit(make_widget, qtbot, tiny_clip,
                                                              tiny_config):
    viewer, widget, seg = make_widget()
    assert not widget.live.enabled
    img = _rgb(seed=3)
    viewer.add_image(img, name="photo")
    widget.set_vocabulary(VOCAB_BG)
    _run(qtbot, widget)
    widget.set_vocabulary(VOCAB_2)  # live off: nothing happens
    qtbot.wait(150)
    assert not widget.busy
    assert list(viewer.layers["photo labels"].features["class_name"]) == ["background", "cat", "dog"]
    widget.live.checkbox.setChecked(True)
    widget.vocab_panel.editor.setPlainText(VOCAB_2)
    qtbot.waitUntil(lambda: list(viewer.layers["photo labels"].features["class_name"])
                    == ["background", "cat", "bird"], timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    assert "image features reused" in widget.status_label.text()
    ref = _reference(tiny_clip, tiny_config, img, VOCAB_2)
    np.testing.assert_array_equal(viewer.layers["photo labels"].data, ref.labels)


def test_live_run_never_computes_features_and_waits_for_a_run_in_flight(make_widget, qtbot):
    viewer, widget, seg = make_widget()
    layer = viewer.add_image(_rgb(seed=4), name="photo")
    widget.set_vocabulary(VOCAB_BG)
    _run(qtbot, widget)
    widget.live.checkbox.setChecked(True)
    # features not cached (layer edited): a live run computes nothing and says so
    layer.data[0, 0] = 255 - layer.data[0, 0]
    misses = seg.feature_cache.info()["misses"]
    widget.vocab_panel.editor.setPlainText(VOCAB_2)
    qtbot.waitUntil(lambda: "not cached" in widget.status_label.text(), timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    assert list(viewer.layers["photo labels"].features["class_name"]) == ["background", "cat", "dog"]
    assert seg.feature_cache.info()["misses"] == misses
    # an edit during a run waits for it, then re-segments once
    widget.run_btn.click()
    assert widget.busy
    widget.vocab_panel.editor.setPlainText("background: sky\ncat\nhorse")
    widget.live.fire()  # as the debounce timer would while the run is in flight
    assert widget.live.pending
    qtbot.waitUntil(lambda: list(viewer.layers["photo labels"].features["class_name"])
                    == ["background", "cat", "horse"], timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    assert "image features reused" in widget.status_label.text()


def test_live_needs_the_last_segmented_layer(make_widget, qtbot):
    viewer, widget, seg = make_widget()
    viewer.add_image(_rgb(seed=5), name="a")
    widget.live.checkbox.setChecked(True)
    widget.vocab_panel.editor.setPlainText(VOCAB_2)  # nothing segmented yet: no run
    qtbot.wait(150)
    assert not widget.busy and "a labels" not in viewer.layers


def test_segment_layer_shares_the_registry_cache(make_napari_viewer, tiny_model_json,
                                                 tiny_checkpoint, tiny_config):
    from napari_itaclip import segment_layer
    from napari_itaclip.engine import registry

    registry.clear()
    try:
        viewer = make_napari_viewer()
        viewer.add_image(_rgb(seed=6), name="img")
        kw = dict(viewer=viewer, model=str(tiny_model_json), pretrained=str(tiny_checkpoint),
                  device="cpu", config=tiny_config)
        seen = []
        segment_layer("img", VOCAB_BG, progress=seen.append, **kw)
        assert "image-cached" not in [p.stage for p in seen]
        seen.clear()
        segment_layer("img", VOCAB_2, progress=seen.append, **kw)
        assert "image-cached" in [p.stage for p in seen] and "image" not in [p.stage for p in seen]
        seg = registry.get_segmenter(str(tiny_model_json), str(tiny_checkpoint), "cpu")
        assert seg.feature_cache.info()["hits"] == 1
    finally:
        registry.clear()


def test_advanced_feature_cache_bound_reaches_the_registry(make_napari_viewer, monkeypatch):
    """The advanced settings' feature-cache bound is part of the model the run asks for."""
    from _widgets import open_widget

    from napari_itaclip.engine import registry
    from napari_itaclip.plugin.widget.dock import segmentation_job

    widget = open_widget(make_napari_viewer())
    assert widget.advanced_panel.feature_cache_mb() == 1024.0
    widget.advanced_panel.feature_cache.setValue(0)
    asked = []

    def fake_get(key, load=False):
        asked.append(key)
        raise RuntimeError("stop here")

    monkeypatch.setattr(registry, "get_segmenter", fake_get)
    import dataclasses

    model = dataclasses.replace(widget.model_panel.settings(),
                                feature_cache_mb=widget.advanced_panel.feature_cache_mb())
    gen = segmentation_job(model, None, np.zeros((8, 8), np.uint8), None, [()], None, None)
    next(gen)
    with pytest.raises(RuntimeError, match="stop here"):
        next(gen)
    assert asked[0].feature_cache_mb == 0.0
