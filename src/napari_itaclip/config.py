"""ITACLIP configuration: a frozen dataclass and the named presets.

The field names are part of the public API (``spec/api.md``); new fields may be
added, existing ones are never renamed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ATTENTION_MODES", "ITACLIPConfig", "list_presets", "register_preset"]

#: Attention used in the surgered layers. ``self-self`` is ITACLIP's q-q + k-k.
ATTENTION_MODES = ("self-self", "q-k", "q-q", "k-k")


@dataclass(frozen=True)
class ITACLIPConfig:
    """Every knob of the ITACLIP computation.

    The defaults are the ``balanced`` preset: the authors' VOC settings with a
    sliding-window stride of 56 (about 3x cheaper than 28 for <= 0.1 mIoU in the
    paper's ablation) and no thresholds, which suits interactive use on arbitrary
    images. Use :meth:`preset` for the paper's per-dataset configurations.

    Parameters
    ----------
    short_side : int or None
        Resize the input so its short side has this many pixels (bilinear, aspect
        kept) before the sliding window; outputs are resized back to the input size.
        ``None`` processes the image at its native resolution.
    crop : int
        Sliding-window crop side in pixels (224 = CLIP's pretraining resolution).
    stride : int
        Sliding-window stride in pixels.
    attention : str
        Attention of the surgered layers: ``"self-self"`` (q-q + k-k, ITACLIP),
        ``"q-k"`` (stock attention), ``"q-q"`` or ``"k-k"``.
    mid_layers : tuple of int
        1-based indices of the intermediate blocks whose attention maps are averaged
        into the last block's map. Empty disables the mix.
    mid_weight : float
        Weight of the averaged intermediate maps in the last block's attention.
    drop_last_mlp : bool
        Skip the last block's feed-forward network (and ``ln_2``).
    image_engineering : bool
        Test-time augmentation: greyscale, blur and flips (spec section 4).
    eng_weight : float
        Weight of the un-flipped views against the flipped ones.
    aux_weight : float
        Weight of a class's auxiliary text (definition / synonym) in its queries.
    pamr_steps : int
        PAMR iterations; 0 disables the refinement.
    pamr_dilations : tuple of int
        PAMR neighbourhood dilations.
    logit_scale : float
        Temperature applied to cosine similarities before the softmax.
    prob_threshold : float
        Pixels whose best class probability is below this get label 0.
    area_threshold : float or None
        A class (other than label 0) covering no more than this fraction of the
        pixels assigned to classes other than 0 is removed. ``None`` disables it.
    close_size : int
        Side of the square grey-level closing applied to the label map; 0 disables.
    aux_kind : str
        What the preset's auxiliary texts are: ``"definitions"`` or ``"synonyms"``
        (informational; used by :mod:`napari_itaclip.llm`).
    """

    short_side: int | None = 336
    crop: int = 224
    stride: int = 56
    attention: str = "self-self"
    mid_layers: tuple[int, ...] = (7, 8, 10)
    mid_weight: float = 0.5
    drop_last_mlp: bool = True
    image_engineering: bool = True
    eng_weight: float = 0.75
    aux_weight: float = 0.1
    pamr_steps: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    logit_scale: float = 50.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    close_size: int = 3
    aux_kind: str = "definitions"

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        fix("mid_layers", tuple(int(i) for i in self.mid_layers))
        fix("pamr_dilations", tuple(int(d) for d in self.pamr_dilations))
        errors = []
        if self.short_side is not None and int(self.short_side) < 1:
            errors.append(f"short_side must be a positive integer or None, got {self.short_side!r}")
        if int(self.crop) < 1:
            errors.append(f"crop must be a positive integer, got {self.crop!r}")
        if int(self.stride) < 1:
            errors.append(f"stride must be a positive integer, got {self.stride!r}")
        if self.attention not in ATTENTION_MODES:
            errors.append(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if any(i < 1 for i in self.mid_layers):
            errors.append(f"mid_layers are 1-based block indices, got {self.mid_layers!r}")
        for name in ("mid_weight", "eng_weight", "aux_weight", "prob_threshold"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                errors.append(f"{name} must lie in [0, 1], got {value!r}")
        if self.area_threshold is not None and not 0.0 <= float(self.area_threshold) <= 1.0:
            errors.append(f"area_threshold must lie in [0, 1] or be None, got {self.area_threshold!r}")
        if int(self.pamr_steps) < 0:
            errors.append(f"pamr_steps must be >= 0, got {self.pamr_steps!r}")
        if not self.pamr_dilations or any(d < 1 for d in self.pamr_dilations):
            errors.append(f"pamr_dilations must be positive integers, got {self.pamr_dilations!r}")
        if float(self.logit_scale) <= 0:
            errors.append(f"logit_scale must be > 0, got {self.logit_scale!r}")
        if int(self.close_size) < 0:
            errors.append(f"close_size must be >= 0, got {self.close_size!r}")
        if self.aux_kind not in ("definitions", "synonyms"):
            errors.append(f"aux_kind must be 'definitions' or 'synonyms', got {self.aux_kind!r}")
        if errors:
            raise ValueError("invalid ITACLIPConfig: " + "; ".join(errors))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ITACLIPConfig:
        """Return a named preset, optionally with some fields replaced.

        Parameters
        ----------
        name : str
            One of :func:`list_presets`: the paper's ``voc21``, ``context60``,
            ``coco_object``, ``coco_stuff``, ``cityscapes``, plus ``balanced``,
            ``fast`` and any registered with :func:`register_preset`.
        **overrides
            Fields to replace.
        """
        key = name.lower().replace("-", "_")
        if key not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(list_presets())}")
        cfg = _PRESETS[key]
        return dataclasses.replace(cfg, **overrides) if overrides else cfg

    def replace(self, **changes: Any) -> ITACLIPConfig:
        """Return a copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The computation's fields as plain JSON-able values."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ITACLIPConfig:
        """Build a config from :meth:`to_dict`'s output (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ITACLIPConfig fields: {', '.join(unknown)}")
        return cls(**data)


_PAPER = dict(crop=224, stride=28, attention="self-self", mid_layers=(7, 8, 10), mid_weight=0.5,
              drop_last_mlp=True, image_engineering=True, pamr_steps=10, pamr_dilations=(8, 16),
              close_size=3)

_PRESETS: dict[str, ITACLIPConfig] = {
    "voc21": ITACLIPConfig(short_side=336, aux_weight=0.05, eng_weight=0.70, logit_scale=60,
                           prob_threshold=0.1, area_threshold=0.1, aux_kind="definitions", **_PAPER),
    "context60": ITACLIPConfig(short_side=336, aux_weight=0.15, eng_weight=0.75, logit_scale=55,
                               prob_threshold=0.1, aux_kind="definitions", **_PAPER),
    "coco_object": ITACLIPConfig(short_side=336, aux_weight=0.10, eng_weight=0.75, logit_scale=50,
                                 prob_threshold=0.1, aux_kind="synonyms", **_PAPER),
    "coco_stuff": ITACLIPConfig(short_side=448, aux_weight=0.20, eng_weight=0.75, logit_scale=40,
                                prob_threshold=0.0, aux_kind="definitions", **_PAPER),
    "cityscapes": ITACLIPConfig(short_side=560, aux_weight=0.05, eng_weight=0.70, logit_scale=40,
                                prob_threshold=0.0, aux_kind="synonyms", **_PAPER),
    # interactive default: paper's image/architecture settings, stride 56 (~3x cheaper)
    "balanced": ITACLIPConfig(),
    # quick preview: stride 112, no test-time augmentation, no PAMR
    "fast": ITACLIPConfig(stride=112, image_engineering=False, pamr_steps=0),
}

#: The five configurations of the paper, in its table's order.
PAPER_PRESETS = ("voc21", "context60", "coco_object", "coco_stuff", "cityscapes")


def list_presets() -> list[str]:
    """Names accepted by :meth:`ITACLIPConfig.preset`."""
    return list(_PRESETS)


def register_preset(name: str, config: ITACLIPConfig, *, overwrite: bool = False) -> None:
    """Make ``config`` available as ``ITACLIPConfig.preset(name)``."""
    key = name.lower().replace("-", "_")
    if not isinstance(config, ITACLIPConfig):
        raise TypeError(f"config must be an ITACLIPConfig, got {type(config).__name__}")
    if key in _PRESETS and not overwrite:
        raise ValueError(f"preset {name!r} exists; pass overwrite=True to replace it")
    _PRESETS[key] = config
