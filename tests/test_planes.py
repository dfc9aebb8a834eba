"""The nD -> 2D plane mapping shared by the plugin, the CLI and chunked mode."""

from __future__ import annotations

import numpy as np
import pytest


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
    from napari_itaclip.planes import ImageLayout

    data = np.arange(np.prod(shape)).reshape(shape)
    lay = ImageLayout(shape, **kw)
    assert lay.out_shape == out and lay.n_slices == n
    idx = lay.all_slices()[-1]
    plane = lay.get_plane(data, idx)
    assert plane.shape[:2] == out[-2:]
    if kw.get("channel") == 1:
        np.testing.assert_array_equal(plane, data[idx[0], 1])


def test_image_layout_errors():
    from napari_itaclip.planes import ImageLayout

    with pytest.raises(ValueError, match="spatial"):
        ImageLayout((3, 10, 12), channel_axis=2)
    with pytest.raises(ValueError, match="out of range"):
        ImageLayout((3, 10, 12), channel_axis=0, channel=3)
    with pytest.raises(ValueError, match="need 2 spatial axes"):
        ImageLayout((10,))


def test_composite_is_uint8_rescaled_per_channel():
    """The per-channel rescale is the only one: uint8 passes the engine unchanged."""
    from napari_itaclip.engine.images import prepare_image
    from napari_itaclip.planes import ImageLayout

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


def test_stack_relabel_left_out_arguments_keep_each_planes_values(tiny_segmenter):
    """StackResult.relabel: arguments not given (NOT_GIVEN) keep each result's own."""
    from napari_itaclip.planes import ImageLayout
    from napari_itaclip.progress import drain
    from napari_itaclip.stack import iter_segment_slices

    data = np.random.default_rng(5).integers(0, 255, (2, 32, 40)).astype(np.uint8)
    layout = ImageLayout(data.shape)
    cfg = tiny_segmenter.config.replace(area_threshold=0.05)
    stack = drain(iter_segment_slices(tiny_segmenter, data, layout, layout.all_slices(),
                                      "background: sky\ncat\ndog", cfg))
    same = stack.relabel()
    changed = stack.relabel(prob_threshold=0.9)
    area_off = stack.relabel(area_threshold=None)
    for idx, res in stack.results.items():
        np.testing.assert_array_equal(same.results[idx].labels, res.labels)
        assert same.results[idx].config.area_threshold == 0.05
        assert changed.results[idx].config.area_threshold == 0.05  # kept
        assert changed.results[idx].config.prob_threshold == 0.9
        np.testing.assert_array_equal(changed.results[idx].labels,
                                      res.relabel(prob_threshold=0.9).labels)
        assert area_off.results[idx].config.area_threshold is None
        assert area_off.results[idx].config.prob_threshold == res.config.prob_threshold
        np.testing.assert_array_equal(area_off.results[idx].labels,
                                      res.relabel(area_threshold=None).labels)
