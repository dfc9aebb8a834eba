"""Small constructed test images for the command-line tests."""

from __future__ import annotations

import numpy as np


def two_tone(seed, h=40, w=48) -> np.ndarray:
    """(h, w, 3) uint8: a red top half and a light-blue bottom half, with seeded noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 40, 40)
    img[h // 2:] = (30, 160, 220)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
