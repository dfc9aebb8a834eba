"""MMSeg's input resize (docs/engine.md's "Sliding window"): OpenCV's fixed-point
INTER_LINEAR, bit for bit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_itaclip import Vocabulary
from napari_itaclip.engine import segmenter as segmenter_module
from napari_itaclip.engine.images import prepare_image, prepare_image_uint8
from napari_itaclip.engine.refine import iter_pamr
from napari_itaclip.engine.resize import MAX_LONG_SIDE, mmseg_resize_shape, resize_uint8_linear
from napari_itaclip.engine.segmenter import MEAN, STD
from napari_itaclip.progress import drain

# (source h, w) x (destination h, w): up, down, odd factors, exact 2x (OpenCV's INTER_AREA
# route), 1-pixel images and outputs, one axis up and the other down, same size (a copy)
_SIZES = [
    ((1, 1), (1, 1)), ((1, 1), (3, 5)), ((1, 7), (4, 3)), ((6, 1), (2, 9)), ((2, 2), (1, 1)),
    ((3, 7), (1, 1)), ((5, 5), (7, 7)), ((17, 23), (34, 46)), ((17, 23), (8, 11)),
    ((18, 24), (9, 12)), ((64, 48), (32, 24)), ((64, 48), (32, 25)), ((33, 47), (11, 16)),
    ((40, 30), (120, 90)), ((40, 30), (13, 91)), ((224, 224), (336, 336)),
    ((300, 451), (336, 505)), ((512, 512), (336, 336)), ((480, 640), (336, 448)),
    ((333, 500), (336, 505)), ((1000, 37), (336, 12)), ((97, 131), (97, 131)),
    ((31, 200), (448, 2890)), ((7, 9), (448, 576)),
]


@pytest.mark.parametrize("src, dst", _SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_equals_opencv(src, dst, channels):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(src[0] * 1000 + dst[1])
    shape = src if channels == 1 else (*src, channels)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_uint8_linear(img, *dst), ref)


def test_resize_equals_opencv_on_random_sizes_and_smooth_images():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w, H, W = (int(v) for v in rng.integers(1, 160, 4))
        ramp = np.add.outer(np.arange(h) * 3, np.arange(w) * 5)[..., None] + np.arange(3) * 40
        img = ((ramp + rng.integers(0, 30, (h, w, 3))) % 256).astype(np.uint8)
        ref = cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(resize_uint8_linear(img, H, W), ref, err_msg=f"{h}x{w}->{H}x{W}")


def test_resize_differs_from_a_float_bilinear():
    """The reason for all this: a float resize of the same geometry is off by one grey
    level on many pixels (docs/engine.md's "Sliding window")."""
    img = np.random.default_rng(1).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    exact = resize_uint8_linear(img, 336, 505).astype(np.float32)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    flt = F.interpolate(t, size=(336, 505), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    diff = np.abs(exact - np.round(flt.numpy()))
    assert diff.max() == 1 and 0.01 < (diff > 0).mean() < 0.5


def test_exact_2x_downscale_is_the_rounded_block_mean():
    img = np.array([[0, 1, 2, 3], [1, 1, 255, 254]], dtype=np.uint8)
    # (0+1+1+1+2)>>2 = 1, (2+3+255+254+2)>>2 = 129
    np.testing.assert_array_equal(resize_uint8_linear(img, 1, 2), [[1, 129]])


def test_resize_arguments_are_checked():
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        resize_uint8_linear(img.astype(np.float32), 2, 2)
    with pytest.raises(ValueError, match="positive"):
        resize_uint8_linear(img, 0, 2)
    with pytest.raises(ValueError, match="shape"):
        resize_uint8_linear(np.zeros((2, 2, 2, 2), np.uint8), 2, 2)


@pytest.mark.parametrize(
    "hw, short, expected",
    [
        ((512, 512), 336, (336, 336)),
        ((300, 451), 336, (336, 505)),  # 451 * 1.12 = 505.12
        ((375, 500), 336, (336, 448)),
        ((333, 500), 448, (448, 673)),  # 500 * 448 / 333 = 672.67
        ((1024, 2048), 560, (560, 1120)),
        ((100, 5000), 336, (41, 2048)),  # the long side capped: r = 2048 / 5000
        ((3000, 200), 560, (2048, 137)),  # 200 * 2048 / 3000 = 136.5 -> 137
        ((336, 448), 336, (336, 448)),  # already there
    ],
)
def test_mmseg_resize_shape(hw, short, expected):
    assert mmseg_resize_shape(*hw, short) == expected
    assert max(mmseg_resize_shape(*hw, short)) <= MAX_LONG_SIDE


def test_engine_default_path_is_mmseg_resize_then_float_resize_back(tiny_segmenter, tiny_config):
    """The uint8 image resized as OpenCV does, normalised; the logits and PAMR's guide
    resized back with a float bilinear (docs/engine.md's "Sliding window")."""
    cfg = tiny_config.replace(short_side=24, pamr_steps=3, close_size=0)
    vocab = Vocabulary.parse("background: sky\ncat\ndog")
    img = np.random.default_rng(7).integers(0, 256, (40, 61, 3), dtype=np.uint8)
    res = tiny_segmenter.segment(img, vocab, config=cfg)

    small = resize_uint8_linear(img, *mmseg_resize_shape(40, 61, 24))
    assert small.shape == (24, 37, 3)
    x = (torch.from_numpy(small).permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)
         ) / torch.tensor(STD).view(3, 1, 1)
    text = drain(tiny_segmenter.iter_query_features(vocab, cfg))
    with torch.inference_mode():
        logits = drain(tiny_segmenter.iter_logits(x, text, cfg))
        logits = F.interpolate(logits[None], size=(40, 61), mode="bilinear", align_corners=False)
        guide = F.interpolate(x[None], size=(40, 61), mode="bilinear", align_corners=False)
        refined = drain(iter_pamr(guide, logits, 3, cfg.pamr_dilations))[0].numpy()
    np.testing.assert_allclose(res.similarity, refined, rtol=1e-5, atol=1e-6)


def test_engine_caps_the_long_side(tiny_segmenter, tiny_config, monkeypatch):
    seen = []
    real = segmenter_module.resize_uint8_linear

    def spy(image, h, w):
        seen.append((image.shape[:2], (h, w)))
        return real(image, h, w)

    monkeypatch.setattr(segmenter_module, "resize_uint8_linear", spy)
    img = np.random.default_rng(8).integers(0, 256, (10, 2100, 3), dtype=np.uint8)
    cfg = tiny_config.replace(short_side=16, crop=32, stride=32, pamr_steps=0,
                              image_engineering=False)
    res = tiny_segmenter.segment(img, "cat\ndog", config=cfg)
    # r = min(2048 / 2100, 16 / 10) = 0.975...: 10 -> 10, 2100 -> 2048
    assert seen == [((10, 2100), (10, 2048))]
    assert res.labels.shape == (10, 2100)


def test_non_uint8_images_are_rounded_to_uint8_like_chunked_mode(tiny_segmenter, tiny_config):
    pytest.importorskip("dask")
    from napari_itaclip.chunked import to_uint8_global

    f = np.random.default_rng(9).normal(100.0, 30.0, (40, 50)).astype(np.float32)
    u8 = prepare_image_uint8(f)
    assert u8.dtype == np.uint8 and u8.shape == (40, 50, 3)
    np.testing.assert_array_equal(u8[..., 0], np.round(prepare_image(f)[..., 0]))
    np.testing.assert_array_equal(u8[..., 0], np.asarray(to_uint8_global(f)))
    # the engine segments exactly that uint8 image
    cfg = tiny_config.replace(short_side=24)
    a = tiny_segmenter.segment(f, "cat\ndog", config=cfg)
    b = tiny_segmenter.segment(u8, "cat\ndog", config=cfg)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    img8 = np.random.default_rng(10).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_image_uint8(img8), img8)  # uint8 as is


def test_read_only_images_are_accepted(tiny_segmenter, tiny_config):
    img = np.random.default_rng(11).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    img.flags.writeable = False  # e.g. np.asarray(PIL.Image)
    for short in (None, 24):
        res = tiny_segmenter.segment(img, "cat\ndog", config=tiny_config.replace(short_side=short))
        assert res.labels.shape == (36, 40)
