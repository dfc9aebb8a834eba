"""Sample images for napari's File ▸ Open Sample menu, each with a suggested vocabulary.

All come with scikit-image and load offline. The suggested vocabulary is stored in the
layer's ``metadata["itaclip_vocabulary"]`` (text form); the ITACLIP widget fills its
editor with it when the layer is picked.
"""

from __future__ import annotations

from typing import Any

from .layers import VOCAB_METADATA_KEY

__all__ = ["SAMPLES", "make_astronaut", "make_chelsea", "make_coffee",
           "make_immunohistochemistry", "make_retina"]

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
}


def _sample(key: str) -> list[tuple[Any, dict, str]]:
    from skimage import data

    func, name, vocab = SAMPLES[key]
    image = getattr(data, func)()
    meta = {VOCAB_METADATA_KEY: vocab.strip()}
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
