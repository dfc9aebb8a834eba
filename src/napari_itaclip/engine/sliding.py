"""Sliding-window grid (docs/engine.md, section "Sliding window")."""

from __future__ import annotations

from typing import NamedTuple

from ..config import coverage_problem  # the rule lives with the configuration it checks

__all__ = ["Padding", "coverage_problem", "patch_padding", "window_grid", "window_side"]


def window_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` covering an image, as the reference computes them.

    ``rows = max(H - c + s - 1, 0) // s + 1`` (same for columns); window (i, j) ends at
    ``min(i*s + c, H)`` and starts ``c`` before that, clamped at 0, so every window
    has size ``min(c, H) x min(c, W)``.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(rows):
        y2 = min(i * stride + crop, height)
        y1 = max(y2 - crop, 0)
        for j in range(cols):
            x2 = min(j * stride + crop, width)
            x1 = max(x2 - crop, 0)
            out.append((y1, y2, x1, x2))
    return out


def window_side(crop: int | None, height: int, width: int) -> int:
    """The crop side the window grid uses: ``crop``, or for ``crop=None`` (one window over
    the whole image) the image's long side.
    """
    return max(height, width) if crop is None else int(crop)


class Padding(NamedTuple):
    """Zero padding of a crop, in pixels per side."""

    top: int
    bottom: int
    left: int
    right: int


def patch_padding(height: int, width: int, patch: tuple[int, int]) -> Padding:
    """ClearCLIP's centred padding of a crop to whole patches (docs/engine.md, section "Other methods").

    Along each axis the missing ``r = (-n) mod p`` pixels are split ``r // 2`` before
    and the rest after; nothing when ``n`` is already a multiple of ``p``.
    """
    rh, rw = (-height) % patch[0], (-width) % patch[1]
    return Padding(rh // 2, rh - rh // 2, rw // 2, rw - rw // 2)
