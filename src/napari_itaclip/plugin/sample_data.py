"""Sample images for napari's File ▸ Open Sample menu, each with a suggested vocabulary.

All come with scikit-image and load offline. The suggested vocabulary is stored in the
layer's ``metadata["itaclip_vocabulary"]`` (text form); the ITACLIP widget fills its
editor with it when the layer is picked. Samples from a domain a specialised CLIP suits
also carry that model's catalogue name in ``metadata["itaclip_model"]``
(:data:`SUGGESTED_MODELS`; see docs/models.md); the widget mentions it, it never
switches models by itself.
"""

from __future__ import annotations

from typing import Any

from .layers import MODEL_METADATA_KEY, VOCAB_METADATA_KEY

__all__ = ["SAMPLES", "SUGGESTED_MODELS", "make_astronaut", "make_cell", "make_chelsea",
           "make_coffee", "make_immunohistochemistry", "make_retina",
           "make_shepp_logan_phantom"]

#: name -> (skimage.data function, display name, suggested vocabulary)
SAMPLES: dict[str, tuple[str, str, str]] = {
    "astronaut": ("astronaut", "astronaut", """\
background: sky, wall, space, floor
person, astronaut
rocket, space shuttle
flag
"""),
    "chelsea": ("chelsea", "chelsea", """\
background: floor, wall, carpet, sofa
cat, kitten
"""),
    "coffee": ("coffee", "coffee", """\
background: table, wall
cup, mug
coffee
saucer, plate
spoon
"""),
    "immunohistochemistry": ("immunohistochemistry", "immunohistochemistry", """\
background: glass slide, empty space
cell nucleus, nuclei
brown stained tissue
cytoplasm, tissue
"""),
    "retina": ("retina", "retina fundus", """\
background: black border, black image corner
optic disc
blood vessel, artery, vein
retina, fundus
"""),
    "cell": ("cell", "cell (phase contrast)", """\
background: grey background, empty medium, saline
cell, cell body
cell boundary, membrane, bright halo
"""),
    "shepp_logan_phantom": ("shepp_logan_phantom", "CT phantom", """\
background: black background, air
skull, bone
brain, soft tissue
ventricle, dark region
"""),
}

#: sample key -> catalogue short name of the domain model it suits
SUGGESTED_MODELS: dict[str, str] = {
    "cell": "BiomedCLIP",
    "shepp_logan_phantom": "BiomedCLIP",
}


def _sample(key: str) -> list[tuple[Any, dict, str]]:
    from skimage import data

    func, name, vocab = SAMPLES[key]
    image = getattr(data, func)()
    if image.dtype.kind == "f":  # the phantom: 0..1 floats, shown and segmented as 8-bit
        image = (image * 255 + 0.5).clip(0, 255).astype("uint8")
    meta = {VOCAB_METADATA_KEY: vocab.strip()}
    if key in SUGGESTED_MODELS:
        meta[MODEL_METADATA_KEY] = SUGGESTED_MODELS[key]
    return [(image, {"name": name, "metadata": meta}, "image")]


def make_astronaut():
    """Astronaut Eileen Collins (photograph, RGB 512 × 512)."""
    return _sample("astronaut")


def make_chelsea():
    """Chelsea the cat (photograph, RGB 300 × 451)."""
    return _sample("chelsea")


def make_coffee():
    """A cup of coffee (photograph, RGB 400 × 600)."""
    return _sample("coffee")


def make_immunohistochemistry():
    """Immunohistochemistry (IHC) staining of colonic tissue (microscopy, RGB 512 × 512)."""
    return _sample("immunohistochemistry")


def make_retina():
    """Human retina fundus photograph (medical, RGB 1411 × 1411)."""
    return _sample("retina")


def make_cell():
    """A cell floating in saline (quantitative phase-contrast microscopy, grey 660 × 550)."""
    return _sample("cell")


def make_shepp_logan_phantom():
    """The Shepp-Logan phantom, a standard CT test image of a head (grey 400 × 400)."""
    return _sample("shepp_logan_phantom")
