"""Chunk planning for exact chunked processing: pure arithmetic, no dask, no model.

Why the result equals in-memory processing
-------------------------------------------
At native resolution (``short_side=None``) ITACLIP's output at a pixel depends on

1. the sliding-window logits there: the average of the crop logits of every window
   that covers the pixel (docs/engine.md, section "Sliding window"); a window's crop logits depend only on the
   pixels of that window;
2. PAMR (section 6): each of the ``pamr_steps`` iterations mixes a pixel with its
   neighbours at offsets up to ``max(pamr_dilations)`` (the affinities too), so the
   refined logits depend on the logits and the image within
   ``pamr_steps * max(pamr_dilations)`` pixels; replicate padding at a chunk edge
   that is not an image edge corrupts the same distance inward;
3. the per-pixel softmax / threshold / argmax, then the ``close_size`` closing, which
   reaches ``2 * (close_size // 2)`` pixels (plus one for even sizes).

The window grid of the whole image along an axis of length ``n`` (crop ``c``,
stride ``s``) starts windows at every multiple of ``s`` below ``n - c`` plus one
window ending at ``n``. A chunk *region* ``[P, Q)`` segmented on its own has the same
windows as the whole image inside it when ``P`` is a multiple of ``s`` (or 0) and
``Q - c`` is a multiple of ``s`` (or ``Q = n``). A pixel's logits are then exact when
no window of the whole image that covers it sticks out of the region. The planner
below picks, for each *core* (the part of the output a chunk writes), the smallest
aligned region such that every pixel within ``reach = pamr_steps * max(dilations) +
closing reach`` of the core has exact logits and no non-image edge of the region is
closer than ``reach`` to the core. Every plan is verified by enumerating the windows
(:func:`exact_mask`), so a plan that could not be exact raises instead of silently
differing.

Conditions (all checked, with a clear error): ``short_side is None`` (a resize
depends on the whole image; use a global scale instead), a sliding window (``crop``
not ``None``) with ``stride <= crop``, and no ``area_threshold`` (it depends on the
class areas of the whole image). Non-uint8 images are scaled to uint8 before chunking,
each plane with its own percentiles, exactly as the engine converts a whole plane in
memory (:func:`.run.to_uint8_global`, the engine's
:func:`~napari_itaclip.engine.images.prepare_image_uint8`; the engine would otherwise
normalise each chunk with the chunk's percentiles), so chunked and in-memory results
are the same for every dtype. ClearCLIP's ``pad_to_patch`` pads each window crop on
its own, so it chunks exactly too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.sliding import coverage_problem

__all__ = [
    "AxisChunk",
    "ChunkPlan",
    "ChunkingError",
    "check_config",
    "exact_mask",
    "plan_axis",
    "plan_chunks",
    "reach",
    "window_starts",
    "windows_meeting",
]


class ChunkingError(ValueError):
    """A configuration for which chunked processing cannot equal in-memory processing."""


def window_starts(n: int, crop: int, stride: int) -> list[int]:
    """Window start offsets along an axis of length ``n`` (docs/engine.md, section "Sliding window")."""
    c = min(crop, n)
    rows = max(n - c + stride - 1, 0) // stride + 1
    starts = []
    for i in range(rows):
        end = min(i * stride + c, n)
        starts.append(max(end - c, 0))
    return starts


def windows_meeting(n: int, crop: int, stride: int, lo: int, hi: int) -> list[int]:
    """The starts of :func:`window_starts` whose windows meet ``[lo, hi)``, computed
    without listing the others (a whole-slide axis has thousands of windows).
    """
    c = min(crop, n)
    rows = max(n - c + stride - 1, 0) // stride + 1
    first = max(0, (lo - c) // stride)  # window i starts at min(i * stride, n - c)
    last = min(rows - 1, hi // stride + 1)
    starts = [min(i * stride, n - c) for i in range(first, last + 1)]
    return sorted({g for g in starts if g < hi and g + c > lo})


def reach(config) -> int:
    """Pixels beyond its own window grid that a pixel's output depends on."""
    pamr = int(config.pamr_steps) * max(config.pamr_dilations) if config.pamr_steps else 0
    k = int(config.close_size)
    close = 2 * (k // 2) + (1 if k and k % 2 == 0 else 0)
    return pamr + close


def exact_mask(start: int, stop: int, n: int, crop: int, stride: int) -> np.ndarray:
    """Which pixels of the region ``[start, stop)`` get the whole image's logits.

    Returns an all-False mask when the region's own window grid differs from the
    whole image's windows inside it.
    """
    c = min(crop, n)
    glob = windows_meeting(n, crop, stride, start, stop)  # the others change nothing here
    inside = {g for g in glob if g >= start and g + c <= stop}
    local = {start + g for g in window_starts(stop - start, crop, stride)}
    mask = np.zeros(stop - start, dtype=bool)
    if local != inside or min(crop, stop - start) != c:
        return mask
    mask[:] = True
    for g in glob:
        if g not in inside:
            lo, hi = max(g, start), min(g + c, stop)
            if lo < hi:
                mask[lo - start: hi - start] = False
    return mask


@dataclass(frozen=True)
class AxisChunk:
    """One chunk along an axis: writes ``[core_start, core_stop)``, reads ``[start, stop)``."""

    core_start: int
    core_stop: int
    start: int
    stop: int


def plan_axis(n: int, chunk: int, crop: int, stride: int, halo: int) -> list[AxisChunk]:
    """Cut an axis of length ``n`` into cores of ``chunk`` pixels with exact regions.

    Parameters
    ----------
    n : int
        Axis length.
    chunk : int
        Core size (the output chunk size).
    crop, stride : int
        Sliding-window parameters.
    halo : int
        :func:`reach` of the configuration.

    Raises
    ------
    ChunkingError
        If no exact region exists (``stride > crop``).
    """
    problem = coverage_problem(crop, stride)
    if problem:
        raise ChunkingError(problem)
    if chunk < 1:
        raise ChunkingError(f"chunk size must be positive, got {chunk}")
    out = []
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        if n <= crop or (a == 0 and b == n):
            out.append(AxisChunk(a, b, 0, n))
            continue
        # start: a multiple of the stride, at least crop - stride + halo before a
        lo = a - halo - crop + stride
        p = 0 if lo <= 0 else (lo // stride) * stride
        p = min(p, ((n - crop) // stride) * stride)
        # stop: stop - crop a multiple of the stride, stop - crop + stride >= b + halo
        k = max(-(-(b + halo) // stride) - 1, 0)
        q = crop + k * stride
        q = max(q, p + crop)
        if q >= n or n - crop < b + halo:
            q = n
        item = AxisChunk(a, b, p, q)
        _verify(item, n, crop, stride, halo)
        out.append(item)
    return out


def _verify(item: AxisChunk, n: int, crop: int, stride: int, halo: int) -> None:
    mask = exact_mask(item.start, item.stop, n, crop, stride)
    need_lo, need_hi = max(item.core_start - halo, 0), min(item.core_stop + halo, n)
    ok = (
        item.start <= need_lo and need_hi <= item.stop
        and (item.start == 0 or item.core_start - halo >= item.start)
        and (item.stop == n or item.core_stop + halo <= item.stop)
        and mask[need_lo - item.start: need_hi - item.start].all()
    )
    if not ok:  # pragma: no cover - the planner's construction guarantees it
        raise ChunkingError(f"internal error: chunk {item} of an axis of {n} is not exact")


@dataclass(frozen=True)
class ChunkPlan:
    """All chunks of a 2-D plane: the product of the row and column plans."""

    shape: tuple[int, int]
    rows: tuple[AxisChunk, ...]
    cols: tuple[AxisChunk, ...]
    chunk: int
    halo: int

    def __iter__(self):
        for r in self.rows:
            for c in self.cols:
                yield r, c

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def max_region(self) -> tuple[int, int]:
        """Largest region (rows, cols) one chunk reads."""
        return (max(r.stop - r.start for r in self.rows),
                max(c.stop - c.start for c in self.cols))


def check_config(config) -> None:
    """Raise :class:`ChunkingError` if ``config`` cannot be processed in exact chunks."""
    if config.short_side is not None and getattr(config, "object_size", None) is None:
        raise ChunkingError(
            f"chunked processing works at a fixed scale: short_side must be None, got "
            f"{config.short_side} (the paper presets' resize is for photographs; pass "
            "--object-size for a working scale chosen from the objects, or "
            "--short-side none, or rescale the whole image first)"
        )
    if config.area_threshold is not None:
        raise ChunkingError(
            "area_threshold depends on the class areas of the whole image and is not "
            "supported in chunked mode; use --area-threshold none (or relabel afterwards)"
        )
    if config.crop is None:
        raise ChunkingError(
            "crop=None (one window over the whole image) depends on the whole image and "
            "is not supported in chunked mode; set a crop (e.g. --set crop=224)"
        )
    problem = coverage_problem(config.crop, config.stride)
    if problem:  # ITACLIPConfig refuses it too; duck-typed configs are checked here
        raise ChunkingError(problem)


def plan_chunks(shape: tuple[int, int], config, chunk: int) -> ChunkPlan:
    """Plan the chunks of a ``shape`` plane for ``config`` with cores of ``chunk`` px."""
    check_config(config)
    h = reach(config)
    rows = plan_axis(shape[0], chunk, config.crop, config.stride, h)
    cols = plan_axis(shape[1], chunk, config.crop, config.stride, h)
    return ChunkPlan(tuple(int(s) for s in shape), tuple(rows), tuple(cols), chunk, h)
