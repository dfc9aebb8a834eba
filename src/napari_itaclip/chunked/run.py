"""Running a chunk plan with dask: uint8 conversion, one task per chunk, schedulers.

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

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.images import PERCENTILES
from ..identity import ModelIdentity
from ..optional import require
from ..planes import ImageLayout
from .plan import AxisChunk, ChunkPlan, check_config, plan_chunks

__all__ = [
    "SegmenterSpec",
    "get_segmenter",
    "labels_dtype",
    "open_outputs",
    "open_scheduler",
    "segment_chunked",
    "segment_region",
    "staged_outputs",
    "to_uint8_global",
]


@dataclass(frozen=True)
class SegmenterSpec(ModelIdentity):
    """How to get a :class:`~napari_itaclip.Segmenter` in a worker (picklable).

    The model identity (:class:`~napari_itaclip.identity.ModelIdentity`) plus the run's
    ``config``. Workers call :func:`get_segmenter`, which takes it from the
    process-wide :mod:`~napari_itaclip.engine.registry` (built and loaded once per
    process) and reuses it for every chunk.
    """

    config: Any = field(default=None, compare=False)

    @property
    def key(self) -> ModelIdentity:
        """The registry key of this spec's model."""
        return self.identity


def get_segmenter(spec: SegmenterSpec | Any):
    """The process-wide, loaded :class:`Segmenter` for ``spec`` (from the registry).

    A ``Segmenter`` instance is returned as is.
    """
    if not isinstance(spec, SegmenterSpec):
        return spec
    from ..engine import registry

    return registry.get_segmenter(spec.key, load=True)


# ------------------------------------------------------------------------- execution
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


