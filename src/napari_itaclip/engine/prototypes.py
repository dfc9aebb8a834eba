"""Exemplars in the engine: pooling strokes into prototypes, and scoring them.

Pooling (:func:`iter_make_exemplars`). For each plane a stroke touches, the plane's
per-window features come from the feature cache or one ViT run (then cached). Each
class's stroke mask is resized as the image is (``short_side``), cut into every window
(padded like the crop with ``pad_to_patch``) and averaged over each patch cell the ViT
saw: the coverage weight of the cell is the fraction of its pixels under the stroke.
The class's pooled features are the coverage-weighted means, over every window and
plane, of the window's un-flipped (``merged``) and flipped-back (``flipped``) features;
its prototype, ``normalise(α·merged + (1-α)·flipped)``, is the exact feature the text
queries are scored against in :func:`.windows.score_crops`.

Scoring (:class:`ExemplarScoring`). Prototypes are appended to the text queries, so
they go through the same window stitching, views, PAMR, softmax and thresholds; a
class's similarity is the max over its queries. Exemplar logits are image-image
cosines, on another scale than image-text ones: when the text has queries too, the
exemplar rows of the stitched logits are mapped affinely onto the text rows' scale
(:func:`calibrate`, see docs/engine.md, "Exemplars"). Stroke pixels of the plane the
strokes were painted on keep their class (:func:`keep_strokes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Mapping
from dataclasses import dataclass

import numpy as np

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch
import torch.nn.functional as F

from ..errors import ExemplarsError
from ..progress import IMAGE, IMAGE_CACHED, LOAD
from ..vocabulary import VocabClass, Vocabulary
from .exemplars import Exemplars, Strokes
from .features import ImageFeatures, feature_key, image_digest, image_side_items
from .images import prepare_image_uint8
from .windows import BatchBudget, crop_features, plan_windows

__all__ = ["ExemplarScoring", "calibrate", "check_masks", "combine_classes",
           "iter_make_exemplars", "iter_queries", "iter_plane_features", "keep_strokes", "model_signature",
           "pool_plane"]


def model_signature(seg) -> str:
    """Identity of a Segmenter's image features that outlives the process (written into
    exemplar files): the weights' name and tag or file fingerprint (as the feature cache
    keys them); for models built in memory a digest of the vision tower's weights
    (computed once per model and parameter version); for constructed components without
    a ``cache_key``, the backbone's class.
    """
    bb = seg.backbone
    base = getattr(bb, "cache_key", None) or seg.weights_key
    if base is not None:
        return str(base)
    module = getattr(bb, "visual", None)
    if not isinstance(module, torch.nn.Module):
        module = bb if isinstance(bb, torch.nn.Module) else None
    if module is None:
        return f"components:{type(bb).__module__}.{type(bb).__qualname__}"
    stamp = (id(module), sum(p._version for p in module.parameters()))
    known = getattr(seg, "_signature_memo", None)
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    sig = f"weights:{type(module).__name__}:{h.hexdigest()}"
    seg._signature_memo = (stamp, sig)
    return sig


def check_masks(image, masks: Mapping[str, object]) -> tuple[object, list[str], np.ndarray]:
    """``(image, names, masks)`` checked: masks as one (planes, K, H, W) bool array, the
    image with a leading plane axis (a numpy or dask array is not loaded: only the
    planes with strokes are read later).

    A 2-D mask (H, W) goes with one image (H, W[, 3|4]); a 3-D mask (planes, H, W) with
    a stack (planes, H, W[, 3|4]). Masks must be boolean (or 0/1), of one shape, must
    not overlap, and each must hold at least one pixel.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ExemplarsError("masks must be a non-empty mapping {class name: boolean mask}")
    arr = image if hasattr(image, "shape") and hasattr(image, "ndim") else np.asarray(image)
    names = [str(n) for n in masks]
    ms = []
    for name, m in masks.items():
        m = np.asarray(m)
        if m.dtype != bool:
            if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
                raise ExemplarsError(f"the mask of {name!r} must be boolean (or 0/1)")
            m = m != 0
        ms.append(m)
    shape = ms[0].shape
    if any(m.shape != shape for m in ms) or len(shape) not in (2, 3):
        raise ExemplarsError("masks must all have one shape, (H, W) or (planes, H, W); got "
                             + ", ".join(str(m.shape) for m in ms))
    stack = np.stack(ms, axis=-3)  # (K, H, W) or (P, K, H, W)
    if stack.ndim == 3:
        stack = stack[None]
        arr = arr[None]
    if arr.ndim not in (3, 4) or arr.shape[:3] != (stack.shape[0], *stack.shape[2:]) or (
            arr.ndim == 4 and arr.shape[-1] not in (3, 4)):
        raise ExemplarsError(f"masks of shape {shape} do not fit an image of shape "
                             f"{tuple(image.shape) if hasattr(image, 'shape') else '?'}")
    if (stack.sum(axis=1) > 1).any():
        raise ExemplarsError("masks overlap: each pixel can be an exemplar of one class only")
    empty = [n for n, k in zip(names, stack.any(axis=(0, 2, 3))) if not k]
    if empty:
        raise ExemplarsError(f"empty mask for {', '.join(map(repr, empty))}")
    return arr, names, stack


