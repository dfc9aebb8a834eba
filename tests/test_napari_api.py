"""segment_layer (console scripting), the nD layout helper and the segmenter cache."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

VOCAB = "background: sky, wall\nperson, astronaut\nrocket"


def _rgb(h=48, w=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3)).astype(np.uint8)


def test_segment_layer_rgb_in_viewer_and_in_place(make_napari_viewer, tiny_segmenter,
                                                   tiny_config):
    from napari.layers import Image, Labels

    from napari_itaclip import segment_layer

    viewer = make_napari_viewer()
    src = viewer.add_image(_rgb(), name="astro", scale=(0.5, 2.0), translate=(5.0, -7.0))
    labels, heat = segment_layer(src, VOCAB, viewer=viewer, segmenter=tiny_segmenter,
                                 config=tiny_config)
    assert isinstance(labels, Labels) and isinstance(heat, Image)
    assert labels.name == "astro labels" and heat.name == "astro heatmaps"
    assert labels in viewer.layers and heat in viewer.layers
    assert labels.data.shape == (48, 64) and heat.data.shape == (3, 48, 64)
    np.testing.assert_allclose(labels.scale, (0.5, 2.0))
    np.testing.assert_allclose(labels.translate, (5.0, -7.0))
    np.testing.assert_allclose(heat.scale, (1.0, 0.5, 2.0))
    np.testing.assert_allclose(heat.translate, (0.0, 5.0, -7.0))
    assert list(labels.features["class_name"]) == ["background", "person", "rocket"]
    assert heat.metadata["itaclip"]["class_names"] == ["background", "person", "rocket"]
    # the heatmaps are the engine's similarity maps, the labels its labels
    ref = tiny_segmenter.segment(src.data, VOCAB, config=tiny_config)
    np.testing.assert_array_equal(labels.data, ref.labels)
    np.testing.assert_allclose(heat.data, ref.similarity, atol=1e-5)
    # run again with other settings: same layer objects, no new layers
    n = len(viewer.layers)
    labels2, heat2 = segment_layer(viewer.layers["astro"], "person\nrocket", viewer=viewer,
                                   segmenter=tiny_segmenter, config=tiny_config, stride=8)
    assert labels2 is labels and heat2 is heat and len(viewer.layers) == n
    assert heat.data.shape == (2, 48, 64)
    assert list(labels.features["class_name"]) == ["(unlabelled)", "person", "rocket"]
    assert set(np.unique(labels.data)) <= {1, 2}


def test_segment_layer_by_name_current_viewer_and_overrides(make_napari_viewer,
                                                            tiny_segmenter, tiny_config):
    from napari_itaclip import segment_layer

    viewer = make_napari_viewer()
    viewer.add_image(_rgb(32, 32)[..., 0], name="grey")
    seen = []
    labels, heat = segment_layer("grey", ["cell", "nucleus"], segmenter=tiny_segmenter,
                                 config=tiny_config, prob_threshold=0.0, progress=seen.append)
    assert labels in viewer.layers  # the current viewer
    assert {p.stage for p in seen} >= {"text", "image", "post"}
    assert seen[-1].slice_done == seen[-1].n_slices == 1


def test_segment_layer_without_viewer_and_stack_slices(tiny_segmenter, tiny_config):
    from napari.layers import Image, Points

    from napari_itaclip import segment_layer

    stack = Image(np.random.default_rng(1).integers(0, 255, (3, 32, 32)).astype(np.uint8),
                  name="z", scale=(4.0, 1.0, 1.0))
    labels, heat = segment_layer(stack, "cell, nucleus", segmenter=tiny_segmenter,
                                 config=tiny_config, slices=[1, (2,)])
    assert labels.data.shape == (3, 32, 32) and heat.data.shape == (2, 3, 32, 32)
    assert not labels.data[0].any() and labels.data[1].all() and labels.data[2].all()
    np.testing.assert_allclose(labels.scale, (4.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="outside the slice grid"):
        segment_layer(stack, "cell", segmenter=tiny_segmenter, slices=[5])
    with pytest.raises(TypeError, match="image layer"):
        segment_layer(Points(), "cell", segmenter=tiny_segmenter)


def test_segmenter_cache(monkeypatch):
    from napari_itaclip import _worker

    made = []

    class Fake:
        def __init__(self, **kw):
            made.append(kw)

    monkeypatch.setattr("napari_itaclip.Segmenter", Fake, raising=False)
    _worker.clear_segmenter_cache()
    a = _worker.get_segmenter("ViT-B-16", "openai", "cpu")
    assert _worker.get_segmenter("ViT-B-16", "openai", "cpu") is a
    b = _worker.get_segmenter("ViT-B-16", "/x/ckpt.pt", "cpu")
    assert b is not a and len(made) == 2
    _worker.clear_segmenter_cache()


@pytest.mark.parametrize(
    ("shape", "kw", "out", "n"),
    [
        ((10, 12), {}, (10, 12), 1),
        ((10, 12, 3), {"rgb": True}, (10, 12), 1),
        ((4, 10, 12), {}, (4, 10, 12), 4),
        ((2, 3, 10, 12, 4), {"rgb": True}, (2, 3, 10, 12), 6),
        ((5, 2, 10, 12), {"channel_axis": 1, "channel": 1}, (5, 10, 12), 5),
        ((2, 10, 12), {"channel_axis": 0}, (10, 12), 1),
    ],
)
def test_image_layout(shape, kw, out, n):
    from napari_itaclip._layout import ImageLayout

    data = np.arange(np.prod(shape)).reshape(shape)
    lay = ImageLayout(shape, **kw)
    assert lay.out_shape == out and lay.n_slices == n
    idx = lay.all_slices()[-1]
    plane = lay.get_plane(data, idx)
    assert plane.shape[:2] == out[-2:]
    if kw.get("channel") == 1:
        np.testing.assert_array_equal(plane, data[idx[0], 1])


def test_image_layout_errors():
    from napari_itaclip._layout import ImageLayout

    with pytest.raises(ValueError, match="spatial"):
        ImageLayout((3, 10, 12), channel_axis=2)
    with pytest.raises(ValueError, match="out of range"):
        ImageLayout((3, 10, 12), channel_axis=0, channel=3)
    with pytest.raises(ValueError, match="need 2 spatial axes"):
        ImageLayout((10,))


def test_composite_is_uint8_rescaled_per_channel():
    """The per-channel rescale is the only one: uint8 passes the engine unchanged."""
    from napari_itaclip._layout import ImageLayout
    from napari_itaclip.engine.images import prepare_image

    rng = np.random.default_rng(0)
    dim = rng.uniform(0, 100, (2, 16, 16))            # channel 0: a dim channel
    bright = rng.uniform(0, 60000, (2, 16, 16))       # channel 1: a bright one
    data = np.stack([dim, bright], axis=1).astype(np.float32)  # Z, C, Y, X
    plane = ImageLayout(data.shape, channel_axis=1).get_plane(data, (1,))
    assert plane.dtype == np.uint8 and plane.shape == (16, 16, 3)
    for c in range(2):
        ch = data[1, c]
        lo, hi = np.percentile(ch, (0.5, 99.5))
        expect = np.round(np.clip((ch - lo) / (hi - lo), 0, 1) * 255)
        np.testing.assert_array_equal(plane[..., c], expect.astype(np.uint8))
    assert not plane[..., 2].any()
    # both channels use the full range, and the engine keeps them as they are
    np.testing.assert_array_equal(prepare_image(plane), plane.astype(np.float32))
    many = ImageLayout((5, 16, 16), channel_axis=0).get_plane(
        rng.uniform(0, 1, (5, 16, 16)), ())
    assert many.dtype == np.uint8 and many.shape == (16, 16)


def test_partial_rerun_writes_planes_in_place(make_napari_viewer, tiny_segmenter, tiny_config):
    from napari_itaclip import segment_layer

    viewer = make_napari_viewer()
    data = np.random.default_rng(1).integers(0, 255, (3, 24, 24)).astype(np.uint8)
    viewer.add_image(data, name="z")
    labels, heat = segment_layer("z", "cell\nnucleus", viewer=viewer,
                                 segmenter=tiny_segmenter, config=tiny_config, slices=[(0,)])
    lab_arr, heat_arr = labels.data, heat.data
    lo0, hi0 = heat.contrast_limits_range
    assert lo0 <= 0.0 <= hi0  # planes never segmented are 0
    plane0 = lab_arr[0].copy()
    labels2, heat2 = segment_layer("z", "cell\nnucleus", viewer=viewer,
                                   segmenter=tiny_segmenter, config=tiny_config,
                                   slices=[(1,)])
    assert labels2 is labels and heat2 is heat
    assert labels.data is lab_arr and heat.data is heat_arr  # no copy of the volumes
    np.testing.assert_array_equal(lab_arr[0], plane0)
    assert (lab_arr[1] > 0).all() and not lab_arr[2].any()
    lo, hi = heat.contrast_limits_range
    assert lo <= float(heat_arr.min()) and hi >= float(heat_arr.max())
    assert tuple(heat.contrast_limits) == (lo, hi)
    # the displayed slice shows the new values
    viewer.dims.set_current_step(1, 1)
    np.testing.assert_array_equal(np.asarray(labels._slice.image.raw), lab_arr[1])
