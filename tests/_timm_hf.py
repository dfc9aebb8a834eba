"""Tiny CLIPs with a timm ViT trunk and a Hugging Face BERT text tower, built offline.

Used by the tests of timm towers, Hugging Face text towers and ``local-dir:`` loading.
Nothing is downloaded: the timm ViT is registered here, the BERT configuration and its
word-piece vocabulary are written into the model folder.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import torch

TINY_TIMM = "itaclip_test_vit_tiny_clip"

#: the ITACLIP tiny ViT of conftest.TINY_MODEL (32 px, patch 8, width 32, 4 blocks, 2 heads)
#: as a timm VisionTransformer in CLIP's layout (pre-norm, LayerNorm eps 1e-5, QuickGELU)
_TINY_ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, pre_norm=True,
                  act_layer="quick_gelu")

_EXTRA_WORDS = (
    "cell", "nucleus", "background", "cat", "dog", "red", "green", "blue", "feline", "sky",
    "wall", "tissue", "tumor", "stroma", "bone", "lung",
)


def register_tiny_timm() -> str:
    """Register the tiny timm ViT (idempotent) and return its name."""
    import timm
    from timm.layers import LayerNorm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if TINY_TIMM not in timm.list_models(TINY_TIMM):

        def itaclip_test_vit_tiny_clip(pretrained=False, **kwargs):
            args = dict(_TINY_ARGS, norm_layer=partial(LayerNorm, eps=1e-5))
            return _create_vision_transformer(TINY_TIMM, pretrained=pretrained,
                                              **dict(args, **kwargs))

        itaclip_test_vit_tiny_clip.__module__ = __name__
        register_model(itaclip_test_vit_tiny_clip)
    return TINY_TIMM


def timm_vision_cfg(name: str = TINY_TIMM, image_size: int = 32) -> dict:
    """open_clip ``vision_cfg`` of a timm trunk with a linear projection head (BiomedCLIP's)."""
    return {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "",
            "timm_proj": "linear", "image_size": image_size}


def openclip_to_timm_state(state: dict) -> dict:
    """An open_clip CLIP state dict with the vision tower in timm's layout (TimmModel).

    timm's own converter for OpenAI-CLIP weights maps the ViT; the projection
    ``visual.proj`` becomes the tower head's linear layer.
    """
    from timm.models.vision_transformer import _convert_openai_clip

    trunk = _convert_openai_clip({k: v for k, v in state.items() if k.startswith("visual.")},
                                 None, prefix="visual.")
    trunk.pop("head.weight")
    trunk.pop("head.bias")
    out = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    out["visual.head.proj.weight"] = state["visual.proj"].t()
    out.update({k: v for k, v in state.items() if not k.startswith("visual.")})
    return out


def write_bert_folder(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """A tiny BERT configuration and word-piece vocabulary (no weights) in ``folder``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    text = " ".join(t("x") for t in OPENAI_IMAGENET_TEMPLATES).lower()
    words = sorted(set(re.findall(r"[a-z]+|[^\sa-z]", text)) | set(_EXTRA_WORDS))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}))
    BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
               num_attention_heads=heads, intermediate_size=2 * hidden,
               max_position_embeddings=64).save_pretrained(folder)
    return folder


def hf_text_cfg(folder: Path, pooler: str = "cls_last_hidden_state_pooler",
                context_length: int = 40) -> dict:
    """open_clip ``text_cfg`` of a Hugging Face text tower read from ``folder`` (BiomedCLIP's kind)."""
    return {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder),
            "hf_proj_type": "mlp", "hf_pooler_type": pooler, "context_length": context_length}


def write_hub_folder(folder: Path, model_cfg: dict, state: dict | None = None,
                     weights: str = "open_clip_model.safetensors") -> Path:
    """A folder in open_clip's hub layout: ``open_clip_config.json`` plus weights.

    Without ``state`` the model is built from the configuration (seeded) and saved.
    """
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    if state is None:
        torch.manual_seed(0)
        net = open_clip.create_model(f"local-dir:{folder}", load_weights=False,
                                     pretrained_image=False, pretrained_text=False)
        state = net.state_dict()
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if weights.endswith(".safetensors"):
        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    return folder


def tiny_timm_bert_folder(root: Path) -> Path:
    """A local-dir: folder of a tiny CLIP: timm ViT trunk + Hugging Face BERT text tower."""
    register_tiny_timm()
    folder = root / "tiny-timm-bert"
    write_bert_folder(folder)
    cfg = {"embed_dim": 16, "vision_cfg": timm_vision_cfg(), "text_cfg": hf_text_cfg(folder)}
    return write_hub_folder(folder, cfg)
