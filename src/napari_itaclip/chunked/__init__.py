"""Segmenting images bigger than memory: chunks with an exact halo, run by dask.

:mod:`.plan` is the arithmetic (which region each output chunk must read so the
result equals in-memory processing; testable without dask); :mod:`.run` converts
the image to uint8 as the engine would, runs one task per chunk on a dask scheduler
and writes into zarr arrays.
"""

from .plan import (
    AxisChunk,
    ChunkingError,
    ChunkPlan,
    check_config,
    exact_mask,
    plan_axis,
    plan_chunks,
    reach,
    window_starts,
)
from .run import (
    SegmenterSpec,
    get_segmenter,
    labels_dtype,
    open_outputs,
    open_scheduler,
    segment_chunked,
    segment_region,
    staged_outputs,
    to_uint8_global,
)

__all__ = [
    "AxisChunk",
    "ChunkPlan",
    "ChunkingError",
    "SegmenterSpec",
    "check_config",
    "exact_mask",
    "get_segmenter",
    "labels_dtype",
    "open_outputs",
    "open_scheduler",
    "plan_axis",
    "plan_chunks",
    "reach",
    "segment_chunked",
    "segment_region",
    "staged_outputs",
    "to_uint8_global",
    "window_starts",
]
