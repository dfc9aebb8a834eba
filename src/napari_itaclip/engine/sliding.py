"""Sliding-window grid (spec section 5)."""

from __future__ import annotations

__all__ = ["window_grid"]


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
