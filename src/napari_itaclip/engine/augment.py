"""Image-engineering views (docs/engine.md, section "Image engineering"): greyscale, blur and flips."""

from __future__ import annotations

from . import _torch_ready  # noqa: F401  (prepares the process: before torch)

# isort: split
import torch
import torch.nn.functional as F

__all__ = ["VIEWS", "blur", "flip_back", "flip_back_features", "grayscale", "make_views"]

#: The views of one crop, in batch order. The first three are averaged as features;
#: the flipped ones give the flip logits.
VIEWS = ("original", "grayscale", "blur", "vflip", "hflip")
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of (B, 3, h, w) normalised crops, repeated to 3 channels."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
    return luma.expand(-1, 3, -1, -1)


def _gauss1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    half = (size - 1) * 0.5
    xs = torch.linspace(-half, half, steps=size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (xs / sigma).pow(2))
    return pdf / pdf.sum()


def blur(x: torch.Tensor, size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (torchvision ``GaussianBlur(11, 5)``)."""
    c = x.shape[1]
    k = _gauss1d(size, sigma, x.dtype, x.device)
    pad = size // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(f"crop {tuple(x.shape[-2:])} too small for a {size}-tap reflect-padded blur")
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(y, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def make_views(x: torch.Tensor, engineering: bool) -> torch.Tensor:
    """Stack the views of (B, 3, h, w) crops view-major: (V*B, 3, h, w)."""
    if not engineering:
        return x
    return torch.cat([x, grayscale(x), blur(x), x.flip(-2), x.flip(-1)], dim=0)


def flip_back(logits: torch.Tensor, view: str) -> torch.Tensor:
    """Undo a view's flip on (B, Q, h, w) logits."""
    if view == "vflip":
        return logits.flip(-2)
    if view == "hflip":
        return logits.flip(-1)
    return logits


def flip_back_features(feats: torch.Tensor, view: str) -> torch.Tensor:
    """Undo a view's flip on (B, gh, gw, D) patch-feature grids.

    Bilinear upsampling (``align_corners=False``) commutes with flips, so scoring the
    flipped-back grid equals flipping back the upsampled logits.
    """
    if view == "vflip":
        return feats.flip(-3)
    if view == "hflip":
        return feats.flip(-2)
    return feats


def n_views(engineering: bool) -> int:
    """Number of views per crop."""
    return len(VIEWS) if engineering else 1


