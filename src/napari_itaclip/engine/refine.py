"""PAMR: pixel-adaptive mask refinement (docs/engine.md, section "PAMR").

Memory (what :mod:`.memory_model` counts): the affinities are ``8 x len(dilations)``
float32 maps of the image's size, written tap by tap into one tensor; the softmax over
them makes a second such tensor for a moment. The refinement then runs on
:func:`pamr_chunk` channels at a time (each step holds two copies of the channels in
flight and the replicate-padded copy of them), so its working memory is bounded by
:data:`PAMR_CHUNK_BYTES` whatever the number of queries.
"""

from __future__ import annotations

from collections.abc import Generator

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch
import torch.nn.functional as F

from ..progress import drain
from .memory_model import PAMR_CHUNK_BYTES, pamr_chunk  # torch-free, for the estimate

__all__ = ["PAMR_CHUNK_BYTES", "iter_pamr", "pamr", "pamr_affinity", "pamr_chunk"]

def _neighbours(x: torch.Tensor, d: int, centre: bool) -> list[torch.Tensor]:
    """The 8 (or 9 with the centre) taps at offsets d*(±1, 0, ±1), replicate padding."""
    h, w = x.shape[-2:]
    p = F.pad(x, (d, d, d, d), mode="replicate")
    taps = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0 and not centre:
                continue
            taps.append(p[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
    return taps


def _std_denominator(image: torch.Tensor, dilations) -> torch.Tensor:
    """``1e-8 + 0.1 σ``, σ the unbiased standard deviation over the taps of all dilations
    (centre included), per pixel and channel: the values of ``torch.std`` over the
    stacked taps, accumulated in place (the taps are never stacked).
    """
    taps = [t for d in dilations for t in _neighbours(image, d, centre=True)]
    mean = taps[0].clone()
    for t in taps[1:]:
        mean += t
    mean /= len(taps)
    var = torch.zeros_like(mean)
    for t in taps:
        var += torch.sub(t, mean).square_()
    var /= len(taps) - 1  # unbiased, as torch.std
    del taps, mean
    return var.sqrt_().mul_(0.1).add_(1e-8)


def pamr_affinity(image: torch.Tensor, dilations=(8, 16)) -> torch.Tensor:
    """Neighbour weights (B, P, H, W) from the guide image (B, K, H, W), P = 8 per dilation.

    Computed tap by tap into one tensor, so the working memory is the P maps, a few
    image-sized buffers and, for the softmax, a second copy of the P maps.
    """
    if min(image.shape[-2:]) < 1:
        raise ValueError("PAMR needs a non-empty image")
    denom = _std_denominator(image, dilations)
    aff = image.new_empty((image.shape[0], 8 * len(dilations), *image.shape[-2:]))
    k = 0
    for d in dilations:
        for n in _neighbours(image, d, centre=False):
            diff = torch.sub(image, n).abs_().neg_().div_(denom)
            aff[:, k : k + 1] = diff.mean(dim=1, keepdim=True)  # averaged over the channels
            k += 1
        n = diff = None  # this dilation's padded copy goes before the next one's is made
    del denom
    return torch.softmax(aff, dim=1)


def iter_pamr(
    image: torch.Tensor, logits: torch.Tensor, steps: int, dilations=(8, 16),
    chunk: int | None = None, inplace: bool = False,
) -> Generator[tuple[int, int], None, torch.Tensor]:
    """Refine (B, Q, H, W) logits; yields ``(done, total)`` steps and returns the result.

    Channels are refined ``chunk`` at a time (default :func:`pamr_chunk`) to bound
    memory: each step materialises the shifted copies of the channels in flight. The
    guide ``image`` is released once the affinities are computed (drop the caller's
    reference too to free it). ``inplace`` writes the result into ``logits`` instead of
    a copy.
    """
    aff = pamr_affinity(image.to(logits.dtype), dilations)
    del image
    out = logits if inplace else logits.clone()
    q = logits.shape[1]
    if chunk is None:
        chunk = pamr_chunk(*logits.shape[-2:], logits.shape[0] * q, logits.element_size())
    total = steps * max(1, -(-q // chunk))
    done = 0
    for c0 in range(0, q, chunk):
        m = out[:, c0 : c0 + chunk]
        for _ in range(steps):
            acc = torch.zeros_like(m)
            k = 0
            for d in dilations:
                for n in _neighbours(m, d, centre=False):
                    acc.addcmul_(n, aff[:, k : k + 1])  # in place: no temporary per tap
                    k += 1
                n = None  # the padded copy goes before the next dilation's is made
            m = acc
            done += 1
            yield (done, total)
        out[:, c0 : c0 + chunk] = m
        m = acc = None
    return out


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations=(8, 16)) -> torch.Tensor:
    """Non-generator form of :func:`iter_pamr`."""
    return drain(iter_pamr(image, logits, steps, dilations))
