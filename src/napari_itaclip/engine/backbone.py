"""Dense image features with ITACLIP's architectural changes (docs/engine.md, section "Dense image features").

One adapter per kind of vision tower; each exposes the small :class:`DenseBackbone`
protocol so the rest of the engine never looks inside a model:

- :class:`OpenCLIPViT` for open_clip's ``VisionTransformer``; it depends on the blocks'
  ``ln_1``, ``attn.in_proj_weight``/``in_proj_bias``/``out_proj``, ``ln_2``, ``mlp`` (and
  optional ``ls_1``/``ls_2`` layer scales), not on the attention class;
- :class:`TimmViT` for open_clip's ``TimmModel`` wrapping a timm ``VisionTransformer``
  (BiomedCLIP and other domain CLIPs): ``trunk.patch_embed``, ``cls_token`` (and register
  tokens), ``pos_embed``, ``norm_pre``, blocks with ``norm1``, fused ``attn.qkv``,
  ``attn.proj``, ``norm2``, ``mlp``, ``ls1``/``ls2``; then ``trunk.norm`` (and ``fc_norm``,
  ``head``) and the tower's ``head`` on every token play ``ln_post`` and ``proj``.

Both run the same ITACLIP loop (:func:`.blocks.itaclip_blocks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch
import torch.nn.functional as F

from ..errors import ModelError
from .blocks import OPEN_CLIP, TIMM, BiasCache, attention_map, block_problem, itaclip_blocks

if TYPE_CHECKING:
    from ..config import ITACLIPConfig

__all__ = [
    "DenseBackbone",
    "OpenCLIPViT",
    "PositionTable",
    "TimmViT",
    "attention_map",
    "make_backbone",
    "resample_positions",
    "timm_problem",
]


class DenseBackbone(Protocol):
    """What the engine needs from a vision tower."""

    #: (height, width) of a patch in pixels
    patch_size: tuple[int, int]

    def dense_features(self, x: torch.Tensor, cfg: ITACLIPConfig) -> torch.Tensor:
        """(B, 3, h, w) normalised crops -> (B, h // ph, w // pw, D) patch features."""
        ...


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
                f"(missing {', '.join(missing)}); ResNet and ConvNeXt towers have no attention to modify"
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
        self.positions = PositionTable(visual.positional_embedding, prefix=1)
        self.grid0 = self.positions.grid0
        self.num_heads = int(self.blocks[0].attn.num_heads)
        self.width = int(visual.conv1.weight.shape[0])
        self.bias_cache = BiasCache()

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks)

    # -- pieces --------------------------------------------------------------------
    def positional_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """Positional embeddings (1 + gh*gw, W), resampled like the reference for other grids."""
        return self.positions.for_grid(gh, gw)

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
        gh, gw = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        x = self.embed(x)
        bias = self.bias_cache.get(cfg, gh, gw, 1, x)
        x = itaclip_blocks(self.blocks, x, cfg, OPEN_CLIP, bias)
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


def resample_positions(patch_pos: torch.Tensor, g0: int, gh: int, gw: int) -> torch.Tensor:
    """Patch positional embeddings (g0*g0, W) resampled to a (gh, gw) grid: (gh*gw, W).

    Bicubic with the reference's ``scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0)``
    (docs/engine.md, section "Dense image features", step 1); computed in float32,
    returned in the input dtype.
    """
    patch = patch_pos.reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic")
    if patch.shape[-2:] != (gh, gw):  # pragma: no cover - guards float corner cases
        raise RuntimeError(f"positional embedding resampled to {tuple(patch.shape[-2:])}")
    return patch.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(patch_pos.dtype)


class PositionTable:
    """A tower's positional embeddings for any crop grid.

    See docs/engine.md, section "Dense image features", step 1.

    ``param`` holds ``prefix`` rows (class/register tokens; 0 with timm's
    ``no_embed_class``) and then a square g0 x g0 patch table, as (N, W) or (1, N, W).
    Other grids get the patch part resampled by :func:`resample_positions`; the last
    resampled grid is kept (the crops of a run share it) until the weights change.
    """

    def __init__(self, param: torch.Tensor, prefix: int):
        self.param = param
        self.prefix = int(prefix)
        n_pos = self._rows().shape[0] - self.prefix
        self.grid0 = int(round(n_pos**0.5))
        if self.grid0 * self.grid0 != n_pos:
            raise ModelError("non-square positional embedding grids are not supported")
        self._cache: dict[tuple, torch.Tensor] = {}

    def _rows(self) -> torch.Tensor:
        return self.param[0] if self.param.dim() == 3 else self.param

    def for_grid(self, gh: int, gw: int) -> torch.Tensor:
        """(prefix + gh*gw, W) embeddings for a gh x gw patch grid."""
        pos = self._rows()
        if (gh, gw) == (self.grid0, self.grid0):
            return pos
        key = (gh, gw, pos.device, pos.dtype, self.param._version)
        cached = self._cache.get(key)
        if cached is None:
            p = self.prefix
            cached = torch.cat([pos[:p], resample_positions(pos[p:], self.grid0, gh, gw)], dim=0)
            self._cache = {key: cached}
        return cached


