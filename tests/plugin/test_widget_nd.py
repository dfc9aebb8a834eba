"""nD and scientific images in the widget: grey, RGBA, dtypes, channels, Z, T, T x Z."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

TIMEOUT = 30_000


class RecordingSegmenter:
    """Delegates to the tiny segmenter and keeps the planes it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.config = inner.config
        self.images = []

    def iter_segment(self, image, vocabulary, *, config=None):
        self.images.append(np.array(image, copy=True))
        return (yield from self.inner.iter_segment(image, vocabulary, config=config))


@pytest.fixture
def setup(make_napari_viewer, tiny_segmenter, tiny_config, qtbot):
    from _widgets import open_widget

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    rec = RecordingSegmenter(tiny_segmenter)
    widget.use_segmenter(rec)
    widget.set_config(tiny_config)
    widget.set_vocabulary("cell, nucleus\nmembrane")  # no background: values 1, 2

    def run():
        widget.run()
        assert widget.busy
        qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
        assert widget.status_label.text().startswith("Done"), widget.status_label.text()

    return viewer, widget, rec, run


def _labelled(arr):
    """Which planes (over all but the last two axes) hold labels."""
    return (arr.reshape(*arr.shape[:-2], -1) > 0).any(-1)


def test_grey_uint16_2d(setup):
    viewer, widget, rec, run = setup
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 4000, (40, 48)).astype(np.uint16), name="u16")
    assert not widget.image_panel.slices_combo.isEnabled()
    assert not widget.image_panel.channel_axis_combo.isEnabled()
    run()
    assert rec.images[0].dtype == np.uint16 and rec.images[0].shape == (40, 48)  # raw slice
    assert viewer.layers["u16 labels"].data.shape == (40, 48)
    assert viewer.layers["u16 heatmaps"].data.shape == (2, 40, 48)
    assert (viewer.layers["u16 labels"].data > 0).all()


def test_rgba_and_float(setup):
    viewer, widget, rec, run = setup
    rng = np.random.default_rng(1)
    viewer.add_image(rng.integers(0, 255, (32, 40, 4)).astype(np.uint8), name="rgba", rgb=True)
    run()
    assert rec.images[-1].shape == (32, 40, 4)
    assert viewer.layers["rgba labels"].data.shape == (32, 40)
    viewer.add_image(rng.normal(size=(32, 36)).astype(np.float32), name="float")
    widget.image_panel.layer_picker.value = viewer.layers["float"]
    run()
    assert rec.images[-1].dtype == np.float32
    assert viewer.layers["float heatmaps"].data.shape == (2, 32, 36)


def test_z_stack_current_slice_then_more(setup):
    viewer, widget, rec, run = setup
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 255, (4, 32, 32)).astype(np.uint8)
    src = viewer.add_image(stack, name="z", scale=(3.0, 0.5, 0.5), translate=(1.0, 2.0, 3.0))
    assert widget.image_panel.slices_combo.isEnabled()
    assert "4 planes" in widget.image_panel.shape_label.text()
    widget.image_panel.slices_combo.setCurrentText("current slice")
    viewer.dims.set_current_step(0, 2)
    run()
    np.testing.assert_array_equal(rec.images[-1], stack[2])
    labels = viewer.layers["z labels"]
    assert labels.data.shape == (4, 32, 32)
    assert list(_labelled(labels.data)) == [False, False, True, False]
    np.testing.assert_allclose(labels.scale, src.scale)
    np.testing.assert_allclose(labels.translate, src.translate)
    # the heatmap layer adds the class axis in front: the z slider moved to axis 1
    heat = viewer.layers["z heatmaps"]
    assert heat.data.shape == (2, 4, 32, 32)
    np.testing.assert_allclose(heat.scale, (1.0, *src.scale))
    step = list(viewer.dims.current_step)
    step[viewer.dims.ndim - 3] = 0
    viewer.dims.current_step = tuple(step)
    run()
    np.testing.assert_array_equal(rec.images[-1], stack[0])
    assert viewer.layers["z labels"] is labels
    assert list(_labelled(labels.data)) == [True, False, True, False]  # slice 2 kept
    assert list(_labelled(heat.data[0])) == [True, False, True, False]


def test_z_stack_all_slices_with_progress(setup):
    viewer, widget, rec, run = setup
    stack = np.random.default_rng(3).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    viewer.add_image(stack, name="z")
    widget.image_panel.slices_combo.setCurrentText("all slices")
    seen = []  # what the status line showed the user
    show = widget.status_label.setText
    widget.status_label.setText = lambda text: seen.append(text) or show(text)
    run()
    assert len(rec.images) == 3
    assert list(_labelled(viewer.layers["z labels"].data)) == [True, True, True]
    assert any(s.startswith("slice 3/3") for s in seen)


def test_time_by_z(setup):
    viewer, widget, rec, run = setup
    data = np.random.default_rng(4).integers(0, 255, (2, 3, 32, 32)).astype(np.uint8)
    viewer.add_image(data, name="tz")
    widget.image_panel.slices_combo.setCurrentText("current slice")
    viewer.dims.current_step = (1, 2, 0, 0)
    run()
    np.testing.assert_array_equal(rec.images[-1], data[1, 2])
    lab = _labelled(viewer.layers["tz labels"].data)
    assert lab.shape == (2, 3) and lab[1, 2] and lab.sum() == 1
    widget.image_panel.slices_combo.setCurrentText("all slices")
    run()
    assert _labelled(viewer.layers["tz labels"].data).all()
    assert viewer.layers["tz heatmaps"].data.shape == (2, 2, 3, 32, 32)


