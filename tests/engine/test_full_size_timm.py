"""Full-size check of the timm adapter (issue #10): a seeded random ViT-B/16 in OpenAI's
layout, converted into the identical network with a timm trunk and laid out as a hub
folder, must reproduce the open_clip-ViT Segmenter's outputs.

Slow (minutes on 2 CPU cores): run with ``pytest -m slow``.
"""

import numpy as np
import pytest
import torch

from _timm_hf import openclip_to_timm_state, timm_vision_cfg, write_hub_folder
from napari_itaclip import ITACLIPConfig, Segmenter
from napari_itaclip.engine.backbone import TimmViT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vitb16(tmp_path_factory):
    """(OpenAI-layout checkpoint file, hub folder of the same network with a timm trunk)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    # OpenAI's checkpoints are float16: round like them
    state = {k: v.half().float() if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    root = tmp_path_factory.mktemp("vitb16")
    ckpt = root / "ViT-B-16.pt"
    torch.save(state, ckpt)
    cfg = open_clip.get_model_config("ViT-B-16-quickgelu")
    cfg = dict(cfg, quick_gelu=True,
               vision_cfg=timm_vision_cfg("vit_base_patch16_clip_quickgelu_224", 224))
    folder = write_hub_folder(root / "hub", cfg, openclip_to_timm_state(state))
    return ckpt, folder


def test_timm_hub_folder_reproduces_the_open_clip_vit(vitb16):
    ckpt, folder = vitb16
    cfg = ITACLIPConfig.preset("voc21", short_side=None, stride=112)
    ref = Segmenter("ViT-B-16-quickgelu", str(ckpt), device="cpu", config=cfg, cache_dir=False)
    ours = Segmenter(f"local-dir:{folder}", pretrained=None, device="cpu", config=cfg,
                     cache_dir=False)
    assert isinstance(ours.backbone, TimmViT)
    rng = np.random.default_rng(0)
    img = (rng.random((240, 300, 3)) * 255).astype(np.uint8)
    vocab = "background: sky, wall\ncat >= a small domesticated carnivorous mammal\ndog"
    r0, r1 = ref.segment(img, vocab), ours.segment(img, vocab)
    sim = np.abs(r1.similarity - r0.similarity).max()
    prob = np.abs(r1.probabilities - r0.probabilities).max()
    agree = (r1.labels == r0.labels).mean()
    print(f"max |similarity diff| {sim:.2e}, max |probability diff| {prob:.2e}, "
          f"labels equal on {agree:.4%} of pixels")
    assert sim <= 1e-5 and prob <= 1e-4 and agree >= 0.999
