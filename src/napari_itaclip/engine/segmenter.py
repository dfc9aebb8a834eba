"""The Segmenter: ITACLIP end to end, as a generator that yields progress.

``Segmenter.iter_segment`` is the one implementation; ``Segmenter.segment`` drains
it for scripts, the napari widget runs it in a ``thread_worker`` (cancel = stop
iterating) and the command line drives it per image.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch

from .._env import cache_root
from ..config import ITACLIPConfig
from ..identity import DEFAULT_MODEL, DEFAULT_PRETRAINED, normalise_pretrained
from ..progress import IMAGE, IMAGE_CACHED, LOAD, POST, REFINE, TEXT, drain, mapped
from ..vocabulary import Vocabulary
from .backbone import make_backbone
from .features import (
    DEFAULT_FEATURE_CACHE_MB,
    FeatureCache,
    ImageFeatures,
    backbone_identity,
    feature_key,
    image_digest,
)
from .images import MEAN, STD, prepare_image_uint8
from .memory import check_segmentation, model_bytes, segmentation_estimate
from .models import LoadedModel, load_model, resolve_device
from .postprocess import labels_and_probabilities, query_to_class, row_bands, vocabulary_for
from .refine import iter_pamr
from .resize import mmseg_resize_shape, resize_uint8_linear
from .result import SegmentationResult, at_input_size
from .text import TextEncoder, mix_aux
from .windows import (
    BatchBudget,
    crops_per_batch,
    iter_window_logits,
    plan_windows,
    upsample,
)

if TYPE_CHECKING:
    from .exemplars import Exemplars
    from .memory_model import MemoryEstimate

__all__ = ["Progress", "SegmentationResult", "Segmenter", "cache_dir"]


class Progress(NamedTuple):
    """One progress report: ``done`` of ``total`` units of ``stage``.

    Stages (:data:`napari_itaclip.progress.STAGES`), in order: ``load`` (model), ``text``
    (prompts encoded), ``image`` (crop views through the ViT), ``refine`` (PAMR steps),
    ``post`` (labels). When the
    image's features come from the feature cache, the ``image`` stage is replaced by
    one ``image-cached`` report with ``done == total`` (the crop views that were not
    run again).
    """

    stage: str
    done: int
    total: int


def cache_dir() -> Path:
    """Root of the on-disk caches: ``$NAPARI_ITACLIP_CACHE_DIR`` or the user cache dir."""
    return cache_root()


class Segmenter:
    """ITACLIP with one CLIP model, reusable across images and vocabularies.

    Parameters
    ----------
    model : str, path or torch.nn.Module
        open_clip model name (e.g. ``"ViT-B-16"``), an ``hf-hub:org/name`` or
        ``local-dir:/path`` id (configuration and weights from that hub repository or
        folder, e.g. BiomedCLIP; see :mod:`napari_itaclip.catalogue`), a model-config
        ``.json`` path, or a built open_clip model.
    pretrained : str, path or None
        Pretrained tag (default ``"openai"``, downloaded and cached by open_clip), a local
        checkpoint file, or ``None`` (random weights / the instance's own weights).
        ``hf-hub:``/``local-dir:`` models always use their own weights: leave the
        default or pass ``None``; another value is refused.
    device : str
        ``"auto"`` (cuda, then mps, then cpu), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    config : ITACLIPConfig, optional
        Default configuration (the ``balanced`` preset when omitted).
    half : bool
        Run in float16 (CUDA only).
    batch_memory_mb : float, optional
        Bound on the activation memory of one batched ViT forward; crops of all
        windows and views are batched up to it. Default: 2048 on a GPU (large
        batches keep it busy), 128 on the CPU (about two windows with their five
        views: measured faster there than large batches, which leave the caches).
    cache_dir : path, optional
        On-disk cache of text embeddings (default :func:`cache_dir`; ``False``
        disables it).
    tokenizer : callable, optional
        Tokenizer override (default: open_clip's for the model).
    feature_cache_mb : float, optional
        Bound, in MB, of the in-memory cache of per-window image features (default
        1024; ``0`` disables it). A new vocabulary or text-side setting on an image
        already segmented then skips the ViT with identical outputs; least recently
        used images go first; an image whose features exceed the bound is not cached.
        Held in CPU memory, float32 (about 0.8 MB per window with ViT-B/16). See
        :meth:`clear_cache`.
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module = DEFAULT_MODEL,
        pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
        device: str | torch.device = "auto",
        config: ITACLIPConfig | None = None,
        *,
        half: bool = False,
        batch_memory_mb: float | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        tokenizer=None,
        feature_cache_mb: float | None = None,
    ):
        if config is not None and not isinstance(config, ITACLIPConfig):
            raise TypeError(f"config must be an ITACLIPConfig, got {type(config).__name__}")
        if batch_memory_mb is not None and batch_memory_mb <= 0:
            raise ValueError(f"batch_memory_mb must be > 0, got {batch_memory_mb!r}")
        self.model_name = model
        self.pretrained = normalise_pretrained(model, pretrained)
        self.device = resolve_device(device)
        if batch_memory_mb is None:
            batch_memory_mb = 128 if self.device.type == "cpu" else 2048
        if half and self.device.type != "cuda":
            raise ValueError(
                f"half precision is only supported on CUDA (device is {self.device.type})"
            )
        self.half = bool(half)
        self.config = config or ITACLIPConfig()
        self.batch_memory_mb = float(batch_memory_mb)
        self._cache_dir = cache_dir
        self._tokenizer = tokenizer
        self._features = FeatureCache(
            DEFAULT_FEATURE_CACHE_MB if feature_cache_mb is None else feature_cache_mb
        )
        self._loaded = None
        self._backbone = None
        self._text = None
        self._lock = threading.RLock()
        self._signature_memo = None  # (model stamp, signature): prototypes.model_signature

    def __repr__(self) -> str:
        name = self.model_name if not isinstance(self.model_name, torch.nn.Module) else "<model>"
        return f"Segmenter(model={name!r}, pretrained={self.pretrained!r}, device='{self.device}')"

    @classmethod
    def from_components(
        cls, backbone, text_encoder, *, device: str | torch.device = "cpu",
        config: ITACLIPConfig | None = None, batch_memory_mb: float | None = None,
        feature_cache_mb: float | None = None,
    ) -> Segmenter:
        """A segmenter around ready-made parts instead of an open_clip model.

        ``backbone`` follows :class:`~.backbone.DenseBackbone` (``patch_size`` and
        ``dense_features``; optionally ``num_heads``, ``width`` for the memory
        estimate); ``text_encoder`` has ``iter_encode(texts)``, a generator yielding
        ``(done, total)`` and returning L2-normalised features (n, D). This is the
        extension point for other vision towers and for constructed test models.
        The feature cache tells backbones apart by ``backbone.cache_key`` when it has
        one (else by identity), plus the parameters' version counters when it is a
        ``torch.nn.Module``.
        """
        seg = cls(model=None, pretrained=None, device=device, config=config,
                  batch_memory_mb=batch_memory_mb, cache_dir=False,
                  feature_cache_mb=feature_cache_mb)
        seg._backbone = backbone
        seg._text = text_encoder
        seg._loaded = LoadedModel(None, None, None, f"{type(backbone).__name__} components")
        return seg

    # -- model ---------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._loaded is not None

    def load(self) -> Segmenter:
        """Load the model (once; later calls return at once)."""
        with self._lock:
            if self._loaded is None:
                loaded = load_model(self.model_name, self.pretrained, device=self.device,
                                    half=self.half, tokenizer=self._tokenizer)
                backbone = make_backbone(loaded.model)
                root = None
                if self._cache_dir is not False:
                    root = Path(self._cache_dir) if self._cache_dir else cache_dir()
                self._text = TextEncoder(loaded.model, loaded.tokenizer, self.device,
                                         cache_key=loaded.cache_key, cache_dir=root)
                self._backbone = backbone
                self._loaded = loaded
        return self

    @property
    def model(self) -> torch.nn.Module:
        """The CLIP model (loads it if needed)."""
        return self.load()._loaded.model

    @property
    def text_encoder(self) -> TextEncoder:
        """The cached template-ensemble text encoder."""
        return self.load()._text

    @property
    def backbone(self):
        """The dense-feature adapter of the vision tower."""
        return self.load()._backbone

    # -- text ----------------------------------------------------------------------
    def iter_query_features(
        self, vocabulary: Vocabulary, config: ITACLIPConfig
    ) -> Generator[Progress, None, torch.Tensor]:
        """(Q, D) query features with auxiliary texts mixed in (:func:`.text.mix_aux`)."""
        texts = list(vocabulary.queries)
        aux = [c.aux for c in vocabulary if c.aux]
        gen = self.text_encoder.iter_encode(texts + aux)
        feats = yield from mapped(gen, lambda p: Progress(TEXT, *p))
        return mix_aux(feats[: len(texts)], feats[len(texts):], vocabulary, config.aux_weight)

    # -- feature cache -------------------------------------------------------------
    @property
    def feature_cache(self) -> FeatureCache:
        """The in-memory cache of per-window image features (see ``feature_cache_mb``)."""
        return self._features

    def clear_cache(self) -> None:
        """Empty the image-feature cache (text embeddings are kept: they are small and
        do not depend on images).
        """
        self._features.clear()

    def has_cached_features(self, image, *, config: ITACLIPConfig | None = None) -> bool:
        """Whether segmenting ``image`` with ``config`` would reuse cached image features.

        Hashes the image; loads nothing (``False`` while the model is not loaded) and
        leaves the cache's order and counters alone.
        """
        cfg = config or self.config
        if not self._features.enabled or not self.is_loaded:
            return False
        key = feature_key(image_digest(np.asarray(image)), self.model_identity,
                          str(self.device), self.half, cfg)
        return key in self._features

    @property
    def weights_key(self) -> str | None:
        """The identity of the loaded weights: model name and pretrained tag, or the
        weight files' fingerprints (path, size, modification time); ``None`` for a model
        built in memory. Loads the model. Keys the on-disk text-embedding cache.
        """
        return self.load()._loaded.cache_key

    @property
    def model_identity(self) -> tuple:
        """What tells this segmenter's image features apart from another model's.

        ``(base, backbone id, version)``: the weights' identity (``backbone.cache_key``,
        else :attr:`weights_key`, else an object id for models built in memory), the
        backbone object (two segmenters never share features), and the sum of the
        parameters' version counters, which grows whenever a weight is modified in place.
        Part of the feature cache's keys; does not load the model.
        """
        loaded = self._loaded
        return backbone_identity(self._backbone, loaded.cache_key if loaded else None)

    # -- image ---------------------------------------------------------------------
    def _crops_per_batch(self, h: int, w: int) -> int:
        """How many ``h`` x ``w`` crops one forward takes (:func:`.windows.crops_per_batch`)."""
        return crops_per_batch(h, w, self._budget())

    def _budget(self) -> BatchBudget:
        return BatchBudget.of(self.backbone, half=self.half, batch_memory_mb=self.batch_memory_mb)

    def iter_logits(
        self, image: torch.Tensor, text: torch.Tensor, config: ITACLIPConfig
    ) -> Generator[Progress, None, torch.Tensor]:
        """Sliding-window logits (Q, H, W) of a normalised (3, H, W) tensor (no cache)."""
        logits, _ = yield from self._iter_logits(image, text, config)
        return logits

    def _iter_logits(
        self, image: torch.Tensor, text: torch.Tensor, config: ITACLIPConfig, *,
        cached: ImageFeatures | None = None, keep: bool = False,
    ) -> Generator[Progress, None, tuple[torch.Tensor, ImageFeatures | None]]:
        """Logits from ``cached`` features or through the ViT (see
        :func:`.windows.iter_window_logits`); with ``keep``, a ViT run also returns the
        features when they fit the feature cache.
        """
        _, H, W = image.shape
        plan = plan_windows(H, W, config, self._budget())
        gen = iter_window_logits(
            self.backbone, image, text, config, plan,
            dtype=torch.float16 if self.half else torch.float32, features=cached,
            keep_in=self._features if keep else None)
        return (yield from mapped(gen, lambda p: Progress(IMAGE, *p)))

    def _normalised(self, rgb: np.ndarray, cfg: ITACLIPConfig
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, h, w) device tensor of a prepared uint8 image, resized and normalised; (H, W)."""
        H0, W0 = rgb.shape[:2]
        # the authors' MMSeg resize, exactly (docs/engine.md, section "Sliding window")
        if cfg.short_side is not None:
            rgb = resize_uint8_linear(rgb, *mmseg_resize_shape(H0, W0, cfg.short_side))
        rgb = np.require(rgb, requirements="W")  # torch refuses to wrap read-only arrays
        x = torch.from_numpy(rgb).permute(2, 0, 1).to(self.device, torch.float32)
        mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(3, 1, 1)
        return (x - mean) / std, (H0, W0)

    # -- exemplars -----------------------------------------------------------------
    def iter_exemplars(
        self, image, masks, config: ITACLIPConfig | None = None
    ) -> Generator[Progress, None, Exemplars]:
        """:meth:`exemplars` as a generator of :class:`Progress` (``load``, ``image`` or
        ``image-cached`` per plane with strokes); returns the :class:`Exemplars`.
        """
        from .prototypes import iter_make_exemplars

        cfg = config or self.config
        if not isinstance(cfg, ITACLIPConfig):
            raise TypeError(f"config must be an ITACLIPConfig, got {type(cfg).__name__}")
        if cfg.object_size is not None:  # strokes on the working image (see segment)
            from .scale import working_factor, working_strokes

            image, masks = working_strokes(image, masks, working_factor(cfg.object_size))
            cfg = cfg.replace(object_size=None, short_side=None)
        gen = iter_make_exemplars(self, image, masks, cfg)
        return (yield from mapped(gen, lambda p: Progress(*p)))

    def exemplars(
        self, image, masks, config: ITACLIPConfig | None = None, *,
        progress: Callable[[Progress], Any] | None = None,
    ) -> Exemplars:
        """Class prototypes from strokes painted on ``image`` (or a stack (planes, H, W[,
        3])): ``masks`` is ``{class name: bool mask}``, (H, W) or (planes, H, W), not
        overlapping. Features of planes with strokes come from the cache or are computed
        (and cached). See docs/engine.md, "Exemplars".
        """
        return drain(self.iter_exemplars(image, masks, config=config), progress)

    # -- memory --------------------------------------------------------------------
    def model_bytes(self) -> int:
        """Bytes of the loaded model's parameters and buffers (0 while not loaded)."""
        return model_bytes(self)

    def memory_estimate(self, image, vocabulary, *, config: ITACLIPConfig | None = None,
                        exemplars: Exemplars | None = None) -> MemoryEstimate:
        """The memory :meth:`segment` would add to this process, step by step (host, and
        GPU for a CUDA model; :mod:`.memory_model`). ``image`` needs only ``shape`` and
        ``dtype``; nothing is loaded or computed.
        """
        return segmentation_estimate(self, image, vocabulary_for(vocabulary, exemplars),
                                     config or self.config, exemplars)

    # -- everything ----------------------------------------------------------------
    def iter_segment(
        self, image, vocabulary, *, config: ITACLIPConfig | None = None,
        exemplars: Exemplars | None = None,
    ) -> Generator[Progress, None, SegmentationResult]:
        """Segment one image; yields :class:`Progress`, returns the result.

        Inputs are checked before any work: a bad image or vocabulary raises at the
        first ``next()`` and nothing is loaded or computed. Stopping the iteration
        (``close()``) cancels between batches. With ``exemplars`` (see
        :meth:`exemplars`) their prototypes are scored as extra queries; ``vocabulary``
        may then be ``None`` (exemplar-only classes).
        """
        import time

        cfg = config or self.config
        if not isinstance(cfg, ITACLIPConfig):
            raise TypeError(f"config must be an ITACLIPConfig, got {type(cfg).__name__}")
        if cfg.object_size is not None:  # at the working resolution, then mapped back
            return (yield from self._iter_segment_scaled(image, vocabulary, cfg, exemplars))
        arr = np.asarray(image)
        vocab = vocabulary_for(vocabulary, exemplars)
        check_segmentation(self, arr, vocab, cfg, exemplars)  # before anything image-sized
        rgb = prepare_image_uint8(arr)
        # content hash now: an array edited during or after the run must not match
        need_digest = self._features.enabled or exemplars is not None
        digest = image_digest(arr) if need_digest else None
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if not self.is_loaded:
            yield Progress(LOAD, 0, 1)
            self.load()  # the model now counts in the free memory: check with it
            check_segmentation(self, arr, vocab, cfg, exemplars, after_load=True)
            yield Progress(LOAD, 1, 1)
        timings["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        from .prototypes import iter_queries  # text queries, then any exemplars'

        scoring, text = yield from iter_queries(self, vocab, exemplars, cfg)
        timings["text"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        x, (H0, W0) = self._normalised(rgb, cfg)
        key = entry = None
        if self._features.enabled:
            key = feature_key(digest, self.model_identity, str(self.device), self.half, cfg)
            entry = self._features.get(key)
            if entry is not None and entry.size != tuple(x.shape[-2:]):  # pragma: no cover
                entry = None
        if entry is not None:
            yield Progress(IMAGE_CACHED, entry.units, entry.units)
        logits, store = yield from self._iter_logits(
            x, text, cfg, cached=entry, keep=key is not None and entry is None)
        if store is not None:
            self._features.put(key, store)
        if scoring is not None:
            scoring.calibrate(logits)
        timings["image_cached"] = 0.0 if entry is None else 1.0
        if logits.shape[-2:] != (H0, W0):
            logits = upsample(logits[None], H0, W0)[0]
            if cfg.pamr_steps > 0:  # PAMR's guide, at the output size
                x = upsample(x[None], H0, W0)[0]
        timings["image"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if cfg.pamr_steps > 0:
            gen = iter_pamr(x[None], logits[None], cfg.pamr_steps, cfg.pamr_dilations, inplace=True)
            x = None  # the guide is freed once PAMR has its affinities (engine/memory_model.py)
            logits = (yield from mapped(gen, lambda p: Progress(REFINE, *p)))[0]
        x = None
        timings["refine"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        yield Progress(POST, 0, 1)
        res = _post(logits, vocab, scoring, digest, cfg, timings, self.half)
        timings["post"] = time.perf_counter() - t0
        yield Progress(POST, 1, 1)
        return res

    def _iter_segment_scaled(self, image, vocabulary, cfg: ITACLIPConfig, exemplars
                             ) -> Generator[Progress, None, SegmentationResult]:
        """``object_size``: segment the working image (docs/models.md, "Object size"),
        then map the result to the input's size.
        """
        from .scale import block_mean_uint8, working_factor

        factor = working_factor(cfg.object_size)
        arr = np.asarray(image)
        vocab = vocabulary_for(vocabulary, exemplars)  # a bad vocabulary before any work
        # the working run and the maps at the input's size, before anything image-sized
        check_segmentation(self, arr, vocab, cfg, exemplars)
        rgb = prepare_image_uint8(arr)
        work = block_mean_uint8(rgb, factor)
        inner = cfg.replace(object_size=None, short_side=None)
        res = yield from self.iter_segment(work, vocabulary, config=inner, exemplars=exemplars)
        return at_input_size(res, rgb.shape[:2], factor, cfg)

    def segment(
        self, image, vocabulary, *, config: ITACLIPConfig | None = None,
        progress: Callable[[Progress], Any] | None = None,
        exemplars: Exemplars | None = None,
    ) -> SegmentationResult:
        """Segment one image (drains :meth:`iter_segment`).

        Parameters
        ----------
        image : array-like
            (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 as is, other dtypes
            rescaled by robust percentiles and rounded to uint8 (see
            :func:`~.images.prepare_image_uint8`).
        vocabulary : Vocabulary, str, list of str or None
            See :meth:`Vocabulary.coerce`; ``None`` with ``exemplars``: exemplar-only.
        config : ITACLIPConfig, optional
            Overrides the segmenter's default configuration for this call.
        progress : callable, optional
            Called with each :class:`Progress`.
        exemplars : Exemplars, optional
            Painted exemplars (:meth:`exemplars`): a name equal to a class's display
            name adds to that class, other names are appended as exemplar-only classes
            (in the set's order). On the plane they were painted on, stroke pixels keep
            their class. Without them the output is exactly the text-only one.
        """
        return drain(self.iter_segment(image, vocabulary, config=config, exemplars=exemplars),
                     progress)


def _check_finite(sim: torch.Tensor, prob: torch.Tensor, half: bool) -> None:
    """A result holding NaN or infinity is an error, never a silent label 0.

    Checked in bands of rows: ``isfinite`` over all the maps at once would take about
    seven bytes per value for a moment.
    """
    bad = torch.zeros(prob.shape[1:], dtype=torch.bool, device=prob.device)
    for rows in row_bands(*prob.shape):
        bad[rows] = ~(torch.isfinite(prob[:, rows]).all(dim=0)
                      & torch.isfinite(sim[:, rows]).all(dim=0))
    if not bool(bad.any()):
        return
    from ..errors import NonFiniteResultError

    share = float(bad.float().mean())
    cause = ("float16 overflow: run without --half / half=True" if half else
             "weights that produce NaN or infinite features (a corrupt or mismatched "
             "checkpoint)")
    raise NonFiniteResultError(
        f"{share:.1%} of the pixels got non-finite (NaN or infinite) class scores, so they "
        f"cannot be labelled; likely cause: {cause}")


def _post(logits: torch.Tensor, vocab: Vocabulary | None, scoring, digest: str | None,
          cfg: ITACLIPConfig, timings: dict[str, float], half: bool = False
          ) -> SegmentationResult:
    """Class maps, probabilities and labels from refined per-query logits; with exemplars,
    stroke pixels of the plane they were painted on keep their class.
    """
    out = vocab if scoring is None else scoring.vocabulary
    qc = vocab.query_class if scoring is None else scoring.query_class
    sim, prob = query_to_class(logits, qc, len(out), cfg.logit_scale)
    _check_finite(sim, prob, half)
    sim, raw = sim.float().cpu().numpy(), prob.float().cpu().numpy()
    labels, probs = labels_and_probabilities(raw, cfg)
    keep = None if scoring is None else scoring.keep(labels, digest)
    return SegmentationResult(labels, probs, sim, out.class_names, out, cfg, raw, timings, keep)
