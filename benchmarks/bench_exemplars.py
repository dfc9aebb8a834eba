"""Latency of the "learn from edits" loop: exemplar re-score and prototype computation.

On a 512 x 512 four-texture mosaic (scikit-image brick, grass, gravel and
immunohistochemistry), at the ``balanced`` preset, with the image's features cached
(as they are after the first Run in the widget), prints medians of:

- ``rescore``: ``Segmenter.segment(image, vocab, exemplars=ex)`` from cached features
  (what an edit costs for the shown plane), with its stages (text, image, refine, post);
- ``prototypes``: ``Segmenter.exemplars(image, masks)`` from cached features;

once on an idle machine and once with one core busy (``python -c 'while 1: pass'``,
stopped by its PID). The model is a full-size ``ViT-B-16-quickgelu`` with seeded random
weights built offline (``--model tiny`` for a quick run with a tiny ViT). Also prints the
score scales the calibration works with (text logits and exemplar cosines) and how
well a prototype classifier from small painted disks labels the mosaic.

    python benchmarks/bench_exemplars.py                 # full size, ~1-2 min on 2 cores
    python benchmarks/bench_exemplars.py --model tiny
    python benchmarks/bench_exemplars.py --omp default   # torch before the package: libgomp's
                                                         #   own wait policy (spinning)

``--omp`` runs the measurement in a child process: ``package`` (default) imports
napari_itaclip's engine first, as the widget's worker and the CLI do (it sets
``OMP_WAIT_POLICY=PASSIVE`` unless set, before torch loads); ``default`` imports torch
first with the variable unset; ``active`` sets ``OMP_WAIT_POLICY=ACTIVE``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TINY = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
VOCAB = "background: dark\nbrick\ngrass\ngravel\ntissue"


def mosaic(size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 four-texture mosaic and its (size, size) truth 0..3."""
    from skimage import color, data

    h = size // 2
    tiles = [data.brick(), data.grass(), data.gravel(),
             (color.rgb2gray(data.immunohistochemistry()) * 255).astype(np.uint8)]
    img = np.zeros((size, size, 3), np.uint8)
    truth = np.zeros((size, size), np.int32)
    for k, t in enumerate(tiles):
        y, x = (k // 2) * h, (k % 2) * h
        img[y:y + h, x:x + h] = t[:h, :h, None]
        truth[y:y + h, x:x + h] = k
    return img, truth


def strokes(truth: np.ndarray, r: int = 10) -> dict[str, np.ndarray]:
    """Two small disks per texture, away from the borders."""
    size = truth.shape[0]
    q = size // 4
    yy, xx = np.mgrid[:size, :size]
    names = ["brick", "grass", "gravel", "tissue"]
    out = {}
    for k, name in enumerate(names):
        cy, cx = (k // 2) * 2 * q + q, (k % 2) * 2 * q + q
        m = np.zeros_like(truth, bool)
        for dy, dx in ((-q // 2, -q // 3), (q // 3, q // 2)):
            m |= (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < r * r
        out[name] = m
    return out


def build_segmenter(kind: str):
    import open_clip
    import torch

    from napari_itaclip import ITACLIPConfig, Segmenter

    torch.manual_seed(0)
    if kind == "tiny":
        path = Path(tempfile.mkdtemp()) / "bench-tiny.json"
        path.write_text(json.dumps(TINY))
        open_clip.add_model_config(path)
        model = open_clip.create_model(path.stem, pretrained=None).eval()
        cfg = ITACLIPConfig(short_side=None, crop=32, stride=16, mid_layers=(2, 3))
    else:
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
        cfg = ITACLIPConfig.preset("balanced")
    return Segmenter(model, None, "cpu", cfg, cache_dir=False), cfg


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(seg, img, masks, repeats: int) -> dict:
    ex = seg.exemplars(img, masks)
    t_proto, _ = median_time(lambda: seg.exemplars(img, masks), repeats)
    stages = []

    def rescore():
        res = seg.segment(img, VOCAB, exemplars=ex)
        stages.append(res.timings)
        return res

    t_rescore, res = median_time(rescore, repeats)
    parts = {k: round(statistics.median(t[k] for t in stages), 3)
             for k in ("text", "image", "refine", "post")}
    return {"rescore_s": round(t_rescore, 3), "rescore_stages_s": parts,
            "prototypes_s": round(t_proto, 3)}


def scales(seg, img, truth, masks) -> dict:
    """Score distributions the calibration maps onto each other, and accuracies."""
    from napari_itaclip import ITACLIPConfig

    cfg = seg.config
    raw = ITACLIPConfig(**{**cfg.__dict__, "pamr_steps": 0, "close_size": 0})
    ex = seg.exemplars(img, masks)
    text = seg.segment(img, VOCAB, config=raw)
    only = seg.segment(img, None, exemplars=ex, config=raw)
    t, e = text.similarity[1:], only.similarity
    full = seg.segment(img, None, exemplars=ex)
    mixed = seg.segment(img, VOCAB, exemplars=ex)  # text and exemplars on the same four classes
    from napari_itaclip.engine import prototypes

    calibrate = prototypes.calibrate
    prototypes.calibrate = lambda logits, n_text: logits  # the same without the calibration
    try:
        raw_mix = seg.segment(img, VOCAB, exemplars=ex)
    finally:
        prototypes.calibrate = calibrate
    return {
        "text_logits_mean_std": [round(float(t.mean()), 4), round(float(t.std()), 4)],
        "text_best_minus_second": round(float(np.median(np.diff(np.sort(t, 0)[-2:], axis=0))), 4),
        "exemplar_cos_mean_std": [round(float(e.mean()), 4), round(float(e.std()), 4)],
        "exemplar_best_minus_second": round(float(np.median(np.diff(np.sort(e, 0)[-2:], axis=0))), 4),
        "exemplar_only_accuracy_no_pamr": round(float((only.labels == truth).mean()), 3),
        "exemplar_only_accuracy": round(float((full.labels == truth).mean()), 3),
        "text_only_accuracy_no_pamr": round(float((text.labels - 1 == truth).mean()), 3),
        "text_and_exemplars_accuracy": round(float((mixed.labels - 1 == truth).mean()), 3),
        "text_and_exemplars_uncalibrated_accuracy": round(
            float((raw_mix.labels - 1 == truth).mean()), 3),
    }


def child(args) -> None:
    policy = os.environ.get("OMP_WAIT_POLICY")  # what libgomp will see, unless torch loads first
    if args.omp == "default":
        import torch  # noqa: F401  (before the package: libgomp keeps its own policy)
    # the engine prepares the process (the OpenMP policy) before torch loads
    importlib.import_module("napari_itaclip.engine")
    import torch

    seg, _ = build_segmenter(args.model)
    img, truth = mosaic(args.size)
    masks = strokes(truth)
    t0 = time.perf_counter()
    seg.exemplars(img, masks)  # ViT once; everything below runs from cached features
    first = time.perf_counter() - t0
    out = {"model": args.model, "size": args.size, "omp": args.omp,
           "OMP_WAIT_POLICY_when_torch_loaded": (
               None if args.omp == "default" else os.environ.get("OMP_WAIT_POLICY", policy)),
           "torch_threads": torch.get_num_threads(),
           "first_prototypes_with_vit_s": round(first, 3)}
    out["idle"] = measure(seg, img, masks, args.repeats)
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.5)
        out["one_core_busy"] = measure(seg, img, masks, args.repeats)
    finally:
        busy.kill()
        busy.wait()
    if not args.no_scales:
        out["scales"] = scales(seg, img, truth, masks)
    print(json.dumps(out, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("full", "tiny"), default="full")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--omp", choices=("package", "default", "active"), default="package")
    p.add_argument("--no-scales", action="store_true", help="skip the score-scale report")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if args.omp == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
