"""Edits in the output Labels layer are kept (issue 15, part 1).

An edit is a pixel whose value differs from what the plugin last wrote there; runs,
relabels, Live re-runs and segment_layer write only the other pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from _widgets import RUN_TIMEOUT  # noqa: E402
from _widgets import run as _run
from _widgets import stroke as _stroke

VOCAB = "background: sky, wall\ncat, feline\ndog"


def _rgb(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2:] = (40, 40, 200)
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


def _slide(qtbot, widget, prob):
    """Move the probability slider and wait until every plane is relabelled."""
    widget.threshold_panel.prob.setValue(prob)
    qtbot.waitUntil(lambda: widget.status_label.text().startswith(
        f"Relabelled: probability ≥ {prob:.2f}"), timeout=5000)


def _model(widget, source="img", idx=()):
    """The model's current labels of plane ``idx`` (kept maps, slider thresholds)."""
    stack = widget.results.stack_of(widget.viewer.layers[source])
    return stack.relabel_plane(idx, *widget.thresholds())


# -- the record, without napari ------------------------------------------------------------
def test_record_writes_only_unedited_pixels_and_compacts():
    from napari_itaclip.plugin.edits import LabelsRecord, compact

    data = np.zeros((2, 4, 5), np.int32)
    rec = LabelsRecord(data.shape)
    assert rec.write(data, (0,), np.full((4, 5), 2)) == 0
    assert rec.planes[(0,)].dtype == np.uint8 and rec.planes[(0,)].nbytes == 20
    data[0, 1, 1] = 7  # a console write
    data[1, 0, 0] = 3  # on a plane never written (it holds 0)
    assert rec.count(data, (0,)) == 1 and rec.count(data, (1,)) == 1
    assert rec.write(data, (0,), np.full((4, 5), 1)) == 1
    assert data[0, 1, 1] == 7 and (data[0][data[0] != 7] == 1).all()
    assert rec.count(data, (0,)) == 1  # still an edit after the write
    rec.discard(data, (0,), np.full((4, 5), 1))
    assert data[0, 1, 1] == 1 and rec.count(data, (0,)) == 0
    # the model's labels given back differ elsewhere (thresholds set without a relabel):
    # only the edited pixels are written, the others stay the model's, nothing is an edit
    data[0, 2, 2] = 9
    rec.discard(data, (0,), np.full((4, 5), 2))
    assert data[0, 2, 2] == 2 and (data[0][data[0] != 2] == 1).all()
    assert rec.count(data, (0,)) == 0
    assert [idx for idx, _m in rec.edited_planes(data)] == [(1,)]
    assert compact(np.array([0, 300])).dtype == np.uint16
    assert compact(np.array([-1, 3])).dtype == np.int32


def test_painted_section_of_the_vocabulary():
    from napari_itaclip.plugin.edits import PAINTED_MARKER, split_painted, with_painted

    text = with_painted("cell\nnucleus", {7: "class 7"})
    assert text == f"cell\nnucleus\n{PAINTED_MARKER}\n7: class 7"
    assert split_painted(text.replace("class 7", "debris")) == ("cell\nnucleus", {7: "debris"})
    assert with_painted(text, {7: "x"}) == text  # a line exists: the user's name stays
    with pytest.raises(ValueError, match="value: name"):
        split_painted(text + "\nnot a line")


def test_exemplar_values_keep_painted_values():
    from napari_itaclip.plugin.edits import exemplar_values, value_lut

    names = ["background", "cell", "debris", "class 9", "new"]
    values = exemplar_values(names, 2, 0, preferred={"debris": 7})
    assert values == [0, 1, 7, 9, 2]
    lut = value_lut(values, 0)
    assert list(lut[[0, 1, 2, 3, 4]]) == values
    assert value_lut([1, 2, 3], 1) is None


