"""Throughput and peak memory of chunked segmentation on a large synthetic image.

Runs offline with a tiny random CLIP by default (measures the chunking machinery:
I/O, halo overhead, memory bound), or a real model with ``--model ViT-B-16
--pretrained openai`` (or a local checkpoint path).

    python benchmarks/bench_chunked.py --size 4096 --chunk 1024
    python benchmarks/bench_chunked.py --model ViT-B-16 --pretrained /path/ViT-B-16.pt \
        --size 2048 --chunk 512 --stride 112

Reports megapixels per second, the halo overhead (pixels read / pixels written), and
the process's peak resident memory before and after (``ru_maxrss``), next to the size
of the full image and of its outputs. Peak RSS is a high-water mark: run one
configuration per process for a clean number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def make_image(path: Path, size: int, tile: int):
    import zarr

    arr = zarr.create_array(store=str(path), shape=(size, size, 3), chunks=(tile, tile, 3),
                            dtype=np.uint8, overwrite=True)
    rng = np.random.default_rng(0)
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            h, w = min(tile, size - y), min(tile, size - x)
            yy, xx = np.mgrid[y:y + h, x:x + w]
            block = np.stack([(yy // 64) % 2 * 180, (xx // 48) % 2 * 150, (yy + xx) % 256], -1)
            arr[y:y + h, x:x + w] = np.clip(block + rng.integers(0, 30, block.shape), 0, 255)
    return arr


def chunk_bound(rss_model_mb: float, est, threads: int) -> float:
    """Peak bytes of a chunked run in one process (docs/cli.md, "Memory bound")."""
    vit = max(stage.host.get("ViT batch", 0) for stage in est.stages)
    return rss_model_mb * 2**20 + est.host + (threads - 1) * vit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="image side (px)")
    p.add_argument("--chunk", type=int, default=512, help="core chunk side (px)")
    p.add_argument("--model", default=None, help="open_clip model (default: tiny random)")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--scheduler", default="threads")
    p.add_argument("--batch-memory-mb", type=float, default=1024,
                   help="the engine's bound on one batched ViT forward")
    p.add_argument("--vocab", default="background: sky, wall\ncell\nnucleus\nmembrane")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    import dask.array as da

    from napari_itaclip import ITACLIPConfig
    from napari_itaclip.chunked import SegmenterSpec, open_outputs, segment_chunked

    tmp = Path(tempfile.mkdtemp(prefix="itaclip-bench-"))
    if args.model is None:
        (tmp / "tiny.json").write_text(json.dumps(TINY))
        model, pretrained = str(tmp / "tiny.json"), None
        cfg = ITACLIPConfig(short_side=None, crop=32, stride=args.stride or 16,
                            mid_layers=(2, 3), pamr_steps=10, pamr_dilations=(8, 16))
    else:
        model, pretrained = args.model, args.pretrained
        cfg = ITACLIPConfig.preset("balanced", short_side=None)
        if args.stride:
            cfg = cfg.replace(stride=args.stride)

    src = make_image(tmp / "in.zarr", args.size, 256)
    base_rss = peak_rss_mb()
    from napari_itaclip.vocabulary import Vocabulary

    vocab = Vocabulary.parse(args.vocab)
    spec = SegmenterSpec(model=model, pretrained=pretrained, device="cpu", config=cfg,
                         batch_memory_mb=args.batch_memory_mb)
    from napari_itaclip.chunked import get_segmenter

    seg = get_segmenter(spec)  # load the model outside the timing
    rss_model = peak_rss_mb()
    labels, sim = open_outputs(tmp / "l.zarr", tmp / "s.zarr", (), (args.size, args.size),
                               len(vocab), args.chunk)
    t0 = time.perf_counter()
    plan = segment_chunked(da.from_zarr(src), vocab, labels, sim, segmenter=spec, config=cfg,
                           chunk=args.chunk, scheduler=args.scheduler)
    seconds = time.perf_counter() - t0
    read = sum((r.stop - r.start) * (c.stop - c.start) for r, c in plan)
    est = seg.memory_estimate(np.zeros((*plan.max_region, 3), np.uint8), vocab, config=cfg)
    threads = 1 if args.scheduler == "sync" else (os.cpu_count() or 2)
    n_q = len(vocab.queries)
    result = {
        "size": args.size, "chunk": args.chunk, "halo": plan.halo, "chunks": len(plan),
        "max_region": list(plan.max_region), "model": args.model or "tiny",
        "crop": cfg.crop, "stride": cfg.stride, "queries": n_q, "classes": len(vocab),
        "seconds": round(seconds, 2),
        "megapixels_per_s": round(args.size ** 2 / 1e6 / seconds, 3),
        "halo_overhead": round(read / args.size ** 2, 3),
        "batch_memory_mb": args.batch_memory_mb,
        "peak_rss_mb_before_model": round(base_rss, 1),
        "peak_rss_mb_after_model": round(rss_model, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "image_mb": round(args.size ** 2 * 3 / 2**20, 1),
        "outputs_mb": round(args.size ** 2 * (1 + 4 * len(vocab)) / 2**20, 1),
        # the bound (docs/cli.md, "Memory bound"): the RSS after loading + the engine's
        # estimate for the largest region + the ViT batch once more per further thread
        # that runs chunks (each thread's heap keeps its own)
        "bound_estimate_mb": round(chunk_bound(rss_model, est, threads) / 2**20, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