def iter_plane_features(seg, plane: np.ndarray, digest: str, cfg
                        ) -> Generator[tuple, None, ImageFeatures]:
    """One plane's per-window features: from ``seg``'s feature cache, or through the
    ViT in the groups a segmentation uses (then cached). Yields ``(stage, done, total)``.
    """
    x, _ = seg._normalised(prepare_image_uint8(plane), cfg)
    key = None
    if seg.feature_cache.enabled:
        key = feature_key(digest, seg.model_identity, str(seg.device), seg.half, cfg)
        entry = seg.feature_cache.get(key)
        if entry is not None and entry.size == tuple(x.shape[-2:]):
            yield (IMAGE_CACHED, entry.units, entry.units)
            return entry
    _, H, W = x.shape
    plan = plan_windows(H, W, cfg, seg._budget())
    dtype = torch.float16 if seg.half else torch.float32
    merged, flipped, done = [], [], 0
    yield (IMAGE, 0, plan.units)
    for s0, s1 in plan.groups():
        crops = torch.stack([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in plan.windows[s0:s1]])
        m, f = crop_features(seg.backbone, crops.to(dtype), cfg)
        merged.append(m.cpu())
        flipped.append(None if f is None else f.cpu())
        done += (s1 - s0) * plan.views
        yield (IMAGE, done, plan.units)
    entry = ImageFeatures(plan.size, list(plan.windows), torch.cat(merged),
                          None if flipped[0] is None else torch.cat(flipped), plan.units)
    if key is not None:
        seg.feature_cache.put(key, entry)
    return entry


