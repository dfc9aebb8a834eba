"""napari_itaclip.measure: class areas and objects against skimage's own figures."""

import numpy as np
import pytest
from skimage.measure import label, regionprops

from napari_itaclip import measure

NAMES = ["background", "nucleus", "membrane"]
SPACING = (0.5, 0.25)


def blobs():
    """Three nuclei (two of them touching) and two membrane pieces on a 0 background."""
    lab = np.zeros((60, 80), np.int32)
    lab[5:15, 5:15] = 1            # nucleus A, 100 px
    lab[15:21, 8:12] = 1           # nucleus B touches A (below it): one object with A
    lab[40:50, 60:75] = 1          # nucleus C, 150 px
    lab[30:33, 0:40] = 2           # membrane strip, 120 px
    lab[55:60, 70:80] = 2          # membrane corner, 50 px
    return lab


def reference(lab, cls, image=None, spacing=SPACING):
    """skimage's regions of one class (4-connected), with the spacing applied."""
    regions = regionprops(label(lab == cls, connectivity=1), intensity_image=image,
                          spacing=spacing)
    return sorted(regions, key=lambda r: r.centroid)


def test_class_areas_and_fractions():
    lab = blobs()
    m = measure(lab, NAMES, spacing=SPACING, unit="µm")
    c = m.classes.set_index("class_name")
    counts = np.bincount(lab.ravel(), minlength=3)
    assert c["pixels"].tolist() == counts.tolist() == [60 * 80 - 100 - 24 - 150 - 170, 274, 170]
    assert np.allclose(c["area"], counts * 0.125)
    assert np.allclose(c["fraction_image"], counts / lab.size)
    assert np.isnan(c.loc["background", "fraction_labelled"])
    assert c.loc["nucleus", "fraction_labelled"] == pytest.approx(274 / 444)
    assert c["objects"].tolist() == [0, 2, 2]  # A+B touch: one object
    assert set(c["unit"]) == {"µm"}


def test_objects_equal_skimage_with_spacing():
    lab = blobs()
    rng = np.random.default_rng(1)
    image = rng.normal(100, 20, lab.shape).astype(np.float32)
    m = measure(lab, NAMES, spacing=SPACING, image=image)
    objs = m.objects
    assert len(objs) == 4 and (objs["class_name"] != "background").all()
    assert m.instances.dtype == np.int32 and m.instances.max() == 4
    for cls in (1, 2):
        rows = objs[objs["class"] == cls].sort_values(["centroid_y", "centroid_x"])
        ref = reference(lab, cls, image)
        assert len(rows) == len(ref)
        for (_, row), r in zip(rows.iterrows(), ref):
            assert row["area"] == pytest.approx(r.area)            # skimage's area with spacing
            assert row["pixels"] == r.num_pixels
            assert row["centroid_y"] == pytest.approx(r.centroid[0])
            assert row["centroid_x"] == pytest.approx(r.centroid[1])
            assert row["mean_intensity"] == pytest.approx(r.intensity_mean, rel=1e-6)
            assert row["min_intensity"] == pytest.approx(r.intensity_min)
            assert row["max_intensity"] == pytest.approx(r.intensity_max)
            box = np.array(r.bbox, float) * np.array(SPACING * 2)
            assert [row["bbox_min_y"], row["bbox_min_x"], row["bbox_max_y"],
                    row["bbox_max_x"]] == pytest.approx(box.tolist())
            # the instance map holds exactly this region
            assert (m.instances == row["id"]).sum() == r.num_pixels
    # ids in the table are the values in instances; background pixels are 0 there
    assert sorted(objs["id"]) == [1, 2, 3, 4]
    assert (m.instances[lab == 0] == 0).all()
    # class mean intensity = the mean over the class's pixels
    c = m.classes.set_index("class")
    assert c.loc[1, "mean_intensity"] == pytest.approx(image[lab == 1].mean(), rel=1e-5)


def test_connectivity_min_size_and_object_classes():
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 1
    lab[6:9, 6:9] = 1  # touches the first only at a corner
    lab[15, 15] = 1    # one pixel
    assert len(measure(lab, ["bg", "a"]).objects) == 3
    assert len(measure(lab, ["bg", "a"], connectivity=2).objects) == 2
    m = measure(lab, ["bg", "a"], min_size=2)
    assert len(m.objects) == 2 and m.instances[15, 15] == 0
    assert m.classes.loc[1, "pixels"] == 26  # the class area still counts every pixel
    lab[10:12, 10:14] = 2
    m = measure(lab, ["bg", "a", "b"], object_classes=["b"])
    assert m.objects["class_name"].tolist() == ["b"]
    with pytest.raises(ValueError, match="background"):
        measure(lab, ["bg", "a", "b"], object_classes=["bg"])
    with pytest.raises(ValueError, match="not one of"):
        measure(lab, ["bg", "a", "b"], object_classes=["c"])


