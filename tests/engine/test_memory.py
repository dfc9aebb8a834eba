"""Bounded memory (refused before allocating) and no silent NaN (issue 18, parts 3 and 4)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_itaclip.engine import memory
from napari_itaclip.errors import InsufficientMemoryError, NonFiniteResultError


def test_estimate_is_the_documented_formula():
    # peak = model + batch_memory_mb + pixels x (1.3 kB + 32 B x queries)
    assert memory.estimate_peak_bytes(1000, 5, batch_memory_mb=128, model_bytes=10**6) == \
        10**6 + 128 * 2**20 + 1000 * (1300 + 32 * 5)


def test_working_pixels_counts_an_upsampling_short_side():
    assert memory.working_pixels(100, 200, None) == 20000
    assert memory.working_pixels(1000, 2000, 336) == 1000 * 2000  # downsampled: the plane
    # enlarged (long side capped at 2048): the resized plane
    assert memory.working_pixels(100, 200, 4000) == 1024 * 2048


def test_available_memory_is_read(monkeypatch):
    avail = memory.available_memory()
    assert avail is None or avail > 0
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "512")
    assert memory.memory_limit() == (512 * 2**20, f"{memory.MEMORY_LIMIT_ENV}=512")
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "none")
    assert memory.memory_limit()[0] is None
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=memory.MEMORY_LIMIT_ENV):
        memory.memory_limit()


def _fail_if_called(*a, **k):
    raise AssertionError("the image was converted: the check came too late")


@pytest.mark.parametrize("shape, short_side", [((20000, 20000, 3), None),
                                               ((200, 400, 3), 4000)])
def test_huge_image_is_refused_before_allocating(tiny_segmenter, tiny_config, monkeypatch,
                                                 shape, short_side):
    import napari_itaclip.engine.segmenter as seg_mod

    monkeypatch.setattr(seg_mod, "prepare_image_uint8", _fail_if_called)
    if short_side is not None:  # a small plane enlarged by short_side, under a low bound
        monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "2000")
    image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), shape)  # nothing allocated
    cfg = tiny_config.replace(short_side=short_side)
    t0 = time.perf_counter()
    with pytest.raises(InsufficientMemoryError) as info:
        tiny_segmenter.segment(image, "sky, grass", config=cfg)
    assert time.perf_counter() - t0 < 5
    text = str(info.value)
    assert f"{shape[0]}x{shape[1]} image" in text and "needs about" in text
    assert "--chunk-size" in text and "segment_chunked" in text
    assert info.value.need > info.value.limit > 0
    assert isinstance(info.value, MemoryError)
    assert not tiny_segmenter.is_loaded  # refused before the model was even loaded


def test_a_result_holding_nan_is_an_error_not_label_zero(tiny_clip, tiny_config):
    import copy

    import torch

    from napari_itaclip import Segmenter

    model = copy.deepcopy(tiny_clip)
    with torch.no_grad():
        model.visual.proj[0, 0] = float("nan")  # weights that produce NaN features
    seg = Segmenter(model=model, pretrained=None, device="cpu", config=tiny_config)
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3)).astype(np.uint8)
    with pytest.raises(NonFiniteResultError, match=r"100\.0% of the pixels got non-finite"):
        seg.segment(image, "sky, grass")
