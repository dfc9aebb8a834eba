"""Dense image features with ITACLIP's architectural changes (spec section 3).

One adapter per kind of vision tower; each exposes the small :class:`DenseBackbone`
protocol so the rest of the engine never looks inside a model. The only adapter so
far is :class:`OpenCLIPViT` for open_clip's ``VisionTransformer``; it depends on the
blocks' ``ln_1``, ``attn.in_proj_weight``/``in_proj_bias``/``out_proj``, ``ln_2``,
``mlp`` (and optional ``ls_1``/``ls_2`` layer scales), not on the attention class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from ..errors import ModelError
from .blocks import block_problem, layer_scale, merge_heads, qkv, run_block

if TYPE_CHECKING:
    from ..config import ITACLIPConfig

__all__ = ["DenseBackbone", "OpenCLIPViT", "attention_map", "make_backbone"]


class DenseBackbone(Protocol):
    """What the engine needs from a vision tower."""

    #: (height, width) of a patch in pixels
    patch_size: tuple[int, int]

    def dense_features(self, x: torch.Tensor, cfg: ITACLIPConfig) -> torch.Tensor:
        """(B, 3, h, w) normalised crops -> (B, h // ph, w // pw, D) patch features."""
        ...


def attention_map(q: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    """Attention weights (B, heads, N, N) from per-head q and k (B, heads, N, d).

    ``self-self`` is ``softmax(q qᵀ/√d) + softmax(k kᵀ/√d)`` (rows sum to 2);
    ``q-k`` is the stock ``softmax(q kᵀ/√d)``; ``q-q`` and ``k-k`` are single terms.
    """
    scale = q.shape[-1] ** -0.5
    if mode == "q-k":
        return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
    if mode == "q-q":
        return torch.softmax((q @ q.transpose(-1, -2)) * scale, dim=-1)
    if mode == "k-k":
        return torch.softmax((k @ k.transpose(-1, -2)) * scale, dim=-1)
    if mode == "self-self":
        return torch.softmax((q @ q.transpose(-1, -2)) * scale, dim=-1) + torch.softmax(
            (k @ k.transpose(-1, -2)) * scale, dim=-1
        )
    raise ValueError(f"unknown attention mode {mode!r}")


class OpenCLIPViT:
    """ITACLIP surgery on open_clip's ``VisionTransformer`` (``model.visual``)."""

    def __init__(self, visual: torch.nn.Module):
        missing = [
            name
            for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre",
                         "transformer", "ln_post", "proj")
            if not hasattr(visual, name)
        ]
        if missing:
            raise ModelError(
                f"unsupported vision tower {type(visual).__name__}: ITACLIP needs a CLIP ViT "
                f"(missing {', '.join(missing)}); ResNet, ConvNeXt and timm towers are not supported yet"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ModelError("vision towers with attentional pooling (CoCa) are not supported")
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        for i, blk in enumerate(self.blocks):
            problem = block_problem(blk)
            if problem:
                raise ModelError(
                    f"block {i + 1} of {type(visual).__name__} has {problem}; ITACLIP's surgery "
                    "needs plain pre-norm blocks with fused in_proj attention"
                )
        if not getattr(visual.transformer, "batch_first", True):
            raise ModelError("only batch-first open_clip transformers are supported")
        ps = visual.patch_size
        self.patch_size = (int(ps[0]), int(ps[1])) if isinstance(ps, (tuple, list)) else (int(ps),) * 2
        n_pos = visual.positional_embedding.shape[0] - 1
        self.grid0 = int(round(n_pos**0.5))
        if self.grid0 * self.grid0 != n_pos:
            raise ModelError("non-square positional embedding grids are not supported")
        self.num_heads = int(self.blocks[0].attn.num_heads)
        self.width = int(visual.conv1.weight.shape[0])
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks)

    # -- pieces --------------------------------------------------------------------
    def positional_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """Positional embeddings (1 + gh*gw, W), resampled like the reference for other grids."""
        pos = self.visual.positional_embedding
        if (gh, gw) == (self.grid0, self.grid0):
            return pos
        key = (gh, gw, pos.device, pos.dtype, pos._version)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        g0 = self.grid0
        patch = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
        patch = F.interpolate(
            patch, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic"
        )
        if patch.shape[-2:] != (gh, gw):  # pragma: no cover - guards float corner cases
            raise RuntimeError(f"positional embedding resampled to {tuple(patch.shape[-2:])}")
        patch = patch.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)
        out = torch.cat([pos[:1], patch], dim=0)
        self._pos_cache = {key: out}  # keep one grid: crops in a run share it
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token, positional embedding, ``ln_pre``: (B, 1+N, W)."""
        v = self.visual
        x = v.conv1(x.to(v.conv1.weight.dtype))
        b, w, gh, gw = x.shape
        x = x.reshape(b, w, gh * gw).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(gh, gw).to(x.dtype)
        return v.ln_pre(x)

    # -- the ITACLIP forward ---------------------------------------------------------
    def tokens(self, x: torch.Tensor, cfg: ITACLIPConfig) -> torch.Tensor:
        """All output tokens (B, 1+N, D) after ``ln_post`` and ``proj``, not normalised."""
        L = self.num_blocks
        mids = sorted(set(cfg.mid_layers))
        bad = [i for i in mids if not 1 <= i <= L - 1]
        if bad:
            raise ValueError(
                f"mid_layers {bad} out of range: this model has {L} blocks, so mid layers "
                f"must lie in 1..{L - 1}"
            )
        x = self.embed(x)
        mid_sum = None
        for i, blk in enumerate(self.blocks[:-1], start=1):
            if i in mids:
                q, k, v = qkv(blk, blk.ln_1(x))
                a = attention_map(q, k, cfg.attention)
                mid_sum = a if mid_sum is None else mid_sum + a
                x = run_block(blk, x, q, k, v)
            else:
                x = run_block(blk, x)
        blk = self.blocks[-1]
        q, k, v = qkv(blk, blk.ln_1(x))
        a = attention_map(q, k, cfg.attention)
        if mid_sum is not None:
            a = (1.0 - cfg.mid_weight) * a + cfg.mid_weight * (mid_sum / len(mids))
        x = x + layer_scale(blk, "ls_1")(blk.attn.out_proj(merge_heads(a @ v)))
        if not cfg.drop_last_mlp:
            x = x + layer_scale(blk, "ls_2")(blk.mlp(blk.ln_2(x)))
        x = self.visual.ln_post(x)
        return x @ self.visual.proj

    def dense_features(self, x: torch.Tensor, cfg: ITACLIPConfig) -> torch.Tensor:
        """(B, 3, h, w) -> (B, gh, gw, D) patch features (class token dropped), float32."""
        gh, gw = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        if gh < 1 or gw < 1:
            raise ValueError(
                f"crop {tuple(x.shape[-2:])} is smaller than one {self.patch_size} patch"
            )
        t = self.tokens(x, cfg)[:, 1:]
        return t.reshape(t.shape[0], gh, gw, -1).float()


def make_backbone(model: torch.nn.Module) -> DenseBackbone:
    """The adapter for a CLIP model's vision tower (``model.visual``)."""
    visual = getattr(model, "visual", model)
    return OpenCLIPViT(visual)