# -- the widget -------------------------------------------------------------------------------
def test_edits_survive_slider_live_and_run(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    painted = _stroke(labels, 2, (10, 12)) | _stroke(labels, 1, (36, 40))
    edited = painted.copy()
    edited[40:44, 2:6] = labels.data[40:44, 2:6] != 0
    labels.data[40:44, 2:6] = 0  # the eraser, from the console: emits nothing
    want = labels.data.copy()
    assert widget.teach.edited_count() == int(edited.sum()) > 0

    # a slider move relabels every other pixel
    _slide(qtbot, widget, 0.6)
    np.testing.assert_array_equal(labels.data[edited], want[edited])
    np.testing.assert_array_equal(labels.data[~edited], _model(widget)[~edited])

    # Live: a vocabulary edit re-runs from the cached features
    widget.live.checkbox.setChecked(True)
    widget.set_vocabulary(VOCAB + "\nbird")
    qtbot.waitUntil(lambda: "bird" in list(labels.features["class_name"]), timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    np.testing.assert_array_equal(labels.data[edited], want[edited])
    np.testing.assert_array_equal(labels.data[~edited], _model(widget)[~edited])
    widget.live.checkbox.setChecked(False)

    # Run again: the same layer, edits kept, the rest the model's
    _run(qtbot, widget)
    assert viewer.layers["img labels"] is labels
    np.testing.assert_array_equal(labels.data[edited], want[edited])
    np.testing.assert_array_equal(labels.data[~edited], _model(widget)[~edited])
    assert "Edited pixels: " + str(int(edited.sum())) in widget.teach.edits_label.text()


def test_undo_and_console_writes_count_and_discard(make_widget, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    before = labels.data.copy()
    value = int(before[10, 12]) % 2 + 1  # another class than the model's there
    n = int(_stroke(labels, value).sum())
    assert n > 0
    shows = widget.teach.edits_label.text
    qtbot.waitUntil(lambda: shows() == f"Edited pixels: {n}", timeout=2000)  # paint event
    labels.undo()  # set_data only
    qtbot.waitUntil(lambda: shows() == "Edited pixels: 0", timeout=2000)
    labels.redo()
    qtbot.waitUntil(lambda: shows() == f"Edited pixels: {n}", timeout=2000)
    labels.data[0, 0] = 5  # console: counted on the next refresh (events or run)
    widget.teach.refresh()
    assert widget.teach.edits_label.text() == f"Edited pixels: {n + (before[0, 0] != 5)}"

    widget.teach.discard_btn.click()  # computed in a worker, written plane by plane
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Discarded"), timeout=5000)
    np.testing.assert_array_equal(labels.data, _model(widget))
    assert widget.teach.edited_count() == 0
    assert "Edited pixels: 0" in widget.teach.edits_label.text()
    _slide(qtbot, widget, 0.7)  # after discarding, relabel writes everywhere
    np.testing.assert_array_equal(labels.data, _model(widget))


def test_reopened_widget_keeps_edits_and_loaded_layer_is_never_overwritten(make_widget, qtbot):
    from napari_itaclip.plugin.layers import labels_name

    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    painted = _stroke(labels, 2)
    want = labels.data.copy()
    widget.close()

    # a new widget in the same session: the record lives with the layer
    _viewer, widget2 = make_widget(viewer)
    widget2.set_vocabulary(VOCAB)
    _run(qtbot, widget2)
    assert viewer.layers["img labels"] is labels
    np.testing.assert_array_equal(labels.data[painted], want[painted])

    # a layer of that name loaded from a file (here: added by hand) is left alone
    loaded = np.zeros((48, 64), np.int32)
    loaded[5:20, 5:20] = 3
    viewer.layers.remove(labels)
    viewer.add_labels(loaded.copy(), name=labels_name("img"))
    status = _run(qtbot, widget2)
    np.testing.assert_array_equal(viewer.layers["img labels"].data, loaded)
    assert "img labels [2]" in viewer.layers and "img heatmaps [2]" in viewer.layers
    assert ("Wrote 'img labels [2]': the layer 'img labels' was not written by this "
            "session's plugin") in status
    new = viewer.layers["img labels [2]"]
    _slide(qtbot, widget2, 0.5)  # relabel goes to the new layer
    np.testing.assert_array_equal(new.data, _model(widget2))
    np.testing.assert_array_equal(viewer.layers["img labels"].data, loaded)
    _run(qtbot, widget2)  # and so does the next run
    assert viewer.layers["img labels [2]"] is new


def test_edited_labels_of_another_shape_are_kept_and_the_status_says_why(make_widget, qtbot):
    viewer, widget = make_widget()
    stack = np.stack([_rgb(seed=s)[..., 0] for s in range(3)])
    viewer.add_image(stack, name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    painted = _stroke(labels, 2, centre=(0, 10, 12))
    want = labels.data.copy()
    # the stack's first axis taken as channels: the outputs are one plane now
    combo = widget.image_panel.channel_axis_combo
    combo.setCurrentIndex(combo.findData(0))
    status = _run(qtbot, widget)
    assert viewer.layers["img labels"] is labels and painted.any()
    np.testing.assert_array_equal(labels.data, want)
    assert viewer.layers["img labels [2]"].data.shape == (48, 64)
    assert ("Wrote 'img labels [2]': the layer 'img labels' holds your edits and is "
            "3 × 48 × 64, not the run's 48 × 64, so it was left as is") in status


def test_a_slider_moved_during_a_run_is_applied_when_it_ends(make_widget, qtbot, monkeypatch):
    import time

    from napari_itaclip.plugin.widget import runs

    viewer, widget = make_widget()
    viewer.add_image(_rgb(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    real_job = runs.segmentation_job

    def slow_job(*args, **kwargs):  # a run long enough to move a slider in
        time.sleep(0.5)
        return (yield from real_job(*args, **kwargs))

    monkeypatch.setattr(runs, "segmentation_job", slow_job)
    widget.run_btn.click()  # a second run, and the slider moved while it runs
    widget.threshold_panel.prob.setValue(0.7)
    qtbot.waitUntil(lambda: not widget.busy and not widget.relabelling, timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Relabelled"), timeout=5000)
    labels = viewer.layers["img labels"]
    assert widget.thresholds()[0] == pytest.approx(0.7)
    np.testing.assert_array_equal(labels.data, _model(widget))  # at the slider's 0.7


def test_stack_edits_on_other_planes_kept(make_widget, qtbot):
    viewer, widget = make_widget()
    stack = np.stack([_rgb(seed=s)[..., 0] for s in range(3)])
    viewer.add_image(stack, name="img")
    widget.set_vocabulary(VOCAB)
    widget.image_panel.slices_combo.setCurrentText("all slices")
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    labels.data[2, 0:4, 0:4] = 9  # console write on a plane not shown
    widget.teach.refresh()
    qtbot.waitUntil(lambda: not widget.teach.counting, timeout=5000)
    assert widget.teach.edits_label.text().endswith(", 16 in the stack")
    _slide(qtbot, widget, 0.6)
    assert (labels.data[2, 0:4, 0:4] == 9).all()
    _run(qtbot, widget)
    assert (labels.data[2, 0:4, 0:4] == 9).all()
    np.testing.assert_array_equal(labels.data[1], _model(widget, idx=(1,)))


def test_segment_layer_keeps_edits_and_spares_a_loaded_layer(make_napari_viewer, tiny_segmenter,
                                                             tiny_config):
    from napari.utils.notifications import notification_manager

    from napari_itaclip import segment_layer

    viewer = make_napari_viewer()
    src = viewer.add_image(_rgb(), name="img")
    labels, _heat = segment_layer(src, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                                  config=tiny_config)
    before = labels.data.copy()
    labels.data[5:9, 5:9] = 2
    labels.data[30:33, 30:33] = 0
    edited = labels.data != before
    assert edited.any()
    want = labels.data.copy()
    again, _ = segment_layer(src, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                             config=tiny_config.replace(prob_threshold=0.6))
    assert again is labels
    np.testing.assert_array_equal(labels.data[edited], want[edited])
    ref = tiny_segmenter.segment(src.data, VOCAB, config=tiny_config.replace(prob_threshold=0.6))
    np.testing.assert_array_equal(labels.data[~edited], ref.labels[~edited])

    viewer.layers.remove(labels)
    viewer.add_labels(np.full((48, 64), 4, np.int32), name="img labels")
    new, heat = segment_layer(src, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                              config=tiny_config)
    assert new.name == "img labels [2]" and heat.name == "img heatmaps [2]"
    assert any("wrote 'img labels [2]' instead" in str(n.message)
               for n in notification_manager.records)
    assert (viewer.layers["img labels"].data == 4).all()


def test_large_plane_counted_in_bands_and_a_stroke_still_emits_edited(make_widget, qtbot,
                                                                      monkeypatch):
    """A 4000 x 4000 plane is compared in row bands, one turn of the event loop each
    (with COUNT_SLICE_S at 0), not at once; the count and ``edited`` come when the shown
    plane is done, and the plugin's own rewrite is no edit.
    """
    from napari_itaclip.plugin.edits import LabelsRecord, adopt
    from napari_itaclip.plugin.widget import teach as teach_mod

    monkeypatch.setattr(teach_mod, "COUNT_SLICE_S", 0.0)
    viewer, widget = make_widget()
    values = np.zeros((4000, 4000), np.int32)
    values[:2000] = 1
    labels = viewer.add_labels(np.zeros_like(values), name="img labels")
    record = LabelsRecord(values.shape)
    record.write(labels.data, (), values)  # as a run writes it
    adopt(labels, record=record)
    teach = widget.teach
    turns = []
    teach._stepper.timeout.connect(lambda: turns.append(1))
    emitted = []
    teach.edited.connect(lambda: emitted.append(1))
    teach.watch(labels)
    assert teach.counting  # one band done, the others on later turns
    assert teach.edits_label.text() == "Edited pixels: none yet (Run first)"
    qtbot.waitUntil(lambda: not teach.counting, timeout=10000)
    bands = -(-4000 // (teach_mod.COUNT_BAND_PIXELS // 4000))
    assert len(turns) >= bands - 1 > 1
    assert teach.edits_label.text() == "Edited pixels: 0"
    assert not emitted

    labels.data[3990:, 3990:] = 7  # a console write: a layer event, then a recount
    labels.events.data(value=labels.data)
    qtbot.waitUntil(lambda: bool(emitted), timeout=10000)
    qtbot.waitUntil(lambda: not teach.counting, timeout=10000)
    assert teach.edits_label.text() == "Edited pixels: 100" and emitted == [1]

    emitted.clear()
    record.write(labels.data, (), values)  # the plugin's own write: edits kept, no edit
    labels.events.set_data()
    qtbot.waitUntil(lambda: not teach.counting and not teach._event_timer.isActive(),
                    timeout=10000)
    qtbot.wait(50)
    assert not emitted and teach.edits_label.text() == "Edited pixels: 100"
