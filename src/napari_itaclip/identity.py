"""Which model: one torch-free value, normalised once (no torch, no Qt).

:class:`ModelIdentity` is what tells loaded models apart: the open_clip model, its
weights, the device, the precision, the batch bound, plus the bound of the in-memory
image-feature cache. The registry's key (:class:`~napari_itaclip.engine.registry.SegmenterKey`),
chunked mode's picklable :class:`~napari_itaclip.chunked.SegmenterSpec` and the widget's
model settings are this value (or derive from it), so its two rules live here only:

- *own weights*: an ``hf-hub:``/``local-dir:`` model with the default weights
  (:data:`DEFAULT_PRETRAINED`, i.e. ``pretrained`` not given) has no pretrained tag;
  an explicit tag (even ``"openai"``) is kept, and refused when the model loads;
- *no weights*: ``None``, ``""`` and ``"none"`` (any case) all mean random weights.

"Argument not given" has one spelling across the package: :data:`NOT_GIVEN`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "DEFAULT_FEATURE_CACHE_MB",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "NOT_GIVEN",
    "OWN_WEIGHTS_SCHEMES",
    "ModelIdentity",
    "is_default_pretrained",
    "normalise_pretrained",
    "parse_none",
]


class _NotGiven:
    """The one "argument not given" marker (a singleton, picklable, truthy)."""

    __slots__ = ()
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self):
        return "NOT_GIVEN"


#: Marks an argument the caller did not give (distinct from ``None``, which can be a value).
NOT_GIVEN: Any = _NotGiven()

#: The default model (the ITACLIP paper's).
DEFAULT_MODEL = "ViT-B-16"
#: The default ``pretrained``: "openai" for open_clip model names, the model's own
#: weights for ``hf-hub:``/``local-dir:`` models. It is :data:`NOT_GIVEN`: an explicit
#: ``"openai"`` is a choice (refused for models that bring their own weights).
DEFAULT_PRETRAINED: Any = NOT_GIVEN
#: The tag the default means for open_clip model names.
DEFAULT_TAG = "openai"
#: Model-id prefixes whose configuration and weights come together.
OWN_WEIGHTS_SCHEMES = ("hf-hub:", "local-dir:")
#: Default bound of a Segmenter's image-feature cache, in MB (2**20 bytes). A VOC-style
#: 336 x 448 image at stride 28 (45 windows) takes 34.5 MB with ViT-B/16, at stride 56
#: (15 windows) 11.5 MB.
DEFAULT_FEATURE_CACHE_MB = 1024.0
#: Words that mean "no value" wherever a value is typed (CLI flags, --set, "none" weights).
NONE_WORDS = ("none", "null", "off")


def is_default_pretrained(value) -> bool:
    """Whether ``value`` is :data:`DEFAULT_PRETRAINED` (not merely the string "openai")."""
    return value is DEFAULT_PRETRAINED


def parse_none(text) -> Any:
    """``None`` for ``None``, ``""`` and the :data:`NONE_WORDS` (any case); else ``text``."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() in ("", *NONE_WORDS):
        return None
    return text


def normalise_pretrained(model, pretrained) -> str | None:
    """The weights ``pretrained`` means for ``model`` (the module's two rules).

    The default gives ``None`` for ``hf-hub:``/``local-dir:`` models and ``"openai"``
    otherwise; ``None``/``""``/``"none"`` give ``None``; paths become strings.
    """
    if is_default_pretrained(pretrained):
        own = isinstance(model, (str, os.PathLike)) and os.fspath(model).startswith(
            OWN_WEIGHTS_SCHEMES)
        return None if own else DEFAULT_TAG
    if pretrained is None:
        return None
    return parse_none(os.fspath(pretrained))


@dataclass(frozen=True)
class ModelIdentity:
    """Which model, normalised: two equal identities share one loaded Segmenter.

    Parameters
    ----------
    model : str
        open_clip model name, ``hf-hub:``/``local-dir:`` id or model-config path.
    pretrained : str or None
        Pretrained tag or local checkpoint path; ``None`` (also ``""`` and ``"none"``)
        for random weights; :data:`DEFAULT_PRETRAINED` for the model's default.
    device : str
        As given (``"auto"``, ``"cpu"``, ``"cuda:1"``, ...).
    half : bool
        float16 weights (CUDA only).
    batch_memory_mb : float or None
        Bound on one batched forward; ``None`` = the engine's default for the device.
    feature_cache_mb : float or None
        Bound of the in-memory image-feature cache (``0`` disables it; ``None`` = the
        engine's default). Not part of equality: changing it resizes the cache of the
        loaded model instead of loading another one.
    """

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    device: str = "auto"
    half: bool = False
    batch_memory_mb: float | None = None
    feature_cache_mb: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "pretrained", normalise_pretrained(self.model, self.pretrained))
        set_(self, "model", os.fspath(self.model))
        set_(self, "device", str(self.device))
        set_(self, "half", bool(self.half))
        for name in ("batch_memory_mb", "feature_cache_mb"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                if name == "batch_memory_mb" and not value > 0:
                    raise ValueError(f"batch_memory_mb must be > 0, got {value!r}")
                if not value >= 0:  # also refuses NaN
                    raise ValueError(
                        f"feature_cache_mb must be >= 0 (0 disables the cache), got {value!r}")
                set_(self, name, value)

    @property
    def identity(self) -> ModelIdentity:
        """This value as a plain :class:`ModelIdentity` (drops what subclasses add)."""
        return ModelIdentity(**{f.name: getattr(self, f.name) for f in fields(ModelIdentity)})

    def segmenter_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Segmenter(...)`` for this identity (a
        ``feature_cache_mb`` only when given and not the default).
        """
        kwargs = {"model": self.model, "pretrained": self.pretrained, "device": self.device,
                  "half": self.half, "batch_memory_mb": self.batch_memory_mb}
        if self.feature_cache_mb not in (None, DEFAULT_FEATURE_CACHE_MB):
            kwargs["feature_cache_mb"] = self.feature_cache_mb
        return kwargs
