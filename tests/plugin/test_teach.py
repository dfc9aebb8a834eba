"""Edits teach: "Learn from edits", exemplar files, segment_layer(exemplars=) (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from _widgets import RUN_TIMEOUT  # noqa: E402
from _widgets import run as _run
from _widgets import stroke as _stroke

VOCAB = "background: sky, wall\ncat, feline\ndog"


def _halves(h=48, w=64, seed=0):
    """Red top half, blue bottom half, with noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (210, 30, 30)
    img[h // 2:] = (30, 30, 210)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def test_learn_checkbox_off_by_default_and_output_pure_itaclip(make_widget, qtbot,
                                                                tiny_segmenter, tiny_config):
    viewer, widget = make_widget()
    image = _halves()
    viewer.add_image(image, name="img")
    widget.set_vocabulary(VOCAB)
    assert widget.teach.learn_check.text() == "Learn from edits"
    assert not widget.teach.learn_check.isChecked()
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    _stroke(labels, 5, (10, 10))
    _run(qtbot, widget)  # off: edits kept, nothing learnt, no new class
    ref = tiny_segmenter.segment(image, VOCAB, config=tiny_config)
    edited = labels.data == 5
    np.testing.assert_array_equal(labels.data[~edited], ref.labels[~edited])
    assert list(labels.features["index"]) == [0, 1, 2]


def test_new_painted_value_becomes_a_class_that_spreads_and_can_be_renamed(make_widget, qtbot):
    from napari_itaclip.plugin.edits import PAINTED_MARKER

    viewer, widget = make_widget()
    viewer.add_image(_halves(), name="img")
    widget.set_vocabulary(VOCAB)
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    stroke = _stroke(labels, 5, (10, 14)) & (labels.data == 5)
    labels.data[30:34, 40:44] = 0  # erased: stays unlabelled, no exemplar
    widget.teach.learn_check.setChecked(True)
    status = _run(qtbot, widget)
    assert status.startswith("Done"), status
    feats = labels.features
    assert 5 in list(feats["index"])
    row = feats[feats["index"] == 5].iloc[0]
    assert row["class_name"] == "class 5" and row["class_index"] == 3
    assert f"{PAINTED_MARKER}\n5: class 5" in widget.vocab_panel.editor.toPlainText()
    spread = (labels.data == 5) & ~stroke
    assert (labels.data[stroke] == 5).all() and spread.sum() > 0
    assert (labels.data[30:34, 40:44] == 0).all()
    # mostly on the red half it was painted on
    assert spread[:24].sum() > spread[24:].sum()
    assert widget.teach.last is not None and widget.teach.last.names == ["class 5"]

    # rename it in the editor: same value, same exemplars, new name
    text = widget.vocab_panel.editor.toPlainText().replace("5: class 5", "5: debris")
    widget.set_vocabulary(text)
    assert len(widget.vocabulary()) == 3  # the painted class is no text class
    _run(qtbot, widget)
    feats = labels.features
    assert feats[feats["index"] == 5].iloc[0]["class_name"] == "debris"
    assert ((labels.data == 5) & ~stroke).sum() > 0


def test_exemplars_of_a_class_live_rerun_and_stack_planes(make_widget, qtbot):
    viewer, widget = make_widget()
    stack = np.stack([_halves(seed=s) for s in range(3)])
    viewer.add_image(stack, name="img", rgb=True)
    widget.set_vocabulary(VOCAB)
    widget.image_panel.slices_combo.setCurrentText("all slices")
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    viewer.dims.set_current_step(0, 1)
    before = labels.data.copy()
    labels.data[1, 2:10, 2:20] = 7  # a new class painted on the middle plane
    widget.teach.learn_check.setChecked(True)
    widget.live.checkbox.setChecked(True)
    launches = []
    launch = widget._launch
    widget._launch = lambda args: (launches.append(list(args.indices)), launch(args))
    labels.events.set_data()  # as napari does after an undo: Live re-runs
    qtbot.waitUntil(lambda: 7 in list(labels.features["index"]), timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: len(launches) == 2 and not widget.busy, timeout=RUN_TIMEOUT)
    assert launches == [[(1,)], [(0,), (2,)]]  # the shown plane first, then the others
    qtbot.wait(300)  # the plugin's own writes are no edits: no further live run
    assert len(launches) == 2 and not widget.busy
    for z in (0, 2):  # the exemplars apply to every plane
        assert (labels.data[z] == 7).sum() > 0, z
        assert (labels.data[z] != before[z]).any()
    assert "image features reused" in widget.status_label.text()


