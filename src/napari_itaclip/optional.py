"""Optional dependencies, imported on first use with an install hint (no heavy imports).

Kept apart from the image I/O (:mod:`napari_itaclip.files`) so that code needing one
optional module (the LLM cache, chunked mode) does not import the TIFF/zarr readers.
"""

from __future__ import annotations

import importlib

__all__ = ["require"]

_EXTRA_HINT = {
    "tifffile": "io",
    "zarr": "io",
    "dask": "io",
    "dask.array": "io",
    "distributed": "distributed",
    "matplotlib": "testing",
}


def require(module: str):
    """Import an optional dependency or raise an ``ImportError`` with an install hint.

    Parameters
    ----------
    module : str
        Module name, e.g. ``"tifffile"`` or ``"dask.array"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        extra = _EXTRA_HINT.get(module, "io")
        raise ImportError(
            f"{module} is needed for this; install it with: pip install napari-itaclip[{extra}]"
        ) from exc
