"""Tiles of a large image at its working resolution: the one tiled runner.

The command line's chunked mode (:func:`.run.segment_chunked`, on dask schedulers and
clusters), the napari widget and ``segment_layer`` (:func:`iter_tiles`, one tile after
the other in a worker thread) all cut an image the same way:

1. the plane's uint8 conversion uses the whole plane's percentiles
   (:func:`.run.to_uint8_global`, exactly the engine's), computed before any tile;
2. the working grid is the plane reduced by the object size's whole factor
   (:mod:`napari_itaclip.engine.scale`; 1 without ``object_size``), and the tiles are
   planned on it with the exact halo of :mod:`.plan`;
3. each tile reads only its region of the source (block-aligned, so its reduced image is
   exactly that part of the whole: :func:`read_tile`), is segmented at the working
   resolution (``short_side`` and ``object_size`` off), and gives back its core.

So the tiles' labels and similarity equal those of the whole working image segmented in
memory, and memory is bounded by a tile, whatever the image's size.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..engine.scale import block_mean_uint8, working_factor, working_shape
from ..planes import ImageLayout
from .plan import AxisChunk, ChunkPlan, check_config, plan_chunks

__all__ = ["TileDone", "TileGrid", "TileProgress", "WorkingPlanes", "duration_text",
           "inner_config", "iter_tiles", "plan_tiles", "plane_uint8", "read_tile", "tile_jobs",
           "working_layout"]


def inner_config(config):
    """The configuration a tile is segmented with: at its own (working) resolution."""
    return config.replace(object_size=None, short_side=None)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one plane: the working grid's chunk plan and the reduction factor.

    Attributes
    ----------
    factor : int
        Input pixels per working pixel (along each axis).
    in_shape, work_shape : tuple of int
        (H, W) of the input plane and of its working grid.
    plan : ChunkPlan
        The exact chunks of the working grid (cores and regions in working pixels).
    """

    factor: int
    in_shape: tuple[int, int]
    work_shape: tuple[int, int]
    plan: ChunkPlan

    def __len__(self) -> int:
        return len(self.plan)

    def in_rows(self, r: AxisChunk, core: bool = False) -> slice:
        """The input rows of a chunk's region (or core)."""
        a, b = (r.core_start, r.core_stop) if core else (r.start, r.stop)
        return slice(a * self.factor, min(b * self.factor, self.in_shape[0]))

    def in_cols(self, c: AxisChunk, core: bool = False) -> slice:
        """The input columns of a chunk's region (or core)."""
        a, b = (c.core_start, c.core_stop) if core else (c.start, c.stop)
        return slice(a * self.factor, min(b * self.factor, self.in_shape[1]))


def plan_tiles(in_shape, config, chunk: int, factor: int | None = None) -> TileGrid:
    """Plan the tiles of an ``(H, W)`` plane for ``config`` with cores of ``chunk`` working
    pixels (ValueError for an unusable ``object_size``; ChunkingError for a configuration
    that cannot be tiled exactly). ``factor``: the reduction of this plane (default: the
    object size's; a pyramid level that reduced it already needs less).
    """
    factor = working_factor(config.object_size) if factor is None else int(factor)
    inner = inner_config(config) if config.object_size is not None else config
    check_config(inner)
    work = working_shape(in_shape, factor)
    return TileGrid(factor, (int(in_shape[0]), int(in_shape[1])), work,
                    plan_chunks(work, inner, chunk))


def tile_jobs(grid: TileGrid, indices, region=None
              ) -> Iterator[tuple[tuple[int, ...], AxisChunk, AxisChunk]]:
    """``(plane, row chunk, column chunk)`` of every tile of these planes, in order; with
    ``region`` ((rows, cols) slices of the working grid), the tiles whose core meets it.
    """
    for idx in indices:
        for r, c in grid.plan:
            if region is not None and not (_meets(r, region[0]) and _meets(c, region[1])):
                continue
            yield tuple(idx), r, c


def _meets(chunk: AxisChunk, span: slice) -> bool:
    return chunk.core_start < span.stop and span.start < chunk.core_stop


def plane_uint8(data, layout: ImageLayout, idx):
    """Plane ``idx`` of ``data`` as a lazy uint8 ``(H, W[, 3])`` dask array, converted
    with the whole plane's percentiles exactly as the engine converts a plane in memory
    (:func:`.run.to_uint8_global`; uint8 passes through). Reads the plane once to get
    its percentiles (other dtypes than uint8), then one region at a time.
    """
    from ..optional import require
    from .convert import to_uint8_global

    if layout.channel_axis is not None and layout.channel == "composite":
        raise ValueError("a channel composite cannot be tiled exactly (its channels are "
                         "balanced over the whole plane): pick one channel")
    da = require("dask.array")
    if not hasattr(data, "dask") and not isinstance(data, np.ndarray):  # zarr, h5py ...:
        data = da.from_array(data, chunks=getattr(data, "chunks", "auto"))  # stay lazy
    plane = data[layout.plane_key(idx)]
    if not hasattr(plane, "dask"):
        chunks = (1024, 1024, -1) if layout.rgb else (1024, 1024)
        plane = da.from_array(plane, chunks=chunks[: plane.ndim])
    return to_uint8_global(plane, rgb=layout.rgb)


