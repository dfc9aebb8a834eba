"""One-shot GPU check of the engine; writes one JSON (run it through ``gpu_check.sh``).

On a CUDA machine, with a full-size ``ViT-B-16-quickgelu`` whose weights are seeded
random numbers saved to a local file (nothing is downloaded; same cost as the real
weights):

1. ``parity``: GPU float32 against the CPU (same model, same image, balanced preset):
   largest similarity difference and label agreement, with PyTorch's default TF32
   settings and with TF32 off;
2. ``half``: ``half=True`` against GPU float32: label agreement, similarity difference;
3. ``throughput``: per preset, seconds per image (median, text cached, image-feature
   cache off) in float32 and float16, per-stage times, peak GPU memory;
4. ``vocab_change``: per preset, the first run on an image against a new vocabulary on
   the same image (image-feature cache hit) and against the same vocabulary without the
   cache; memory of the cached features.

``--device cpu --quick`` runs the same code on the CPU with a small image processed at
its own size (``short_side=None``) and two presets: a smoke test of the script where
there is no GPU. A time budget
(``--budget-s``) skips what would not finish in time; skipped steps are listed in the
JSON.

Usage::

    bash benchmarks/gpu_check.sh                       # writes $OUT/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick --json /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import synthetic_image, vocabularies  # noqa: E402


def _now() -> float:
    return time.perf_counter()


class Budget:
    """Wall-clock budget: steps that would not fit are skipped and recorded."""

    def __init__(self, seconds: float):
        self.t0 = _now()
        self.seconds = seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.seconds - (_now() - self.t0)

    def allows(self, name: str, estimate_s: float) -> bool:
        if self.left() < estimate_s:
            self.skipped.append(f"{name} (needed ~{estimate_s:.0f} s, {self.left():.0f} s left)")
            return False
        return True


def make_weights(path: Path) -> Path:
    """Seeded random ViT-B-16-quickgelu weights in a local file (open_clip layout)."""
    import open_clip
    import torch

    if not path.exists():
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def compare(a, b) -> dict:
    import numpy as np

    return {
        "max_abs_similarity_diff": float(np.abs(a.similarity - b.similarity).max()),
        "max_abs_probability_diff": float(np.abs(a.probabilities - b.probabilities).max()),
        "label_agreement": float((a.labels == b.labels).mean()),
    }


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(seg, img, vocab, device, config=None):
    sync(device)
    t0 = _now()
    res = seg.segment(img, vocab, config=config)
    sync(device)
    return _now() - t0, res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="small image, two presets, few repeats")
    p.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--weights", type=Path,
                   default=Path(tempfile.gettempdir()) / "napari-itaclip-bench" / "vitb16-random.pt")
    p.add_argument("--presets", default=None, help="comma-separated (default: fast,balanced,voc21,"
                   "coco_stuff,cityscapes; --quick: fast,balanced)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new steps after this many seconds (default 420)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    budget = Budget(args.budget_s)
    out: dict = {"ok": False, "args": {k: str(v) for k, v in vars(args).items()}, "errors": []}
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        out["errors"].append("CUDA requested but torch.cuda.is_available() is False")
        args.json.write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
        return 2
    gpu = dev.startswith("cuda")
    import open_clip

    from napari_itaclip import ITACLIPConfig, Segmenter

    out["env"] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if gpu else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "tf32_matmul_default": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn_default": bool(torch.backends.cudnn.allow_tf32),
    }
    size = (112, 150) if args.quick else (336, 448)
    presets = (args.presets or ("fast,balanced" if args.quick else
                                "fast,balanced,voc21,coco_stuff,cityscapes")).split(",")
    repeat = args.repeat or (2 if args.quick else 5)
    out["image_size"] = list(size)
    img = synthetic_image(*size)
    vocab_a, vocab_sub, vocab_new = vocabularies("voc21")
    t0 = _now()
    weights = make_weights(args.weights)
    out["weights_s"] = _now() - t0
    text_cache = tempfile.TemporaryDirectory()  # text embeddings shared by the segmenters below
    kw = dict(cache_dir=text_cache.name)
    name = "ViT-B-16-quickgelu"

    def preset(name_: str):
        cfg = ITACLIPConfig.preset(name_)
        return cfg.replace(short_side=None) if args.quick else cfg  # quick: the small image as is

    def step(label, fn):
        t = _now()
        try:
            out[label] = fn()
        except Exception as exc:  # noqa: BLE001 - record and go on to the next step
            out["errors"].append(f"{label}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(f"[{_now() - budget.t0:6.1f} s] {label} done in {_now() - t:.1f} s", flush=True)

    # 1. parity GPU fp32 vs CPU ------------------------------------------------------
    base_cfg = preset("balanced")

    def parity():
        res = {}
        cpu = Segmenter(name, str(weights), device="cpu", config=base_cfg, feature_cache_mb=0, **kw)
        t, ref = timed(cpu, img, vocab_a, "cpu")
        res["cpu_seconds"] = t
        if not gpu:
            return res
        g = Segmenter(name, str(weights), device=dev, config=base_cfg, feature_cache_mb=0, **kw)
        timed(g, img, vocab_a, dev)  # warm-up (kernels, cuBLAS handles)
        _, r = timed(g, img, vocab_a, dev)
        res["tf32_default"] = compare(r, ref)
        before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            _, r = timed(g, img, vocab_a, dev)
            res["tf32_off"] = compare(r, ref)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        return res

    if budget.allows("parity", 60 if gpu else 30):
        step("parity", parity)

    # 2. half vs fp32 on the GPU ----------------------------------------------------
    def half():
        g32 = Segmenter(name, str(weights), device=dev, config=base_cfg, feature_cache_mb=0, **kw)
        g16 = Segmenter(name, str(weights), device=dev, config=base_cfg, half=True, feature_cache_mb=0, **kw)
        timed(g16, img, vocab_a, dev)
        _, r32 = timed(g32, img, vocab_a, dev)
        _, r16 = timed(g16, img, vocab_a, dev)
        return compare(r16, r32)

    if gpu and budget.allows("half", 30):
        step("half", half)
    elif not gpu:
        out["half"] = "skipped: float16 runs on CUDA only"

    # 3. throughput per preset -------------------------------------------------------
    def throughput(preset_name, half_flag):
        cfg = preset(preset_name)
        seg = Segmenter(name, str(weights), device=dev, config=cfg, half=half_flag, feature_cache_mb=0, **kw)
        timed(seg, img, vocab_a, dev)  # model, text and kernels warm
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        times, stages = [], []
        for _ in range(repeat):
            t, r = timed(seg, img, vocab_a, dev)
            times.append(t)
            stages.append(r.timings)
        med = statistics.median(times)
        row = {"seconds_per_image_median": med, "images_per_s": 1.0 / med, "runs": times,
               "stages_median": {k: statistics.median(s[k] for s in stages)
                                 for k in ("text", "image", "refine", "post")}}
        if gpu:
            row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        del seg
        if gpu:
            torch.cuda.empty_cache()
        return row

    out["throughput"] = {}
    for name_ in presets:
        for half_flag in ((False, True) if gpu else (False,)):
            label = f"{name_}{'-fp16' if half_flag else ''}"
            est = (20 if gpu else 60) if name_ not in ("fast",) else 10
            if not budget.allows(f"throughput {label}", est):
                continue
            t = _now()
            try:
                out["throughput"][label] = throughput(name_, half_flag)
            except Exception as exc:  # noqa: BLE001
                out["errors"].append(f"throughput {label}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            print(f"[{_now() - budget.t0:6.1f} s] throughput {label} done in {_now() - t:.1f} s", flush=True)

    # 4. first run vs new vocabulary (image-feature cache) -----------------------------
    def vocab_change(preset_name):
        cfg = preset(preset_name)
        seg = Segmenter(name, str(weights), device=dev, config=cfg, **kw)
        plain = Segmenter(name, str(weights), device=dev, config=cfg, feature_cache_mb=0, **kw)
        warm = synthetic_image(*size)[::-1].copy()  # another image: kernels warm, cache cold
        timed(seg, warm, vocab_a, dev)
        timed(plain, warm, vocab_sub, dev)
        plain.text_encoder.encode(list(vocab_new.queries) + [c.aux for c in vocab_new if c.aux])
        seg.text_encoder.encode(list(vocab_new.queries) + [c.aux for c in vocab_new if c.aux])
        t_first, first = timed(seg, img, vocab_a, dev)
        hits, plains = [], []
        for _ in range(repeat):
            t, r_sub = timed(seg, img, vocab_sub, dev)
            hits.append(t)
        for _ in range(max(1, repeat // 2)):
            t, r_plain = timed(plain, img, vocab_sub, dev)
            plains.append(t)
        _, r_new = timed(seg, img, vocab_new, dev)
        _, r_new_plain = timed(plain, img, vocab_new, dev)
        assert not first.image_cached and r_sub.image_cached and r_new.image_cached
        med = statistics.median
        return {
            "first_s": t_first, "cached_vocab_s_median": med(hits),
            "no_cache_same_vocab_s_median": med(plains),
            "ratio_first_over_cached": t_first / med(hits),
            "ratio_no_cache_over_cached": med(plains) / med(hits),
            "cache_mb_per_image": seg.feature_cache.info()["mb"] / 2,  # two images cached
            "subset_vs_no_cache": compare(r_sub, r_plain),
            "new_class_vs_no_cache": compare(r_new, r_new_plain),
        }

    out["vocab_change"] = {}
    for name_ in presets:
        est = (15 if gpu else 90) if name_ != "fast" else 10
        if not budget.allows(f"vocab_change {name_}", est):
            continue
        t = _now()
        try:
            out["vocab_change"][name_] = vocab_change(name_)
        except Exception as exc:  # noqa: BLE001
            out["errors"].append(f"vocab_change {name_}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(f"[{_now() - budget.t0:6.1f} s] vocab_change {name_} done in {_now() - t:.1f} s", flush=True)

    text_cache.cleanup()
    out["skipped"] = budget.skipped
    out["total_s"] = _now() - budget.t0
    out["ok"] = not out["errors"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=lambda o: np.asarray(o).tolist()))
    print(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
