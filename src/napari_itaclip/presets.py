"""The named configurations: ITACLIP's presets and the other methods' (data, no classes).

Each preset is the set of :class:`~napari_itaclip.config.ITACLIPConfig` fields it
changes from the defaults; :meth:`ITACLIPConfig.preset` builds (and keeps) the config.
The methods (:data:`METHODS`) and their per-dataset settings are described in
docs/engine.md, section "Other methods". ITACLIP's presets keep their names
(``voc21``, ``balanced``, ...); the others are named ``"<method>-<dataset>"``.
"""

from __future__ import annotations

from typing import Any

from .datasets import BENCHMARKS

__all__ = ["DATASETS", "METHODS", "METHOD_DATASETS", "PAPER_PRESETS", "describe_method",
           "list_presets", "lookup", "preset_key", "preset_method", "store"]

#: The training-free methods the engine computes (docs/engine.md, section "Other
#: methods"), ITACLIP first, each with one sentence saying what it changes. Their dataset presets are named
#: ``"<method>-<dataset>"``; ITACLIP's keep their names (``voc21``, ``balanced``, ...).
METHODS: dict[str, str] = {
    "itaclip": "ITACLIP: self-self (q-q + k-k) attention mixed with intermediate layers' maps "
               "in the last block, no last feed-forward network, greyscale/blur/flip views, "
               "LLM-written auxiliary texts, PAMR refinement and a 3x3 closing.",
    "sclip": "SCLIP: only the last block changes, to self-self (q-q + k-k) attention with its "
             "residual and feed-forward network kept; no views, no refinement.",
    "naclip": "NACLIP: the last block attends k-k with a Gaussian neighbourhood bias and drops "
              "its residual and feed-forward network; PAMR refinement; probabilities "
              "renormalised over the classes.",
    "clearclip": "ClearCLIP: the last block attends q-q and drops its residual and "
                 "feed-forward network; large 448-pixel windows zero-padded to whole patches.",
}

#: The datasets with a preset for each method of :data:`METHODS` but ITACLIP (whose
#: paper presets are :data:`PAPER_PRESETS`). Not :data:`napari_itaclip.evaluation.DATASET_SPECS`
#: (the benchmarks the evaluation can score).
METHOD_DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "ade20k",
            "cityscapes")
#: Former name of :data:`METHOD_DATASETS` (kept for existing code).
DATASETS = METHOD_DATASETS


_PAPER = dict(crop=224, stride=28, attention="self-self", mid_layers=(7, 8, 10), mid_weight=0.5,
              drop_last_mlp=True, image_engineering=True, pamr_steps=10, pamr_dilations=(8, 16),
              close_size=3)

#: Preset name -> the fields it sets (a dict), or a registered config object.
_PRESETS: dict[str, Any] = {
    "voc21": dict(short_side=336, aux_weight=0.05, eng_weight=0.70, logit_scale=60,
                  prob_threshold=0.1, area_threshold=0.1, aux_kind="definitions", **_PAPER),
    "context60": dict(short_side=336, aux_weight=0.15, eng_weight=0.75, logit_scale=55,
                      prob_threshold=0.1, aux_kind="definitions", **_PAPER),
    "coco_object": dict(short_side=336, aux_weight=0.10, eng_weight=0.75, logit_scale=50,
                        prob_threshold=0.1, aux_kind="synonyms", **_PAPER),
    "coco_stuff": dict(short_side=448, aux_weight=0.20, eng_weight=0.75, logit_scale=40,
                       prob_threshold=0.0, aux_kind="definitions", **_PAPER),
    "cityscapes": dict(short_side=560, aux_weight=0.05, eng_weight=0.70, logit_scale=40,
                       prob_threshold=0.0, aux_kind="synonyms", **_PAPER),
    # interactive default: paper's image/architecture settings, stride 56 (~3x cheaper)
    "balanced": {},
    # quick preview: stride 112, no test-time augmentation, no PAMR
    "fast": dict(stride=112, image_engineering=False, pamr_steps=0),
}

#: The five configurations of the paper, in its table's order.
PAPER_PRESETS = BENCHMARKS

