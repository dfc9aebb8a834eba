"""PAMR: pixel-adaptive mask refinement (spec section 6)."""

from __future__ import annotations

from collections.abc import Generator

import torch
import torch.nn.functional as F

from ._gen import drain

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


def _pad_ok(x: torch.Tensor, dilations) -> None:
    # replicate padding accepts any size, but keep the message clear for empty input
    if min(x.shape[-2:]) < 1:
        raise ValueError("PAMR needs a non-empty image")


def pamr_affinity(image: torch.Tensor, dilations=(8, 16)) -> torch.Tensor:
    """Neighbour weights (1, P, H, W) from the guide image (1, K, H, W), P = 8 per dilation."""
    _pad_ok(image, dilations)
    taps_std = []
    diffs = []
    for d in dilations:
        taps_std.extend(_neighbours(image, d, centre=True))
        diffs.extend((image - n).abs() for n in _neighbours(image, d, centre=False))
    std = torch.stack(taps_std, dim=2).std(dim=2, unbiased=True)  # (1, K, H, W)
    denom = 1e-8 + 0.1 * std
    aff = torch.stack([-dd / denom for dd in diffs], dim=2)  # (1, K, P, H, W)
    return torch.softmax(aff.mean(dim=1), dim=1)  # (1, P, H, W)


def iter_pamr(
    image: torch.Tensor, logits: torch.Tensor, steps: int, dilations=(8, 16), chunk: int = 8
) -> Generator[tuple[int, int], None, torch.Tensor]:
    """Refine (1, Q, H, W) logits; yields ``(step, steps)`` and returns the refined logits.

    Channels are refined ``chunk`` at a time to bound memory (each step materialises
    the 16 shifted copies of the channels in flight).
    """
    aff = pamr_affinity(image.to(logits.dtype), dilations)
    out = logits.clone()
    q = logits.shape[1]
    total = steps * max(1, -(-q // chunk))
    done = 0
    for c0 in range(0, q, chunk):
        m = out[:, c0 : c0 + chunk]
        for _ in range(steps):
            acc = None
            k = 0
            for d in dilations:
                for n in _neighbours(m, d, centre=False):
                    term = n * aff[:, k : k + 1]
                    acc = term if acc is None else acc + term
                    k += 1
            m = acc
            done += 1
            yield (done, total)
        out[:, c0 : c0 + chunk] = m
    return out


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations=(8, 16)) -> torch.Tensor:
    """Non-generator form of :func:`iter_pamr`."""
    return drain(iter_pamr(image, logits, steps, dilations))
