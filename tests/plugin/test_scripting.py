"""segment_layer (console scripting): layers written from the engine's results."""

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


def test_segment_then_segment_layer_load_the_model_once(tiny_model_json, tiny_checkpoint,
                                                        monkeypatch):
    """segment() and segment_layer() with the same settings share one loaded model."""
    from napari.layers import Image

    import napari_itaclip.engine.segmenter as seg_mod
    from napari_itaclip import segment, segment_layer

    loads = []
    real = seg_mod.load_model

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_mod, "load_model", counting_load)
    img = _rgb(32, 32)
    kw = dict(model=str(tiny_model_json), pretrained=str(tiny_checkpoint), device="cpu")
    cfg = dict(short_side=None, crop=32, stride=32, mid_layers=(2,), pamr_steps=0)
    ref = segment(img, ["cell", "nucleus"], **kw, **cfg)
    labels, _heat = segment_layer(Image(img, rgb=True, name="im"), ["cell", "nucleus"],
                                  **kw, **cfg)
    assert loads == [str(tiny_model_json)]
    np.testing.assert_array_equal(labels.data, ref.labels + 1)  # no background: +1
