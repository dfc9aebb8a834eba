"""What this package does to the process right before it first imports torch, and only then.

``import napari_itaclip`` changes nothing in the process: no environment variable, no
import hook. The torch imports of the package live in :mod:`napari_itaclip.engine`, whose
``__init__`` calls :func:`before_torch` first; the two open_clip imports outside it (the
LLM helper's token count, the CLI's model-config look-up) call it themselves
(tests/test_torch_setup.py checks every one). So the steps below happen only in a
process that is about to run the model (the widget's worker, a script, the CLI, a chunk
worker), never in a napari session that merely lists the plugin or opens the widget, and
never for another plugin's imports:

1. ``OMP_WAIT_POLICY=PASSIVE``, unless the user set a value, and only while torch is not
   loaded yet (the OpenMP runtime reads it once, when torch loads): idle OpenMP threads
   sleep instead of spinning, which keeps small-op-heavy work (PAMR) from slowing 2-8x
   when another process, napari's GUI thread included, holds a core
   (:func:`napari_itaclip._env.prefer_passive_openmp`, docs/benchmarks.md). It is set in
   ``os.environ`` because that is where the runtime reads it; processes this one starts
   afterwards inherit it, as they inherit any variable.
2. The triton guard (:mod:`napari_itaclip._triton_guard`, Linux only): a finder first
   on :data:`sys.meta_path` that refuses ``import triton`` only while Mesa's LLVM is
   mapped into the process (napari's OpenGL canvas), where loading triton crashes it.

See docs/architecture.md, "What the package changes in the process, and when".
"""

from __future__ import annotations

import sys

from . import _env, _triton_guard

__all__ = ["before_torch"]


def before_torch() -> None:
    """Prepare the process for this package's first torch import (idempotent, cheap)."""
    torch_loaded = "torch" in sys.modules
    if not torch_loaded:
        _env.prefer_passive_openmp()
    _triton_guard.install()
