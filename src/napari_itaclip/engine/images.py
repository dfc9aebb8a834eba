"""Input images: checks and conversion to RGB on the 0..255 scale (uint8 for the engine)."""

from __future__ import annotations

import numpy as np

from ..errors import ImageError

__all__ = ["MEAN", "PERCENTILES", "STD", "prepare_image", "prepare_image_uint8"]

#: Pixel normalisation (RGB, 0..255 scale) of CLIP as ITACLIP uses it: the model sees
#: ``(pixel - MEAN) / STD`` per channel.
MEAN = (122.771, 116.746, 104.094)
STD = (68.501, 66.632, 70.323)
#: Robust range used to rescale images that are not uint8 (low, high percentiles).
PERCENTILES = (0.5, 99.5)


def prepare_image(image, *, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Check an image and return it as (H, W, 3) float32 RGB on the 0..255 scale.

    Parameters
    ----------
    image : array-like
        (H, W) grey, (H, W, 1) grey, (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped).
        uint8 is used as is. Any other dtype (uint16 microscopy, float, bool, int) is
        rescaled so that its ``percentiles`` map to 0 and 255 (values outside are
        clipped); a constant image maps to 0.
    percentiles : tuple of float
        Low and high percentiles of the rescaling.

    Raises
    ------
    ImageError
        Wrong number of dimensions or channels, an empty image, a non-numeric dtype,
        NaN or infinite values.
    """
    arr = _checked(image)
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32)
    else:
        out = _rescale(arr.astype(np.float64), percentiles).astype(np.float32)
    return _rgb(out)


def prepare_image_uint8(image, *, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Check an image and return the (H, W, 3) uint8 RGB image the engine segments.

    The authors' pipeline reads 8-bit images and resizes them as uint8 (docs/engine.md, section
    "Sliding window"), so the engine works from uint8: uint8 input is used as is; any other dtype is
    rescaled as :func:`prepare_image` does (robust percentiles to 0..255, clipped) and
    rounded to the nearest integer, exactly as chunked mode converts its planes
    (:func:`napari_itaclip.chunked.to_uint8_global`).

    Raises
    ------
    ImageError
        As :func:`prepare_image`.
    """
    arr = _checked(image)
    if arr.dtype == np.uint8:
        out = arr
    else:
        out = np.round(_rescale(arr.astype(np.float64), percentiles).astype(np.float32))
        out = out.astype(np.uint8)
    return _rgb(out)


def _rgb(image: np.ndarray) -> np.ndarray:
    """A contiguous (H, W, 3) copy of a grey (H, W) image, or the RGB image as it is.

    By assignment, channel by channel: numpy's copy loops release the GIL, where
    ``np.repeat`` holds it (0.1 s and more on a 6000 x 6000 plane, during which a worker
    thread stalls napari's event loop).
    """
    if image.ndim != 2:
        return np.ascontiguousarray(image)
    out = np.empty(image.shape + (3,), image.dtype)
    for c in range(3):
        out[..., c] = image
    return out


def _checked(image) -> np.ndarray:
    """The image as an array of (H, W) or (H, W, 3), after every check (alpha dropped)."""
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"image must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ImageError("image must be real-valued, got a complex dtype")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        channels = 1
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        channels = arr.shape[-1]
    elif arr.ndim == 3:
        raise ImageError(
            f"a 3-D image must be (H, W, 3) RGB or (H, W, 4) RGBA, got shape {arr.shape}; "
            "for a stack or a multichannel image, pass one 2-D plane (or pick 3 channels)"
        )
    else:
        raise ImageError(
            f"image must be 2-D (H, W) or (H, W, 3|4), got {arr.ndim}-D shape {arr.shape}; "
            "segment stacks slice by slice"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image is empty: shape {arr.shape}")
    if channels == 4:
        arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - finite.sum())
            kinds = []
            if np.isnan(arr).any():
                kinds.append("NaN")
            if np.isinf(arr).any():
                kinds.append("inf")
            raise ImageError(
                f"image has {bad} {' and '.join(kinds)} pixel value(s); replace them "
                "(e.g. np.nan_to_num) before segmenting"
            )
    return arr


def _rescale(arr: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    lo, hi = np.percentile(arr, percentiles)
    if not hi > lo:
        lo, hi = float(arr.min()), float(arr.max())
    if not hi > lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0) * 255.0
