"""Converting a (lazy) image to uint8 plane by plane, exactly as the engine converts a
plane in memory: what makes chunks and tiles of a non-uint8 image equal the whole.
"""

from __future__ import annotations

import numpy as np

from ..engine.images import PERCENTILES
from ..optional import require
from ..planes import ImageLayout

__all__ = ["to_uint8_global"]


def to_uint8_global(data, percentiles: tuple[float, float] = PERCENTILES, *,
                    rgb: bool | None = None):
    """Scale a (dask) array to uint8 plane by plane, as the engine scales one image.

    Each plane (the last two axes, or three with colour samples) is converted exactly as
    :func:`napari_itaclip.engine.images.prepare_image_uint8` converts it when segmented
    in memory (rescaled, then rounded to uint8): alpha dropped, ``percentiles`` of the plane mapped to
    0 and 255 (clipped), falling back to the plane's min / max when the percentiles are
    equal (sparse images), a constant plane mapping to 0. uint8 data are returned
    unchanged (but without alpha). The percentiles are exact for bool and integer types
    of up to 16 bits (a histogram) and dask's approximation otherwise (exact when a
    plane is one dask chunk).

    Parameters
    ----------
    data : array-like
        numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)``.
    percentiles : tuple of float
        Low and high percentiles (the engine's :data:`PERCENTILES` by default).
    rgb : bool, optional
        Whether the last axis holds colour; guessed from a last axis of 3 or 4.

    Raises
    ------
    ImageError
        A non-numeric or complex dtype, or NaN / infinite values (as the engine does).
    """
    from ..errors import ImageError

    dask = require("dask")
    da = require("dask.array")
    arr = da.asarray(data)
    if rgb is None:
        rgb = arr.ndim >= 3 and arr.shape[-1] in (3, 4)
    if rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype.kind not in "uifb":
        raise ImageError(f"image must be numeric and real-valued, got dtype {arr.dtype}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        n_nan, n_inf = (int(v) for v in dask.compute(da.isnan(arr).sum(),
                                                    da.isinf(arr).sum()))
        if n_nan or n_inf:
            kinds = [k for k, n in (("NaN", n_nan), ("inf", n_inf)) if n]
            raise ImageError(
                f"image has {n_nan + n_inf} {' and '.join(kinds)} pixel value(s); replace "
                "them (e.g. np.nan_to_num) before segmenting"
            )
    layout = ImageLayout(tuple(arr.shape), rgb=rgb)
    lead = layout.leading_shape
    planes = [arr[layout.plane_key(idx)] for idx in layout.all_slices()]
    histogram = arr.dtype == bool or (arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2)
    if histogram:
        offset = int(np.iinfo(arr.dtype).min) if arr.dtype.kind == "i" else 0
        counts = dask.compute(*[da.bincount(p.ravel().astype(np.int64) - offset, minlength=1)
                                for p in planes])
        bounds = []
        for c in counts:
            c = np.asarray(c)
            values = np.arange(len(c), dtype=np.float64) + offset
            lo, hi = (_hist_percentile(values, c, q) for q in percentiles)
            if not hi > lo:
                nz = np.flatnonzero(c)
                lo, hi = float(values[nz[0]]), float(values[nz[-1]])
            bounds.append((lo, hi))
    else:
        stats = dask.compute(*[(da.percentile(p.ravel(), list(percentiles)), p.min(), p.max())
                               for p in planes])
        bounds = []
        for pct, mn, mx in stats:
            lo, hi = (float(v) for v in np.asarray(pct))
            if not hi > lo:
                lo, hi = float(mn), float(mx)
            bounds.append((lo, hi))

    def convert(block, lo, hi):
        if not hi > lo:
            return np.zeros(block.shape, np.uint8)
        out = np.clip((block.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0
        return np.round(out.astype(np.float32)).astype(np.uint8)

    out = [p.map_blocks(convert, lo, hi, dtype=np.uint8) for p, (lo, hi) in zip(planes, bounds)]
    if not lead:
        return out[0]
    return da.stack(out).reshape(lead + tuple(out[0].shape))


def _hist_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """np.percentile (linear) of the sample whose histogram is ``counts``."""
    total = int(counts.sum())
    pos = (total - 1) * q / 100.0
    cum = np.cumsum(counts)
    i0 = int(np.searchsorted(cum, int(np.floor(pos)) + 1))
    i1 = int(np.searchsorted(cum, int(np.ceil(pos)) + 1))
    frac = pos - np.floor(pos)
    return float(values[i0] + (values[i1] - values[i0]) * frac)
