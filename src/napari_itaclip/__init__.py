"""napari-itaclip: training-free open-vocabulary semantic segmentation (ITACLIP).

Importing the package is cheap: torch, open_clip, Qt and napari load on first use
of the names that need them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import ITACLIPConfig
from .vocabulary import Vocabulary, VocabularyError

# Importing the package changes nothing in the process (no environment variable, no
# import hook): what torch needs is done by napari_itaclip.engine right before the
# package's first torch import (see _torch_setup and docs/architecture.md).

__all__ = [
    "Exemplars",
    "ITACLIPConfig",
    "Measurements",
    "Progress",
    "SegmentationResult",
    "Segmenter",
    "Vocabulary",
    "VocabularyError",
    "__version__",
    "exemplars_from_layers",
    "measure",
    "measure_layer",
    "segment",
    "segment_layer",
]

_LAZY = {
    "Exemplars": "napari_itaclip.engine.exemplars",
    "Segmenter": "napari_itaclip.engine.segmenter",
    "SegmentationResult": "napari_itaclip.engine.segmenter",
    "Progress": "napari_itaclip.engine.segmenter",
    "segment": "napari_itaclip.engine.registry",
    "segment_layer": "napari_itaclip.plugin.scripting",
    "exemplars_from_layers": "napari_itaclip.plugin.scripting",
    "measure": "napari_itaclip.measurements",
    "Measurements": "napari_itaclip.measurements",
    "measure_layer": "napari_itaclip.plugin.scripting",
}

if TYPE_CHECKING:  # pragma: no cover
    from .engine.exemplars import Exemplars
    from .engine.registry import segment
    from .engine.segmenter import Progress, SegmentationResult, Segmenter
    from .measurements import Measurements, measure
    from .plugin.scripting import exemplars_from_layers, measure_layer, segment_layer


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_itaclip' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def _version() -> str:
    """The installed distribution's version: pyproject.toml is its only source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-itaclip")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
