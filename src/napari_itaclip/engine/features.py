"""The exact image-feature cache: per-window patch features, reused across vocabularies.

Everything in ITACLIP after the per-crop patch features is linear in the text queries
(docs/engine.md, sections "Image engineering" to "PAMR"). For each sliding window the engine keeps

- ``merged``: the mean of the L2-normalised patch features of the original, greyscale
  and blurred views (or the original view's alone with image engineering off), and
- ``flipped``: the mean of the vertically and horizontally flipped views' normalised
  features, each flipped back onto the window's grid (``None`` without image
  engineering),

each ``(gh, gw, D)`` float32. A vocabulary is then scored with a matrix product, the
bilinear upsampling, the window average and the resize, which is how the engine
computes a first run too: a cache hit gives bit-for-bit the outputs of a miss.

Flipping the feature grid back instead of the upsampled logits is exact: bilinear
resizing with ``align_corners=False`` commutes with flips (its sampling grid is
symmetric), and it is linear, so ``α·up(M·Tᵀ) + (1-α)·½(flip(up(V·Tᵀ)) + flip(up(H·Tᵀ)))``
equals ``up((α·M + (1-α)·½(flip(V) + flip(H)))·Tᵀ)``, with one upsampling instead of
three.

The cache (:class:`FeatureCache`) is keyed by :func:`feature_key`: the image's bytes
(hashed), the model and its weights, the device and precision, and every image-side
field of the configuration (:func:`image_side_items`). It lives in CPU memory, bounded
in bytes, least recently used first out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import field_info
from ..identity import DEFAULT_FEATURE_CACHE_MB

if TYPE_CHECKING:
    from . import _torch_ready  # noqa: F401  (before torch)

    # isort: split
    import torch

    from ..config import ITACLIPConfig

__all__ = [
    "backbone_identity",
    "DEFAULT_FEATURE_CACHE_MB",
    "NOT_IMAGE_SIDE",
    "FeatureCache",
    "ImageFeatures",
    "feature_key",
    "image_digest",
    "image_side_items",
]


#: Configuration fields that act *after* the per-window features: those whose row of
#: the field table says ``image_side=False`` (derived, not a second table). Every other
#: field is image-side and part of the cache key.
NOT_IMAGE_SIDE = frozenset(name for name, info in field_info().items() if not info.image_side)


def image_side_items(config: ITACLIPConfig) -> tuple[tuple[str, Any], ...]:
    """``(name, value)`` of every configuration field the image features depend on.

    That is every field not in :data:`NOT_IMAGE_SIDE`: ``short_side``, ``crop``,
    ``stride``, ``attention``, ``mid_layers``, ``mid_weight``, ``drop_last_mlp``,
    ``image_engineering`` and any field added later.
    """
    return tuple(
        (f.name, getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.name not in NOT_IMAGE_SIDE
    )


def image_digest(image) -> str:
    """Hash of an image's content: its bytes (C order), shape and dtype.

    An array edited in place hashes differently; two arrays with equal content hash
    the same whatever their memory layout.
    """
    arr = np.ascontiguousarray(np.asarray(image))
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr.reshape(-1)).cast("B"))
    return h.hexdigest()


def backbone_identity(backbone, loaded_cache_key: str | None = None) -> tuple:
    """What tells one backbone's image features apart from another model's.

    The weights' identity (``backbone.cache_key``, else the loaded model's cache key
    — model name and tag or file fingerprint — else an object id for models built in
    memory) plus the sum of the parameters' version counters, which grows whenever a
    weight is modified in place.
    """
    from . import _torch_ready  # noqa: F401  (before torch)

    # isort: split
    import torch

    base = getattr(backbone, "cache_key", None) or loaded_cache_key
    if base is None:
        base = f"{type(backbone).__name__}@{id(backbone):x}"
    module = getattr(backbone, "visual", None)
    if not isinstance(module, torch.nn.Module):
        module = backbone if isinstance(backbone, torch.nn.Module) else None
    version = sum(p._version for p in module.parameters()) if module is not None else 0
    return (base, id(backbone), version)


def feature_key(image_hash: str, model_id: Any, device: str, half: bool,
                config: ITACLIPConfig) -> tuple:
    """The cache key of one image's features (hashable)."""
    return (image_hash, model_id, str(device), bool(half), image_side_items(config))


@dataclass
class ImageFeatures:
    """Per-window features of one image (see the module docstring).

    Attributes
    ----------
    size : tuple of int
        (H, W) of the image the windows tile (after the ``short_side`` resize).
    windows : list of tuple
        ``(y1, y2, x1, x2)`` of each window.
    merged : torch.Tensor
        (N, gh, gw, D) float32: mean of the normalised original/grey/blur features.
    flipped : torch.Tensor or None
        (N, gh, gw, D) float32: mean of the flipped views' normalised features,
        flipped back; ``None`` without image engineering.
    units : int
        Crop views the ViT ran to compute them (the ``image`` stage's progress total).
    """

    size: tuple[int, int]
    windows: list[tuple[int, int, int, int]]
    merged: torch.Tensor
    flipped: torch.Tensor | None
    units: int

    @property
    def nbytes(self) -> int:
        """Memory held by the feature tensors, in bytes."""
        n = self.merged.numel() * self.merged.element_size()
        if self.flipped is not None:
            n += self.flipped.numel() * self.flipped.element_size()
        return int(n)


class FeatureCache:
    """A thread-safe least-recently-used store of :class:`ImageFeatures`, bounded in bytes.

    Parameters
    ----------
    max_mb : float
        Bound on the bytes held (MB = 2**20 bytes); 0 disables the cache. An entry
        bigger than the bound is not stored.
    """

    def __init__(self, max_mb: float = DEFAULT_FEATURE_CACHE_MB):
        max_mb = float(max_mb)
        if not max_mb >= 0:  # also refuses NaN
            raise ValueError(f"feature_cache_mb must be >= 0 (0 disables the cache), got {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self._entries: OrderedDict[tuple, ImageFeatures] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """Whether anything can be stored (the bound is above 0)."""
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def keys(self) -> list[tuple]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key) -> ImageFeatures | None:
        """The entry for ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def fits(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` can be stored at all."""
        return 0 < nbytes <= self.max_bytes

    def make_room(self, nbytes: int) -> None:
        """Evict least recently used entries until ``nbytes`` more would fit."""
        with self._lock:
            self._evict(self.max_bytes - nbytes)

    def put(self, key, entry: ImageFeatures) -> bool:
        """Store ``entry`` (evicting the least recently used); False if it is too big."""
        n = entry.nbytes
        if not self.fits(n):
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._evict(self.max_bytes - n)
            self._entries[key] = entry
            self._bytes += n
        return True

    def resize(self, max_mb: float) -> None:
        """Change the bound (MB; ``0`` disables the cache), evicting what no longer fits."""
        max_mb = float(max_mb)
        if not max_mb >= 0:
            raise ValueError(f"feature_cache_mb must be >= 0 (0 disables the cache), got {max_mb!r}")
        with self._lock:
            self.max_bytes = int(max_mb * 2**20)
            self._evict(self.max_bytes)

    def clear(self) -> None:
        """Drop every entry (the counters too)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def info(self) -> dict[str, float]:
        """``entries``, ``mb`` held, ``max_mb``, ``hits`` and ``misses``."""
        with self._lock:
            return {"entries": len(self._entries), "mb": self._bytes / 2**20,
                    "max_mb": self.max_bytes / 2**20, "hits": self.hits, "misses": self.misses}

    def _evict(self, budget: int) -> None:
        while self._entries and self._bytes > budget:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
