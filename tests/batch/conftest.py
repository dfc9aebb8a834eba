"""Fixtures of the command-line tests: the tiny model and settings as CLI arguments."""

from __future__ import annotations

import pytest

#: The conftest's tiny configuration spelled as options (stride 16, 32 px crops, 2 PAMR steps).
TINY_ARGS = ["--preset", "balanced", "--short-side", "none", "--stride", "16", "--pamr-steps",
             "2", "--set", "crop=32", "--set", "mid_layers=[2,3]", "--set",
             "pamr_dilations=[1,2]", "--device", "cpu", "--quiet"]


@pytest.fixture
def tiny_args():
    """A fresh copy of :data:`TINY_ARGS` (test modules cannot import a conftest by name)."""
    return list(TINY_ARGS)


@pytest.fixture
def model_args(tiny_model_json, tiny_checkpoint, tiny_args):
    """``--model``/``--pretrained`` of the tiny model plus :data:`TINY_ARGS`."""
    return ["--model", str(tiny_model_json), "--pretrained", str(tiny_checkpoint), *tiny_args]
