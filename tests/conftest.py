"""Shared fixtures: tiny seeded CLIP models built offline, isolated caches.

torch is imported before anything Qt: importing it after Qt has crashed peers' CI.
That order is the opposite of a napari user's (napari and its OpenGL canvas first, torch
later), and it hides crashes that only happen in the user's order, such as triton
loading after Mesa's LLVM (docs/architecture.md). So the end-to-end checks of each
entry point live in tests/test_user_order.py and run in child processes that start the
way their users do; nothing imported here can mask them.
"""

from __future__ import annotations

import json

import open_clip  # noqa: F401  (its torchvision import loads triton: also before Qt, issue #8)
import pytest
import torch  # noqa: F401  (must come before Qt)

TINY_MODEL = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own on-disk cache directory."""
    cache = tmp_path / "itaclip-cache"
    monkeypatch.setenv("NAPARI_ITACLIP_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_model_json(tmp_path_factory):
    """Path to an open_clip model config of a tiny ViT CLIP (named ``itaclip-tiny``)."""
    path = tmp_path_factory.mktemp("models") / "itaclip-tiny.json"
    path.write_text(json.dumps(TINY_MODEL))
    return path


def build_tiny_clip(json_path, seed: int = 0):
    """A seeded tiny open_clip CLIP with random weights, in eval mode."""

    open_clip.add_model_config(json_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(json_path.stem, pretrained=None)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_clip(tiny_model_json):
    """A seeded tiny CLIP (ViT: image 32, patch 8, 4 blocks, width 32; text: 2 layers)."""
    return build_tiny_clip(tiny_model_json)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_clip, tmp_path_factory):
    """The tiny model's weights saved as a plain state-dict ``.pt`` file."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_clip.state_dict(), path)
    return path


@pytest.fixture
def tiny_config():
    """An ITACLIPConfig scaled to the tiny model (4 blocks, 32 px crops)."""
    from napari_itaclip import ITACLIPConfig

    return ITACLIPConfig(short_side=None, crop=32, stride=16, mid_layers=(2, 3), pamr_steps=2,
                         pamr_dilations=(1, 2))


@pytest.fixture
def tiny_segmenter(tiny_clip, tiny_config):
    """A CPU Segmenter around :func:`tiny_clip`."""
    from napari_itaclip import Segmenter

    return Segmenter(model=tiny_clip, pretrained=None, device="cpu", config=tiny_config)


@pytest.fixture(autouse=True)
def _fresh_segmenter_registry():
    """No test sees another's cached models."""
    from napari_itaclip.engine import registry

    registry.clear()
    yield
    registry.clear()
