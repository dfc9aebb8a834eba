"""Time of ``napari_itaclip.measure`` on synthetic label maps (medians of repeats).

A plane of SIZE x SIZE holds a background class and CLASSES classes painted as random
disks (many touching), the way a segmentation of nuclei looks; with an RGB image for
the intensities. Prints the median seconds per call and the object count.

    python benchmarks/bench_measure.py --size 1024 2048 --planes 1 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def labels_image(size: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    n = size * size // 900  # about one disk per 30 x 30 px
    yy, xx = rng.integers(0, size, (2, n))
    rr = rng.integers(4, 14, n)
    cls = rng.integers(1, classes + 1, n)
    for y, x, r, c in zip(yy, xx, rr, cls):
        lab[max(0, y - r):y + r, max(0, x - r):x + r] = c
    return lab


def main() -> None:
    from napari_itaclip import measure

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--planes", type=int, nargs="+", default=[1])
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for size in args.size:
        for planes in args.planes:
            lab = np.stack([labels_image(size, args.classes, s) for s in range(planes)])
            lab = lab[0] if planes == 1 else lab
            rng = np.random.default_rng(1)
            image = rng.integers(0, 256, lab.shape + (3,), dtype=np.uint8)
            for with_image in (False, True):
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    m = measure(lab, spacing=(0.5, 0.5), image=image if with_image else None)
                    times.append(time.perf_counter() - t0)
                print(f"size {size} planes {planes} image {'rgb' if with_image else 'none':4s}: "
                      f"median {np.median(times):.3f} s, {len(m.objects)} objects")


if __name__ == "__main__":
    main()
