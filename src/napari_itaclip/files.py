"""Image files in, output files out (the command line and evaluation; no napari).

Inputs: TIFF (single page, multi-page, OME-TIFF), PNG, JPEG (and whatever else
``imageio`` reads) and zarr arrays/groups. Every input is presented as a stack of
*planes* (:class:`~napari_itaclip.planes.ImageLayout`): 2-D images, grey ``(Y, X)`` or
colour ``(Y, X, 3|4)``, that are segmented one by one. Output naming and the one
atomic writer are :mod:`napari_itaclip.outputs` (re-exported here); optional
dependencies (tifffile, zarr, dask) come through :func:`napari_itaclip.optional.require`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .optional import require
from .outputs import (
    IMAGE_SUFFIXES,
    OutputPaths,
    output_clashes,
    output_paths,
    output_stem,
    write_atomic,
    write_json_atomic,
    write_tiff_atomic,
)
from .planes import ImageLayout

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSource",
    "OutputPaths",
    "collect_inputs",
    "is_zarr",
    "open_image",
    "output_clashes",
    "output_paths",
    "output_stem",
    "read_label_image",
    "require",
    "write_atomic",
    "write_json_atomic",
    "write_tiff_atomic",
]


def _is_image_path(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Expand the command line's INPUT arguments into a sorted, de-duplicated list.

    A folder that is not a zarr store contributes the image files directly inside it
    (by suffix, see :data:`IMAGE_SUFFIXES`); anything else is taken as given (a
    missing file is kept, so that it is reported as a failure later).
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not is_zarr(path):
            out.extend(sorted(p for p in path.iterdir() if _is_image_path(p)))
        else:
            out.append(path)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr store (a ``.zarr`` folder, or one with zarr metadata)."""
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
    )


