"""Running a chunk plan with dask: uint8 conversion, one task per chunk, schedulers.

Memory
------
Each running chunk holds its region (core plus halo) in the engine. Chunks in one
process run one at a time (they share one model), so per worker process the peak is
about the process (Python, torch, the model) plus the engine's estimate of one
segmentation of the largest region (``Segmenter.memory_estimate``, see
``engine/memory_model.py``: at the native resolution, PAMR's affinities or the softmax
over the queries, and the ViT batch), plus, with the threads scheduler, about one ViT
batch per further thread (each thread's heap keeps its own), plus dask's input/output
buffers (a few zarr chunks). It depends on the chunk size, not on the image size. See
``docs/cli.md`` and ``benchmarks/bench_chunked.py`` for measured numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..identity import ModelIdentity
from ..optional import require
from ..planes import ImageLayout
from .convert import to_uint8_global
from .plan import AxisChunk, ChunkPlan

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
def segment_region(spec, vocab, config, region: np.ndarray, r: AxisChunk, c: AxisChunk,
                   factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Segment one chunk region; returns the labels and similarity of its core (working
    resolution).

    A plain function of picklable arguments (a :class:`SegmenterSpec`, the vocabulary,
    the configuration, a uint8 numpy region of the input, the two :class:`AxisChunk` of
    the working grid and its reduction ``factor``): what a process pool or a
    ``dask.distributed`` worker runs. The region is reduced to the working resolution
    (:func:`~napari_itaclip.engine.scale.block_mean_uint8`) and segmented at it. The
    spec's model comes from the worker process's :mod:`~napari_itaclip.engine.registry`
    (loaded once per process).
    """
    from ..engine.registry import run_lock
    from ..engine.scale import block_mean_uint8
    from .tiles import inner_config

    seg = get_segmenter(spec)
    region = block_mean_uint8(np.asarray(region), factor)
    with run_lock(seg):
        res = seg.segment(region, vocab, config=inner_config(config))
    ys = slice(r.core_start - r.start, r.core_stop - r.start)
    xs = slice(c.core_start - c.start, c.core_stop - c.start)
    return (np.asarray(res.labels[ys, xs]),
            np.asarray(res.similarity[:, ys, xs], dtype=np.float32))


def _write_core(labels_out, sim_out, index: tuple, r: AxisChunk, c: AxisChunk,
                labels: np.ndarray, sim: np.ndarray, grid=None) -> None:
    """The core's labels at the input's resolution (each pixel its block's label) and its
    similarity at the working resolution.
    """
    from ..engine.scale import labels_to_input

    ys, xs = slice(r.core_start, r.core_stop), slice(c.core_start, c.core_stop)
    if grid is not None and grid.factor > 1:
        rows, cols = grid.in_rows(r, core=True), grid.in_cols(c, core=True)
        labels = labels_to_input(labels, ((rows.start, rows.stop), (cols.start, cols.stop)),
                                 grid.factor, origin=(r.core_start, c.core_start))
        labels_out[(*index, rows, cols)] = labels.astype(labels_out.dtype)
    else:
        labels_out[(*index, ys, xs)] = labels.astype(labels_out.dtype)
    sim_out[(*index, slice(None), ys, xs)] = sim


def _run_on_executor(executor, jobs, segmenter, vocab, config, labels_out, sim_out, *,
                     max_pending: int, progress, total: int, grid=None) -> None:
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
            _write_core(labels_out, sim_out, index, r, c, *fut.result(), grid=grid)
            done += 1
            if progress is not None:
                progress(done, total)

    try:
        for index, r, c, region in jobs:
            while len(pending) >= max_pending:
                collect(wait(list(pending), return_when=FIRST_COMPLETED).done)
            arr = np.asarray(region.compute(scheduler=read_region))
            factor = 1 if grid is None else grid.factor
            pending[executor.submit(segment_region, segmenter, vocab, config, arr, r, c,
                                    factor)] = (index, r, c)
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
        Writable float32 array ``(..., C, y, x)`` at the working resolution (the input's
        without ``config.object_size``; see :mod:`.tiles`).
    segmenter : SegmenterSpec or Segmenter
        A spec is built once per worker process (use it with ``"processes"`` or a
        distributed cluster); an instance is used as is (threads).
    config : ITACLIPConfig
        Must satisfy :func:`check_config` (with ``object_size``: at the working
        resolution, where ``short_side`` is not used).
    chunk : int
        Core (output chunk) side in working pixels.
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

    from .tiles import plan_tiles, tile_jobs

    data = source if hasattr(source, "dask") else da.from_array(np.asarray(source))
    if rgb is None:
        rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
    layout = ImageLayout(tuple(data.shape), rgb=rgb)
    grid = plan_tiles(layout.plane_shape, config, chunk)  # refuses a bad config first
    data = to_uint8_global(data, rgb=rgb)
    layout = ImageLayout(tuple(data.shape), rgb=rgb)
    jobs = [(index, r, c, data[layout.plane_key(index)][grid.in_rows(r), grid.in_cols(c)])
            for index, r, c in tile_jobs(grid, layout.all_slices())]
    with _executor_for(scheduler, num_workers) as (executor, workers):
        _run_on_executor(executor, jobs, segmenter, vocab, config, labels_out, sim_out,
                         max_pending=2 * workers, progress=progress, total=len(jobs),
                         grid=grid)
    return grid.plan


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
                 n_classes: int, chunk: int, *, overwrite: bool = True, factor: int = 1):
    """Create the zarr arrays a chunked run writes: labels at the input's ``shape``,
    similarity at the working resolution (``shape`` reduced by ``factor``; its
    ``attrs["scale"]`` says so).
    """
    from ..engine.scale import working_shape

    zarr = require("zarr")
    lead = tuple(int(n) for n in lead)
    work = working_shape(shape, factor)
    cy, cx = min(chunk * factor, shape[0]), min(chunk * factor, shape[1])
    labels = zarr.create_array(
        store=str(labels_path), shape=lead + tuple(shape), chunks=(1,) * len(lead) + (cy, cx),
        dtype=labels_dtype(n_classes), fill_value=0, overwrite=overwrite)
    sim = zarr.create_array(
        store=str(sim_path), shape=lead + (n_classes,) + work,
        chunks=(1,) * len(lead) + (1, min(chunk, work[0]), min(chunk, work[1])),
        dtype=np.float32, fill_value=0.0, overwrite=overwrite)
    if factor > 1:
        sim.attrs["scale"] = float(factor)
    return labels, sim


@contextmanager
def staged_outputs(labels_path, sim_path, lead: Sequence[int], shape: tuple[int, int],
                   n_classes: int, chunk: int, *, sidecar=None, factor: int = 1):
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
        yield open_outputs(temps[0], temps[1], lead, shape, n_classes, chunk, factor=factor)
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
