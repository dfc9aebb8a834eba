"""Exceptions raised by napari-itaclip, each with a message meant for the user."""

from __future__ import annotations

from .vocabulary import VocabularyError

__all__ = [
    "CheckpointError",
    "ExemplarsError",
    "ITACLIPError",
    "ImageError",
    "InsufficientMemoryError",
    "ModelError",
    "NonFiniteResultError",
    "VocabularyError",
    "WeightsUnavailableError",
]


class ITACLIPError(Exception):
    """Base class of the errors below (VocabularyError is a ValueError instead)."""


class ImageError(ITACLIPError, ValueError):
    """An image the engine cannot segment (shape, dtype, NaN/inf values)."""


class ModelError(ITACLIPError, ValueError):
    """An unknown model name or pretrained tag, or an unsupported architecture."""


class CheckpointError(ITACLIPError, OSError):
    """A local checkpoint file that is missing, unreadable, corrupt or does not fit."""


class WeightsUnavailableError(ITACLIPError, OSError):
    """Pretrained weights that are not cached and cannot be downloaded."""


class ExemplarsError(ITACLIPError, ValueError):
    """Exemplars that cannot be made or used: bad masks, a corrupt file, or features of
    another model or of incompatible image-side settings.
    """


class InsufficientMemoryError(ITACLIPError, MemoryError):
    """A segmentation whose estimated peak memory exceeds what the machine can give.

    Raised before anything is allocated (see :mod:`napari_itaclip.engine.memory`); the
    message says how much of which memory is needed, at which step, and the way out
    (chunked mode). ``need`` and ``limit`` are the two figures in bytes; ``memory`` is
    ``"host"`` or ``"device"`` (a CUDA model's GPU memory).
    """

    def __init__(self, message: str, *, need: int = 0, limit: int = 0, memory: str = "host"):
        super().__init__(message)
        self.need = need
        self.limit = limit
        self.memory = memory


class NonFiniteResultError(ITACLIPError, ArithmeticError):
    """A segmentation whose logits or probabilities hold NaN or infinity.

    Never silently labelled: the message names the likely cause (weights that overflow,
    e.g. in float16, or a corrupt checkpoint).
    """
