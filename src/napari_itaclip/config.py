"""ITACLIP configuration: a frozen dataclass and its field table (the schema).

The field names are part of the public API; new fields may be added, existing ones
are never renamed. The named presets and the methods live in :mod:`napari_itaclip.presets`
(their names are re-exported here).

Every field's help text and allowed values live in ONE table: the field's metadata
(:func:`cfield`). :func:`field_info` reads it back as :class:`FieldInfo` objects, which
validate values (``ITACLIPConfig.__post_init__``), parse the command line's
``--set FIELD=VALUE`` and build the widget's advanced editor. A new field needs only a
line here: ``name: type = cfield(default, "help", low=..., high=...)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import textwrap
from dataclasses import dataclass, field
from typing import Any

from . import presets as _presets
from .identity import NONE_WORDS
from .presets import (
    DATASETS,
    METHOD_DATASETS,
    METHODS,
    PAPER_PRESETS,
    describe_method,
    list_presets,
    preset_method,
)

__all__ = [
    "ATTENTION_MODES",
    "AUX_KINDS",
    "DATASETS",
    "METHODS",
    "METHOD_DATASETS",
    "FieldInfo",
    "ITACLIPConfig",
    "PAPER_PRESETS",
    "cfield",
    "coverage_problem",
    "describe_method",
    "field_info",
    "list_presets",
    "preset_method",
    "register_preset",
]

#: Attention used in the surgered layers. ``self-self`` is ITACLIP's q-q + k-k.
ATTENTION_MODES = ("self-self", "q-k", "q-q", "k-k")
#: The two kinds of auxiliary text an LLM writes for a class (docs/engine.md,
#: section "Auxiliary texts").
AUX_KINDS = ("definitions", "synonyms")

_META_KEY = "itaclip"
_KINDS = {"int": "an integer", "float": "a finite number", "bool": "true or false",
          "str": "text", "ints": "a list of integers"}


@dataclass(frozen=True)
class FieldInfo:
    """One row of the field table: what a config field holds and means.

    Attributes
    ----------
    name : str
        The field's name.
    kind : {"int", "float", "bool", "str", "ints"}
        Its type (``"ints"``: a tuple of integers), read from the annotation.
    optional : bool
        Whether ``None`` is allowed (the annotation says ``| None``).
    default : Any
        The default value (the ``balanced`` preset's).
    help : str
        One sentence for tooltips and ``--help``.
    low, high : float or None
        Inclusive bounds (of each element for ``"ints"``); ``None`` = unbounded.
    low_open : bool
        ``low`` itself is excluded (``> low`` rather than ``>= low``).
    choices : tuple of str or None
        The allowed values of a ``"str"`` field.
    nonempty : bool
        An ``"ints"`` field must hold at least one value.
    none_means : str or None
        What ``None`` does, for the widget and ``--help`` (e.g. "native size").
    step : float or None
        Step of the widget's spin box.
    ui_high : float or None
        Upper end of the widget's spin box when ``high`` is unbounded; for the relabel
        sliders (``prob_threshold``, ``area_threshold``), the slider's upper end.
    image_side : bool
        Whether the per-window image features depend on the field (then it is part of
        the feature cache's key); ``False`` for what acts after them (text mixing, the
        view mix, PAMR, probabilities, thresholds, closing).
    """

    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    nonempty: bool = False
    none_means: str | None = None
    step: float | None = None
    ui_high: float | None = None
    image_side: bool = True

    def expected(self) -> str:
        """What a valid value is, in words: ``"an integer >= 1 or none"``."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = _KINDS[self.kind]
            if self.kind == "ints" and self.nonempty:
                text = "a non-empty list of integers"
            bounds = self._bounds_text()
            if bounds:
                text += (" each " if self.kind == "ints" else " ") + bounds
        return text + (" or none" if self.optional else "")

    def _bounds_text(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None and not self.low_open:
            return f"in [{_num(lo)}, {_num(hi)}]"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(lo)}")
        if hi is not None:
            parts.append(f"<= {_num(hi)}")
        return " and ".join(parts)

    def example(self) -> str:
        """A valid ``--set`` value (the default, written as the command line takes it)."""
        return self.format(self.default)

    def format(self, value: Any) -> str:
        """A value as ``--set`` accepts it: ``none``, ``true``, ``7,8,10``, ``0.5``."""
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple | list):
            return ",".join(str(v) for v in value)
        return str(value)

    def check(self, value: Any) -> tuple[Any, str | None]:
        """``(value, None)`` normalised when valid, else ``(value, the reason)``."""
        if value is None:
            return (None, None) if self.optional else (value, self._bad(value))
        try:
            value = self._coerce(value)
        except (TypeError, ValueError):
            return value, self._bad(value)
        items = value if self.kind == "ints" else (value,)
        if self.kind == "ints" and self.nonempty and not items:
            return value, self._bad(value)
        if self.choices and value not in self.choices:
            return value, self._bad(value)
        if self.kind in ("int", "float", "ints") and not all(self._in_bounds(v) for v in items):
            return value, self._bad(value)
        return value, None

    def _coerce(self, value: Any) -> Any:
        if self.kind == "ints":
            if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
                raise TypeError(value)
            return tuple(_integer(v) for v in value)
        if self.kind == "int":
            return _integer(value)
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(float(value)):  # inf / nan: never a valid number
                raise TypeError(value)
            return value
        if self.kind == "bool":
            if value not in (True, False):
                raise TypeError(value)
            return bool(value)
        if not isinstance(value, str):
            raise TypeError(value)
        return value

    def _in_bounds(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or v <= self.high

    def _bad(self, value: Any) -> str:
        return f"{self.name} must be {self.expected()}, got {value!r}"

    def parse(self, text: str) -> Any:
        """A command-line value (``--set FIELD=TEXT``) as this field's type.

        The one parser of typed values: the command line's dedicated flags
        (``--area-threshold off``) and ``--set`` both use it. ``none`` / ``null`` /
        ``off`` (:data:`napari_itaclip.identity.NONE_WORDS`) give ``None`` for optional
        fields; lists are written ``7,8,10`` or ``[7, 8, 10]``; booleans ``true`` /
        ``false`` (or 1 / 0, yes / no, on / off).

        Raises
        ------
        ValueError
            With the field, the expected type and an example.
        """
        raw = text.strip()
        low = raw.lower()
        try:
            if low in NONE_WORDS and (self.optional or low != "off"):
                if not self.optional:
                    raise ValueError(raw)
                return None
            if self.kind == "ints":
                inner = raw[1:-1] if raw.startswith(("[", "(")) and raw.endswith(("]", ")")) \
                    else raw
                value: Any = tuple(int(t) for t in inner.replace(";", ",").split(",")
                                   if t.strip())
            elif self.kind == "int":
                value = int(raw)
            elif self.kind == "float":
                value = float(raw)
            elif self.kind == "bool":
                flags = {"true": True, "1": True, "yes": True, "on": True,
                         "false": False, "0": False, "no": False, "off": False}
                value = flags[low]
            else:
                value = json.loads(raw) if raw.startswith('"') else raw
        except (ValueError, KeyError, json.JSONDecodeError):
            raise ValueError(
                f"{self.name}={text!r}: expected {self.expected()}, e.g. "
                f"{self.name}={self.example()}") from None
        value, problem = self.check(value)
        if problem:
            raise ValueError(f"{self.name}={text!r}: expected {self.expected()}, e.g. "
                             f"{self.name}={self.example()}")
        return value

    def describe(self) -> str:
        """One line for ``--help``: name, expected values, default, help."""
        none = f"; none = {self.none_means}" if self.optional and self.none_means else ""
        return (f"{self.name}: {self.expected()} (default {self.example()}{none}). "
                f"{self.help}")


def _num(x: float) -> str:
    return f"{x:g}"


def _integer(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real) and float(v).is_integer():
        return int(v)
    raise TypeError(v)


def cfield(default: Any, help: str, **info: Any) -> Any:
    """A config field with its row of the table (see :class:`FieldInfo` for ``info``)."""
    return field(default=default, metadata={_META_KEY: {"help": help, **info}})


def _kind(annotation: str) -> tuple[str, bool]:
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    base = next(p for p in parts if p != "None")
    kind = "ints" if base.startswith("tuple") else base
    if kind not in _KINDS:  # pragma: no cover - a new annotation needs a kind here
        raise TypeError(f"ITACLIPConfig field annotation {annotation!r} is not supported")
    return kind, optional


_INFO: dict[str, FieldInfo] = {}


def field_info() -> dict[str, FieldInfo]:
    """The field table: name -> :class:`FieldInfo`, in the dataclass's field order."""
    if not _INFO:
        for f in dataclasses.fields(ITACLIPConfig):
            kind, optional = _kind(f.type)
            _INFO[f.name] = FieldInfo(f.name, kind, optional, f.default,
                                      **f.metadata[_META_KEY])
    return dict(_INFO)


@dataclass(frozen=True)
class ITACLIPConfig:
    """Every knob of the ITACLIP computation.

    The defaults are the ``balanced`` preset: the authors' VOC settings with a
    sliding-window stride of 56 (about 3x cheaper than 28 for <= 0.1 mIoU in the
    paper's ablation) and no thresholds, which suits interactive use on arbitrary
    images. Use :meth:`preset` for the paper's per-dataset configurations.

    Each field's meaning and allowed values are written once, in the field table
    (:func:`field_info`, the fields' metadata); the command line's ``--set`` help, the
    widget's advanced settings and the *Parameters* below are generated from it.
    """

    short_side: int | None = cfield(
        336, "Resize the input so its short side has this many pixels (aspect kept, long "
        "side at most 2048; OpenCV's bilinear on the uint8 image, as the authors' MMSeg "
        "pipeline) before the sliding window; outputs are resized back.", low=1,
        none_means="native resolution (no resize)", ui_high=8192)
    crop: int | None = cfield(224, "Sliding-window crop side in pixels (224 = CLIP's "
                              "pretraining resolution).", low=1, ui_high=4096,
                              none_means="one window over the whole image")
    stride: int = cfield(56, "Sliding-window stride in pixels.", low=1, ui_high=4096)
    attention: str = cfield("self-self", "Attention of the surgered layers: self-self "
                            "(q-q + k-k, ITACLIP), q-k (stock), q-q or k-k.",
                            choices=ATTENTION_MODES)
    mid_layers: tuple[int, ...] = cfield(
        (7, 8, 10), "1-based indices of the intermediate blocks whose attention maps are "
        "averaged into the last block's map; empty disables the mix.", low=1)
    mid_weight: float = cfield(0.5, "Weight of the averaged intermediate maps in the last "
                               "block's attention.", low=0, high=1, step=0.05)
    drop_last_mlp: bool = cfield(True, "Skip the last block's feed-forward network "
                                 "(and ln_2).")
    image_engineering: bool = cfield(True, "Test-time augmentation: greyscale, blur and "
                                     "flips (docs/engine.md, section \"Image engineering\").")
    eng_weight: float = cfield(0.75, "Weight of the un-flipped views against the flipped "
                               "ones.", low=0, high=1, step=0.05, image_side=False)
    aux_weight: float = cfield(0.1, "Weight of a class's auxiliary text (definition / "
                               "synonyms) in its queries.", low=0, high=1, step=0.05, image_side=False)
    pamr_steps: int = cfield(10, "PAMR iterations; 0 disables the refinement.", low=0,
                             ui_high=100, image_side=False)
    pamr_dilations: tuple[int, ...] = cfield((8, 16), "PAMR neighbourhood dilations.",
                                             low=1, nonempty=True, image_side=False)
    logit_scale: float = cfield(50.0, "Temperature applied to cosine similarities before "
                                "the softmax.", low=0, low_open=True, step=5.0,
                                ui_high=1000.0, image_side=False)
    prob_threshold: float = cfield(0.0, "Pixels whose best class probability is below "
                                   "this get label 0.", low=0, high=1, step=0.01, image_side=False)
    area_threshold: float | None = cfield(
        None, "A class (other than label 0) covering no more than this fraction of the "
        "pixels assigned to classes other than 0 is removed.", low=0, high=1, step=0.01,
        ui_high=0.5, none_means="off", image_side=False)
    close_size: int = cfield(3, "Side of the square grey-level closing applied to the "
                             "label map; 0 disables.", low=0, ui_high=31, image_side=False)
    aux_kind: str = cfield("definitions", "What the preset's auxiliary texts are "
                           "(informational; used by the LLM helper).", choices=AUX_KINDS, image_side=False)
    attn_gaussian_std: float | None = cfield(
        None, "NACLIP's neighbourhood bias: a Gaussian of the patch distance with this "
        "standard deviation (in patches) added to the last block's scaled attention logits; "
        "single-softmax attentions only (q-k, q-q, k-k).", low=0, low_open=True, high=1000,
        step=0.5, none_means="off")
    keep_last_residual: bool = cfield(True, "Keep the last block's attention residual "
                                      "(off: its output is the attention output alone).")
    pad_to_patch: bool = cfield(False, "Zero-pad each window crop, centred, to whole patches "
                                "and cut its upsampled logits back (ClearCLIP), instead of "
                                "flooring the patch grid.")
    renormalize_probs: bool = cfield(False, "After the labels, divide the class "
                                     "probabilities by their sum over the classes (NACLIP).",
                                     image_side=False)
    object_size: float | None = cfield(
        None, "Typical size of the objects, in input pixels: the image is reduced by the "
        "whole factor object_size // 32 (never enlarged) so objects span two to four 16-px "
        "patches, segmented at that working resolution (short_side is then not used), "
        "and the labels mapped back (docs/models.md, \"Object size\"). At least 16 (one "
        "patch at the image's own resolution).", low=0, low_open=True, step=1.0,
        ui_high=100000.0, none_means="off (short_side decides)")

    def __post_init__(self) -> None:
        errors = []
        for name, info in field_info().items():
            value, problem = info.check(getattr(self, name))
            if problem:
                errors.append(problem)
            else:
                object.__setattr__(self, name, value)
        if not errors:
            errors.extend(_cross_field_problems(self))
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
            ``fast``, the other methods' ``"<method>-<dataset>"`` presets (e.g.
            ``"naclip-voc21"``, ``"clearclip-coco_object"``; see :data:`METHODS` and
            :data:`DATASETS`) and any registered with :func:`register_preset`.
            Case, and ``-`` against ``_`` inside a name, do not matter.
        **overrides
            Fields to replace.
        """
        key, value = _presets.lookup(name)
        if not isinstance(value, ITACLIPConfig):  # a field dict: built once
            value = cls(**value)
            _presets.store(key, value, overwrite=True)
        return dataclasses.replace(value, **overrides) if overrides else value

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


def _parameters_doc() -> str:
    """The numpy-style *Parameters* section of ITACLIPConfig, from the field table."""
    lines = ["", "    Parameters", "    ----------"]
    for info in field_info().values():
        kind = {"ints": "tuple of int"}.get(info.kind, info.kind)
        lines.append(f"    {info.name} : {kind}{' or None' if info.optional else ''}")
        none = f" None: {info.none_means}." if info.optional and info.none_means else ""
        lines.extend("        " + line for line in textwrap.wrap(
            f"{info.help}{none} Default {info.example()}.", 80))
    return "\n".join(lines) + "\n"


def coverage_problem(crop: int | None, stride: int) -> str | None:
    """Why windows of ``crop`` px at ``stride`` would leave pixels uncovered, else ``None``.

    The one rule of the package (configuration validation and chunk planning both use
    it): with ``stride > crop`` the gaps between consecutive windows are covered by no
    window, so those pixels would get no logits at all (NaN). ``crop=None`` is one
    window over the whole image and always covers it. It lives here, re-exported by
    ``engine.sliding``, so that validating a configuration loads nothing of the engine
    (whose import prepares the process for torch: ``_torch_setup``).
    """
    if crop is not None and stride > crop:
        return (f"stride ({stride}) must not exceed crop ({crop}): with gaps between the "
                "sliding windows some pixels would be covered by no window")
    return None


def _cross_field_problems(cfg: ITACLIPConfig) -> list[str]:
    """The rules that tie fields together (each field alone is valid)."""
    problems = []
    if cfg.attn_gaussian_std is not None and cfg.attention == "self-self":
        problems.append(
            "attn_gaussian_std needs a single-softmax attention ('q-k', 'q-q' or 'k-k'): "
            "the neighbourhood bias is added to one attention's logits, and 'self-self' "
            "sums two softmaxes")
    gap = coverage_problem(cfg.crop, cfg.stride)
    if gap:
        problems.append(gap)
    from .engine.scale import object_size_problem  # pure arithmetic, no torch

    size = object_size_problem(cfg.object_size)
    if size:
        problems.append(size)
    return problems


ITACLIPConfig.__doc__ = (ITACLIPConfig.__doc__ or "").rstrip() + "\n" + _parameters_doc()


def register_preset(name: str, config: ITACLIPConfig, *, overwrite: bool = False) -> None:
    """Make ``config`` available as ``ITACLIPConfig.preset(name)`` (a ``"<method>-..."``
    name lists it under that method, see :func:`list_presets`).
    """
    if not isinstance(config, ITACLIPConfig):
        raise TypeError(f"config must be an ITACLIPConfig, got {type(config).__name__}")
    _presets.store(name, config, overwrite=overwrite)
