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

__all__ = ["TileDone", "TileGrid", "TileProgress", "inner_config", "iter_tiles", "plan_tiles",
           "read_tile", "tile_jobs"]


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


def plan_tiles(in_shape, config, chunk: int) -> TileGrid:
    """Plan the tiles of an ``(H, W)`` plane for ``config`` with cores of ``chunk`` working
    pixels (ValueError for an unusable ``object_size``; ChunkingError for a configuration
    that cannot be tiled exactly).
    """
    factor = working_factor(config.object_size)
    inner = inner_config(config)
    check_config(inner)
    work = working_shape(in_shape, factor)
    return TileGrid(factor, (int(in_shape[0]), int(in_shape[1])), work,
                    plan_chunks(work, inner, chunk))


def tile_jobs(grid: TileGrid, indices) -> Iterator[tuple[tuple[int, ...], AxisChunk, AxisChunk]]:
    """``(plane, row chunk, column chunk)`` of every tile of these planes, in order."""
    for idx in indices:
        for r, c in grid.plan:
            yield tuple(idx), r, c


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
            text += f", about {_duration(self.eta)} left"
        return text


def _duration(seconds: float) -> str:
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


def iter_tiles(segmenter, planes_u8, indices, grid: TileGrid, vocabulary, config,
               exemplars=None) -> Generator[Any, None, int]:
    """Segment the tiles of these planes one after the other (a worker's generator).

    ``planes_u8(idx)`` gives plane ``idx`` as a uint8 ``(H, W[, 3])`` numpy or dask array
    (read lazily: :func:`read_tile` takes one block of it at a time). Yields
    :class:`TileProgress` between engine batches and a :class:`TileDone` per tile;
    returns the number of tiles done. Closing it stops after the current batch; the
    tiles already yielded are complete.
    """
    inner = inner_config(config)
    jobs = list(tile_jobs(grid, indices))
    n = len(jobs)
    t0 = time.perf_counter()
    for k, (idx, r, c) in enumerate(jobs):
        region = read_tile(planes_u8(idx), grid, r, c)
        elapsed = time.perf_counter() - t0
        eta = elapsed / k * (n - k) if k else None
        gen = segmenter.iter_segment(region, vocabulary, config=inner, exemplars=exemplars)
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
                    list(res.class_names), bool(res.has_background), k, n)


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
