"""Large layers through the widget's code path, without Qt: time, peak memory, tiles/s.

    python benchmarks/bench_large.py                  # both cases
    python benchmarks/bench_large.py --cases slide    # the 20000 x 20000 zarr only

Each case runs in a child process (its peak RSS is the child's high-water mark) and calls
``segment_layer`` on a napari layer without a viewer: the same source resolution (pyramid
level, working resolution), tiled runner and output plan as the dock widget, minus the
GUI thread. The model is ViT-B-16's architecture with random weights (offline; speed and
memory do not depend on the weights).

Cases:

- ``slide``: a 20000 x 20000 uint8 zarr (on disk, 1024-px chunks, read lazily through
  dask), the ``fast`` preset, object size 256 px (working scale 1/8: 2500 x 2500),
  tiles of 1024 working pixels;
- ``pyramid``: a 4096 x 4096 uint16 multiscale layer (levels 4096 ... 256), the
  ``balanced`` preset (short side 336): read at the 512-px level that serves.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("slide", "pyramid")


def _make_slide(path: Path, side: int) -> None:
    import zarr

    arr = zarr.create_array(store=str(path), shape=(side, side), chunks=(1024, 1024),
                            dtype=np.uint8, overwrite=True)
    rng = np.random.default_rng(0)
    tile = 2048
    yy, xx = np.mgrid[:tile, :tile]
    for r in range(0, side, tile):
        for c in range(0, side, tile):
            img = rng.integers(40, 90, (tile, tile)).astype(np.float32)
            for cy, cx in rng.integers(0, tile, (40, 2)):  # ~250-px "glands"
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 120**2] += 120
            arr[r:r + tile, c:c + tile] = img[: min(tile, side - r), : min(tile, side - c)]


def _pyramid(side: int):
    rng = np.random.default_rng(1)
    base = rng.integers(1000, 3000, (side, side)).astype(np.uint16)
    levels = [base]
    while levels[-1].shape[0] > 256:
        levels.append(levels[-1][::2, ::2].copy())
    return levels


def child(case: str, workdir: Path, side: int) -> dict:
    import napari
    import open_clip
    import torch

    from napari_itaclip import ITACLIPConfig, Segmenter, segment_layer

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    seen: list = []
    if case == "slide":
        import dask.array as da

        path = workdir / "slide.zarr"
        if not path.exists():
            _make_slide(path, side)
        data = da.from_zarr(str(path))
        layer = napari.layers.Image(data, name="slide")
        cfg = ITACLIPConfig.preset("fast")
        kwargs = {"object_size": 256.0, "tiled": True}
    else:
        layer = napari.layers.Image(_pyramid(side), multiscale=True, name="pyramid")
        cfg = ITACLIPConfig.preset("balanced")
        kwargs = {}
    seg = Segmenter(model=model, pretrained=None, device="cpu", config=cfg)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    labels, heat = segment_layer(layer, "background\ngland\nstroma", viewer=None, segmenter=seg,
                                 config=cfg, progress=seen.append, **kwargs)
    seconds = time.perf_counter() - t0
    tiles = max((getattr(p, "n_tiles", 0) for p in seen), default=0)
    return {"case": case, "seconds": seconds, "tiles": tiles,
            "tiles_per_s": tiles / seconds if tiles else None,
            "labels_shape": list(labels.data.shape), "labels_dtype": str(labels.data.dtype),
            "labels_scale": [float(s) for s in labels.scale],
            "heat_shape": list(heat.data.shape),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_run_gb": rss0 / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--side", type=int, default=None, help="image side (default 20000 / 4096)")
    p.add_argument("--workdir", default=None, help="where the zarr is made (kept for reuse)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "itaclip-bench-large")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        side = args.side or (20000 if args.child == "slide" else 4096)
        Path(args.report).write_text(json.dumps(child(args.child, workdir, side)))
        return 0
    rows = []
    for case in args.cases.split(","):
        report = workdir / f"{case}.json"
        cmd = [sys.executable, __file__, "--child", case, "--report", str(report),
               "--workdir", str(workdir)] + (["--side", str(args.side)] if args.side else [])
        env = dict(os.environ, NAPARI_ITACLIP_CACHE_DIR=str(workdir / "cache"))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
        if proc.returncode:
            print(f"{case}: failed\n{proc.stderr[-3000:]}")
            continue
        rows.append(json.loads(report.read_text()))
    print("| case | time s | tiles | tiles/s | peak RSS GB | labels | heatmaps |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tps = f"{r['tiles_per_s']:.3f}" if r["tiles_per_s"] else "in memory"
        print(f"| {r['case']} | {r['seconds']:.1f} | {r['tiles']} | {tps} | "
              f"{r['peak_rss_gb']:.2f} | {r['labels_shape']} {r['labels_dtype']} scale "
              f"{r['labels_scale']} | {r['heat_shape']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
