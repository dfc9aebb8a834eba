"""Exceptions raised by napari-itaclip, each with a message meant for the user."""

from __future__ import annotations

from .vocabulary import VocabularyError

__all__ = [
    "CheckpointError",
    "ExemplarsError",
    "ITACLIPError",
    "ImageError",
    "ModelError",
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
