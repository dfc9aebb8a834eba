"""Transformer-block pieces shared by the vision surgery and the text encoder.

They rely on the names open_clip's residual blocks keep across versions: ``ln_1``,
``attn.in_proj_weight`` / ``attn.in_proj_bias`` / ``attn.out_proj`` / ``attn.num_heads``,
``ln_2``, ``mlp`` and the optional layer scales ``ls_1`` / ``ls_2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["block_problem", "layer_scale", "merge_heads", "qkv", "run_block"]


def block_problem(blk: torch.nn.Module) -> str | None:
    """Why ``blk`` is not a plain pre-norm attention + MLP block, or None if it is."""
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
    """The block's layer scale ``ls_1``/``ls_2`` (identity when absent)."""
    mod = getattr(blk, name, None)
    return mod if mod is not None else _identity


def _identity(x):
    return x


def qkv(blk: torch.nn.Module, h: torch.Tensor):
    """Per-head q, k, v (each (B, heads, N, d)) of the normalised input h (B, N, W)."""
    attn = blk.attn
    b, n, w = h.shape
    heads = int(attn.num_heads)
    out = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    out = out.reshape(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    return out[0], out[1], out[2]


def merge_heads(o: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, heads, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, heads * d)


def run_block(blk, x, q=None, k=None, v=None, attn_mask=None):
    """The stock block (attention + MLP) on x (B, N, W), reusing q, k, v when given.

    ``attn_mask`` is a boolean mask (True = may attend) broadcast over batch and heads;
    ``k``/``v`` may be longer than ``x`` (cached keys of a shared prefix).
    """
    if q is None:
        q, k, v = qkv(blk, blk.ln_1(x))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x + layer_scale(blk, "ls_1")(blk.attn.out_proj(merge_heads(o)))
    return x + layer_scale(blk, "ls_2")(blk.mlp(blk.ln_2(x)))