@dataclass
class ImageSource:
    """An opened input: an array (numpy or dask) and how its axes map to planes.

    Attributes
    ----------
    path : Path
        Where it came from.
    data : array-like
        ``(..., Y, X)`` or ``(..., Y, X, S)`` with ``S`` = 3 or 4 colour samples.
    rgb : bool
        Whether the last axis holds colour samples.
    axes : str
        One letter per axis of ``data`` (``Y``, ``X``, ``S`` for samples, others
        from the file's metadata or ``Q`` when unknown).
    lazy : bool
        Whether ``data`` is a dask array (not loaded into memory).
    """

    path: Path
    data: Any
    rgb: bool
    axes: str
    lazy: bool = False
    meta: dict = field(default_factory=dict)
    _store: Any = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Release the open file behind a lazy TIFF (``data`` is unusable after)."""
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def layout(self) -> ImageLayout:
        """How the data's axes map onto planes."""
        return ImageLayout(tuple(self.data.shape), rgb=self.rgb)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """Shape of the leading (non-image) axes; ``()`` for a single 2-D image."""
        return self.layout.leading_shape

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(Y, X)`` of each plane."""
        return self.layout.plane_shape

    def planes(self):
        """Yield ``(index, plane)`` for every 2-D plane (numpy or dask, not loaded)."""
        layout = self.layout
        for idx in layout.all_slices():
            yield idx, self.data[layout.plane_key(idx)]


def _squeeze_axes(data, axes: str):
    """Drop singleton axes other than Y/X; move colour samples last."""
    axes = axes.upper()
    if len(axes) != data.ndim:
        axes = "Q" * (data.ndim - 2) + "YX"
    # colour: an S axis, or a C axis of 3/4 in an RGB-ish file
    keep = [i for i, a in enumerate(axes) if data.shape[i] != 1 or a in "YX"]
    index = tuple(slice(None) if i in keep else 0 for i in range(data.ndim))
    data = data[index]
    axes = "".join(axes[i] for i in keep)
    rgb = False
    for letter in ("S", "C"):
        if letter in axes and data.shape[axes.index(letter)] in (3, 4) and "S" not in axes.replace(
            letter, "", 1
        ):
            pos = axes.index(letter)
            order = [i for i in range(data.ndim) if i != pos] + [pos]
            data = data.transpose(order)
            axes = "".join(axes[i] for i in order[:-1]) + "S"
            rgb = True
            break
    # the image axes Y, X must be the last two (before S)
    body = axes[:-1] if rgb else axes
    if "Y" in body and "X" in body:
        others = [i for i, a in enumerate(body) if a not in "YX"]
        order = others + [body.index("Y"), body.index("X")] + ([len(body)] if rgb else [])
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
    return data, axes, rgb


def open_image(path: str | Path, *, lazy: bool = False) -> ImageSource:
    """Open an image file or zarr store as an :class:`ImageSource`.

    Parameters
    ----------
    path : str or Path
        TIFF/OME-TIFF (all pages: series 0), PNG, JPEG, BMP, or a zarr array or group
        (a group's array ``"0"``, the full resolution of OME-Zarr, is used).
    lazy : bool
        Return a dask array instead of loading the pixels (zarr always is lazy;
        TIFF through tifffile's zarr interface).

    Raises
    ------
    ValueError
        An unreadable, empty or oddly shaped file (the message says why).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    name = path.name.lower()
    try:
        if is_zarr(path):
            return _open_zarr(path)
        if name.endswith((".tif", ".tiff")):
            return _open_tiff(path, lazy=lazy)
        return _open_plain(path)
    except (FileNotFoundError, ImportError):
        raise
    except Exception as exc:
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def _finish(path: Path, data, axes: str, lazy: bool, meta=None) -> ImageSource:
    if data.ndim < 2 or min(data.shape) == 0:
        raise ValueError(f"{path}: not an image (shape {tuple(data.shape)})")
    data, axes, rgb = _squeeze_axes(data, axes)
    if data.ndim < 2 or (rgb and data.ndim < 3):
        raise ValueError(f"{path}: not an image (shape {tuple(data.shape)})")
    if not lazy:
        data = np.asarray(data)
        if data.dtype.kind not in "uifb":
            raise ValueError(f"{path}: unsupported pixel type {data.dtype}")
    return ImageSource(path, data, rgb, axes, lazy=lazy, meta=meta or {})


def _open_tiff(path: Path, *, lazy: bool) -> ImageSource:
    tifffile = require("tifffile")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        meta = {"ome": bool(tif.is_ome)}
        if not lazy:
            data = series.asarray()
            return _finish(path, data, axes, False, meta)
    zarr = require("zarr")
    da = require("dask.array")
    store = tifffile.imread(path, aszarr=True)
    try:
        arr = zarr.open(store, mode="r")
        if not hasattr(arr, "shape"):  # a multiscale group: level 0
            arr = arr["0"]
        source = _finish(path, da.from_zarr(arr), axes, True, meta)
    except BaseException:
        store.close()
        raise
    source._store = store  # closed by source.close()
    return source


def _open_zarr(path: Path) -> ImageSource:
    zarr = require("zarr")
    da = require("dask.array")
    node = zarr.open(str(path), mode="r")
    axes = None
    if not hasattr(node, "shape"):
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if ms and ms[0].get("axes"):
            axes = "".join(
                (a["name"] if isinstance(a, dict) else a)[0].upper() for a in ms[0]["axes"]
            )
        key = ms[0]["datasets"][0]["path"] if ms else "0"
        node = node[key]
    data = da.from_zarr(node)
    if axes is None:
        rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
        axes = "Q" * (data.ndim - (3 if rgb else 2)) + ("YXS" if rgb else "YX")
    return _finish(path, data, axes, True)


def _open_plain(path: Path) -> ImageSource:
    try:
        import imageio.v3 as iio

        data = iio.imread(path)
    except ImportError:  # pragma: no cover
        from skimage import io as skio

        data = skio.imread(path)
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        axes = "YXS"
    elif data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        data, axes = data[..., 0], "YX"
    else:
        axes = "Q" * (data.ndim - 2) + "YX"
    return _finish(path, data, axes, False)


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a 2-D label map (PNG, TIFF, ...) exactly as stored (palette indices kept)."""
    path = Path(path)
    if path.name.lower().endswith((".tif", ".tiff")):
        return np.asarray(require("tifffile").imread(path))
    from PIL import Image

    with Image.open(path) as im:
        # palette PNGs (VOC) hold the class index; convert() would map it to colours
        return np.asarray(im)
