"""Engine benchmark: per-stage time, images per second and peak memory.

Runs ITACLIP with a full-size ViT-B/16 (OpenAI layout, *seeded random* weights written
once to a local file: no download, same cost as the real weights) on a fixed synthetic
image, for several presets:

- cold: a fresh process (import, load, text with an empty cache, one image): "fresh"
  is the time from process start to the first result;
- warm: further images in the same process with the same (cached) vocabulary.

``--baseline`` also times a reference-style run in a fresh process: every text
encoded per name at the full 77-token context, no cache, and one window per ViT
batch, which is how the authors' implementation proceeds.

``--vocab-change`` times the image-feature cache instead (one fresh process per
preset): the first run of vocabulary A on the image, then on the same image a new
vocabulary (one class dropped, one new class with a definition: two texts to encode)
and a vocabulary made of A's texts only (a class and a definition dropped), against
the same vocabulary in a ``feature_cache_mb=0`` segmenter whose text embeddings are
already cached (so only the image side differs); outputs compared, medians of
``--repeat`` runs, and the cache's memory per image.

Usage::

    python benchmarks/bench_engine.py                      # balanced, fast, voc21
    python benchmarks/bench_engine.py --presets fast --repeat 5 --baseline
    python benchmarks/bench_engine.py --presets voc21,balanced --vocab-change --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def synthetic_image(h: int, w: int):
    """A deterministic RGB picture: gradient sky, a red square, a blue disk, texture."""
    import numpy as np

    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 90 + 60 * yy / h
    img[..., 1] = 120 + 50 * xx / w
    img[..., 2] = 200 - 40 * yy / h
    img[h // 5 : h // 2, w // 6 : w // 2] = (210, 40, 35)
    disk = (yy - 0.7 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.18 * min(h, w)) ** 2
    img[disk] = (40, 60, 200)
    rng = np.random.default_rng(0)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def ensure_weights(path: Path) -> Path:
    if path.exists():
        return path
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(args) -> dict:
    """Body of one fresh process: returns timings as a dict."""
    t_start = time.perf_counter()
    import numpy as np  # noqa: F401
    import torch

    from napari_itaclip import ITACLIPConfig, Segmenter
    from napari_itaclip.datasets import load_vocabulary

    t_import = time.perf_counter() - t_start
    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = ITACLIPConfig.preset(args.preset)
    if args.short_side is not None:
        cfg = cfg.replace(short_side=None if args.short_side == 0 else args.short_side)
    vocab = load_vocabulary(args.vocab)
    h, w = (int(v) for v in args.size.split("x"))
    img = synthetic_image(h, w)
    seg = Segmenter("ViT-B-16-quickgelu", str(args.weights), device=args.device, config=cfg,
                    batch_memory_mb=1e-6 if args.baseline else args.batch_memory_mb,
                    cache_dir=args.cache)
    t0 = time.perf_counter()
    seg.load()
    if args.baseline:
        enc = seg.text_encoder
        enc.truncate = enc.share_prefix = False  # full 77-token context
        enc.batch_size = 80  # one name (80 prompts) per forward
        enc._dir = None  # no disk cache
    t_load = time.perf_counter() - t0
    first = seg.segment(img, vocab)
    t_first = time.perf_counter() - t_start
    out = {"first_image_process_s": t_first, "preset": args.preset, "import_s": t_import, "load_s": t_load,
           "first": first.timings, "warm": [], "labels_hash": int(first.labels.sum())}
    for _ in range(args.repeat):
        r = seg.segment(img, vocab)
        out["warm"].append(r.timings)
    out["fresh_process_s"] = time.perf_counter() - t_start
    out["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available() and seg.device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


#: Definitions added to the benchmark vocabulary (the shipped VOC list has none).
DEFINITIONS = {
    "cat": "a small domesticated carnivorous mammal with soft fur",
    "dog": "a domesticated carnivorous mammal kept as a pet or for work",
    "person": "a human being",
    "car": "a road vehicle with an engine and four wheels",
}
NEW_CLASS = "kite >= a light frame covered with cloth, flown in the wind on a string"


def vocabularies(name: str):
    """A (the benchmark list with a few definitions), A' (A's texts only: one class
    and one definition dropped) and B (one class dropped, one new class with a
    definition).
    """
    from napari_itaclip import Vocabulary
    from napari_itaclip.datasets import load_vocabulary

    base = load_vocabulary(name)
    a = base.with_aux({c.name: DEFINITIONS[c.name] for c in base if c.name in DEFINITIONS})
    lines = a.format().splitlines()
    drop_class = next(i for i, ln in enumerate(lines) if ln.startswith("bottle"))
    sub = [ln for i, ln in enumerate(lines) if i != drop_class]
    sub = [ln.split(" >= ")[0] if ln.startswith("dog") else ln for ln in sub]
    new = [ln for i, ln in enumerate(lines) if i != drop_class] + [NEW_CLASS]
    return a, Vocabulary.parse("\n".join(sub)), Vocabulary.parse("\n".join(new))


def run_vocab_change(args) -> dict:
    """Body of one fresh process for ``--vocab-change``."""
    import numpy as np
    import torch

    from napari_itaclip import ITACLIPConfig, Segmenter

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = ITACLIPConfig.preset(args.preset)
    if args.short_side is not None:
        cfg = cfg.replace(short_side=None if args.short_side == 0 else args.short_side)
    a, sub, new = vocabularies(args.vocab)
    h, w = (int(v) for v in args.size.split("x"))
    img = synthetic_image(h, w)
    kw = dict(device=args.device, config=cfg, batch_memory_mb=args.batch_memory_mb, cache_dir=args.cache)
    seg = Segmenter("ViT-B-16-quickgelu", str(args.weights), **kw).load()

    def timed(s, vocab, what):
        t0 = time.perf_counter()
        r = s.segment(img, vocab)
        t = time.perf_counter() - t0
        print(f"  {args.preset}: {what} {t:.2f} s "
              f"({', '.join(f'{k} {v:.2f}' for k, v in r.timings.items())})", file=sys.stderr, flush=True)
        return t, r

    t_first, first = timed(seg, a, "first run")  # text cold, image cold
    mem = seg.feature_cache.nbytes
    t_new, r_new = timed(seg, new, "new vocabulary")  # two new texts, image cached
    t_sub = []
    for _ in range(max(1, args.repeat)):
        t, r_sub = timed(seg, sub, "A's texts")
        t_sub.append(t)
    plain = Segmenter("ViT-B-16-quickgelu", str(args.weights), feature_cache_mb=0, **kw).load()
    plain.text_encoder.encode(list(sub.queries) + [c.aux for c in sub if c.aux])  # text cached
    t_plain = []
    for _ in range(max(1, args.plain_repeat)):
        t, r_plain = timed(plain, sub, "A's texts, no feature cache")
        t_plain.append(t)
    assert first.timings["image_cached"] == 0 and r_new.image_cached and r_sub.image_cached
    check_new = {}
    if args.check_new:
        _, r_new_plain = timed(plain, new, "new vocabulary, no feature cache")
        check_new = {
            "max_abs_diff_new": float(np.abs(r_new.similarity - r_new_plain.similarity).max()),
            "labels_equal_new": bool((r_new.labels == r_new_plain.labels).all()),
        }
    med = statistics.median
    return {
        "preset": args.preset, "first_s": t_first, "first": first.timings,
        "new_vocab_s": t_new, "new_vocab": r_new.timings, "subset_s": t_sub, "subset": r_sub.timings,
        "plain_subset_s": t_plain, "plain_subset": r_plain.timings,
        "ratio_first_over_new": t_first / t_new,
        "ratio_first_over_subset": t_first / med(t_sub),
        "ratio_plain_over_subset": med(t_plain) / med(t_sub),
        "cache_mb_per_image": mem / 2**20,
        "max_abs_diff_subset": float(np.abs(r_sub.similarity - r_plain.similarity).max()),
        "labels_equal_subset": bool((r_sub.labels == r_plain.labels).all()),
        **check_new,
        "n_queries": [len(a.queries), len(sub.queries), len(new.queries)],
        "peak_rss_mb": peak_rss_mb(),
    }


def fmt_vocab_change(r: dict) -> str:
    med = statistics.median
    return (f"{r['preset']:<9} first {r['first_s']:6.1f}s (text {r['first']['text']:4.1f}, image "
            f"{r['first']['image']:5.1f}) | new vocab {r['new_vocab_s']:5.2f}s (text "
            f"{r['new_vocab']['text']:4.2f}) = {r['ratio_first_over_new']:5.1f}x | A's texts "
            f"{med(r['subset_s']):5.2f}s = {r['ratio_first_over_subset']:5.1f}x | no-cache same vocab "
            f"{med(r['plain_subset_s']):5.1f}s = {r['ratio_plain_over_subset']:5.1f}x | cache "
            f"{r['cache_mb_per_image']:5.1f} MB/image | max|d sim| {r['max_abs_diff_subset']:.1e} "
            f"labels equal {r['labels_equal_subset'] and r.get('labels_equal_new', True)}")


def spawn(args, preset: str, baseline: bool, cache: Path, mode: str = "") -> dict:
    cmd = [sys.executable, __file__, "--_child", "--preset", preset, "--size", args.size,
           "--vocab", args.vocab, "--weights", str(args.weights), "--device", args.device,
           "--repeat", str(args.repeat), "--cache", str(cache), "--threads", str(args.threads)]
    if args.batch_memory_mb is not None:
        cmd += ["--batch-memory-mb", str(args.batch_memory_mb)]
    if args.short_side is not None:
        cmd += ["--short-side", str(args.short_side)]
    if baseline:
        cmd.append("--baseline")
    if mode:
        cmd += ["--_mode", mode, "--plain-repeat", str(args.plain_repeat)]
        if args.check_new:
            cmd.append("--check-new")
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if mode else subprocess.PIPE,
                         text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt(r: dict, label: str) -> str:
    f = r["first"]
    warm = r["warm"]
    med = lambda k: statistics.median(t[k] for t in warm) if warm else float("nan")  # noqa: E731
    warm_total = statistics.median(sum(t[k] for k in ("text", "image", "refine", "post")) for t in warm) \
        if warm else float("nan")
    return (f"{label:<22} fresh {r['first_image_process_s']:7.1f}s | import {r['import_s']:4.1f} load "
            f"{r['load_s']:4.1f} text {f['text']:6.1f} image {f['image']:6.1f} pamr {f['refine']:5.1f} | "
            f"warm text {med('text'):5.2f} image {med('image'):6.1f} pamr {med('refine'):5.1f} "
            f"-> {1 / warm_total if warm else float('nan'):6.3f} img/s | peak RSS {r['peak_rss_mb']:6.0f} MB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="balanced,fast,voc21")
    p.add_argument("--size", default="336x448", help="HxW of the synthetic image")
    p.add_argument("--short-side", type=int, default=None, help="override short_side (0 = none)")
    p.add_argument("--vocab", default="voc21", help="a shipped benchmark vocabulary")
    p.add_argument("--repeat", type=int, default=2, help="warm images per preset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-memory-mb", type=float, default=None,
                   help="Segmenter batch bound (default: the engine's, 128 MB on CPU)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", type=Path,
                   default=Path(tempfile.gettempdir()) / "napari-itaclip-bench" / "vitb16-random.pt")
    p.add_argument("--baseline", action="store_true", help="also time the reference-style run")
    p.add_argument("--vocab-change", action="store_true",
                   help="time the image-feature cache: first run vs new vocabularies on the same image")
    p.add_argument("--plain-repeat", type=int, default=1,
                   help="--vocab-change: runs of the cache-less segmenter (each a full ViT run)")
    p.add_argument("--check-new", action="store_true",
                   help="--vocab-change: also compare the new vocabulary with a cache-less run")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_mode", default="", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(run_vocab_change(args) if args._mode == "vocab-change" else run_one(args)))
        return 0
    ensure_weights(args.weights)
    results = []
    print(f"ITACLIP engine benchmark: image {args.size}, vocabulary {args.vocab}, device {args.device}, "
          f"{os.cpu_count()} CPUs")
    if args.vocab_change:
        for preset in args.presets.split(","):
            with tempfile.TemporaryDirectory() as cache:
                r = spawn(args, preset, False, Path(cache), mode="vocab-change")
            results.append(r)
            print(fmt_vocab_change(r), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return 0
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as cache:
            r = spawn(args, preset, False, Path(cache))
            results.append(r)
            print(fmt(r, preset), flush=True)
            r2 = spawn(args, preset, False, Path(cache))  # fresh process, text cache on disk
            r2["preset"] = preset + " (cached)"
            results.append(r2)
            print(fmt(r2, preset + " cached vocab"), flush=True)
        if args.baseline:
            with tempfile.TemporaryDirectory() as cache:
                b = spawn(args, preset, True, Path(cache))
                b["preset"] = preset + " (baseline)"
                results.append(b)
                print(fmt(b, preset + " baseline"), flush=True)
                print(f"{'':<22} fresh-process speed-up vs baseline: "
                      f"{b['first_image_process_s'] / r['first_image_process_s']:.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
