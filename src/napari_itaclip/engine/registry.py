"""The one cache of loaded Segmenters, shared by everything in a process.

:func:`segment`, :func:`~napari_itaclip.segment_layer`, the napari widget, the command
line and the chunked-mode workers all get their :class:`Segmenter` here, so one model
with the same settings is loaded once per process, whoever asked first. The cache is
keyed on what changes the loaded model (:class:`SegmenterKey`: model, weights, device,
precision, batch bound), thread-safe, and bounded: it keeps the
:data:`MAX_SEGMENTERS` most recently used models (least recently used dropped first),
so switching models in the widget does not pile models up in memory.

A Segmenter is not meant to run two images at once; code that shares one across
threads (chunked mode's thread scheduler) holds :func:`run_lock` around each run.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..catalogue import DEFAULT_PRETRAINED

if TYPE_CHECKING:
    from .segmenter import Segmenter

__all__ = ["MAX_SEGMENTERS", "SegmenterKey", "clear", "get_segmenter", "run_lock", "size"]

#: How many loaded models the cache keeps (least recently used dropped first).
MAX_SEGMENTERS = 2

_CACHE: OrderedDict[SegmenterKey, Segmenter] = OrderedDict()
_LOCK = threading.RLock()
_RUN_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SegmenterKey:
    """What identifies a loaded model: two calls with equal keys share one Segmenter.

    Parameters
    ----------
    model : str
        open_clip model name, ``hf-hub:``/``local-dir:`` id or model-config path.
    pretrained : str or None
        Pretrained tag or local checkpoint path; ``None`` (also ``""`` and ``"none"``)
        for random weights.
    device : str
        As given (``"auto"``, ``"cpu"``, ``"cuda:1"``, ...).
    half : bool
        float16 weights (CUDA only).
    batch_memory_mb : float or None
        Bound on one batched forward; ``None`` = the engine's default for the device.
    """

    model: str = "ViT-B-16"
    pretrained: str | None = DEFAULT_PRETRAINED
    device: str = "auto"
    half: bool = False
    batch_memory_mb: float | None = None

    def __post_init__(self) -> None:
        from ..catalogue import is_default_pretrained

        pretrained = self.pretrained
        if is_default_pretrained(pretrained) and str(self.model).startswith(("hf-hub:", "local-dir:")):
            pretrained = None  # such models bring their own weights; an explicit tag stays
        if pretrained is not None:
            pretrained = os.fspath(pretrained)
            if pretrained.strip().lower() in ("", "none"):
                pretrained = None
        object.__setattr__(self, "model", os.fspath(self.model))
        object.__setattr__(self, "pretrained", pretrained)
        object.__setattr__(self, "device", str(self.device))
        object.__setattr__(self, "half", bool(self.half))
        if self.batch_memory_mb is not None:
            object.__setattr__(self, "batch_memory_mb", float(self.batch_memory_mb))

    def build(self) -> Segmenter:
        """A new (not yet loaded) :class:`Segmenter` with these settings."""
        from .segmenter import Segmenter

        return Segmenter(model=self.model, pretrained=self.pretrained, device=self.device,
                         half=self.half, batch_memory_mb=self.batch_memory_mb)


def get_segmenter(model: str | SegmenterKey = "ViT-B-16",
                  pretrained: str | None = DEFAULT_PRETRAINED,
                  device: str = "auto", *, half: bool = False,
                  batch_memory_mb: float | None = None, load: bool = False) -> Segmenter:
    """The process-wide :class:`Segmenter` for these settings (built once, then reused).

    Parameters
    ----------
    model : str or SegmenterKey
        A model name (with the other arguments), or a ready key (they are ignored).
    pretrained, device, half, batch_memory_mb
        See :class:`SegmenterKey`.
    load : bool
        Load the model now (else on the Segmenter's first use). Loading happens
        outside the cache's lock; a model that fails to load is not cached.

    Returns
    -------
    Segmenter
        The cached instance; its text-embedding cache is shared too.
    """
    key = model if isinstance(model, SegmenterKey) else SegmenterKey(
        model, pretrained, device, half, batch_memory_mb)
    with _LOCK:
        seg = _CACHE.get(key)
        if seg is None:
            seg = key.build()
            _CACHE[key] = seg
            while len(_CACHE) > MAX_SEGMENTERS:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
    if load:
        try:
            seg.load()
        except BaseException:
            with _LOCK:
                if _CACHE.get(key) is seg:
                    del _CACHE[key]
            raise
    return seg


def run_lock(segmenter) -> threading.Lock:
    """The lock to hold while ``segmenter`` runs an image when it is shared across threads."""
    with _LOCK:
        lock = _RUN_LOCKS.get(segmenter)
        if lock is None:
            lock = _RUN_LOCKS[segmenter] = threading.Lock()
        return lock


def size() -> int:
    """How many Segmenters the cache holds."""
    with _LOCK:
        return len(_CACHE)


def clear() -> None:
    """Forget every cached Segmenter (their models are freed once nothing else holds them)."""
    with _LOCK:
        _CACHE.clear()
