"""The peak-memory model and the up-front refusal (issue 22 part 1; issue 18, parts 3 and 4).

Behaviour, not shapes: the estimate follows what the engine allocates (more queries and
PAMR cost more, a working resolution costs less), a configuration measured to fit is
not refused while one that cannot fit is, the limits can be overridden or injected
(GPU memory included, without a GPU), and a child process checks the estimate against
the peak RSS it really reaches.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

from napari_itaclip import ITACLIPConfig
from napari_itaclip.engine import memory
from napari_itaclip.engine.memory_model import CONVERSION_BYTES, estimate_memory, pipeline_shapes
from napari_itaclip.errors import ImageError, InsufficientMemoryError, NonFiniteResultError

MB, GB = 2**20, 2**30
VOC20 = ("aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, "
         "horse, motorbike, person, potted plant, sheep, sofa, train, tv monitor")


def _image(size, dtype=np.uint8, channels=3):
    """Only shape and dtype: nothing the size of the image is allocated."""
    shape = (size, size, channels) if channels > 1 else (size, size)
    return SimpleNamespace(shape=shape, dtype=np.dtype(dtype))


def _estimate(seg, size, preset="balanced", vocab="sky, grass", **changes):
    cfg = ITACLIPConfig.preset(preset).replace(**changes)
    return seg.memory_estimate(_image(size), vocab, config=cfg)


# ---------------------------------------------------------------------------- the model
def test_estimate_grows_with_queries_not_with_auxiliary_texts(tiny_segmenter):
    two = _estimate(tiny_segmenter, 2048, vocab="sky, grass")
    synonyms = _estimate(tiny_segmenter, 2048, vocab=["sky, heaven, air", "grass, lawn"])
    twenty = _estimate(tiny_segmenter, 2048, vocab=VOC20)
    aux = _estimate(tiny_segmenter, 2048, vocab=["sky >= the air above", "grass"])
    assert (two.shapes.queries, synonyms.shapes.queries, twenty.shapes.queries) == (2, 5, 20)
    assert two.host < synonyms.host < twenty.host
    assert aux.host == two.host  # an auxiliary text is mixed into its class's queries
    # without PAMR, 18 more queries: at least their logits and their probabilities
    fast2, fast20 = (_estimate(tiny_segmenter, 2048, "fast", vocab=v) for v in ("a, b", VOC20))
    assert fast20.host - fast2.host >= 18 * 2 * 4 * 2048**2


def test_pamr_costs_its_affinities_and_off_it_costs_nothing(tiny_segmenter):
    on = _estimate(tiny_segmenter, 4096, "balanced")
    off = _estimate(tiny_segmenter, 4096, "balanced", pamr_steps=0)
    assert on.peak_stage().name.startswith("PAMR")
    assert not any(s.name.startswith("PAMR") for s in off.stages)
    # 16 float32 affinities per pixel, twice during their softmax
    assert on.peak_stage().host["PAMR affinities"] == 16 * 4 * 4096**2
    assert on.host > 2 * 16 * 4 * 4096**2 > 2 * off.host


def test_estimate_scales_with_the_pixels_of_the_native_image(tiny_segmenter):
    sizes = (4096, 8192, 16384)  # one-channel maps over 32 MB: the same slack
    fast = [_estimate(tiny_segmenter, n, "fast").host for n in sizes]
    per_px = [(b - a) / (m**2 - n**2) for a, b, n, m in zip(fast, fast[1:], sizes, sizes[1:])]
    assert per_px[0] == pytest.approx(per_px[1], rel=0.05)  # linear in the pixels
    assert 20 < per_px[1] < 80  # fast, 2 classes: tens of bytes per pixel, not 1.3 kB


def test_a_working_resolution_is_one_call_and_costs_less():
    cfg = ITACLIPConfig.preset("balanced")
    native = estimate_memory(pipeline_shapes(8000, 8000, cfg, 2, 2))
    shapes = pipeline_shapes(8000, 8000, cfg, 2, 2, working=(1000, 1000))
    assert shapes.refine == shapes.post == shapes.working == (1000, 1000)
    scaled = estimate_memory(shapes)
    assert scaled.host < native.host / 4  # PAMR at 1 Mpx instead of 64
    # what remains at the native size is the returned maps and labels
    assert scaled.peak_stage().name == "mapping the outputs to the native size"
    assert scaled.host >= (3 * 2 * 4 + 4) * 8000**2


def test_non_uint8_input_counts_its_conversion(tiny_segmenter):
    cfg = ITACLIPConfig.preset("fast")
    # zeros: pages the kernel gives only when written; the estimate reads shape and flags
    rgb = tiny_segmenter.memory_estimate(np.zeros((4096, 4096, 3), np.uint8), "a, b", config=cfg)
    grey16 = tiny_segmenter.memory_estimate(np.zeros((4096, 4096), np.uint16), "a, b", config=cfg)
    assert grey16.stages[0].host["conversion"] == CONVERSION_BYTES * 4096**2
    assert rgb.stages[0].host_bytes == 0  # a contiguous uint8 RGB image is used as is
    assert grey16.host > rgb.host  # and the uint8 RGB copy is held for the whole run


def test_the_limit_override_and_its_errors(monkeypatch):
    avail = memory.available_memory()
    assert avail is None or avail > 0
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "512")
    assert memory.memory_limit() == (512 * MB, f"{memory.MEMORY_LIMIT_ENV}=512")
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "none")
    assert memory.memory_limit()[0] is None
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=memory.MEMORY_LIMIT_ENV):
        memory.memory_limit()
    monkeypatch.setenv(memory.GPU_MEMORY_LIMIT_ENV, "300")
    assert memory.device_memory_limit("cuda")[0] == 300 * MB
    monkeypatch.delenv(memory.GPU_MEMORY_LIMIT_ENV)
    assert memory.device_memory_limit("cpu")[0] is None  # nothing of its own to count


# ------------------------------------------------------------------------------ refusal
def test_what_was_measured_to_fit_is_not_refused_and_what_cannot_fit_is(tiny_segmenter):
    machine = (23 * 10**9, "a 23 GB machine")
    fits = _estimate(tiny_segmenter, 4096, "fast")  # measured: ~0.6 GB added (benchmarks.md)
    assert memory.check_memory(fits, host_limit=machine) is fits
    assert fits.host < 2 * GB
    huge = _estimate(tiny_segmenter, 100000, "fast")
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_memory(huge, host_limit=machine)
    err = info.value
    assert err.memory == "host" and err.need == huge.host and err.limit == machine[0]
    text = str(err)
    assert "100000x100000 image" in text and "of host memory" in text
    assert "a 23 GB machine" in text and "--chunk-size" in text and "segment_chunked" in text
    assert "while " in text  # the step where the peak is


def test_a_small_gpu_refuses_with_gpu_memory_in_the_message(tiny_segmenter, monkeypatch):
    import torch

    cpu = _estimate(tiny_segmenter, 4096, "balanced")
    monkeypatch.setattr(tiny_segmenter, "device", torch.device("cuda"))
    gpu = _estimate(tiny_segmenter, 4096, "balanced")
    assert gpu.on_device and gpu.device > 16 * 4 * 4096**2  # PAMR's affinities live there
    assert gpu.host < cpu.host  # the host holds the numpy results, not the tensors
    big_host = (10**12, "test host")
    memory.check_memory(gpu, device="cuda:0", host_limit=big_host,
                        device_limit=(gpu.device + 1, "test budget"))
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_memory(gpu, device="cuda:0", host_limit=big_host,
                            device_limit=(gpu.device - 1, "the free memory of cuda:0"))
    assert info.value.memory == "device"
    text = str(info.value)
    assert "of GPU memory (cuda:0)" in text and "device='cpu'" in text
    assert memory.GPU_MEMORY_LIMIT_ENV in text
    # through a run: refused up front, the model never loaded
    monkeypatch.setattr(memory, "device_memory_limit", lambda device: (MB, "a tiny GPU"))
    image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (512, 512, 3))
    with pytest.raises(InsufficientMemoryError, match="GPU memory"):
        tiny_segmenter.segment(image, "sky, grass")
    assert not tiny_segmenter.is_loaded


def test_an_image_the_engine_cannot_use_is_left_to_the_image_checks(tiny_segmenter,
                                                                     monkeypatch):
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1")  # everything would be refused
    with pytest.raises(ImageError):
        tiny_segmenter.segment(np.zeros((2, 40, 40, 3), np.uint8), "sky, grass")
    with pytest.raises(InsufficientMemoryError):
        tiny_segmenter.segment(np.zeros((40, 40, 3), np.uint8), "sky, grass")


def _fail_if_called(*a, **k):
    raise AssertionError("the image was converted: the check came too late")


@pytest.mark.parametrize("shape", [(20000, 20000, 3), (200, 400, 3)])
def test_huge_image_is_refused_before_allocating(tiny_segmenter, tiny_config, monkeypatch,
                                                 shape):
    import napari_itaclip.engine.segmenter as seg_mod

    cfg = tiny_config
    if shape[0] == 200:  # a small plane enlarged by short_side costs its enlarged size
        cfg = tiny_config.replace(short_side=4000)
        small = tiny_segmenter.memory_estimate(_image(200), "sky, grass", config=tiny_config)
        big = tiny_segmenter.memory_estimate(np.zeros(shape, np.uint8), "sky, grass", config=cfg)
        assert big.shapes.working == (1024, 2048) and big.host > small.host
        monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str((small.host + big.host) / 2 / MB))
    monkeypatch.setattr(seg_mod, "prepare_image_uint8", _fail_if_called)
    image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), shape)  # nothing allocated
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


def test_an_object_size_run_is_estimated_at_its_working_size_and_refused_before_work(
        tiny_segmenter, tiny_config, monkeypatch):
    import napari_itaclip.engine.segmenter as seg_mod

    cfg = tiny_config.replace(object_size=256)  # factor 8
    native = tiny_segmenter.memory_estimate(_image(8000), "sky, grass", config=tiny_config)
    scaled = tiny_segmenter.memory_estimate(_image(8000), "sky, grass", config=cfg)
    assert scaled.shapes.working == (1000, 1000) and scaled.shapes.native == (8000, 8000)
    # the maps returned at the input's size remain; the run itself is at 1/8
    assert scaled.peak_stage().name == "mapping the outputs to the native size"
    assert scaled.host < native.host
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str(scaled.host / 2 / MB))
    monkeypatch.setattr(seg_mod, "prepare_image_uint8", _fail_if_called)
    image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8000, 8000, 3))
    with pytest.raises(InsufficientMemoryError, match="8000x8000 image"):
        tiny_segmenter.segment(image, "sky, grass", config=cfg)
    assert not tiny_segmenter.is_loaded


def test_checked_again_once_the_model_is_loaded(tiny_segmenter, monkeypatch):
    import napari_itaclip.engine.segmenter as seg_mod

    calls = []
    real = seg_mod.check_segmentation

    def spy(*a, **k):
        calls.append(k.get("after_load", False))
        return real(*a, **k)

    monkeypatch.setattr(seg_mod, "check_segmentation", spy)
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3)).astype(np.uint8)
    tiny_segmenter.segment(image, "sky, grass")
    tiny_segmenter.segment(image, "sky, grass")
    assert calls == [False, True, False]  # the model now counts in the free memory


def test_labels_use_the_smallest_dtype_in_outputs():
    from napari_itaclip.chunked import labels_dtype

    assert labels_dtype(2) == np.uint8 and labels_dtype(256) == np.uint8  # labels 0..255
    assert labels_dtype(257) == np.uint16


# ------------------------------------------------------------------- measured, in a child
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import open_clip, torch
    from napari_itaclip import ITACLIPConfig, Segmenter

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    open_clip.add_model_config(sys.argv[1])
    torch.manual_seed(0)
    model = open_clip.create_model("itaclip-tiny", pretrained=None).eval()
    cfg = ITACLIPConfig(short_side=64, crop=32, stride=16, mid_layers=(2, 3), pamr_steps=2)
    seg = Segmenter(model=model, pretrained=None, device="cpu", config=cfg,
                    batch_memory_mb=8, feature_cache_mb=0, cache_dir=False).load()
    image = np.random.default_rng(0).integers(0, 256, (1024, 1280, 3), dtype=np.uint8)
    seg.segment(image[:64, :80], "sky, grass, sea")  # text and first-call costs
    est = seg.memory_estimate(image, "sky, grass, sea")
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    seg.segment(image, "sky, grass, sea")
    print(json.dumps({"estimate": est.host, "added": status("VmHWM") - before}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_estimate_against_the_peak_rss_of_a_child(tiny_model_json, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = subprocess.run([sys.executable, str(script), str(tiny_model_json)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # PAMR at 1.3 Mpx dominates: the estimate is near the peak, without doubling it. The
    # peak of this one call varies from run to run with glibc's heap (its buffers are
    # under the mmap threshold): 197 to 320 MB over 14 children against an estimate of
    # 271 MB (2026-12-03), hence the lower bound's margin.
    assert got["added"] > 100 * MB
    assert 0.8 * got["added"] <= got["estimate"] <= 2.0 * got["added"], got


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


def test_the_earlier_flat_bound_is_still_there_and_deprecated():
    """Names exported before are kept (add, never rename); the package no longer uses it."""
    assert memory.working_pixels(200, 400, 336) == 336 * 672  # the resize is larger
    assert memory.working_pixels(4000, 4000, 336) == 4000 * 4000
    with pytest.warns(DeprecationWarning, match="memory_estimate"):
        need = memory.estimate_peak_bytes(1000, 3, batch_memory_mb=1)
    assert need == MB + 1000 * (memory.PIXEL_BYTES + 3 * memory.QUERY_PIXEL_BYTES)
