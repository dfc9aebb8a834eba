"""The input resize of the authors' MMSeg pipeline, reproduced bit for bit.

See docs/engine.md, sections "Sliding window" and "The input resize".

MMSeg's ``Resize(scale=(2048, S), keep_ratio=True)`` scales a uint8 RGB image by
``r = min(2048 / long side, S / short side)`` to ``(int(h * r + 0.5), int(w * r + 0.5))``
with OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``. OpenCV computes that
resize in fixed point, not in floating point, so a float bilinear resize of the same
geometry differs by up to one grey level on about a tenth of the pixels. This module
reimplements OpenCV's arithmetic in numpy (no OpenCV at run time: a napari plugin that
depended on ``opencv-python-headless`` would clash with users' ``opencv-python``), and
the test suite checks it against ``cv2.resize`` over many sizes.

OpenCV's uint8 ``INTER_LINEAR`` (``cv::hal::resize``, generic path), as reproduced here:

- ``scale = 1 / (dst / src)`` per axis (double). Source coordinate of output index
  ``d``: ``f = float32((d + 0.5) * scale - 0.5)``, ``s = floor(f)``, ``f -= s``.
- Columns: where ``s < 0`` the column is ``s = 0, f = 0``; where ``s >= src - 1`` it is
  ``s = src - 1, f = 0`` (border clamping). Rows keep ``f`` and clamp the two source rows
  ``s, s + 1`` into the image instead.
- Weights are 11-bit fixed point: ``round_half_even(float32(1 - f) * 2048)`` and
  ``round_half_even(f * 2048)`` (``saturate_cast<short>``), for columns and rows alike.
- Horizontal pass in int32: ``H = S[s] * a0 + S[s + 1] * a1``.
- Vertical pass (the uint8 specialisation, scalar and SIMD alike):
  ``((b0 * (H0 >> 4)) >> 16) + ((b1 * (H1 >> 4)) >> 16) + 2 >> 2``.
- Special cases taken before that: an output of the input's size is a copy; an exact
  2x downscale along both axes goes to ``INTER_AREA``'s fast path, the rounded mean of
  each 2x2 block ``(a + b + c + d + 2) >> 2``.
- Not reproduced: OpenCV's optional IPP resize, which is off for uint8 bilinear unless
  ``cv::ipp::setUseIPP_NotExact(true)`` (it is off by default).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_LONG_SIDE", "mmseg_resize_shape", "resize_uint8_linear"]

#: MMSeg's ``Resize(scale=(2048, S))`` caps the long side at 2048 pixels.
MAX_LONG_SIDE = 2048

_COEF_SCALE = 1 << 11  # OpenCV's INTER_RESIZE_COEF_SCALE


def mmseg_resize_shape(height: int, width: int, short_side: int,
                       max_long_side: int = MAX_LONG_SIDE) -> tuple[int, int]:
    """Output (height, width) of MMSeg's keep-ratio resize to ``(max_long_side, short_side)``.

    ``r = min(max_long_side / max(h, w), short_side / min(h, w))`` and each side becomes
    ``int(side * r + 0.5)`` (mmcv's ``rescale_size``), at least 1.
    """
    r = min(max_long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * r + 0.5)), max(1, int(width * r + 0.5))


def _axis_coefficients(src: int, dst: int, clamp_weights: bool):
    """Source indices (s, s + 1), clamped into the image, and the two 11-bit weights."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:  # columns: fx = 0 at the borders (OpenCV's xmin / xmax handling)
        low = s < 0
        s[low] = 0
        f[low] = 0
        high = s >= src - 1
        s[high] = src - 1
        f[high] = 0
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    i0 = np.clip(s, 0, src - 1)
    i1 = np.clip(s + 1, 0, src - 1)
    return i0, i1, w0, w1


def resize_uint8_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 image exactly as ``cv2.resize(image, (width, height), INTER_LINEAR)``.

    Parameters
    ----------
    image : np.ndarray
        (H, W) or (H, W, C) uint8.
    height, width : int
        Output size (>= 1).

    Returns
    -------
    np.ndarray
        (height, width[, C]) uint8, bit-identical to OpenCV's result.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"resize_uint8_linear needs a uint8 image, got {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    h, w = img.shape[:2]
    if (height, width) == (h, w):
        return img.copy()
    if 2 * height == h and 2 * width == w:  # OpenCV routes this to INTER_AREA's fast path
        s = img.astype(np.int32)
        total = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _axis_coefficients(w, width, clamp_weights=True)
    y0, y1, b0, b1 = _axis_coefficients(h, height, clamp_weights=False)
    if img.ndim == 3:
        a0, a1 = a0[:, None], a1[:, None]
        b0, b1 = b0[:, None, None], b1[:, None, None]
    else:
        b0, b1 = b0[:, None], b1[:, None]
    rows = np.unique(np.concatenate([y0, y1]))
    left = img[np.ix_(rows, x0)].astype(np.int32)
    right = img[np.ix_(rows, x1)].astype(np.int32)
    horiz = left * a0 + right * a1  # int32, at most 255 * 2049
    where = np.searchsorted(rows, y0), np.searchsorted(rows, y1)
    top = (horiz[where[0]] >> 4) * b0 >> 16
    bottom = (horiz[where[1]] >> 4) * b1 >> 16
    out = (top + bottom + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)