def test_save_load_exemplars_used_by_run(make_widget, qtbot, tmp_path):
    viewer, widget = make_widget()
    viewer.add_image(_halves(), name="img")
    widget.set_vocabulary(VOCAB)
    widget.teach.save(tmp_path / "none.itaclip-exemplars")  # nothing to save yet
    assert not (tmp_path / "none.itaclip-exemplars").exists()
    _run(qtbot, widget)
    labels = viewer.layers["img labels"]
    _stroke(labels, 2, (10, 14))  # "dog" on the red half
    widget.teach.learn_check.setChecked(True)
    _run(qtbot, widget)
    path = tmp_path / "dog.itaclip-exemplars"
    widget.teach.save(path)
    assert path.exists()

    viewer2, widget2 = make_widget()
    viewer2.add_image(_halves(seed=3), name="other")
    widget2.set_vocabulary(VOCAB)
    _run(qtbot, widget2)
    plain = viewer2.layers["other labels"].data.copy()
    widget2.teach.load(path)
    assert widget2.teach.loaded.names == ["dog"]
    assert "loaded (used by Run): dog" in widget2.teach.exemplar_label.text()
    _run(qtbot, widget2)
    taught = viewer2.layers["other labels"].data
    assert ((taught == 2) & (plain != 2))[:24].sum() > 0  # dog spread on the red half
    widget2.teach.forget()
    _run(qtbot, widget2)
    np.testing.assert_array_equal(viewer2.layers["other labels"].data, plain)
    widget2.teach.load(tmp_path / "missing.itaclip-exemplars")
    assert "Cannot load exemplars" in widget2.status_label.text()


def test_exemplars_from_layers_and_segment_layer(make_napari_viewer, tiny_segmenter, tiny_config):
    from napari_itaclip import Exemplars, exemplars_from_layers, segment_layer

    viewer = make_napari_viewer()
    src = viewer.add_image(_halves(), name="img")
    labels, _ = segment_layer(src, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                              config=tiny_config)
    with pytest.raises(ValueError, match="no painted pixels"):
        exemplars_from_layers(labels, src, tiny_segmenter, config=tiny_config)
    labels.data[4:12, 4:20] = 6
    ex = exemplars_from_layers(labels, src, tiny_segmenter, config=tiny_config)
    assert isinstance(ex, Exemplars) and ex.names == ["class 6"]
    again, _ = segment_layer(src, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                             config=tiny_config, exemplars=ex)
    assert again is labels
    feats = labels.features
    assert feats[feats["index"] == 6].iloc[0]["class_name"] == "class 6"
    assert (labels.data[4:12, 4:20] == 6).all()
    assert ((labels.data == 6).sum()) > 8 * 16

    # a labels file painted by hand (no record): every non-zero pixel is a stroke
    hand = viewer.add_labels(np.zeros((48, 64), np.int32), name="hand")
    hand.data[30:40, 10:30] = 1
    ex2 = exemplars_from_layers(hand, src, tiny_segmenter, config=tiny_config,
                                names={1: "water"})
    assert ex2.names == ["water"]
    only, _ = segment_layer(src, None, viewer=viewer, segmenter=tiny_segmenter,
                            config=tiny_config, exemplars=ex | ex2)
    assert set(only.features["class_name"]) >= {"class 6", "water"}
