"""Transformer-block pieces shared by the vision surgery and the text encoder.

Two block layouts are supported, described by a :class:`BlockKind`:

- open_clip's residual blocks (:data:`OPEN_CLIP`): ``ln_1``, ``attn.in_proj_weight`` /
  ``attn.in_proj_bias`` / ``attn.out_proj`` / ``attn.num_heads``, ``ln_2``, ``mlp`` and the
  optional layer scales ``ls_1`` / ``ls_2``;
- timm's ``vision_transformer.Block`` (:data:`TIMM`): ``norm1``, ``attn.qkv`` (fused
  linear), ``attn.proj``, ``attn.num_heads``, ``norm2``, ``mlp``, ``ls1`` / ``ls2``.

:func:`itaclip_blocks` is the one ITACLIP loop over a ViT's blocks (spec section 3,
steps 2 and 3) for every vision adapter, and :func:`itaclip_last_block` the one place
where the last block is modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..config import ITACLIPConfig

__all__ = [
    "OPEN_CLIP",
    "TIMM",
    "BlockKind",
    "attention_map",
    "block_problem",
    "itaclip_blocks",
    "itaclip_last_block",
    "layer_scale",
    "merge_heads",
    "qkv",
    "run_block",
]


@dataclass(frozen=True)
class BlockKind:
    """Attribute names of one pre-norm transformer-block layout."""

    name: str
    norm1: str
    norm2: str
    ls1: str
    ls2: str
    out_proj: str  # attribute of ``blk.attn``

    def qkv_params(self, attn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (3W', W), bias or None) of the fused q/k/v projection."""
        if self.name == "open_clip":
            return attn.in_proj_weight, attn.in_proj_bias
        return attn.qkv.weight, attn.qkv.bias


OPEN_CLIP = BlockKind("open_clip", "ln_1", "ln_2", "ls_1", "ls_2", "out_proj")
TIMM = BlockKind("timm", "norm1", "norm2", "ls1", "ls2", "proj")


def block_problem(blk: torch.nn.Module) -> str | None:
    """Why ``blk`` is not a plain pre-norm open_clip block, or None if it is."""
    attn = getattr(blk, "attn", None)
    if attn is None or getattr(attn, "in_proj_weight", None) is None or not hasattr(attn, "out_proj"):
        return "no fused in_proj attention (in_proj_weight / in_proj_bias / out_proj)"
    if not all(hasattr(blk, n) for n in ("ln_1", "ln_2", "mlp")):
        return "no ln_1 / ln_2 / mlp"
    ln_attn = getattr(blk, "ln_attn", None)
    if ln_attn is not None and not isinstance(ln_attn, torch.nn.Identity):
        return "an inner attention norm"
    if getattr(attn, "scaled_cosine", False) or getattr(attn, "head_scale", None) is not None:
        return "scaled-cosine attention or head scaling"
    if not isinstance(getattr(attn, "ln_q", torch.nn.Identity()), torch.nn.Identity):
        return "qk-norm"
    return None


def layer_scale(blk: torch.nn.Module, name: str):
    """The block's layer scale (``ls_1``/``ls_2`` or ``ls1``/``ls2``; identity when absent)."""
    mod = getattr(blk, name, None)
    return mod if mod is not None else _identity


def _identity(x):
    return x


def qkv(blk: torch.nn.Module, h: torch.Tensor, kind: BlockKind = OPEN_CLIP):
    """Per-head q, k, v (each (B, heads, N, d)) of the normalised input h (B, N, W)."""
    attn = blk.attn
    b, n, _ = h.shape
    heads = int(attn.num_heads)
    weight, bias = kind.qkv_params(attn)
    out = F.linear(h, weight, bias)
    out = out.reshape(b, n, 3, heads, weight.shape[0] // (3 * heads)).permute(2, 0, 3, 1, 4)
    return out[0], out[1], out[2]


def merge_heads(o: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, heads, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, heads * d)


def run_block(blk, x, q=None, k=None, v=None, attn_mask=None, kind: BlockKind = OPEN_CLIP):
    """The stock block (attention + MLP) on x (B, N, W), reusing q, k, v when given.

    ``attn_mask`` is a boolean mask (True = may attend) broadcast over batch and heads;
    ``k``/``v`` may be longer than ``x`` (cached keys of a shared prefix).
    """
    if q is None:
        q, k, v = qkv(blk, getattr(blk, kind.norm1)(x), kind)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x + layer_scale(blk, kind.ls1)(getattr(blk.attn, kind.out_proj)(merge_heads(o)))
    return x + layer_scale(blk, kind.ls2)(blk.mlp(getattr(blk, kind.norm2)(x)))


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


def itaclip_last_block(
    blk: torch.nn.Module, x: torch.Tensor, cfg: ITACLIPConfig, mid_attn: torch.Tensor | None,
    kind: BlockKind = OPEN_CLIP,
) -> torch.Tensor:
    """ITACLIP's last block (spec section 3, step 3) on x (B, N, W).

    Its own attention map (``cfg.attention``) is mixed with the mean mid-layer map
    ``mid_attn`` (if any) by ``cfg.mid_weight``; the residual is kept; the MLP (and its
    norm) runs only when ``cfg.drop_last_mlp`` is off. Every last-block switch lives here.
    """
    q, k, v = qkv(blk, getattr(blk, kind.norm1)(x), kind)
    a = attention_map(q, k, cfg.attention)
    if mid_attn is not None:
        a = (1.0 - cfg.mid_weight) * a + cfg.mid_weight * mid_attn
    x = x + layer_scale(blk, kind.ls1)(getattr(blk.attn, kind.out_proj)(merge_heads(a @ v)))
    if not cfg.drop_last_mlp:
        x = x + layer_scale(blk, kind.ls2)(blk.mlp(getattr(blk, kind.norm2)(x)))
    return x


def itaclip_blocks(
    blocks, x: torch.Tensor, cfg: ITACLIPConfig, kind: BlockKind = OPEN_CLIP
) -> torch.Tensor:
    """Run a ViT's blocks the ITACLIP way (spec section 3, steps 2 and 3).

    Blocks 1 .. L-1 run normally; before each block whose 1-based index is in
    ``cfg.mid_layers`` its attention map is computed from its input and kept; the last
    block is :func:`itaclip_last_block`. Returns the tokens before the final norm.
    """
    blocks = list(blocks)
    L = len(blocks)
    mids = sorted(set(cfg.mid_layers))
    bad = [i for i in mids if not 1 <= i <= L - 1]
    if bad:
        raise ValueError(
            f"mid_layers {bad} out of range: this model has {L} blocks, so mid layers "
            f"must lie in 1..{L - 1}"
        )
    mid_sum = None
    for i, blk in enumerate(blocks[:-1], start=1):
        if i in mids:
            q, k, v = qkv(blk, getattr(blk, kind.norm1)(x), kind)
            a = attention_map(q, k, cfg.attention)
            mid_sum = a if mid_sum is None else mid_sum + a
            x = run_block(blk, x, q, k, v, kind=kind)
        else:
            x = run_block(blk, x, kind=kind)
    mid_attn = mid_sum / len(mids) if mid_sum is not None else None
    return itaclip_last_block(blocks[-1], x, cfg, mid_attn, kind)
