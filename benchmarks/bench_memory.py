"""Memory benchmark: the engine's peak-memory estimate against the measured peak RSS.

Each row runs in a child process: a full-size ``ViT-B-16`` with seeded random weights
(``open_clip.create_model("ViT-B-16", pretrained=None)``, offline), loaded on the CPU;
a random RGB uint8 image; a vocabulary of 2 or 20 single-name classes. The child reads
its resident memory (``VmRSS``), asks the engine for its estimate
(``Segmenter.memory_estimate``: what the call adds to the process), resets the kernel's
high-water mark (``/proc/self/clear_refs``; where that is refused the peak includes the
model's loading) and runs one ``Segmenter.segment``; the measured peak is ``VmHWM``.

- **estimate** = RSS before the call + the engine's estimate;
- **measured** = peak RSS during the call;
- **ratio** = estimate / measured (target 1.0 to 1.6), and the same for what the call
  added (estimate alone against peak minus RSS before).

Usage::

    python benchmarks/bench_memory.py                        # the full table (slow)
    python benchmarks/bench_memory.py --sizes 512,2048 --presets fast --classes 2
    python benchmarks/bench_memory.py --json                 # one JSON object per row

Rows whose estimate exceeds the machine's available memory are refused by the engine
(as a user's run would be) and reported as such; ``--no-check`` runs them anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

#: VOC's 20 object classes: the vocabulary's names (the first k for k classes)
NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
         "train", "tv monitor"]
MB = 2**20


def _status(key: str) -> int:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset the process's high-water mark (Linux >= 4.0); False when refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(size: int, preset: str, classes: int) -> dict:
    """One row, in this process."""
    import numpy as np
    import open_clip
    import torch

    from napari_itaclip import ITACLIPConfig, Segmenter

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    cfg = ITACLIPConfig.preset(preset)
    seg = Segmenter(model=model, pretrained=None, device="cpu", config=cfg, cache_dir=False)
    seg.load()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    vocab = ", ".join(NAMES[:classes])
    est = seg.memory_estimate(image, vocab)
    before = _status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    row = {"size": size, "preset": preset, "classes": classes, "queries": est.shapes.queries,
           "working": list(est.shapes.working), "pamr": cfg.pamr_steps > 0,
           "rss_before_mb": before / MB, "estimate_added_mb": est.host / MB,
           "estimate_mb": (before + est.host) / MB, "peak_step": est.peak_stage().name,
           "peak_reset": reset}
    try:
        seg.segment(image, vocab)
    except MemoryError as err:  # the engine's refusal (InsufficientMemoryError)
        row["refused"] = str(err)
        return row
    peak = _status("VmHWM")
    row.update(seconds=time.perf_counter() - t0, measured_mb=peak / MB,
               measured_added_mb=(peak - before) / MB, ratio=(before + est.host) / peak,
               ratio_added=est.host / max(1, peak - before))
    return row


def run_row(size: int, preset: str, classes: int, timeout: float, check: bool) -> dict:
    """One row in a child process."""
    env = dict(os.environ)
    if not check:
        env["NAPARI_ITACLIP_MEMORY_LIMIT_MB"] = "none"
    cmd = [sys.executable, __file__, "--child", str(size), preset, str(classes)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"size": size, "preset": preset, "classes": classes, "error": "timed out"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"size": size, "preset": preset, "classes": classes,
                "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def table_row(r: dict) -> str:
    """One Markdown row."""
    head = f"| {r['size']}² | {r['preset']} | {r['classes']} |"
    if "error" in r or "refused" in r:
        return head + f" – | – | – | – | – | {r.get('error') or 'refused: ' + r['refused']} |"
    return (head + f" {r['estimate_mb']:.0f} | {r['measured_mb']:.0f} | **{r['ratio']:.2f}** |"
            f" {r['estimate_added_mb']:.0f} | {r['measured_added_mb']:.0f} |"
            f" {r['ratio_added']:.2f} | {r['peak_step']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512,2048,4096,6000,8000")
    p.add_argument("--presets", default="fast,balanced")
    p.add_argument("--classes", default="2,20")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    p.add_argument("--no-check", action="store_true",
                   help="run rows the engine would refuse for lack of memory")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--child", nargs=3, metavar=("SIZE", "PRESET", "CLASSES"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        size, preset, classes = args.child
        print(json.dumps(child(int(size), preset, int(classes))), flush=True)
        return 0
    if not args.json:
        print("| image | preset | classes | estimate (MB) | measured peak (MB) | ratio |"
              " added: estimate (MB) | added: measured (MB) | ratio | peak step |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for preset in args.presets.split(","):
            for classes in (int(c) for c in args.classes.split(",")):
                r = run_row(size, preset, classes, args.timeout, not args.no_check)
                print(json.dumps(r) if args.json else table_row(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
