"""Optional splitting of touching objects of one class (a seeded watershed).

ITACLIP's maps are coarse: the probabilities come from ViT patches (16 px for a
ViT-B/16) upsampled to the image, and the labels' borders follow them. Two nuclei that
touch are one connected region of the class, and neither map holds a reliable valley
between them. A watershed can split such regions where their shape has a waist (the
distance transform) or where the class probability has two separate maxima; it cannot
recover borders the segmentation never had. So this is off by default, and its output
is a shape heuristic to check by eye, not a measurement of true object boundaries.
"""

from __future__ import annotations

import numpy as np

__all__ = ["split_touching"]


def split_touching(inst: np.ndarray, lab: np.ndarray, classes, method: str, probs,
                   min_distance: int, connectivity: int = 1) -> np.ndarray:
    """Split the connected regions ``inst`` of ``classes`` by a seeded watershed.

    Parameters
    ----------
    inst : array of int
        Connected regions (0 = none), as :func:`skimage.measure.label` gives them.
    lab : array of int
        The class labels of the same plane.
    classes : list of int
        Classes whose regions are split (the others are kept as they are).
    method : {"distance", "probability"}
        Seeds at the maxima of the Euclidean distance to the region's border, or of
        the class's probability map ``probs[class]``.
    probs : array or None
        ``(C, Y, X)`` class probabilities (``method="probability"``).
    min_distance : int
        Minimum distance in pixels between two seeds.
    connectivity : int
        Pixel connectivity of the watershed (1 or 2).

    Returns
    -------
    numpy.ndarray
        int64 regions: every region of ``classes`` replaced by its watershed basins
        (a region with a single seed stays whole); ids are not sequential.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    out = inst.astype(np.int64, copy=True)
    next_id = int(out.max()) + 1
    for c in classes:
        mask = (lab == c) & (inst > 0)
        if not mask.any():
            continue
        regions = np.where(mask, inst, 0)
        if method == "distance":
            elevation = ndimage.distance_transform_edt(mask)
        else:
            elevation = np.where(mask, np.asarray(probs[c], dtype=np.float64), 0.0)
        peaks = peak_local_max(elevation, min_distance=max(1, min_distance), labels=regions,
                               exclude_border=False)
        seed_mask = np.zeros(mask.shape, bool)
        seed_mask[tuple(peaks.T)] = True
        markers = label(seed_mask, connectivity=2)  # a plateau's adjacent peaks: one seed
        ids = np.unique(regions[regions > 0])
        seeded = np.unique(regions[markers > 0])
        missing = np.setdiff1d(ids, seeded)
        if missing.size:  # every region gets at least one seed: its highest point
            top = int(markers.max())
            for k, pos in enumerate(ndimage.maximum_position(elevation, regions, missing)):
                markers[pos] = top + 1 + k
        basins = watershed(-elevation, markers, mask=mask, connectivity=connectivity)
        out[mask] = basins[mask] + next_id
        next_id += int(basins.max()) + 1
    return out