# -- timm ViT trunks ---------------------------------------------------------------------
_UNSUPPORTED = "ITACLIP's surgery cannot be applied faithfully, so this model is not supported"


def _timm_classes():
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    return VisionTransformer, Block, Attention


def timm_problem(visual: torch.nn.Module) -> str | None:
    """Why open_clip's ``TimmModel`` tower ``visual`` cannot get ITACLIP's surgery, or None.

    The message names the reason and the kind of models it affects.
    """
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        return "it has no timm trunk"
    ViT, Block, Attention = _timm_classes()
    cls = type(trunk).__name__
    if not isinstance(trunk, ViT):
        if "eva" in cls.lower():
            return (
                f"its timm trunk is {cls} (EVA / EVA02 towers, e.g. open_clip's EVA02-* models): "
                "rotary position embeddings, separate q/k/v projections and SwiGLU blocks; "
                + _UNSUPPORTED
            )
        return (
            f"its timm trunk is {cls}, not a timm VisionTransformer (ConvNeXt, ResNet and "
            "other convolutional towers have no attention to modify); " + _UNSUPPORTED
        )
    if type(trunk)._pos_embed is not ViT._pos_embed or (
        type(trunk).forward_features is not ViT.forward_features
    ):
        return (
            f"its trunk {cls} changes the VisionTransformer's embedding or forward (e.g. "
            "distilled DeiT with a distillation token); " + _UNSUPPORTED
        )
    if getattr(trunk, "attn_pool", None) is not None:
        return (
            f"its timm trunk pools with an attention-pool head (global_pool="
            f"{getattr(trunk, 'global_pool', 'map')!r}, as in SigLIP and SigLIP 2 models): the "
            "image embedding is a learned query attending over all tokens, so there is no "
            "per-token projection into the text space; " + _UNSUPPORTED
        )
    head = getattr(visual, "head", None)
    if head is not None and hasattr(head, "pool"):
        return (
            "its tower pools with an attention pool (timm_pool 'abs_attn' / 'rot_attn'), "
            "so there is no per-token projection; " + _UNSUPPORTED
        )
    if getattr(trunk, "pos_embed", None) is None:
        return (
            "its trunk has no learned absolute position embedding (rotary or none); "
            + _UNSUPPORTED
        )
    proj = getattr(getattr(trunk, "patch_embed", None), "proj", None)
    pad = getattr(proj, "padding", None)
    padded = pad != "valid" if isinstance(pad, str) else any(int(p) for p in pad or ())
    if not isinstance(proj, torch.nn.Conv2d) or tuple(proj.kernel_size) != tuple(proj.stride) or padded:
        return (
            "its patch embedding is not one strided convolution (hybrid CNN stems); "
            + _UNSUPPORTED
        )
    for i, blk in enumerate(trunk.blocks, start=1):
        problem = _timm_block_problem(i, blk, Block, Attention)
        if problem is not None:
            return problem
    return None


def _timm_block_problem(i: int, blk, Block, Attention) -> str | None:
    """Why timm block ``i`` of a trunk cannot get ITACLIP's surgery, or None."""
    bcls = type(blk).__name__
    if type(blk).forward is not Block.forward:
        kind = (
            "post-norm blocks (ResPostBlock)" if "Post" in bcls
            else "parallel attention/MLP blocks" if "Parallel" in bcls
            else f"blocks of type {bcls}"
        )
        return f"block {i} of its trunk has {kind}; ITACLIP needs plain pre-norm blocks; " + _UNSUPPORTED
    attn = blk.attn
    acls = type(attn).__name__
    if "rope" in acls.lower():
        return (
            f"block {i} uses rotary position embeddings ({acls}, as in EVA02 towers); "
            + _UNSUPPORTED
        )
    if type(attn).forward is not Attention.forward or not isinstance(
        getattr(attn, "qkv", None), torch.nn.Linear
    ):
        return (
            f"block {i} has attention {acls} without timm's fused qkv projection "
            "(separate q/k/v or differential attention); " + _UNSUPPORTED
        )
    if not isinstance(getattr(attn, "q_norm", None), torch.nn.Identity) or not isinstance(
        getattr(attn, "k_norm", None), torch.nn.Identity
    ):
        return (
            f"block {i} normalises queries and keys (qk-norm: attn.q_norm / attn.k_norm), "
            "which changes the self-self attention maps the method is defined on; "
            + _UNSUPPORTED
        )
    if not isinstance(getattr(attn, "norm", torch.nn.Identity()), torch.nn.Identity):
        return f"block {i} normalises the attention output (scale_attn_norm); " + _UNSUPPORTED
    if getattr(attn, "gate", None) is not None:
        return f"block {i} has gated attention; " + _UNSUPPORTED
    return None


