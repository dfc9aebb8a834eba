"""The ITACLIP engine: no Qt, no napari; numpy in, numpy out at its edge.

Every torch import of the package is in this subpackage, so importing it is the moment
the package prepares the process for torch (:func:`napari_itaclip._torch_setup.before_torch`:
the OpenMP waiting policy and the triton guard).
"""

from .._torch_setup import before_torch

before_torch()