def read_tile(plane_u8, grid: TileGrid, r: AxisChunk, c: AxisChunk) -> np.ndarray:
    """The working image of a tile's region: its input block read (``plane_u8``: a uint8
    ``(H, W[, 3])`` numpy or dask plane; only that block is read) and reduced.
    """
    block = plane_u8[grid.in_rows(r), grid.in_cols(c)]
    if hasattr(block, "compute"):
        block = block.compute(scheduler="threads")
    return block_mean_uint8(np.asarray(block), grid.factor)


class TileProgress(NamedTuple):
    """Progress of a tiled run: the engine's stage within tile ``tile`` of ``n_tiles``.

    ``eta`` is the estimated seconds left (None before the first tile has finished).
    """

    stage: str
    done: int
    total: int
    tile: int
    n_tiles: int
    eta: float | None

    @property
    def fraction(self) -> float:
        """Overall fraction done, 0..1."""
        within = self.done / self.total if self.total else 0.0
        return min(1.0, (self.tile + within) / max(self.n_tiles, 1))

    def describe(self) -> str:
        """One line for a status label, e.g. ``tile 3/40: segmenting 2/8, about 1 min left``."""
        from ..progress import STAGE_TEXT

        text = f"tile {min(self.tile + 1, self.n_tiles)}/{self.n_tiles}: "
        text += STAGE_TEXT.get(self.stage, self.stage)
        if self.total:
            text += f" {self.done}/{self.total}"
        if self.eta is not None:
            text += f", about {duration_text(self.eta)} left"
        return text


def duration_text(seconds: float) -> str:
    """``'40 s'``, ``'3 min'``, ``'1.5 h'``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class TileDone:
    """One finished tile: the labels and similarity of its core, at the working resolution.

    ``rows`` / ``cols`` are the core's working-grid ranges; ``probabilities`` are the
    class probabilities before any threshold (what a relabel needs).
    """

    index: tuple[int, ...]
    rows: slice
    cols: slice
    labels: np.ndarray
    similarity: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]
    has_background: bool
    tile: int
    n_tiles: int
    vocabulary: Any = None


def iter_tiles(segmenter, planes_u8, indices, grid: TileGrid, vocabulary, config,
               exemplars=None, region=None) -> Generator[Any, None, int]:
    """Segment the tiles of these planes one after the other (a worker's generator).

    ``planes_u8(idx)`` gives plane ``idx`` as a uint8 ``(H, W[, 3])`` numpy or dask array
    (read lazily: :func:`read_tile` takes one block of it at a time). Yields
    :class:`TileProgress` between engine batches and a :class:`TileDone` per tile;
    returns the number of tiles done. Closing it stops after the current batch; the
    tiles already yielded are complete. ``region``: only the tiles meeting it (see
    :func:`tile_jobs`).
    """
    inner = inner_config(config) if config.object_size is not None else config
    jobs = list(tile_jobs(grid, indices, region))
    n = len(jobs)
    t0 = time.perf_counter()
    for k, (idx, r, c) in enumerate(jobs):
        region = read_tile(planes_u8(idx), grid, r, c)
        elapsed = time.perf_counter() - t0
        eta = elapsed / k * (n - k) if k else None
        extra = {} if exemplars is None else {"exemplars": exemplars}
        gen = segmenter.iter_segment(region, vocabulary, config=inner, **extra)
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                res = stop.value
                break
            yield TileProgress(str(p.stage), int(p.done), int(p.total), k, n, eta)
        yield _core(res, idx, r, c, k, n)
    return n


def _core(res, idx, r: AxisChunk, c: AxisChunk, k: int, n: int) -> TileDone:
    ys = slice(r.core_start - r.start, r.core_stop - r.start)
    xs = slice(c.core_start - c.start, c.core_stop - c.start)
    raw = getattr(res, "_raw_probabilities", None)
    raw = res.probabilities if raw is None else raw
    return TileDone(tuple(idx), slice(r.core_start, r.core_stop), slice(c.core_start, c.core_stop),
                    np.ascontiguousarray(res.labels[ys, xs]),
                    np.ascontiguousarray(res.similarity[:, ys, xs], dtype=np.float32),
                    np.ascontiguousarray(raw[:, ys, xs], dtype=np.float32),
                    list(res.class_names), bool(res.has_background), k, n, res.vocabulary)


def working_layout(layout: ImageLayout, factor: int) -> ImageLayout:
    """The layout of the working planes of ``layout``'s image: RGB uint8, reduced."""
    h, w = working_shape(layout.plane_shape, factor)
    return ImageLayout((*layout.leading_shape, h, w, 3), rgb=True)


@dataclasses.dataclass
class WorkingPlanes:
    """The working image of every plane, made on demand: an array-like for
    :meth:`ImageLayout.get_plane` with :func:`working_layout` (in-memory runs at the
    working resolution: each plane converted to uint8 as the engine does, then reduced).
    """

    data: Any
    layout: ImageLayout
    factor: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the working image (planes, h, w, 3)."""
        return working_layout(self.layout, self.factor).shape

    def __getitem__(self, key) -> np.ndarray:
        from ..engine.images import prepare_image_uint8

        idx = tuple(int(k) for k in key[: len(self.layout.leading_shape)])
        plane = prepare_image_uint8(self.layout.get_plane(self.data, idx))
        return block_mean_uint8(plane, self.factor)