def test_multichannel_pick_channel_and_composite(setup):
    viewer, widget, rec, run = setup
    rng = np.random.default_rng(5)
    data = rng.integers(0, 60000, (3, 2, 32, 32)).astype(np.uint16)  # Z, C, Y, X
    src = viewer.add_image(data, name="zc", axis_labels=("z", "c", "y", "x"),
                           scale=(2.0, 1.0, 0.3, 0.3))
    # the axis labelled "c" is picked as the channel axis
    assert widget.image_panel.channel_axis_combo.currentData() == 1
    widget.image_panel.channel_combo.setCurrentIndex(widget.image_panel.channel_combo.findData(1))
    widget.image_panel.slices_combo.setCurrentText("all slices")
    run()
    assert len(rec.images) == 3
    np.testing.assert_array_equal(rec.images[1], data[1, 1])
    labels = viewer.layers["zc labels"]
    assert labels.data.shape == (3, 32, 32)  # channel axis dropped
    np.testing.assert_allclose(labels.scale, (2.0, 0.3, 0.3))
    assert tuple(labels.axis_labels) == ("z", "y", "x")
    assert viewer.layers["zc heatmaps"].axis_labels[:2] == ("class", "z")
    # composite of 2 channels: an 8-bit RGB picture, each channel rescaled on its own
    # (the engine uses uint8 as is: no second, global stretch), blue empty
    widget.image_panel.channel_combo.setCurrentIndex(widget.image_panel.channel_combo.findData("composite"))
    rec.images.clear()
    run()
    img = rec.images[0]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img[..., 0].max() == 255 and img[..., 1].max() == 255 and not img[..., 2].any()
    assert src.data.shape == (3, 2, 32, 32)


def test_layout_errors_are_reported(setup):
    viewer, widget, rec, run = setup
    viewer.add_image(np.zeros((5, 32, 32), np.uint8), name="c3")
    idx = widget.image_panel.channel_axis_combo.findData(0)
    widget.image_panel.channel_axis_combo.setCurrentIndex(idx)
    assert "output 32 × 32" in widget.image_panel.shape_label.text()
    assert widget.image_panel.channel_combo.count() == 1 + 5


def test_partial_runs_with_new_classes_reset_other_planes(setup):
    viewer, widget, rec, run = setup
    stack = np.random.default_rng(6).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    viewer.add_image(stack, name="z")
    widget.image_panel.slices_combo.setCurrentText("current slice")
    viewer.dims.set_current_step(0, 0)
    run()
    assert list(_labelled(viewer.layers["z labels"].data)) == [True, False, False]
    widget.set_vocabulary("a\nb\nc")  # other classes: plane 0's labels would be stale
    step = list(viewer.dims.current_step)
    step[viewer.dims.ndim - 3] = 1
    viewer.dims.current_step = tuple(step)
    run()
    labels = viewer.layers["z labels"]
    assert list(_labelled(labels.data)) == [False, True, False]
    assert viewer.layers["z heatmaps"].data.shape == (3, 3, 32, 32)
    assert list(labels.features["class_name"]) == ["(unlabelled)", "a", "b", "c"]


def test_relabel_shown_plane_first_then_rest_in_place(setup, qtbot, monkeypatch):
    from napari_itaclip.plugin.widget import relabel as _relabel

    viewer, widget, rec, run = setup
    stack = np.random.default_rng(7).integers(0, 255, (4, 32, 32)).astype(np.uint8)
    viewer.add_image(stack, name="z")
    widget.set_vocabulary("background: sky\ncell\nmembrane")  # label 0 below threshold
    widget.image_panel.slices_combo.setCurrentText("all slices")
    widget.threshold_panel.prob.setValue(0.0)
    run()
    labels = viewer.layers["z labels"]
    data = labels.data
    # the status counts the run's pixels per class (one bincount per plane)
    counts = np.bincount(data.ravel(), minlength=3)
    assert (f"background: {counts[0]}, cell: {counts[1]}, membrane: {counts[2]}"
            in widget.status_label.text())
    assert (data[0] > 0).any()  # something for the threshold to remove
    step = list(viewer.dims.current_step)
    step[viewer.dims.ndim - 3] = 2
    viewer.dims.current_step = tuple(step)
    monkeypatch.setattr(_relabel, "RELABEL_SLICE_S", 0.0)  # one band per step
    order = []
    planes = _relabel.relabel_planes

    def spy(stack, indices, *args):
        for idx, values in planes(stack, indices, *args):
            order.append(idx)
            yield idx, values

    monkeypatch.setattr(_relabel, "relabel_planes", spy)
    widget.threshold_panel.prob.blockSignals(True)
    widget.threshold_panel.prob.setValue(1.0)
    widget.threshold_panel.prob.blockSignals(False)
    widget.relabel()
    # computed in a worker, the shown plane first; written without blocking the event loop
    assert widget.relabelling
    qtbot.waitUntil(lambda: not (data[2] > 0).any(), timeout=5000)
    qtbot.waitUntil(lambda: not widget.relabelling, timeout=5000)
    assert order == [(2,), (0,), (1,), (3,)]
    assert labels.data is data  # written in place, no copy of the volume
    kept = widget.results.stack_of(widget.viewer.layers["z"])
    expect = kept.relabel(prob_threshold=1.0, area_threshold=None)
    for i in range(4):
        np.testing.assert_array_equal(data[i], expect.label_plane((i,)))
    assert widget.status_label.text().startswith("Relabelled: probability ≥ 1.00")
