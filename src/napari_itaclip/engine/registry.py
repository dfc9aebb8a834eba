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

import dataclasses
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..identity import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelIdentity

if TYPE_CHECKING:
    from ..config import ITACLIPConfig
    from .segmenter import SegmentationResult, Segmenter

__all__ = ["MAX_SEGMENTERS", "SegmenterKey", "clear", "get_segmenter", "run_lock", "segment",
           "set_factory", "size"]

#: How many loaded models the cache keeps (least recently used dropped first).
MAX_SEGMENTERS = 2

_CACHE: OrderedDict[SegmenterKey, Segmenter] = OrderedDict()
_LOCK = threading.RLock()
_RUN_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: The registry's key: the model identity (normalised once; see :mod:`napari_itaclip.identity`).
SegmenterKey = ModelIdentity


def _build_segmenter(key: ModelIdentity) -> Segmenter:
    """The default factory: a new (not yet loaded) :class:`Segmenter` for ``key``."""
    from . import segmenter

    return segmenter.Segmenter(**key.segmenter_kwargs())


_FACTORY: list[Callable[[ModelIdentity], Segmenter]] = [_build_segmenter]


def set_factory(factory: Callable[[ModelIdentity], Segmenter] | None):
    """Make the registry build Segmenters with ``factory(key)`` (``None``: the default).

    Returns the previous factory, so tests can put it back. The cache is cleared, so
    nothing built by the old factory is served afterwards.
    """
    with _LOCK:
        previous = _FACTORY[0]
        _FACTORY[0] = factory or _build_segmenter
        _CACHE.clear()
    return previous


def get_segmenter(model: str | SegmenterKey = DEFAULT_MODEL,
                  pretrained: str | None = DEFAULT_PRETRAINED,
                  device: str = "auto", *, half: bool = False,
                  batch_memory_mb: float | None = None, feature_cache_mb: float | None = None,
                  load: bool = False) -> Segmenter:
    """The process-wide :class:`Segmenter` for these settings (built once, then reused).

    Parameters
    ----------
    model : str or SegmenterKey
        A model name (with the other arguments), or a ready key (they are ignored).
    pretrained, device, half, batch_memory_mb, feature_cache_mb
        See :class:`~napari_itaclip.identity.ModelIdentity`. A ``feature_cache_mb``
        (given, or in the key) resizes the cached Segmenter's feature cache.
    load : bool
        Load the model now (else on the Segmenter's first use). Loading happens
        outside the cache's lock; a model that fails to load is not cached.

    Returns
    -------
    Segmenter
        The cached instance; its text-embedding cache is shared too.
    """
    key = model.identity if isinstance(model, ModelIdentity) else ModelIdentity(
        model, pretrained, device, half, batch_memory_mb, feature_cache_mb)
    with _LOCK:
        seg = _CACHE.get(key)
        if seg is None:
            seg = _FACTORY[0](key)
            _CACHE[key] = seg
            while len(_CACHE) > MAX_SEGMENTERS:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
            cache = getattr(seg, "feature_cache", None)  # (test doubles may have none)
            if key.feature_cache_mb is not None and cache is not None:
                cache.resize(key.feature_cache_mb)
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


def segment(
    image, vocabulary, *, model=DEFAULT_MODEL, pretrained=DEFAULT_PRETRAINED, device="auto",
    config: ITACLIPConfig | None = None, preset: str | None = None, half: bool = False,
    feature_cache_mb: float | None = None, exemplars=None, **config_overrides,
) -> SegmentationResult:
    """One-call segmentation; the model is loaded once (the registry's front end).

    Parameters
    ----------
    image : array-like
        See :meth:`~.segmenter.Segmenter.segment`.
    vocabulary : Vocabulary, str or list of str
        ``["cat", "dog"]``, ``"cell, nucleus, background"`` or the text form.
    model, pretrained, device
        As for :class:`~.segmenter.Segmenter`. The Segmenter comes from the process-wide
        cache (:func:`get_segmenter`), which ``segment_layer`` and the widget share.
    config : ITACLIPConfig, optional
        Configuration (default: ``preset`` or ``balanced``).
    preset : str, optional
        Name of a preset to start from.
    half : bool
        float16 weights (CUDA only); part of the cache key.
    feature_cache_mb : float, optional
        Bound of the image-feature cache (``0`` disables it; default: the engine's).
    exemplars : Exemplars, optional
        Painted exemplars (see :meth:`~.segmenter.Segmenter.segment`); ``vocabulary``
        may then be ``None`` (exemplar-only classes).
    **config_overrides
        ITACLIPConfig fields to replace, e.g. ``stride=112``.
    """
    from ..config import ITACLIPConfig

    if config is None:
        config = ITACLIPConfig.preset(preset) if preset else ITACLIPConfig()
    if config_overrides:
        config = dataclasses.replace(config, **config_overrides)
    if not isinstance(model, (str, bytes)) and hasattr(model, "parameters"):  # a built model
        from .segmenter import Segmenter

        seg = Segmenter(model, pretrained, device, config, half=half,
                        feature_cache_mb=feature_cache_mb)
    else:
        seg = get_segmenter(model, pretrained, device, half=half,
                            feature_cache_mb=feature_cache_mb)
    return seg.segment(image, vocabulary, config=config, exemplars=exemplars)