# -- SCLIP, NACLIP, ClearCLIP (docs/engine.md, section "Other methods") ----------------
# What none of the three has: intermediate-layer maps, views, auxiliary texts, closing.
_SIBLING = dict(mid_layers=(), image_engineering=False, aux_weight=0.0, close_size=0,
                area_threshold=None, pamr_steps=0, pamr_dilations=(8, 16))
_METHOD_BASE = {
    "sclip": dict(attention="self-self", keep_last_residual=True, drop_last_mlp=False,
                  crop=224, stride=112, short_side=336, logit_scale=40, prob_threshold=0.0),
    "naclip": dict(attention="k-k", attn_gaussian_std=5.0, keep_last_residual=False,
                   drop_last_mlp=True, crop=224, stride=112, short_side=336, logit_scale=40,
                   prob_threshold=0.0, pamr_steps=10, renormalize_probs=True),
    "clearclip": dict(attention="q-q", keep_last_residual=False, drop_last_mlp=True,
                      pad_to_patch=True, crop=448, stride=224, short_side=448, logit_scale=50,
                      prob_threshold=0.0),
}
# Per dataset, what differs from the method's no-background settings above.
_METHOD_DATASET = {
    "sclip": {"voc21": dict(logit_scale=65, prob_threshold=0.1, area_threshold=0.1),
              "context60": dict(logit_scale=50, prob_threshold=0.1),
              "coco_object": dict(logit_scale=50, prob_threshold=0.1),
              "coco_stuff": dict(short_side=448),
              "cityscapes": dict(short_side=560)},
    "naclip": {"voc21": dict(crop=None, prob_threshold=0.1),
               "voc20": dict(crop=None),
               "context60": dict(prob_threshold=0.1),
               "coco_object": dict(prob_threshold=0.1),
               "cityscapes": dict(short_side=560)},
    "clearclip": {"voc21": dict(prob_threshold=0.5),
                  "context60": dict(prob_threshold=0.15),
                  "coco_object": dict(prob_threshold=0.4),
                  "cityscapes": dict(crop=224, stride=224)},
}
for _method, _base in _METHOD_BASE.items():
    for _dataset in METHOD_DATASETS:
        _PRESETS[f"{_method}-{_dataset}"] = {
            **_SIBLING, **_base, **_METHOD_DATASET[_method].get(_dataset, {})}
del _method, _base, _dataset


def preset_key(name: str) -> str:
    """Canonical preset key: lower case; ``<method>-<dataset>`` with the dataset's ``_``
    spelling for the other methods, ``_`` everywhere for the rest (``coco-object``).
    """
    key = str(name).strip().lower()
    for method in METHODS:
        for sep in ("-", "_"):
            if method != "itaclip" and key.startswith(method + sep):
                return f"{method}-{key[len(method) + 1:].replace('-', '_')}"
    return key.replace("-", "_")


def preset_method(name: str) -> str:
    """The method (a key of :data:`METHODS`) a preset name belongs to.

    ``"<method>-<dataset>"`` names belong to that method; every other name (the paper's,
    ``balanced``, ``fast``, registered ones) to ``"itaclip"``.
    """
    method, sep, _ = preset_key(name).partition("-")
    return method if sep and method in METHODS else "itaclip"


def describe_method(method: str) -> str:
    """One sentence saying what ``method`` (a key of :data:`METHODS`) changes."""
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[key]


def list_presets(method: str | None = None) -> list[str]:
    """Names accepted by :meth:`ITACLIPConfig.preset`.

    Parameters
    ----------
    method : str, optional
        Only the presets of this method (a key of :data:`METHODS`; see
        :func:`preset_method`), in their order.
    """
    if method is None:
        return list(_PRESETS)
    describe_method(method)  # validates the name
    key = str(method).strip().lower()
    return [name for name in _PRESETS if preset_method(name) == key]


def lookup(name: str) -> tuple[str, Any]:
    """(canonical key, the preset's field dict or registered config) of ``name``."""
    key = preset_key(name)
    if key not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    return key, _PRESETS[key]


def store(name: str, config: Any, *, overwrite: bool = False) -> str:
    """Register ``config`` under ``name`` (see ``config.register_preset``); its key."""
    key = preset_key(name)
    if key in _PRESETS and not overwrite:
        raise ValueError(f"preset {name!r} exists; pass overwrite=True to replace it")
    _PRESETS[key] = config
    return key
