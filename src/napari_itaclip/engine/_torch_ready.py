"""Importing this module prepares the process for torch.

Every module of the engine that imports torch (or open_clip, timm, torchvision) imports
this one first, in the same scope: the process is prepared
(:func:`napari_itaclip._torch_setup.before_torch`: the OpenMP waiting policy and the
triton guard) right before the package's first torch import, and not before. The
engine's torch-free modules (the memory model, the object-size arithmetic, the resize
shapes) can then be imported by the widget without touching the process
(docs/architecture.md, "What the package changes in the process, and when").
"""

from .._torch_setup import before_torch

before_torch()
