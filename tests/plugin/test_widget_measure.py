"""Measure in the dock and measure_layer from the console: the layer's current labels,
physical units from the layer, the objects layer and the class table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_itaclip import measure  # noqa: E402

RUN_TIMEOUT = 20_000


def _rgb(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2:] = (40, 40, 200)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def test_measure_button_uses_edited_labels(make_napari_viewer, tiny_segmenter, tiny_config,
                                           qtbot, tmp_path):
    from _widgets import open_widget
    from napari.layers import Labels

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.use_segmenter(tiny_segmenter)
    widget.set_config(tiny_config)
    image = _rgb()
    viewer.add_image(image, name="photo", scale=(0.5, 0.25), translate=(10, -3), units="um")
    widget.set_vocabulary("background: sky\ncat\ndog")
    # nothing to measure yet: a clear message, no layer
    assert not widget.measure_panel.measure()
    assert "run a segmentation first" in widget.status_label.text()
    widget.run_btn.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=RUN_TIMEOUT)
    labels = viewer.layers["photo labels"]
    # the user's edit: a 10 x 10 square of "dog" painted over everything
    labels.data[40:50, 40:50] = 2
    labels.refresh()
    labels.paint((5, 5), 1, refresh=True)
    edited = labels.data.copy()
    assert widget.measure_panel.measure()
    qtbot.waitUntil(lambda: not widget.measure_panel.busy, timeout=RUN_TIMEOUT)
    objects = viewer.layers["photo objects"]
    assert isinstance(objects, Labels)
    ref = measure(edited, ["background", "cat", "dog"], spacing=(0.5, 0.25), image=image,
                  origin=(10, -3))
    np.testing.assert_array_equal(objects.data, ref.instances)
    feats = objects.features
    assert list(feats["index"]) == list(ref.objects["id"]) and len(feats) >= 1
    assert np.allclose(feats["area"], ref.objects["area"])
    assert np.allclose(feats["centroid_y"], ref.objects["centroid_y"])
    assert set(feats["unit"]) == {"µm"}
    np.testing.assert_allclose(objects.scale, labels.scale)
    np.testing.assert_allclose(objects.translate, labels.translate)
    # hovering an object shows its class and area (napari's status of the features row)
    dog = ref.objects[ref.objects["class_name"] == "dog"].iloc[0]
    y, x = np.argwhere(ref.instances == dog["id"])[0]
    status = objects._get_properties((10 + 0.5 * y, -3 + 0.25 * x), world=True)
    assert "class_name: dog" in status and any(s.startswith("area:") for s in status)
    # the class table: a row per class, its colour the Labels layer's
    table = widget.measure_panel.table
    assert table.rowCount() == 3
    assert [table.item(r, 1).text() for r in range(3)] == ["background", "cat", "dog"]
    assert [int(table.item(r, 2).text()) for r in range(3)] == \
        np.bincount(edited.ravel(), minlength=3).tolist()
    colour = table.item(2, 0).background().color()
    expected = labels.get_color(2)
    assert colour.redF() == pytest.approx(expected[0], abs=0.01)
    assert colour.blueF() == pytest.approx(expected[2], abs=0.01)
    assert table.horizontalHeaderItem(3).text() == "area (µm²)"
    # Save CSV: both tables; an existing file is not replaced without asking
    written = widget.measure_panel.save_csv(tmp_path / "photo.csv")
    assert [p.name for p in written] == ["photo_classes.csv", "photo_objects.csv"]
    back = pd.read_csv(written[1])
    assert np.allclose(back["area"], ref.objects["area"])
    assert widget.measure_panel.save_csv(tmp_path / "photo.csv") == []
    assert "exist" in widget.status_label.text()
    # measuring again updates the same objects layer
    labels.data[:] = 0
    labels.refresh()
    widget.measure_panel.measure()
    qtbot.waitUntil(lambda: not widget.measure_panel.busy, timeout=RUN_TIMEOUT)
    assert viewer.layers["photo objects"] is objects and objects.data.max() == 0
    assert len(objects.features) == 0


def test_measure_layer_from_console_stack_and_no_background(make_napari_viewer):
    from napari_itaclip import measure_layer

    viewer = make_napari_viewer()
    lab = np.zeros((2, 30, 40), np.int32)
    lab[0, 2:8, 2:8] = 1
    lab[1, 10:20, 10:30] = 2
    lab[1, 0:3, 0:3] = 2
    feats = pd.DataFrame({"index": [0, 1, 2], "class_name": ["(unlabelled)", "a", "b"],
                          "class_index": [-1, 0, 1]})
    img = np.random.default_rng(0).random((2, 30, 40)).astype(np.float32)
    viewer.add_image(img, name="vol", scale=(3.0, 2.0, 2.0))
    layer = viewer.add_labels(lab, name="vol labels", features=feats, scale=(3.0, 2.0, 2.0),
                              axis_labels=("z", "y", "x"),
                              metadata={"itaclip": {"source": "vol", "has_background": False,
                                                    "label_offset": 1}})
    m = measure_layer("vol labels", viewer=viewer)
    ref = measure(lab, ["(unlabelled)", "a", "b"], spacing=2.0, image=img, axes="z")
    pd.testing.assert_frame_equal(m.objects, ref.objects)
    assert m.objects["z"].tolist() == [0, 1, 1] and m.objects["area"].tolist() == [144, 36, 800]
    assert "mean_intensity" in m.objects.columns  # the source image found from the metadata
    assert viewer.layers["vol objects"].data.shape == lab.shape
    assert m.classes.loc[m.classes["class_name"] == "(unlabelled)", "objects"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="does not match"):
        measure_layer(layer, viewer.add_image(np.zeros((5, 5)), name="small"), viewer=viewer)
    with pytest.raises(TypeError, match="Labels"):
        measure_layer(viewer.layers["vol"], viewer=viewer)
