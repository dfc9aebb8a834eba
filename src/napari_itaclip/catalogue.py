"""A curated catalogue of CLIP models the engine supports (data only: no torch import).

Each entry names an open_clip model the way ``Segmenter(model=..., pretrained=...)``
takes it, the domain its training images come from, its tower kinds, native image
size and a licence note. ``hf-hub:`` entries load their own configuration and weights
from that Hugging Face repository (``pretrained=None``). The layouts were checked
against the repositories' public files (``open_clip_config.json`` and weight files)
and against open_clip's list of pretrained tags; see docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .identity import DEFAULT_MODEL, DEFAULT_PRETRAINED, is_default_pretrained

__all__ = [
    "CATALOGUE",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DOMAINS",
    "ModelEntry",
    "catalogue_help",
    "find_entry",
    "is_default_pretrained",
    "resolve",
]


# The default model and weights live with the model identity (re-exported here).

#: Domains, in the order the catalogue lists them.
DOMAINS = (
    "general photos",
    "biomedical figures and radiology",
    "histopathology",
    "organisms",
)


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue model.

    Attributes
    ----------
    short_name : str
        Name shown in the widget and accepted by the CLI (``--model``).
    model : str
        open_clip model name or ``hf-hub:`` id.
    pretrained : str or None
        open_clip pretrained tag, or None for ``hf-hub:`` models (their own weights).
    domain : str
        One of :data:`DOMAINS`.
    vision : str
        Vision tower kind.
    text : str
        Text tower kind.
    image_size : int
        Native input size (pixels); the ITACLIP crop should match it.
    patch_size : int
        ViT patch size (pixels).
    licence : str
        Licence note (check the model card before use).
    notes : str
        What the model suits, in a sentence.
    needs_transformers : bool
        Whether the ``hf`` extra (``transformers``) is needed.
    """

    short_name: str
    model: str
    pretrained: str | None
    domain: str
    vision: str
    text: str
    image_size: int
    patch_size: int
    licence: str
    notes: str
    needs_transformers: bool = False

    @property
    def label(self) -> str:
        """``short_name — domain`` for pickers."""
        return f"{self.short_name} \N{EM DASH} {self.domain}"


CATALOGUE: tuple[ModelEntry, ...] = (
    ModelEntry(
        "ViT-B-16 (OpenAI)", DEFAULT_MODEL, "openai", "general photos",
        "open_clip ViT-B/16", "open_clip causal transformer (77 tokens)", 224, 16,
        "MIT (OpenAI CLIP)",
        "The ITACLIP paper's model and the default: everyday objects and scenes.",
    ),
    ModelEntry(
        "ViT-L-14 (DataComp-XL)", "ViT-L-14", "datacomp_xl_s13b_b90k", "general photos",
        "open_clip ViT-L/14 (24 blocks)", "open_clip causal transformer (77 tokens)", 224, 14,
        "MIT (open_clip weights trained on DataComp-XL; see the dataset's terms)",
        "A larger general model: finer categories, about 4x the compute of ViT-B/16 "
        "(mid_layers around 15-21 of 24 suit it better than the B/16 default).",
    ),
    ModelEntry(
        "BiomedCLIP", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", None,
        "biomedical figures and radiology",
        "timm ViT-B/16 (vit_base_patch16_224) + linear projection",
        "Hugging Face PubMedBERT (256 tokens)", 224, 16,
        "MIT; research use only per the model card",
        "Trained on 15M PubMed Central figure-caption pairs: microscopy, radiology, "
        "histology and charts in papers.",
        needs_transformers=True,
    ),
    ModelEntry(
        "QuiltNet-B-16", "hf-hub:wisdomik/QuiltNet-B-16", None, "histopathology",
        "open_clip ViT-B/16", "open_clip causal transformer (77 tokens)", 224, 16,
        "MIT; research use per the model card",
        "Trained on Quilt-1M histopathology image-text pairs: H&E and other stained tissue.",
    ),
    ModelEntry(
        "BioCLIP", "hf-hub:imageomics/bioclip", None, "organisms",
        "open_clip ViT-B/16", "open_clip causal transformer (77 tokens)", 224, 16,
        "MIT",
        "Trained on TreeOfLife-10M: plants, animals and fungi, taxonomic names.",
    ),
)


def find_entry(name: str) -> ModelEntry | None:
    """The entry whose short name, label or open_clip id is ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    for e in CATALOGUE:
        if key in (e.short_name.lower(), e.label.lower(), e.model.lower()):
            return e
    return None


def resolve(name, pretrained=DEFAULT_PRETRAINED) -> tuple[str, object]:
    """(open_clip model, pretrained) for a catalogue short name or label; others unchanged.

    ``resolve("BiomedCLIP")`` gives the entry's ``hf-hub:`` id and ``None`` (its own
    weights); an explicit ``pretrained`` (anything but :data:`DEFAULT_PRETRAINED`) is
    kept. Open_clip names, ``hf-hub:``/``local-dir:`` ids and paths pass through, so
    ``resolve("ViT-L-14", "/data/ckpt.pt")`` is ``("ViT-L-14", "/data/ckpt.pt")``.
    """
    key = str(name).strip().lower()
    for e in CATALOGUE:
        if key in (e.short_name.lower(), e.label.lower()):
            return e.model, (e.pretrained if is_default_pretrained(pretrained) else pretrained)
    return name, pretrained


def catalogue_help() -> str:
    """The catalogue's short names with their domains, for command-line help."""
    return "; ".join(f"{e.short_name!r} ({e.domain})" for e in CATALOGUE)
