import numpy as np
import pytest

from napari_itaclip.engine.images import prepare_image
from napari_itaclip.errors import ImageError


def test_uint8_rgb_used_as_is():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = prepare_image(img)
    assert out.dtype == np.float32 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, img.astype(np.float32))


def test_grey_repeated_and_rgba_alpha_dropped():
    g = np.array([[0, 255], [10, 20]], dtype=np.uint8)
    out = prepare_image(g)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    rgba = np.dstack([g, g, g, np.zeros_like(g)])
    np.testing.assert_array_equal(prepare_image(rgba), out)
    np.testing.assert_array_equal(prepare_image(g[..., None]), out)


def test_grey_to_rgb_equals_repeat_for_both_preparations():
    """Grey -> RGB is built channel by channel (numpy's copy loops release the GIL);
    the result is what ``np.repeat`` gave, contiguous, for uint8 and for float32.
    """
    from napari_itaclip.engine.images import prepare_image_uint8

    g = np.random.default_rng(1).integers(0, 256, (37, 53), dtype=np.uint8)
    for prepare, dtype in ((prepare_image_uint8, np.uint8), (prepare_image, np.float32)):
        out = prepare(g)
        want = np.repeat(g.astype(dtype)[..., None], 3, axis=-1)
        assert out.dtype == dtype and out.flags.c_contiguous
        np.testing.assert_array_equal(out, want)
    strided = np.asfortranarray(g)[::2]
    np.testing.assert_array_equal(prepare_image_uint8(strided),
                                  np.repeat(strided[..., None], 3, axis=-1))


def test_uint16_rescaled_by_robust_percentiles():
    rng = np.random.default_rng(0)
    img = rng.integers(1000, 2000, size=(64, 64)).astype(np.uint16)
    img[0, 0] = 65535  # a hot pixel must not squash the range
    out = prepare_image(img)
    lo, hi = np.percentile(img.astype(float), (0.5, 99.5))
    expected = np.clip((img - lo) / (hi - lo), 0, 1) * 255
    np.testing.assert_allclose(out[..., 0], expected, atol=1e-3)
    assert out[1:, 1:].max() > 200  # the hot pixel did not compress the rest


def test_float_and_constant_images():
    f = np.linspace(-1, 1, 100, dtype=np.float64).reshape(10, 10)
    out = prepare_image(f)
    assert out.min() == 0 and out.max() == 255
    assert prepare_image(np.full((4, 4), 7.0)).max() == 0


@pytest.mark.parametrize(
    "img, msg",
    [
        (np.zeros((4,)), "2-D"),
        (np.zeros((2, 4, 4, 3)), "2-D"),
        (np.zeros((4, 4, 5)), "RGB"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "inf"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_images(img, msg):
    with pytest.raises(ImageError, match=msg):
        prepare_image(img)