class TimmViT:
    """ITACLIP surgery on open_clip's ``TimmModel`` with a timm ``VisionTransformer`` trunk.

    The class token and register tokens (timm's prefix tokens) take part in attention
    like the class token of open_clip's ViT and are dropped from the dense output.
    ``trunk.norm``, ``trunk.fc_norm`` and ``trunk.head`` (whichever the configuration
    uses; the others are identities) and then the tower's ``head`` (open_clip's
    ``timm_proj``: linear or MLP, applied per token) play ``ln_post`` and ``proj``.
    """

    def __init__(self, visual: torch.nn.Module):
        problem = timm_problem(visual)
        if problem:
            raise ModelError(f"unsupported vision tower {type(visual).__name__}: {problem}")
        trunk = visual.trunk
        self.visual = visual
        self.trunk = trunk
        self.blocks = list(trunk.blocks)
        ps = trunk.patch_embed.proj.stride
        self.patch_size = (int(ps[0]), int(ps[1]))
        self.num_prefix = int(trunk.num_prefix_tokens)
        self.pos_prefix = 0 if trunk.no_embed_class else self.num_prefix
        self.positions = PositionTable(trunk.pos_embed, prefix=self.pos_prefix)
        self.grid0 = self.positions.grid0
        self.num_heads = int(self.blocks[0].attn.num_heads)
        self.width = int(trunk.patch_embed.proj.weight.shape[0])
        self.bias_cache = BiasCache()

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks)

    def positional_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """Positional embeddings (P + gh*gw, W), P = 0 with ``no_embed_class``, else the
        number of prefix tokens; the patch part resampled like the reference for other grids.
        """
        return self.positions.for_grid(gh, gw)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, prefix tokens, positional embedding, ``norm_pre``: (B, P+N, W)."""
        t = self.trunk
        pe = t.patch_embed
        x = pe.proj(x.to(pe.proj.weight.dtype))
        b, w, gh, gw = x.shape
        x = pe.norm(x.flatten(2).transpose(1, 2))
        prefix = []
        if t.cls_token is not None:
            prefix.append(t.cls_token.to(x.dtype).expand(b, -1, -1))
        if getattr(t, "reg_token", None) is not None:
            prefix.append(t.reg_token.to(x.dtype).expand(b, -1, -1))
        pos = self.positional_embedding(gh, gw).to(x.dtype)
        if t.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        return t.norm_pre(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Final norms and projection on every token (the roles of ``ln_post`` and ``proj``)."""
        t = self.trunk
        x = t.head(t.head_drop(t.fc_norm(t.norm(x))))
        return self.visual.head(x)

    def tokens(self, x: torch.Tensor, cfg: ITACLIPConfig) -> torch.Tensor:
        """All output tokens (B, P+N, D), prefix tokens first, not normalised."""
        gh, gw = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        x = self.embed(x)
        bias = self.bias_cache.get(cfg, gh, gw, self.num_prefix, x)
        return self.project(itaclip_blocks(self.blocks, x, cfg, TIMM, bias))

    def dense_features(self, x: torch.Tensor, cfg: ITACLIPConfig) -> torch.Tensor:
        """(B, 3, h, w) -> (B, gh, gw, D) patch features (prefix tokens dropped), float32."""
        gh, gw = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        if gh < 1 or gw < 1:
            raise ValueError(
                f"crop {tuple(x.shape[-2:])} is smaller than one {self.patch_size} patch"
            )
        t = self.tokens(x, cfg)[:, self.num_prefix:]
        return t.reshape(t.shape[0], gh, gw, -1).float()


def make_backbone(model: torch.nn.Module) -> DenseBackbone:
    """The adapter for a CLIP model's vision tower (``model.visual``).

    open_clip's ``TimmModel`` (a ``trunk`` from timm) gets :class:`TimmViT`, open_clip's
    own ``VisionTransformer`` gets :class:`OpenCLIPViT`; anything else is refused with
    the reason (:class:`~napari_itaclip.errors.ModelError`).
    """
    visual = getattr(model, "visual", model)
    if hasattr(visual, "trunk"):
        return TimmViT(visual)
    return OpenCLIPViT(visual)
