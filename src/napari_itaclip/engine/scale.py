"""The working resolution chosen from the typical object size, and exact block resampling.

``ITACLIPConfig.object_size`` is the typical size of the objects to segment, in input
pixels. CLIP sees an object when it spans a few of its patches (16 px for ViT-B/16);
the image is therefore reduced by the whole factor

    factor = max(1, floor(object_size / OBJECT_TARGET_PX))   (OBJECT_TARGET_PX = 32)

so that objects span about two to four 16-px patches at the working resolution. The
image is never enlarged: an object size below :data:`MIN_OBJECT_PX` (one patch at the
image's own resolution) would need more than the image's own resolution and is refused
with a clear error. Examples: 25-px nuclei work at the native resolution (factor 1);
100-px cells at 1/3; 256-px glands at 1/8.

Why a whole factor: each working pixel is then the mean of one ``factor x factor`` block
of input pixels (a partial block at the right and bottom edges averages the pixels it
has), computed in integers and rounded half up. That is exactly the same whether the
whole image or any block-aligned region of it is resampled, so tiles of a large image
give the very same working image as the whole (:mod:`napari_itaclip.chunked` relies on
it), and a pyramid level of factor 2, 4, ... serves without resampling twice. Labels go
back to the input grid by the block they fall in (:func:`labels_to_input`); class maps
by bilinear interpolation between block centres (:func:`maps_to_input`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_OBJECT_PX", "OBJECT_TARGET_PX", "block_mean_uint8", "labels_to_input",
           "maps_to_input", "object_size_problem", "working_factor", "working_shape",
           "working_strokes"]

#: Working size of a typical object: two 16-px patches of ViT-B/16.
OBJECT_TARGET_PX = 32
#: The smallest object size: one 16-px patch at the image's own resolution.
MIN_OBJECT_PX = 16


def object_size_problem(object_size) -> str | None:
    """Why ``object_size`` cannot be used (None when it can, or when it is None)."""
    if object_size is None:
        return None
    try:
        value = float(object_size)
    except (TypeError, ValueError):
        return f"object_size must be a number of pixels, got {object_size!r}"
    if not math.isfinite(value) or value <= 0:
        return f"object_size must be a positive finite number of pixels, got {object_size!r}"
    if value < MIN_OBJECT_PX:
        return (f"object_size {value:g} px is smaller than one {MIN_OBJECT_PX}-px patch of the "
                "model at the image's own resolution: CLIP cannot see such objects, and "
                "segmenting them would need more than the image's own resolution (the image "
                "is never enlarged; upsample it yourself to try)")
    return None


def working_factor(object_size) -> int:
    """The whole reduction factor for ``object_size`` (1 for None); ValueError if unusable."""
    problem = object_size_problem(object_size)
    if problem:
        raise ValueError(problem)
    if object_size is None:
        return 1
    return max(1, int(float(object_size) // OBJECT_TARGET_PX))


def working_shape(shape, factor: int) -> tuple[int, int]:
    """(h, w) of the working image of an ``(H, W, ...)`` input reduced by ``factor``."""
    return (-(-int(shape[0]) // factor), -(-int(shape[1]) // factor))


def block_mean_uint8(image: np.ndarray, factor: int) -> np.ndarray:
    """Each ``factor x factor`` block of a uint8 ``(H, W[, C])`` image -> its mean, uint8.

    Integer sums, rounded half up; a partial edge block averages the pixels it has.
    Resampling a block-aligned region gives exactly the matching part of the whole.
    """
    if factor == 1:
        return image
    if image.dtype != np.uint8:
        raise TypeError(f"block_mean_uint8 takes uint8 images, got {image.dtype}")
    h, w = image.shape[:2]
    rows, cols = np.arange(0, h, factor), np.arange(0, w, factor)
    sums = np.add.reduceat(np.add.reduceat(image, rows, axis=0, dtype=np.uint64),
                           cols, axis=1, dtype=np.uint64)
    ny = np.minimum(rows + factor, h) - rows
    nx = np.minimum(cols + factor, w) - cols
    counts = (ny[:, None] * nx[None, :]).astype(np.uint64)
    if image.ndim == 3:
        counts = counts[..., None]
    return ((2 * sums + counts) // (2 * counts)).astype(np.uint8)


def labels_to_input(labels: np.ndarray, shape, factor: int, origin=(0, 0)) -> np.ndarray:
    """Working labels -> the input grid: each input pixel takes its block's label.

    ``origin``: the working coordinates of ``labels[0, 0]`` when ``labels`` is a region
    and ``shape`` the input region ``(rows, cols)`` as ``((r0, r1), (c0, c1))`` ranges;
    by default ``shape`` is the whole input ``(H, W)``.
    """
    if factor == 1 and origin == (0, 0) and not isinstance(shape[0], tuple):
        return labels
    if isinstance(shape[0], tuple):
        (r0, r1), (c0, c1) = shape
    else:
        (r0, r1), (c0, c1) = (0, int(shape[0])), (0, int(shape[1]))
    ys = np.arange(r0, r1) // factor - origin[0]
    xs = np.arange(c0, c1) // factor - origin[1]
    return labels[np.ix_(ys, xs)]


def maps_to_input(maps, shape, factor: int):
    """(C, h, w) working maps -> (C, H, W): bilinear between block centres (torch)."""
    from . import _torch_ready  # noqa: F401  (before torch)

    # isort: split
    import torch

    # isort: split
    import torch.nn.functional as F

    if factor == 1:
        return maps
    c, h, w = maps.shape
    big = F.interpolate(maps[None], size=(h * factor, w * factor), mode="bilinear",
                        align_corners=False)[0]
    return big[:, : int(shape[0]), : int(shape[1])].contiguous() if isinstance(
        big, torch.Tensor) else big


def working_strokes(image, masks: dict, factor: int):
    """Exemplar strokes on the working image: the image (a plane or a stack of planes)
    prepared and reduced as :func:`block_mean_uint8`, each block given to the class with
    the most stroke pixels in it (a block with none belongs to no class).
    """
    from .images import prepare_image_uint8

    arr = np.asarray(image)
    names = list(masks)
    ms = [np.asarray(masks[n], dtype=bool) for n in names]
    stack = ms[0].ndim == 3 if ms else False
    planes = list(arr) if stack else [arr]
    work = [block_mean_uint8(prepare_image_uint8(p), factor) for p in planes]
    out_image = np.stack(work) if stack else work[0]
    if factor == 1 or not ms:
        return out_image, dict(zip(names, ms))
    counts = np.stack([_block_counts(m if stack else m[None], factor) for m in ms])
    best = counts.argmax(axis=0)
    any_stroke = counts.max(axis=0) > 0
    out = {n: (best == k) & any_stroke for k, n in enumerate(names)}
    return out_image, {n: (m if stack else m[0]) for n, m in out.items()}


def _block_counts(masks: np.ndarray, factor: int) -> np.ndarray:
    """Stroke pixels per ``factor x factor`` block of (P, H, W) boolean masks."""
    h, w = masks.shape[-2:]
    rows, cols = np.arange(0, h, factor), np.arange(0, w, factor)
    return np.add.reduceat(np.add.reduceat(masks, rows, axis=1, dtype=np.int64), cols,
                           axis=2, dtype=np.int64)