def pool_plane(entry: ImageFeatures, masks: np.ndarray, cfg, budget: BatchBudget
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Coverage-weighted sums over one plane: ``(weights (K,), merged (K, D), flipped)``.

    ``masks`` (K, H0, W0) bool, in the plane's coordinates; they are resized onto the
    features' image (area averaging) and cut into the windows.
    """
    H, W = entry.size
    cover = torch.from_numpy(masks.astype(np.float32))
    if cover.shape[-2:] != (H, W):
        cover = F.interpolate(cover[None], size=(H, W), mode="area")[0]
    plan = plan_windows(H, W, cfg, budget)
    win = torch.stack([cover[:, y1:y2, x1:x2] for y1, y2, x1, x2 in entry.windows])
    if plan.pad is not None and any(plan.pad):
        p = plan.pad
        win = F.pad(win, (p.left, p.right, p.top, p.bottom))
    gh, gw = entry.merged.shape[1:3]
    ph, pw = budget.patch_size
    cov = F.avg_pool2d(win[..., : gh * ph, : gw * pw], (ph, pw)).double()  # (N, K, gh, gw)
    weights = cov.sum(dim=(0, 2, 3))
    merged = torch.einsum("nkyx,nyxd->kd", cov, entry.merged.double())
    flipped = None
    if entry.flipped is not None:
        flipped = torch.einsum("nkyx,nyxd->kd", cov, entry.flipped.double())
    return weights, merged, flipped


def iter_make_exemplars(seg, image, masks: Mapping[str, object], cfg
                        ) -> Generator[tuple, None, Exemplars]:
    """Exemplars of ``masks`` painted on ``image`` (see :meth:`Segmenter.exemplars`).

    Yields ``(stage, done, total)``: ``load``, then per plane with strokes ``image``
    (or ``image-cached``) reports.
    """
    arr, names, stack = check_masks(image, masks)
    if not seg.is_loaded:
        yield (LOAD, 0, 1)
        seg.load()
        yield (LOAD, 1, 1)
    k = len(names)
    w_sum = torch.zeros(k, dtype=torch.float64)
    m_sum = f_sum = None
    strokes: dict[str, Strokes] = {}
    for p in np.flatnonzero(stack.any(axis=(1, 2, 3))):
        plane = np.asarray(arr[p])
        digest = image_digest(plane)
        entry = yield from iter_plane_features(seg, plane, digest, cfg)
        w, m, f = pool_plane(entry, stack[p], cfg, seg._budget())
        w_sum += w
        m_sum = m if m_sum is None else m_sum + m
        if f is not None:
            f_sum = f if f_sum is None else f_sum + f
        any_px = stack[p].any(axis=0).ravel()
        index = np.flatnonzero(any_px).astype(np.int64)
        code = stack[p].reshape(k, -1)[:, index].argmax(axis=0).astype(np.int32)
        new = Strokes(tuple(stack.shape[2:]), index, code)
        old = strokes.get(digest)  # two identical planes in one stack: unite their strokes
        strokes[digest] = new if old is None else old.union(new)
    bad = [n for n, w in zip(names, w_sum.tolist()) if not w > 0]
    if bad:
        raise ExemplarsError(f"the strokes of {', '.join(map(repr, bad))} cover no patch the "
                             "model sees (too close to the image's right or bottom edge?)")
    merged = (m_sum / w_sum[:, None]).numpy()
    flipped = None if f_sum is None else (f_sum / w_sum[:, None]).numpy()
    return Exemplars(names, w_sum.numpy(), merged, flipped, model=model_signature(seg),
                     image_side=dict(image_side_items(cfg)), strokes=strokes)


def calibrate(logits: torch.Tensor, n_text: int) -> torch.Tensor:
    """Map the exemplar rows ``logits[n_text:]`` onto the text rows' scale, in place.

    ``e' = μ_t + (σ_t / σ_e)·(e - μ_e)``: the mean and standard deviation of the
    exemplar logits over the image's pixels and exemplar queries become those of the
    text logits over its pixels and text queries (estimated on this image). Affine, so
    it commutes with the stitching, the upsampling and PAMR (convex combinations);
    nothing happens without text rows (exemplar-only classes keep their cosines).
    """
    if n_text == 0 or n_text >= logits.shape[0]:
        return logits
    t, e = logits[:n_text].double(), logits[n_text:].double()
    mt, st = t.mean(), t.std()
    me, se = e.mean(), e.std()
    scale = st / se if float(se) > 1e-12 and float(st) > 0 else torch.ones((), dtype=torch.float64)
    logits[n_text:] = (mt + scale * (e - me)).to(logits.dtype)
    return logits


def keep_strokes(labels: np.ndarray, keep: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``labels`` with each stroke pixel set to its class (in place)."""
    if keep is not None and len(keep[0]):
        labels.reshape(-1)[keep[0]] = keep[1]
    return labels


def iter_queries(seg, vocab: Vocabulary | None, exemplars: Exemplars | None, cfg
                 ) -> Generator[object, None, tuple[ExemplarScoring | None, torch.Tensor]]:
    """``(scoring, queries)`` of a segmentation: the text queries (progress passed
    through), then, with ``exemplars``, their prototypes (``scoring`` is then how they
    combine; ``None`` without exemplars, the text alone exactly as always).
    """
    if exemplars is None:
        return None, (yield from seg.iter_query_features(vocab, cfg))
    scoring = ExemplarScoring.build(vocab, exemplars, cfg, model_signature(seg))
    if vocab is not None:
        text = yield from seg.iter_query_features(vocab, cfg)
    else:
        text = torch.zeros((0, exemplars.dim), dtype=torch.float32)
    return scoring, scoring.queries(text)


def combine_classes(vocab: Vocabulary | None, names) -> tuple[Vocabulary, list[int]]:
    """The output classes of ``vocab`` with exemplars ``names`` (a name equal to a
    class's display name joins it; others are appended in order), and each name's class.
    """
    classes = list(vocab.classes) if vocab is not None else []
    index = {c.name: i for i, c in enumerate(classes)}
    ex_class = []
    for name in names:
        if name not in index:
            index[name] = len(classes)
            classes.append(VocabClass((name,)))
        ex_class.append(index[name])
    return Vocabulary(classes), ex_class


@dataclass(frozen=True)
class ExemplarScoring:
    """How one segmentation combines a vocabulary (or none) with exemplars.

    Attributes
    ----------
    vocabulary : Vocabulary
        The output's classes: the vocabulary's, then the exemplar-only classes.
    query_class : list of int
        Class of each query: the text queries', then one per exemplar.
    n_text : int
        How many queries are text.
    prototypes : torch.Tensor
        (n, D) float32 exemplar queries.
    exemplar_class : np.ndarray
        (n,) class index of each exemplar.
    """

    vocabulary: Vocabulary
    query_class: list[int]
    n_text: int
    prototypes: torch.Tensor
    exemplar_class: np.ndarray
    exemplars: Exemplars

    @classmethod
    def build(cls, vocab: Vocabulary | None, ex: Exemplars, cfg, model: str) -> ExemplarScoring:
        """Check ``ex`` against the model and settings, and place its classes."""
        if not isinstance(ex, Exemplars):
            raise TypeError(f"exemplars must be an Exemplars, got {type(ex).__name__}")
        ex.check_compatible(model, dict(image_side_items(cfg)))
        out, ex_class = combine_classes(vocab, ex.names)
        text_qc = vocab.query_class if vocab is not None else []
        eng = cfg.eng_weight if cfg.image_engineering else None
        protos = torch.from_numpy(ex.prototypes(eng))
        return cls(out, list(text_qc) + ex_class, len(text_qc), protos,
                   np.asarray(ex_class, dtype=np.int64), ex)

    def queries(self, text: torch.Tensor) -> torch.Tensor:
        """(Q + n, D): the text queries, then the prototypes."""
        if text.shape[1] != self.prototypes.shape[1]:
            raise ExemplarsError(f"exemplar features have {self.prototypes.shape[1]} dimensions, "
                                 f"the text {text.shape[1]}")
        return torch.cat([text, self.prototypes.to(text.device, text.dtype)])

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """:func:`calibrate` the exemplar rows of stitched logits (in place)."""
        return calibrate(logits, self.n_text)

    def keep(self, labels: np.ndarray, digest: str | None
             ) -> tuple[np.ndarray, np.ndarray] | None:
        """Set the stroke pixels of this plane (if painted on) to their class in
        ``labels``, in place; return them as ``(flat indices, class)`` or ``None``.
        """
        pixels = self.stroke_pixels(digest, labels.shape)
        keep_strokes(labels, pixels)
        return pixels

    def stroke_pixels(self, digest: str | None, shape: tuple[int, int]
                      ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(flat indices, class)`` of the strokes painted on this plane, if any."""
        s = self.exemplars.strokes(digest) if digest is not None else None
        if s is None or tuple(s.shape) != tuple(shape):
            return None
        return s.index, self.exemplar_class[s.code]