def segment_region(spec, vocab, config, region: np.ndarray, r: AxisChunk, c: AxisChunk
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Segment one chunk region; returns the labels and similarity of its core.

    A plain function of picklable arguments (a :class:`SegmenterSpec`, the vocabulary,
    the configuration, a numpy region and the two :class:`AxisChunk`): what a process
    pool or a ``dask.distributed`` worker runs. The spec's model comes from the worker
    process's :mod:`~napari_itaclip.engine.registry` (loaded once per process).
    """
    from ..engine.registry import run_lock

    seg = get_segmenter(spec)
    region = np.asarray(region)
    with run_lock(seg):
        res = seg.segment(region, vocab, config=config)
    ys = slice(r.core_start - r.start, r.core_stop - r.start)
    xs = slice(c.core_start - c.start, c.core_stop - c.start)
    return (np.asarray(res.labels[ys, xs]),
            np.asarray(res.similarity[:, ys, xs], dtype=np.float32))


def _write_core(labels_out, sim_out, index: tuple, r: AxisChunk, c: AxisChunk,
                labels: np.ndarray, sim: np.ndarray) -> None:
    ys, xs = slice(r.core_start, r.core_stop), slice(c.core_start, c.core_stop)
    labels_out[(*index, ys, xs)] = labels.astype(labels_out.dtype)
    sim_out[(*index, slice(None), ys, xs)] = sim


def _run_on_executor(executor, jobs, segmenter, vocab, config, labels_out, sim_out, *,
                     max_pending: int, progress, total: int) -> None:
    """Run the chunks on a ``concurrent.futures``-style executor; write their cores.

    Nothing dask-made travels: this process reads each region into a numpy array, the
    worker (thread, process or cluster worker) runs :func:`segment_region` on it and
    this process writes the returned core, so nothing is written after a failure (the
    first failing chunk stops the run; the chunks not yet started are cancelled). At
    most ``max_pending`` regions are in flight, so this process's memory stays bounded.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    # the threaded scheduler as a callable, not by name: dask before 2025.4 warns about a
    # named single-machine scheduler while a distributed client is active
    read_region = require("dask.threaded").get
    pending: dict[Any, tuple] = {}
    done = 0

    def collect(futures):
        nonlocal done
        for fut in futures:
            index, r, c = pending.pop(fut)
            _write_core(labels_out, sim_out, index, r, c, *fut.result())
            done += 1
            if progress is not None:
                progress(done, total)

    try:
        for index, r, c, region in jobs:
            while len(pending) >= max_pending:
                collect(wait(list(pending), return_when=FIRST_COMPLETED).done)
            arr = np.asarray(region.compute(scheduler=read_region))
            pending[executor.submit(segment_region, segmenter, vocab, config, arr, r, c)] = (
                index, r, c)
        while pending:
            collect(wait(list(pending), return_when=FIRST_COMPLETED).done)
    finally:
        for fut in pending:
            fut.cancel()


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
    scheduler : str, distributed.Client or concurrent.futures.Executor
        ``"threads"`` (default), ``"processes"``, ``"sync"``, a ``dask.distributed``
        scheduler address (``"tcp://..."``; a client is opened and closed for this
        call), a ``Client``, or a process pool (see :func:`open_scheduler`, which keeps
        one client or pool for many calls). With a pool or a cluster, the tasks
        hold no dask collections: this process reads each region (the halo included)
        into a numpy array and sends it with :func:`segment_region`, a plain function
        that re-creates the model from ``segmenter`` (a :class:`SegmenterSpec`) in the
        worker, and writes the core it gets back; at most twice the worker count of
        regions are in flight.
    num_workers : int, optional
        Worker count for the local schedulers and ``"processes"``.
    progress : callable, optional
        ``progress(done, total)`` after each chunk.

    Returns
    -------
    ChunkPlan
        The plan of the (last) plane.
    """
    da = require("dask.array")

    check_config(config)
    data = source if hasattr(source, "dask") else da.from_array(np.asarray(source))
    if rgb is None:
        rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
    data = to_uint8_global(data, rgb=rgb)
    layout = ImageLayout(tuple(data.shape), rgb=rgb)
    plan = plan_chunks(layout.plane_shape, config, chunk)

    jobs = [(index, r, c, data[layout.plane_key(index)][r.start: r.stop, c.start: c.stop])
            for index in layout.all_slices() for r, c in plan]
    with _executor_for(scheduler, num_workers) as (executor, workers):
        _run_on_executor(executor, jobs, segmenter, vocab, config, labels_out, sim_out,
                         max_pending=2 * workers, progress=progress, total=len(jobs))
    return plan


@contextmanager
def _executor_for(scheduler, num_workers: int | None):
    """``(executor, worker count)`` for a scheduler name, a pool, a client or an address.

    ``"threads"`` is a thread pool (the threads share one model: a Segmenter instance
    runs one image at a time), ``"sync"`` runs each chunk at once in this thread. An
    executor or client made here is closed on exit.
    """
    import os

    if _is_executor(scheduler):
        yield scheduler, num_workers or os.cpu_count() or 2
        return
    if scheduler == "processes":
        with open_scheduler("processes", num_workers) as pool:
            yield pool, num_workers or os.cpu_count() or 2
        return
    if isinstance(scheduler, str) and not _is_address(scheduler):
        _client_for(scheduler)  # raises for an unknown name
        if scheduler == "threads":
            from concurrent.futures import ThreadPoolExecutor

            workers = num_workers or os.cpu_count() or 2
            with ThreadPoolExecutor(workers, thread_name_prefix="itaclip-chunk") as pool:
                yield pool, workers
        else:  # sync
            yield _InlineExecutor(), 1
        return
    client = _client_for(scheduler)
    try:
        workers = sum(client.nthreads().values()) or 1
        executor = client.get_executor(pure=False)
        yield executor, workers
    finally:
        if client is not scheduler:  # we created it from an address
            client.close()


def _is_address(scheduler) -> bool:
    return isinstance(scheduler, str) and (
        "://" in scheduler or (":" in scheduler and scheduler.split(":")[-1].isdigit()))


def _is_executor(scheduler) -> bool:
    from concurrent.futures import Executor

    return isinstance(scheduler, Executor)


def _client_for(scheduler):
    if isinstance(scheduler, str):
        if _is_address(scheduler):
            distributed = require("distributed")
            return distributed.Client(scheduler, set_as_default=False)
        if scheduler not in ("threads", "processes", "sync", "synchronous", "single-threaded"):
            raise ValueError(
                f"unknown scheduler {scheduler!r}: use threads, processes, sync or the "
                "address of a dask.distributed scheduler (tcp://host:port)"
            )
        return None
    return scheduler  # a distributed.Client


@contextmanager
def open_scheduler(scheduler: str | Any, num_workers: int | None = None):
    """What to pass as ``scheduler`` to :func:`segment_chunked` for a whole run.

    A ``dask.distributed`` address becomes one ``Client`` and ``"processes"`` one
    process pool (so each worker process loads the model once per run, not once per
    input); both are closed on exit. Anything else is passed through (after checking
    the name).
    """
    if _is_address(scheduler):
        client = _client_for(scheduler)
        try:
            yield client
        finally:
            client.close()
    elif scheduler == "processes":
        from concurrent.futures import ProcessPoolExecutor

        from dask.multiprocessing import CPU_COUNT, get_context

        pool = ProcessPoolExecutor(num_workers or CPU_COUNT, mp_context=get_context())
        try:
            yield pool
        finally:
            pool.shutdown()
    else:
        _client_for(scheduler)  # raises for an unknown name
        yield scheduler


class _InlineExecutor:
    """The ``"sync"`` scheduler: ``submit`` runs the call at once, in this thread."""

    def submit(self, fn, /, *args, **kwargs):
        from concurrent.futures import Future

        fut = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


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


@contextmanager
def staged_outputs(labels_path, sim_path, lead: Sequence[int], shape: tuple[int, int],
                   n_classes: int, chunk: int, *, sidecar=None):
    """:func:`open_outputs` under temporary names, moved into place only on success.

    Yields the ``(labels, similarity)`` zarr arrays, created as hidden
    ``.<name>.partial`` stores beside ``labels_path`` and ``sim_path``. When the block
    ends without an exception, ``sidecar`` (the file that marks the outputs as
    finished, if given) is removed first, then any previous outputs at the final names,
    and the new stores are renamed into place. When it raises, the partial stores are
    deleted and whatever was at the final names (a previous complete run) is left as
    it was: a failed chunked input never leaves outputs that look complete.
    """
    import os
    from pathlib import Path

    finals = [Path(labels_path), Path(sim_path)]
    temps = [p.with_name(f".{p.name}.partial") for p in finals]
    for t in temps:
        _remove_path(t)  # left over by a killed run
    try:
        yield open_outputs(temps[0], temps[1], lead, shape, n_classes, chunk)
    except BaseException:
        for t in temps:
            _remove_path(t)
        raise
    if sidecar is not None:
        Path(sidecar).unlink(missing_ok=True)
    for t, f in zip(temps, finals):
        _remove_path(f)
        os.replace(t, f)


def _remove_path(path) -> None:
    import shutil
    from pathlib import Path

    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
