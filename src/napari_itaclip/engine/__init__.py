"""The ITACLIP engine: no Qt, no napari; numpy in, numpy out at its edge.

Almost every torch import of the package is in this subpackage; each module that
imports torch imports :mod:`._torch_ready` first, which prepares the process for torch
(:func:`napari_itaclip._torch_setup.before_torch`: the OpenMP waiting policy and the
triton guard). Importing the subpackage or its torch-free modules changes nothing.
"""
