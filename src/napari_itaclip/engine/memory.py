"""Peak-memory estimate of one segmentation, and the check that refuses it up front.

One formula serves in-memory segmentation, chunked mode's bound (per worker, with the
region a chunk reads) and the documentation (``docs/cli.md``, "Memory bound")::

    peak ≈ model + batch_memory_mb + pixels x (1.3 kB + 32 B x queries)

``pixels`` is the largest image the engine holds at full working resolution: the
plane itself, or the resized plane when ``short_side`` enlarges it (the logits and the
normalised image are upsampled back to the plane's size for PAMR, so a plane is never
cheaper than its own size). 1.3 kB per pixel is the engine's working memory, dominated
by PAMR's neighbour affinities; 32 B per query and pixel are the logits and their
copies. :func:`check_memory` compares it with :func:`memory_limit` before anything is
allocated and raises :class:`~napari_itaclip.errors.InsufficientMemoryError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InsufficientMemoryError

__all__ = ["MEMORY_LIMIT_ENV", "PIXEL_BYTES", "QUERY_PIXEL_BYTES", "available_memory",
           "check_memory", "estimate_peak_bytes", "memory_limit", "working_pixels"]

#: Working memory per pixel at full resolution (measured at most about 1.3 kB).
PIXEL_BYTES = 1300
#: Memory per pixel and query (logits, their refined and per-class copies).
QUERY_PIXEL_BYTES = 32
#: Environment variable overriding the machine's available memory, in MB.
MEMORY_LIMIT_ENV = "NAPARI_ITACLIP_MEMORY_LIMIT_MB"
_MB = 2**20


def working_pixels(height: int, width: int, short_side: int | None) -> int:
    """Pixels the engine holds at full resolution for a ``height x width`` plane."""
    pixels = int(height) * int(width)
    if short_side is not None:
        from .resize import mmseg_resize_shape

        rh, rw = mmseg_resize_shape(int(height), int(width), short_side)
        pixels = max(pixels, rh * rw)
    return pixels


def estimate_peak_bytes(pixels: int, n_queries: int, *, batch_memory_mb: float,
                        model_bytes: int = 0) -> int:
    """The documented peak: ``model + batch_memory_mb + pixels x (1.3 kB + 32 B x queries)``."""
    per_pixel = PIXEL_BYTES + QUERY_PIXEL_BYTES * int(n_queries)
    return int(model_bytes + batch_memory_mb * _MB + int(pixels) * per_pixel)


def available_memory() -> int | None:
    """Bytes of memory the machine can still give, or ``None`` when it cannot be read.

    Linux: ``MemAvailable`` of ``/proc/meminfo``; elsewhere ``psutil`` when installed;
    else Windows' ``GlobalMemoryStatusEx`` or, on macOS and other Unixes, the physical
    memory (``os.sysconf``). ``None`` (no check) only when none of these answers.
    """
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or unsupported here
        pass
    if os.name == "nt":  # pragma: no cover - Windows
        return _windows_available()
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _windows_available() -> int | None:  # pragma: no cover - Windows
    """``ullAvailPhys`` of ``GlobalMemoryStatusEx``."""
    import ctypes

    class Status(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong),
                    ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong),
                    ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = Status()
    status.dwLength = ctypes.sizeof(Status)
    try:
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
    except (AttributeError, OSError):
        pass
    return None


def memory_limit() -> tuple[int | None, str]:
    """``(bytes, where the figure comes from)``: ``$NAPARI_ITACLIP_MEMORY_LIMIT_MB`` when
    set (``0`` or ``none``: no check), else :func:`available_memory` (``None``: unknown,
    no check).
    """
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        if text.lower() in ("0", "none", "off"):
            return None, f"{MEMORY_LIMIT_ENV}={text}"
        try:
            return int(float(text) * _MB), f"{MEMORY_LIMIT_ENV}={text}"
        except ValueError:
            raise ValueError(f"{MEMORY_LIMIT_ENV} must be a number of MB or 'none', "
                             f"got {text!r}") from None
    return available_memory(), "available memory"


def check_memory(height: int, width: int, n_queries: int, *, short_side: int | None,
                 batch_memory_mb: float, model_bytes: int = 0) -> int:
    """Refuse a plane whose estimated peak exceeds :func:`memory_limit`; returns the estimate.

    Raises
    ------
    InsufficientMemoryError
        Saying how much is needed, how much there is, and the way out (chunked mode).
    """
    need = estimate_peak_bytes(working_pixels(height, width, short_side), n_queries,
                               batch_memory_mb=batch_memory_mb, model_bytes=model_bytes)
    limit, origin = memory_limit()
    if limit is not None and need > limit:
        resized = f", resized to short side {short_side}" if short_side is not None else ""
        raise InsufficientMemoryError(
            f"segmenting a {height}x{width} image{resized} in memory needs about "
            f"{_gb(need)} (model + batch_memory_mb + pixels x (1.3 kB + 32 B x "
            f"{n_queries} queries)), more than the {_gb(limit)} of {origin}; process it in "
            "chunks: napari-itaclip segment --chunk-size 1024 (and --short-side none), or "
            "napari_itaclip.chunked.segment_chunked from Python; or set "
            f"{MEMORY_LIMIT_ENV} to allow more", need=need, limit=limit)
    return need


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / _MB:.0f} MB"
