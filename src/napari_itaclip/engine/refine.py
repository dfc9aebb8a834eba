"""PAMR: pixel-adaptive mask refinement (docs/engine.md, section "PAMR")."""

from __future__ import annotations

from collections.abc import Generator

import torch
import torch.nn.functional as F

from ..progress import drain

__all__ = ["pamr", "pamr_affinity", "iter_pamr"]


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


def pamr_affinity(image: torch.Tensor, dilations=(8, 16)) -> torch.Tensor:
    """Neighbour weights (1, P, H, W) from the guide image (1, K, H, W), P = 8 per dilation.

    Computed tap by tap so the working memory stays at a few image-sized buffers
    (the 18 taps and 16 differences are never stacked).
    """
    if min(image.shape[-2:]) < 1:
        raise ValueError("PAMR needs a non-empty image")
    taps = [t for d in dilations for t in _neighbours(image, d, centre=True)]
    mean = sum(taps) / len(taps)
    var = sum((t - mean).square() for t in taps) / (len(taps) - 1)  # unbiased, as torch.std
    denom = 1e-8 + 0.1 * var.sqrt()
    del taps, mean, var
    aff = torch.cat(
        [
            (-(image - n).abs() / denom).mean(dim=1, keepdim=True)
            for d in dilations
            for n in _neighbours(image, d, centre=False)
        ],
        dim=1,
    )  # (1, P, H, W), averaged over the image channels
    return torch.softmax(aff, dim=1)


def iter_pamr(
    image: torch.Tensor, logits: torch.Tensor, steps: int, dilations=(8, 16), chunk: int = 8,
    inplace: bool = False,
) -> Generator[tuple[int, int], None, torch.Tensor]:
    """Refine (1, Q, H, W) logits; yields ``(done, total)`` steps and returns the result.

    Channels are refined ``chunk`` at a time to bound memory (each step materialises
    the shifted copies of the channels in flight). ``inplace`` writes the result into
    ``logits`` instead of a copy.
    """
    aff = pamr_affinity(image.to(logits.dtype), dilations)
    out = logits if inplace else logits.clone()
    q = logits.shape[1]
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
            m = acc
            done += 1
            yield (done, total)
        out[:, c0 : c0 + chunk] = m
    return out


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations=(8, 16)) -> torch.Tensor:
    """Non-generator form of :func:`iter_pamr`."""
    return drain(iter_pamr(image, logits, steps, dilations))
