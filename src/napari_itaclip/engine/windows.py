"""The image stage: sliding windows through the ViT (features), then scoring.

Split in two so that everything after the per-window features can be reused for a
new vocabulary (:mod:`.features`):

- :func:`crop_features`: crops -> per-window ``(merged, flipped)`` patch features
  (the views of docs/engine.md, section "Image engineering", normalised and averaged);
- :func:`score_crops`: features and text queries -> crop logits (linear in the queries).

:func:`iter_window_logits` runs both over a :class:`WindowPlan` (docs/engine.md, section "Sliding window"),
either through the ViT or from cached features, scoring the windows in the same
groups either way so that both give the same logits bit for bit.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch
import torch.nn.functional as F

from . import augment
from .features import FeatureCache, ImageFeatures
from .sliding import Padding, patch_padding, window_grid, window_side

if TYPE_CHECKING:
    from ..config import ITACLIPConfig

__all__ = ["MAX_WINDOW_BYTES", "BatchBudget", "WindowPlan", "crop_features", "crops_per_batch",
           "iter_window_logits", "pad_crops", "plan_windows", "score_crops", "upsample"]


#: A window (``crop=None``: the whole image) whose attention alone would need more than
#: this is refused with an explanation instead of exhausting the memory.
MAX_WINDOW_BYTES = 16 * 2**30


@dataclass(frozen=True)
class BatchBudget:
    """What bounds a batched ViT forward: the tower's size, precision and a memory bound.

    Attributes
    ----------
    patch_size : tuple of int
        (ph, pw) of the ViT.
    width, num_heads : int
        Token width and attention heads (ViT-B/16: 768 and 12).
    half : bool
        float16 activations (2 bytes a value, else 4).
    batch_memory_mb : float
        Bound on one batched forward's activations.
    """

    patch_size: tuple[int, int]
    width: int = 768
    num_heads: int = 12
    half: bool = False
    batch_memory_mb: float = 128.0

    @classmethod
    def of(cls, backbone, *, half: bool, batch_memory_mb: float) -> BatchBudget:
        """The budget of a backbone (``width``/``num_heads`` default to ViT-B/16's)."""
        return cls(tuple(backbone.patch_size), getattr(backbone, "width", 768),
                   getattr(backbone, "num_heads", 12), bool(half), float(batch_memory_mb))


def crops_per_batch(h: int, w: int, budget: BatchBudget) -> int:
    """How many ``h`` x ``w`` crops one forward may take within ``budget`` (at least 1).

    Raises ``ValueError`` when one crop alone needs more than :data:`MAX_WINDOW_BYTES`.
    """
    ph, pw = budget.patch_size
    n = 1 + (h // ph) * (w // pw)
    bytes_per = (2 if budget.half else 4) * (
        6 * budget.num_heads * n * n + 12 * n * budget.width)
    if bytes_per > MAX_WINDOW_BYTES:
        raise ValueError(
            f"one {h}x{w} window needs about {bytes_per / 2**30:.0f} GiB for its attention "
            "maps; use a smaller crop (crop=None makes the whole image one window) or a "
            "short_side to resize the image first")
    return max(1, int(budget.batch_memory_mb * 2**20 // bytes_per))


@dataclass(frozen=True)
class WindowPlan:
    """Sliding windows of one image and how they are batched through the ViT."""

    size: tuple[int, int]
    windows: list
    crop: tuple[int, int]
    views: int
    per_batch: int
    pad: Padding | None = None  # ClearCLIP's padding of every crop (``pad_to_patch``)

    @property
    def units(self) -> int:
        """Crop views through the ViT (the ``image`` stage's progress total)."""
        return len(self.windows) * self.views

    def groups(self) -> list[tuple[int, int]]:
        """``(start, stop)`` window ranges of the ViT batches (and of the scoring)."""
        n = len(self.windows)
        return [(s, min(s + self.per_batch, n)) for s in range(0, n, self.per_batch)]


def plan_windows(height: int, width: int, cfg: ITACLIPConfig, budget: BatchBudget
                 ) -> WindowPlan:
    """The windows of an image, their crop size, views and windows per ViT batch.

    ``budget`` bounds one forward (:func:`crops_per_batch`).
    ``cfg.crop=None`` is one window over the whole image; with ``cfg.pad_to_patch``
    every crop (all have the plan's crop size) is padded to whole patches, so even an
    image smaller than a patch works.
    """
    crop = window_side(cfg.crop, height, width)
    windows = window_grid(height, width, crop, cfg.stride)
    ch, cw = min(crop, height), min(crop, width)
    patch_size = budget.patch_size
    ph, pw = patch_size
    pad = patch_padding(ch, cw, patch_size) if cfg.pad_to_patch else None
    if pad is None and (ch < ph or cw < pw):
        raise ValueError(f"image {height}x{width} is smaller than one {ph}x{pw} patch of the model")
    views = augment.n_views(cfg.image_engineering)
    fh, fw = (ch, cw) if pad is None else (ch + pad.top + pad.bottom, cw + pad.left + pad.right)
    per_batch = max(1, crops_per_batch(fh, fw, budget) // views)
    return WindowPlan((height, width), windows, (ch, cw), views, per_batch, pad)


def crop_features(backbone, crops: torch.Tensor, cfg: ITACLIPConfig
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Feature stage: (B, 3, h, w) crops -> ``(merged, flipped)``, each (B, gh, gw, D).

    ``merged`` is the mean of the original, greyscale and blurred views' L2-normalised
    patch features (docs/engine.md, section "Image engineering"; the original view's alone without image
    engineering); ``flipped`` the mean of the two flipped views' normalised features
    flipped back onto the crop's grid (``None`` without image engineering). Both
    float32, fresh contiguous tensors. With ``cfg.pad_to_patch`` the crops are padded
    to whole patches first (:func:`pad_crops`) and the views made from the padded crops,
    so the features lie on the padded crop's grid.
    """
    b, _, h, w = crops.shape
    pad = patch_padding(h, w, backbone.patch_size) if cfg.pad_to_patch else None
    with torch.inference_mode():
        x = augment.make_views(pad_crops(crops, pad), cfg.image_engineering)
        feats = backbone.dense_features(x, cfg)  # (V*B, gh, gw, D)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        if not cfg.image_engineering:
            return feats.float().contiguous(), None
        gh, gw = feats.shape[1:3]
        v = feats.view(len(augment.VIEWS), b, gh, gw, -1)
        merged = torch.stack([v[0], v[1], v[2]]).mean(dim=0)
        flipped = (augment.flip_back_features(v[3], "vflip")
                   + augment.flip_back_features(v[4], "hflip")) / 2
        return merged.float().contiguous(), flipped.float().contiguous()


def score_crops(merged: torch.Tensor, flipped: torch.Tensor | None, text: torch.Tensor,
                cfg: ITACLIPConfig, h: int, w: int, pad: Padding | None = None) -> torch.Tensor:
    """Scoring stage: crop features and (Q, D) queries -> (B, Q, h, w) crop logits.

    ``up((α·merged + (1-α)·flipped) · Tᵀ)``, which equals the per-view formula of
    docs/engine.md, section "Image engineering":
    ``α·up(F·Tᵀ) + (1-α)·mean(flip(up(F_flip·Tᵀ)))`` (upsampling is linear and
    commutes with flips). With ``pad`` (ClearCLIP) the logits are upsampled to the
    padded crop and cut back to the h x w crop.
    """
    with torch.inference_mode():
        if flipped is not None:
            a = float(cfg.eng_weight)
            merged = a * merged + (1.0 - a) * flipped
        logits = (merged @ text.T).permute(0, 3, 1, 2)
        if pad is None:
            return upsample(logits, h, w)
        full = upsample(logits, h + pad.top + pad.bottom, w + pad.left + pad.right)
        return full[..., pad.top : pad.top + h, pad.left : pad.left + w]


def pad_crops(crops: torch.Tensor, pad: Padding | None) -> torch.Tensor:
    """Zero-pad (B, C, h, w) crops (zero = the mean colour in normalised space)."""
    if pad is None or not any(pad):
        return crops
    return F.pad(crops, (pad.left, pad.right, pad.top, pad.bottom))


def upsample(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, C, h0, w0) -> (B, C, h, w), bilinear, align_corners=False (up or down)."""
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def iter_window_logits(
    backbone, image: torch.Tensor, text: torch.Tensor, cfg: ITACLIPConfig, plan: WindowPlan, *,
    dtype: torch.dtype = torch.float32, features: ImageFeatures | None = None,
    keep_in: FeatureCache | None = None,
) -> Generator[tuple[int, int], None, tuple[torch.Tensor, ImageFeatures | None]]:
    """Window-averaged logits (Q, H, W) of a normalised (3, H, W) image.

    From ready ``features`` (e.g. the feature cache's; no ViT, nothing yielded) or
    through ``backbone`` (yields ``(crop views done, total)``). With ``keep_in`` (a
    feature cache), a ViT run also returns the features, on the CPU, when they fit its
    bound (room is made for them first), else
    ``None``; failing to keep them never fails the run.
    """
    device = image.device
    ch, cw = plan.crop
    text = text.to(device, torch.float32)
    canvas = torch.zeros((text.shape[0], *plan.size), dtype=torch.float32, device=device)
    count = torch.zeros((1, *plan.size), dtype=torch.float32, device=device)

    def add(group, crop_logits):
        for (y1, y2, x1, x2), lg in zip(group, crop_logits):
            canvas[:, y1:y2, x1:x2] += lg
            count[:, y1:y2, x1:x2] += 1

    if features is not None:
        for s0, s1 in plan.groups():
            flipped = None if features.flipped is None else features.flipped[s0:s1].to(device)
            add(plan.windows[s0:s1], score_crops(features.merged[s0:s1].to(device), flipped, text,
                                                 cfg, ch, cw, plan.pad))
        return canvas / count, None

    store: ImageFeatures | None = None
    keep = keep_in is not None and keep_in.enabled
    yield (0, plan.units)
    done = 0
    for s0, s1 in plan.groups():
        group = plan.windows[s0:s1]
        crops = torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in group])
        merged, flipped = crop_features(backbone, crops.to(dtype), cfg)
        if keep:
            if s0 == 0:
                store = _new_store(plan, merged, flipped, keep_in)
                keep = store is not None
            if keep:
                try:
                    store.merged[s0:s1].copy_(merged)
                    if flipped is not None:
                        store.flipped[s0:s1].copy_(flipped)
                except (RuntimeError, MemoryError):  # never fail for the cache's sake
                    store, keep = None, False
        add(group, score_crops(merged, flipped, text, cfg, ch, cw, plan.pad))
        done += len(group) * plan.views
        yield (done, plan.units)
    return canvas / count, store


def _new_store(plan: WindowPlan, merged: torch.Tensor, flipped: torch.Tensor | None,
               cache: FeatureCache) -> ImageFeatures | None:
    """Room for one image's features on the CPU, if they fit the cache's bound."""
    n = len(plan.windows)
    shape = (n, *merged.shape[1:])
    nbytes = n * merged[0].numel() * 4 * (1 if flipped is None else 2)
    if not cache.fits(nbytes):
        return None
    cache.make_room(nbytes)
    try:
        m = torch.empty(shape, dtype=torch.float32)
        f = None if flipped is None else torch.empty(shape, dtype=torch.float32)
    except (RuntimeError, MemoryError):
        return None
    return ImageFeatures(plan.size, list(plan.windows), m, f, plan.units)