def test_no_background_class_zero_is_an_object():
    lab = np.zeros((10, 10), np.int32)
    lab[:, 5:] = 1
    m = measure(lab, ["sky", "sea"], background=None)
    assert m.objects["class_name"].tolist() == ["sky", "sea"]
    assert m.classes["fraction_labelled"].tolist() == [0.5, 0.5]


def test_rgb_intensity_per_channel():
    lab = blobs()
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, lab.shape + (3,), dtype=np.uint8)
    m = measure(lab, NAMES, spacing=SPACING, image=rgb)
    for ch in range(3):
        for _, row in m.objects.iterrows():
            pix = rgb[..., ch][m.instances == row["id"]]
            assert row[f"mean_intensity_{ch}"] == pytest.approx(pix.mean())
            assert row[f"min_intensity_{ch}"] == pix.min()
            assert row[f"max_intensity_{ch}"] == pix.max()
        assert m.classes.loc[2, f"mean_intensity_{ch}"] == pytest.approx(rgb[..., ch][lab == 2].mean())
    with pytest.raises(ValueError, match="does not match"):
        measure(lab, NAMES, image=rgb[:10])


def test_stack_per_plane_with_index_columns():
    a = blobs()
    b = np.zeros_like(a)
    b[0:10, 0:10] = 2
    stack = np.stack([a, b])
    m = measure(stack, NAMES, spacing=SPACING, axes="Z")
    assert m.classes.columns[0] == "z" and len(m.classes) == 6
    assert m.classes[m.classes["z"] == 1]["pixels"].tolist() == [a.size - 100, 0, 100]
    single = measure(a, NAMES, spacing=SPACING)
    first = m.objects[m.objects["z"] == 0].drop(columns="z").reset_index(drop=True)
    assert first.equals(single.objects)
    second = m.objects[m.objects["z"] == 1]
    assert second["id"].tolist() == [5] and second["area"].tolist() == [100 * 0.125]
    assert (m.instances[1] == 5).sum() == 100 and m.instances.shape == stack.shape
    assert measure(np.stack([stack, stack])).objects.columns[:2].tolist() == ["plane_0", "plane_1"]


def test_split_touching_by_distance():
    lab = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    lab[(yy - 20) ** 2 + (xx - 18) ** 2 <= 100] = 1
    lab[(yy - 20) ** 2 + (xx - 38) ** 2 <= 100] = 1  # two overlapping disks: a waist
    assert len(measure(lab, ["bg", "cell"]).objects) == 1
    m = measure(lab, ["bg", "cell"], split="distance", split_min_distance=5)
    assert len(m.objects) == 2
    assert m.objects["pixels"].sum() == (lab == 1).sum()
    left, right = sorted(m.objects["centroid_x"])
    assert left == pytest.approx(18, abs=1.5) and right == pytest.approx(38, abs=1.5)


def test_split_by_probability_needs_maps():
    lab = np.zeros((20, 40), np.int32)
    lab[5:15, 5:35] = 1
    probs = np.zeros((2, 20, 40), np.float32)
    probs[1, 10, 10] = probs[1, 10, 30] = 1.0
    from scipy import ndimage
    probs[1] = ndimage.gaussian_filter(probs[1], 4)
    m = measure(lab, ["bg", "cell"], split="probability", probabilities=probs)
    assert len(m.objects) == 2 and m.objects["pixels"].sum() == 300
    with pytest.raises(ValueError, match="probabilities"):
        measure(lab, ["bg", "cell"], split="probability")


def test_result_method_and_bad_input(tiny_segmenter):
    seg = tiny_segmenter
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    res = seg.segment(image, "background: sky\ncat\ndog")
    m = res.measure(spacing=2.0, image=image)
    assert m.classes["class_name"].tolist() == res.class_names
    assert m.classes["pixels"].sum() == 48 * 48
    assert np.allclose(m.classes["area"], m.classes["pixels"] * 4.0)
    assert (m.objects["class"] != 0).all()
    assert m.objects["pixels"].sum() == (res.labels != 0).sum()
    with pytest.raises(TypeError, match="integer"):
        measure(np.zeros((4, 4), float))
    with pytest.raises(ValueError, match="spacing"):
        measure(np.zeros((4, 4), int), spacing=(0, 1))
    with pytest.raises(ValueError, match="negative"):
        measure(-np.ones((4, 4), int))


def test_csv_round_trip(tmp_path):
    import pandas as pd

    m = measure(blobs(), NAMES, spacing=SPACING, unit="µm")
    paths = m.to_csv(tmp_path / "c.csv", tmp_path / "o.csv")
    back = pd.read_csv(paths[1])
    assert back["area"].tolist() == pytest.approx(m.objects["area"].tolist())
    assert pd.read_csv(paths[0], keep_default_na=False)["unit"].tolist() == ["µm"] * 3
