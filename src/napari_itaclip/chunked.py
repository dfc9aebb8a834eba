"""Segmenting images bigger than memory: chunks with an exact halo, run by dask.

Why the result equals in-memory processing
-------------------------------------------
At native resolution (``short_side=None``) ITACLIP's output at a pixel depends on

1. the sliding-window logits there: the average of the crop logits of every window
   that covers the pixel (spec section 5); a window's crop logits depend only on the
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
depends on the whole image; use a global scale instead), ``stride <= crop``, and no
``area_threshold`` (it depends on the class areas of the whole image). Non-uint8
images are scaled to uint8 once, with percentiles of the whole image, before
chunking (the engine would otherwise normalise each chunk with its own percentiles).

Memory
------
Each running chunk holds its region (core plus halo) in the engine. Chunks in one
process run one at a time (they share one model), so per worker process the peak is
about ``model + batch_memory_mb + region_pixels * B`` where ``B`` is the engine's
per-pixel working memory at full resolution (measured: at most about 1.3 kB per pixel with a
few queries, dominated by PAMR's 16-neighbour affinities, plus about
``8 * 4 * n_queries`` bytes for the logits), plus dask's input/output buffers (a few
zarr chunks). It depends on the chunk size, not on the image size. See
``docs/cli.md`` and ``benchmarks/bench_chunked.py`` for measured numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._io import require

__all__ = [
    "AxisChunk",
    "ChunkPlan",
    "ChunkingError",
    "SegmenterSpec",
    "exact_mask",
    "get_segmenter",
    "plan_axis",
    "plan_chunks",
    "reach",
    "segment_chunked",
    "to_uint8_global",
    "window_starts",
]


class ChunkingError(ValueError):
    """A configuration for which chunked processing cannot equal in-memory processing."""


# ---------------------------------------------------------------------------- planning
def window_starts(n: int, crop: int, stride: int) -> list[int]:
    """Window start offsets along an axis of length ``n`` (spec section 5)."""
    c = min(crop, n)
    rows = max(n - c + stride - 1, 0) // stride + 1
    starts = []
    for i in range(rows):
        end = min(i * stride + c, n)
        starts.append(max(end - c, 0))
    return starts


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
    glob = window_starts(n, crop, stride)
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
    if stride > crop:
        raise ChunkingError(
            f"chunked processing needs stride <= crop (got stride {stride}, crop {crop}): "
            "with gaps between windows the result has no exact halo"
        )
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
    if config.short_side is not None:
        raise ChunkingError(
            f"chunked processing works at a fixed scale: short_side must be None, got "
            f"{config.short_side} (the paper presets' resize is for photographs; pass "
            "--short-side none, or rescale the whole image first)"
        )
    if config.area_threshold is not None:
        raise ChunkingError(
            "area_threshold depends on the class areas of the whole image and is not "
            "supported in chunked mode; use --area-threshold none (or relabel afterwards)"
        )
    if config.stride > config.crop:
        raise ChunkingError("chunked processing needs stride <= crop")


def plan_chunks(shape: tuple[int, int], config, chunk: int) -> ChunkPlan:
    """Plan the chunks of a ``shape`` plane for ``config`` with cores of ``chunk`` px."""
    check_config(config)
    h = reach(config)
    rows = plan_axis(shape[0], chunk, config.crop, config.stride, h)
    cols = plan_axis(shape[1], chunk, config.crop, config.stride, h)
    return ChunkPlan(tuple(int(s) for s in shape), tuple(rows), tuple(cols), chunk, h)


# ------------------------------------------------------------------------ segmenters
@dataclass(frozen=True)
class SegmenterSpec:
    """How to build a :class:`~napari_itaclip.Segmenter` (picklable; one per process).

    Workers call :func:`get_segmenter`, which builds and loads the model once per
    process and reuses it for every chunk.
    """

    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    device: str = "auto"
    config: Any = None
    half: bool = False
    batch_memory_mb: float | None = None  # None: the engine's default for the device


_SEGMENTERS: dict[SegmenterSpec, Any] = {}
_LOCKS: dict[int, threading.Lock] = {}
_GUARD = threading.Lock()


def get_segmenter(spec: SegmenterSpec | Any):
    """The process-wide :class:`Segmenter` for ``spec`` (built and loaded once).

    A ``Segmenter`` instance is returned as is.
    """
    if not isinstance(spec, SegmenterSpec):
        return spec
    with _GUARD:
        seg = _SEGMENTERS.get(spec)
        if seg is None:
            from .engine.segmenter import Segmenter

            kwargs = {"half": True} if spec.half else {}
            seg = Segmenter(model=spec.model, pretrained=spec.pretrained, device=spec.device,
                            config=spec.config, batch_memory_mb=spec.batch_memory_mb, **kwargs)
            seg.load()
            _SEGMENTERS[spec] = seg
        return seg


def _lock_for(seg) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault(id(seg), threading.Lock())


# ------------------------------------------------------------------------- execution
def to_uint8_global(data, percentiles: tuple[float, float] = (0.5, 99.5)):
    """Scale a (dask) array to uint8 with percentiles of the whole array.

    uint8 data are returned unchanged. The percentiles are exact for integer types of
    up to 16 bits (a histogram) and dask's approximation otherwise.
    """
    if data.dtype == np.uint8:
        return data
    da = require("dask.array")
    arr = da.asarray(data)
    if arr.dtype == bool:
        return (arr.astype(np.uint8) * 255)
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        offset = int(np.iinfo(arr.dtype).min) if arr.dtype.kind == "i" else 0
        flat = arr.ravel().astype(np.int64) - offset
        counts = np.asarray(da.bincount(flat, minlength=1).compute())
        values = np.arange(len(counts)) + offset
        lo, hi = (_hist_percentile(values, counts, p) for p in percentiles)
    else:
        finite = arr[da.isfinite(arr)] if arr.dtype.kind == "f" else arr
        lo, hi = (float(v) for v in da.percentile(finite.ravel(), list(percentiles)).compute())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0

    def convert(block):
        out = (block.astype(np.float64) - lo) * scale
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    return arr.map_blocks(convert, dtype=np.uint8)


def _hist_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """np.percentile (linear) of the sample whose histogram is ``counts``."""
    total = int(counts.sum())
    pos = (total - 1) * q / 100.0
    cum = np.cumsum(counts)
    i0 = int(np.searchsorted(cum, int(np.floor(pos)) + 1))
    i1 = int(np.searchsorted(cum, int(np.ceil(pos)) + 1))
    frac = pos - np.floor(pos)
    return float(values[i0] + (values[i1] - values[i0]) * frac)


def _run_chunk(spec, vocab, config, region: np.ndarray, r: AxisChunk, c: AxisChunk,
               labels_out, sim_out, index: tuple) -> int:
    """Segment one region and write its core; returns the number of core pixels."""
    seg = get_segmenter(spec)
    region = np.asarray(region)
    with _lock_for(seg):
        res = seg.segment(region, vocab, config=config)
    ys = slice(r.core_start - r.start, r.core_stop - r.start)
    xs = slice(c.core_start - c.start, c.core_stop - c.start)
    labels_out[(*index, slice(r.core_start, r.core_stop), slice(c.core_start, c.core_stop))] = (
        np.asarray(res.labels[ys, xs]).astype(labels_out.dtype)
    )
    sim_out[(*index, slice(None), slice(r.core_start, r.core_stop),
             slice(c.core_start, c.core_stop))] = np.asarray(res.similarity[:, ys, xs],
                                                             dtype=np.float32)
    return (r.core_stop - r.core_start) * (c.core_stop - c.core_start)


def segment_chunked(
    source,
    vocab,
    labels_out,
    sim_out,
    *,
    segmenter: SegmenterSpec | Any,
    config,
    chunk: int = 1024,
    rgb: bool | None = None,
    scheduler: str | Any = "threads",
    num_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChunkPlan:
    """Segment a (possibly bigger-than-memory) array chunk by chunk.

    Parameters
    ----------
    source : array-like
        numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)`` (set ``rgb``);
        leading axes are independent planes.
    vocab : Vocabulary
        The classes (already coerced; auxiliary texts included).
    labels_out : array-like
        Writable array ``(..., Y, X)`` of an integer type (e.g. a zarr array).
    sim_out : array-like
        Writable float32 array ``(..., C, Y, X)``.
    segmenter : SegmenterSpec or Segmenter
        A spec is built once per worker process (use it with ``"processes"`` or a
        distributed cluster); an instance is used as is (threads).
    config : ITACLIPConfig
        Must satisfy :func:`check_config`.
    chunk : int
        Core (output chunk) side in pixels.
    rgb : bool, optional
        Whether the last axis holds colour; guessed from a last axis of 3 or 4.
    scheduler : str or distributed.Client
        ``"threads"`` (default), ``"processes"``, ``"sync"``, a ``dask.distributed``
        scheduler address (``"tcp://..."``) or a ``Client``.
    num_workers : int, optional
        Worker count for the local schedulers.
    progress : callable, optional
        ``progress(done, total)`` after each chunk.

    Returns
    -------
    ChunkPlan
        The plan of the (last) plane.
    """
    dask = require("dask")
    da = require("dask.array")
    from dask import delayed

    check_config(config)
    data = source if hasattr(source, "dask") else da.from_array(np.asarray(source))
    if rgb is None:
        rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
    data = to_uint8_global(data)
    k = 3 if rgb else 2
    lead = tuple(data.shape[: data.ndim - k])
    shape = tuple(int(s) for s in data.shape[data.ndim - k: data.ndim - k + 2])
    plan = plan_chunks(shape, config, chunk)

    tasks = []
    for index in np.ndindex(*lead):
        plane = data[index]
        for r, c in plan:
            region = plane[r.start: r.stop, c.start: c.stop]
            tasks.append(delayed(_run_chunk, pure=False)(
                segmenter, vocab, config, region, r, c, labels_out, sim_out, index,
                dask_key_name=f"itaclip-chunk-{'-'.join(map(str, index))}-{r.core_start}-"
                              f"{c.core_start}"))
    total = len(tasks)
    client = _client_for(scheduler)
    if client is not None:
        distributed = require("distributed")
        futures = client.compute(tasks)
        for done, fut in enumerate(distributed.as_completed(futures), start=1):
            fut.result()
            if progress is not None:
                progress(done, total)
        return plan

    kwargs = {"scheduler": scheduler}
    if num_workers:
        kwargs["num_workers"] = num_workers
    if progress is None:
        dask.compute(*tasks, **kwargs)
    else:
        with _ChunkCallback(progress, total):
            dask.compute(*tasks, **kwargs)
    return plan


def _client_for(scheduler):
    if isinstance(scheduler, str):
        if "://" in scheduler or (":" in scheduler and scheduler.split(":")[-1].isdigit()):
            distributed = require("distributed")
            return distributed.Client(scheduler, set_as_default=False)
        if scheduler not in ("threads", "processes", "sync", "synchronous", "single-threaded"):
            raise ValueError(
                f"unknown scheduler {scheduler!r}: use threads, processes, sync or the "
                "address of a dask.distributed scheduler (tcp://host:port)"
            )
        return None
    return scheduler  # a distributed.Client


def _chunk_callback_base():
    from dask.callbacks import Callback

    return Callback


class _ChunkCallback:
    """Counts finished chunk tasks for a progress callable (local schedulers)."""

    def __init__(self, progress: Callable[[int, int], None], total: int):
        base = _chunk_callback_base()
        outer = self

        class _CB(base):
            def _posttask(self, key, result, dsk, state, worker_id):
                name = key[0] if isinstance(key, tuple) else key
                if str(name).startswith("itaclip-chunk"):
                    outer.done += 1
                    progress(outer.done, total)

        self.done = 0
        self._cb = _CB()

    def __enter__(self):
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cb.__exit__(*exc)


def labels_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned integer type holding ``n_classes`` labels."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


def open_outputs(labels_path, sim_path, lead: Sequence[int], shape: tuple[int, int],
                 n_classes: int, chunk: int, *, overwrite: bool = True):
    """Create the zarr arrays a chunked run writes (labels and similarity)."""
    zarr = require("zarr")
    lead = tuple(int(n) for n in lead)
    cy, cx = min(chunk, shape[0]), min(chunk, shape[1])
    labels = zarr.create_array(
        store=str(labels_path), shape=lead + tuple(shape), chunks=(1,) * len(lead) + (cy, cx),
        dtype=labels_dtype(n_classes), fill_value=0, overwrite=overwrite)
    sim = zarr.create_array(
        store=str(sim_path), shape=lead + (n_classes,) + tuple(shape),
        chunks=(1,) * len(lead) + (1, cy, cx), dtype=np.float32, fill_value=0.0,
        overwrite=overwrite)
    return labels, sim
