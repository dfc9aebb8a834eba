"""Transformer-block pieces shared by the vision surgery and the text encoder.

Two block layouts are supported, described by a :class:`BlockKind`:

- open_clip's residual blocks (:data:`OPEN_CLIP`): ``ln_1``, ``attn.in_proj_weight`` /
  ``attn.in_proj_bias`` / ``attn.out_proj`` / ``attn.num_heads``, ``ln_2``, ``mlp`` and the
  optional layer scales ``ls_1`` / ``ls_2``;
- timm's ``vision_transformer.Block`` (:data:`TIMM`): ``norm1``, ``attn.qkv`` (fused
  linear), ``attn.proj``, ``attn.num_heads``, ``norm2``, ``mlp``, ``ls1`` / ``ls2``.

:func:`itaclip_blocks` is the one ITACLIP loop over a ViT's blocks (docs/engine.md,
section "Dense image features", steps 2 and 3) for every vision adapter, and
:func:`itaclip_last_block` the one place where the last block is modified, including the
switches of SCLIP, NACLIP and ClearCLIP (docs/engine.md, section "Other methods": the
attention, NACLIP's Gaussian bias from :class:`BiasCache`, the residual and the
feed-forward network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..config import ITACLIPConfig

__all__ = [
    "OPEN_CLIP",
    "TIMM",
    "BiasCache",
    "BlockKind",
    "attention_map",
    "block_problem",
    "gaussian_bias",
    "itaclip_blocks",
    "itaclip_last_block",
    "layer_scale",
    "merge_heads",
    "mid_layers_problem",
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


def attention_map(q: torch.Tensor, k: torch.Tensor, mode: str,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights (B, heads, N, N) from per-head q and k (B, heads, N, d).

    ``self-self`` is ``softmax(q qᵀ/√d) + softmax(k kᵀ/√d)`` (rows sum to 2);
    ``q-k`` is the stock ``softmax(q kᵀ/√d)``; ``q-q`` and ``k-k`` are single terms.
    ``bias`` (N, N), e.g. :func:`gaussian_bias`, is added to the scaled logits of a
    single-softmax mode before the softmax (NACLIP).
    """
    scale = q.shape[-1] ** -0.5
    if mode == "self-self":
        if bias is not None:
            raise ValueError("an attention bias needs a single-softmax mode, not 'self-self'")
        return torch.softmax((q @ q.transpose(-1, -2)) * scale, dim=-1) + torch.softmax(
            (k @ k.transpose(-1, -2)) * scale, dim=-1
        )
    pairs = {"q-k": (q, k), "q-q": (q, q), "k-k": (k, k)}
    if mode not in pairs:
        raise ValueError(f"unknown attention mode {mode!r}")
    a, b = pairs[mode]
    logits = (a @ b.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return torch.softmax(logits, dim=-1)


def gaussian_bias(gh: int, gw: int, std: float, *, prefix: int = 1, device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NACLIP's neighbourhood bias Ω (P + gh*gw, P + gh*gw) for a gh x gw patch grid.

    For patches p = (i, j) and p' = (k, l) in raster order after the ``prefix`` tokens
    (the class token, and register tokens of timm trunks):
    ``Ω[p, p'] = exp(-((i - k)² + (j - l)²) / (2 std²))`` (1 on the diagonal, not
    normalised, never truncated); the prefix tokens' rows and columns are 0.
    """
    ii, jj = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")
    pos = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    n = prefix + gh * gw
    out = torch.zeros((n, n), dtype=torch.float64)
    out[prefix:, prefix:] = torch.exp(-d2 / (2.0 * float(std) ** 2))
    return out.to(device=device, dtype=dtype)


class BiasCache:
    """The last block's attention bias per patch grid, built once (NACLIP's Ω).

    Crops of one run share one or two grids (interior and edge windows); a few entries
    are kept, the oldest dropped first.
    """

    def __init__(self, size: int = 2):
        self.size = size
        self._cache: dict[tuple, torch.Tensor] = {}

    def get(self, cfg: ITACLIPConfig, gh: int, gw: int, prefix: int,
            like: torch.Tensor) -> torch.Tensor | None:
        """The bias for this grid (device and dtype of ``like``), or None without one."""
        if cfg.attn_gaussian_std is None:
            return None
        key = (gh, gw, prefix, float(cfg.attn_gaussian_std), like.device, like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            with torch.inference_mode(False):  # a normal tensor, usable outside inference
                cached = gaussian_bias(gh, gw, cfg.attn_gaussian_std, prefix=prefix,
                                       device=like.device, dtype=like.dtype)
            while len(self._cache) >= self.size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = cached
        return cached


def itaclip_last_block(
    blk: torch.nn.Module, x: torch.Tensor, cfg: ITACLIPConfig, mid_attn: torch.Tensor | None,
    kind: BlockKind = OPEN_CLIP, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """ITACLIP's last block on x (B, N, W), with the other methods' switches.

    See docs/engine.md, sections "Dense image features" (step 3) and "Other methods".

    Its own attention map (``cfg.attention``, with ``bias`` added to its scaled logits)
    is mixed with the mean mid-layer map ``mid_attn`` (if any) by ``cfg.mid_weight``; the
    residual is kept when ``cfg.keep_last_residual``; the MLP (and its norm, with its own
    residual) runs only when ``cfg.drop_last_mlp`` is off. Every last-block switch lives
    here.
    """
    q, k, v = qkv(blk, getattr(blk, kind.norm1)(x), kind)
    a = attention_map(q, k, cfg.attention, bias)
    if mid_attn is not None:
        a = (1.0 - cfg.mid_weight) * a + cfg.mid_weight * mid_attn
    attn_out = layer_scale(blk, kind.ls1)(getattr(blk.attn, kind.out_proj)(merge_heads(a @ v)))
    x = x + attn_out if cfg.keep_last_residual else attn_out
    if not cfg.drop_last_mlp:
        x = x + layer_scale(blk, kind.ls2)(blk.mlp(getattr(blk, kind.norm2)(x)))
    return x


def mid_layers_problem(mid_layers, n_blocks: int) -> str | None:
    """Why ``mid_layers`` cannot work with a ViT of ``n_blocks`` blocks, else ``None``
    (the one rule: the engine and the command line's check before loading use it).
    """
    bad = sorted(i for i in set(mid_layers) if not 1 <= i <= n_blocks - 1)
    if not bad:
        return None
    return (f"mid_layers {bad} out of range: this model has {n_blocks} blocks, so mid layers "
            f"must lie in 1..{n_blocks - 1}")


def itaclip_blocks(
    blocks, x: torch.Tensor, cfg: ITACLIPConfig, kind: BlockKind = OPEN_CLIP,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run a ViT's blocks the ITACLIP way (docs/engine.md, section "Dense image features", steps 2 and 3).

    Blocks 1 .. L-1 run normally; before each block whose 1-based index is in
    ``cfg.mid_layers`` its attention map is computed from its input and kept; the last
    block is :func:`itaclip_last_block` (``bias``: its attention bias, e.g. NACLIP's,
    which the mid-layer maps do not get). Returns the tokens before the final norm.
    """
    blocks = list(blocks)
    mids = sorted(set(cfg.mid_layers))
    problem = mid_layers_problem(mids, len(blocks))
    if problem:
        raise ValueError(problem)
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
    return itaclip_last_block(blocks[-1], x, cfg, mid_attn, kind, bias)
