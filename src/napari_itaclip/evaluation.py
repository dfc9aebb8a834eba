"""Benchmark evaluation: mIoU, per-class IoU and aAcc as MMSegmentation reports them.

The metric follows the definition of MMSegmentation's ``IoUMetric``: for every image,
the pixels whose ground-truth label is not ``ignore_index`` (255) are kept; per class
the areas of intersection (prediction == label), prediction, label and union
(prediction + label - intersection) are counted (values outside ``0 .. C-1`` are not
counted) and summed over the dataset. Then per class ``IoU = intersection / union``
and ``Acc = intersection / label``; ``mIoU`` and ``mAcc`` are their means ignoring
classes whose ratio is 0/0 (NaN); ``aAcc = sum(intersection) / sum(label)``. The five
benchmarks of the paper use ``reduce_zero_label=False``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import BENCHMARKS

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "EvaluationResult",
    "IoUMetric",
    "PAPER_MIOU",
    "evaluate",
    "find_samples",
    "plot_per_class_iou",
    "read_label_map",
]

IGNORE_INDEX = 255

#: The paper's published mIoU (CLIP ViT-B/16, OpenAI weights, PAMR, stride 28).
PAPER_MIOU = {"voc21": 67.9, "context60": 37.5, "coco_object": 37.7, "coco_stuff": 27.0,
              "cityscapes": 40.2}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a benchmark's images and annotations live, relative to its data root.

    Attributes
    ----------
    name : str
        Benchmark and preset name.
    default_root : str
        The data root's conventional path below a user-given folder.
    image_dir, label_dir : str
        Folders (relative to the data root) of images and label maps.
    image_suffix, label_suffix : str
        ``<id><suffix>`` is an image / its label map.
    split_file : str or None
        Text file listing the ids to evaluate (one per line); ``None``: every label map
        under ``label_dir`` (recursively).
    reduce_zero_label : bool
        MMSegmentation's option (label 0 ignored, others shifted down); False for all
        five benchmarks.
    """

    name: str
    default_root: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None
    reduce_zero_label: bool = False
    num_classes: int = 0

    def layout(self) -> str:
        """A one-paragraph description of the expected folder layout."""
        split = (f"{self.split_file} (one id per line)" if self.split_file
                 else f"every {self.label_dir}/**/<id>{self.label_suffix}")
        return (f"{self.default_root}/{self.image_dir}/<id>{self.image_suffix} and "
                f"{self.default_root}/{self.label_dir}/<id>{self.label_suffix}; ids from {split}")


#: The benchmarks (:data:`~napari_itaclip.datasets.BENCHMARKS`, in that order) by name.
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("voc21", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                "ImageSets/Segmentation/val.txt", num_classes=21),
    DatasetSpec("context60", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext",
                ".jpg", ".png", "ImageSets/SegmentationContext/val.txt", num_classes=60),
    DatasetSpec("coco_object", "coco_stuff164k", "images/val2017", "annotations/val2017",
                ".jpg", "_instanceTrainIds.png", None, num_classes=81),
    DatasetSpec("coco_stuff", "coco_stuff164k", "images/val2017", "annotations/val2017",
                ".jpg", "_labelTrainIds.png", None, num_classes=171),
    DatasetSpec("cityscapes", "cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                "_gtFine_labelTrainIds.png", None, num_classes=19),
)}
if tuple(DATASETS) != BENCHMARKS:  # pragma: no cover - the two tables must agree
    raise ImportError("evaluation.DATASETS and datasets.BENCHMARKS disagree")


class IoUMetric:
    """Accumulates intersection / union / prediction / label areas per class.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C`` (labels ``0 .. C-1``).
    ignore_index : int
        Ground-truth value excluded from every count.
    reduce_zero_label : bool
        Treat ground-truth 0 as ignored and shift the other labels down by one.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 reduce_zero_label: bool = False):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.intersect = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)
        self.pred_area = np.zeros(self.num_classes, dtype=np.int64)
        self.label_area = np.zeros(self.num_classes, dtype=np.int64)
        self.count = 0

    def _hist(self, values: np.ndarray) -> np.ndarray:
        values = values[(values >= 0) & (values < self.num_classes)]
        return np.bincount(values, minlength=self.num_classes)[: self.num_classes]

    def update(self, pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, ...]:
        """Add one image. ``pred`` and ``label`` are same-shape integer maps.

        Returns the image's (intersection, union, prediction, label) areas.
        """
        pred = np.asarray(pred).astype(np.int64)
        label = np.asarray(label).astype(np.int64)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        if self.reduce_zero_label:
            label = label.copy()
            label[label == 0] = 256
            label = label - 1
            label[label == 254] = IGNORE_INDEX
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        inter = self._hist(pred[pred == label])
        area_pred = self._hist(pred)
        area_label = self._hist(label)
        union = area_pred + area_label - inter
        self.intersect += inter
        self.union += union
        self.pred_area += area_pred
        self.label_area += area_label
        self.count += 1
        return inter, union, area_pred, area_label

    def compute(self) -> dict[str, Any]:
        """Per-class IoU and Acc and the summary numbers, as fractions (0..1).

        Returns
        -------
        dict
            ``IoU`` and ``Acc`` (arrays, NaN where undefined), ``mIoU``, ``mAcc``,
            ``aAcc`` (floats).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = self.intersect / self.union
            acc = self.intersect / self.label_area
            total = self.label_area.sum()
            aacc = float(self.intersect.sum() / total) if total else float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN mean
            miou = float(np.nanmean(iou)) if self.num_classes else float("nan")
            macc = float(np.nanmean(acc)) if self.num_classes else float("nan")
        return {"IoU": iou, "Acc": acc, "mIoU": miou, "mAcc": macc, "aAcc": aacc}


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured (percentages, like MMSegmentation prints)."""

    dataset: str
    class_names: list[str]
    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    aacc: float
    num_images: int
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN becomes ``null``)."""
        def num(x):
            return None if x is None or not np.isfinite(x) else round(float(x), 4)

        return {
            "dataset": self.dataset,
            "num_images": self.num_images,
            "mIoU": num(self.miou),
            "mAcc": num(self.macc),
            "aAcc": num(self.aacc),
            "paper_mIoU": PAPER_MIOU.get(self.dataset),
            "per_class": [
                {"class": n, "IoU": num(i), "Acc": num(a)}
                for n, i, a in zip(self.class_names, self.iou, self.acc)
            ],
            "seconds": round(self.seconds, 2),
            **self.info,
        }

    def table(self) -> str:
        """A plain-text per-class table followed by the summary line."""
        width = max(len(n) for n in self.class_names) if self.class_names else 5
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
        for n, i, a in zip(self.class_names, self.iou, self.acc):
            lines.append(f"{n:<{width}}  {_pct(i):>6}  {_pct(a):>6}")
        lines.append(f"{self.dataset}: mIoU {_pct(self.miou)}  mAcc {_pct(self.macc)}  "
                     f"aAcc {_pct(self.aacc)}  ({self.num_images} images)")
        return "\n".join(lines)


def _pct(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.2f}"


def resolve_root(spec: DatasetSpec, root: str | Path) -> Path:
    """The data root: ``root`` itself if it holds the layout, else ``root/default_root``."""
    root = Path(root)
    for candidate in (root, root / spec.default_root):
        if (candidate / spec.label_dir).is_dir() and (candidate / spec.image_dir).is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root}: no {spec.name} data found. Expected {spec.layout()} (the data root may be "
        f"given directly or as its parent). See docs/evaluation.md."
    )


def find_samples(spec: DatasetSpec, root: str | Path) -> list[tuple[str, Path, Path]]:
    """``(id, image path, label path)`` of every sample to evaluate, in a fixed order."""
    base = resolve_root(spec, root)
    img_dir, lbl_dir = base / spec.image_dir, base / spec.label_dir
    if spec.split_file:
        split = base / spec.split_file
        if not split.is_file():
            raise FileNotFoundError(f"{split}: split file missing (expected {spec.layout()})")
        ids = [ln.strip() for ln in split.read_text().splitlines() if ln.strip()]
        rel = [(i, i) for i in ids]
    else:
        rel = []
        for p in sorted(lbl_dir.rglob(f"*{spec.label_suffix}")):
            sub = p.relative_to(lbl_dir).as_posix()[: -len(spec.label_suffix)]
            rel.append((sub, sub))
    samples = []
    missing = []
    for sample_id, sub in rel:
        img = img_dir / f"{sub}{spec.image_suffix}"
        lbl = lbl_dir / f"{sub}{spec.label_suffix}"
        if not img.is_file() or not lbl.is_file():
            missing.append(sample_id)
            continue
        samples.append((sample_id, img, lbl))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(rel)} samples lack an image or a label map "
            f"(first: {missing[0]!r}); expected {spec.layout()}"
        )
    if not samples:
        raise FileNotFoundError(f"{base}: no samples found; expected {spec.layout()}")
    return samples


def _prediction_for(pred_dir: Path, sample_id: str,
                    image_path: Path | None = None) -> np.ndarray:
    """The saved label map of a sample: named after its id or its image file.

    ``segment`` names its outputs after the image file's stem
    (``<image stem>_labels.tif``), which is the id for VOC / Context / COCO but not for
    Cityscapes (``<id>_leftImg8bit.png``); both are looked for.
    """
    from .files import output_stem

    name = Path(sample_id).name
    stems = [sample_id, name]
    if image_path is not None:
        stems.append(output_stem(Path(image_path)))
    stems = list(dict.fromkeys(stems))
    for stem in stems:
        for cand in (f"{stem}_labels.tif", f"{stem}.png", f"{stem}_labels.png", f"{stem}.tif"):
            p = pred_dir / cand
            if p.is_file():
                return read_label_map(p)
    raise FileNotFoundError(
        f"{pred_dir}: no prediction for {sample_id!r} (looked for X_labels.tif, X.png, "
        f"X_labels.png, X.tif with X = {', '.join(stems)})")


def read_label_map(path: str | Path) -> np.ndarray:
    """A 2-D map of class indices from a ground-truth or prediction file, exactly.

    A single-channel image (grey, 16-bit, TIFF) is read as stored; a palette PNG (as
    VOC's) gives its palette indices, not its colours. A multi-channel image is taken
    only when its colour channels are equal everywhere (a grey map saved as RGB) and any
    alpha is opaque; a colour rendering cannot be decoded exactly and raises.

    Raises
    ------
    ValueError
        A colour (RGB/RGBA, ...) rendering, naming the file.
    """
    from .files import read_label_image

    path = Path(path)
    mode = None
    if path.name.lower().endswith((".tif", ".tiff")):
        arr = read_label_image(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
            if mode == "PA":  # palette indices plus alpha: the indices
                arr = np.asarray(im.getchannel(0))
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        n = arr.shape[-1]
        colour = arr[..., : 3 if n >= 3 else 1]
        alpha = arr[..., -1] if n in (2, 4) else None
        opaque = alpha is None or bool((alpha == np.iinfo(arr.dtype).max).all()
                                       if arr.dtype.kind in "ui" else (alpha == 1).all())
        if opaque and bool((colour == colour[..., :1]).all()):
            return np.ascontiguousarray(colour[..., 0])
        kind = mode or f"{n}-channel"
        raise ValueError(
            f"{path}: a {kind} colour image, not a map of class indices; its colours cannot "
            "be turned into classes exactly. Use a single-channel or palette PNG of class "
            "indices (as the dataset distributes them, e.g. VOC's SegmentationClass/<id>.png)")
    raise ValueError(f"{path}: a label map must be 2-D (one class index per pixel), got "
                     f"shape {arr.shape}")


def evaluate(
    dataset: str,
    root: str | Path,
    *,
    segmenter=None,
    vocabulary=None,
    config=None,
    predictions: str | Path | None = None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate a segmenter (or saved predictions) on a benchmark.

    Parameters
    ----------
    dataset : str
        One of :data:`DATASETS`.
    root : str or Path
        The data root or its parent (see :class:`DatasetSpec` and docs/evaluation.md).
    segmenter : Segmenter, optional
        Used when ``predictions`` is not given.
    vocabulary : Vocabulary, optional
        Defaults to the packaged class list of the dataset; must have
        ``num_classes`` classes in label order.
    config : ITACLIPConfig, optional
        Defaults to the dataset's paper preset.
    predictions : path, optional
        A folder of saved label maps to score instead of running a model:
        ``<image stem>_labels.tif`` as ``segment`` writes them (the image file's name
        without its suffix), or ``<id>_labels.tif`` / ``<id>.png`` (see docs).
    limit : int, optional
        Evaluate only the first ``limit`` samples (quick checks; not the benchmark);
        at least 1 (a smaller value raises ``ValueError``).
    progress : callable, optional
        ``progress(done, total)`` after each image.
    """
    from .datasets import load_vocabulary
    from .files import open_image

    key = dataset.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[key]
    vocab = vocabulary if vocabulary is not None else load_vocabulary(key)
    if len(vocab) != spec.num_classes:
        raise ValueError(f"{key} has {spec.num_classes} classes, the vocabulary {len(vocab)}")
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1 (or None for all), got {limit!r}")
    samples = find_samples(spec, root)
    if limit is not None:
        samples = samples[: int(limit)]
    if predictions is None and segmenter is None:
        raise ValueError("give a segmenter or a predictions folder")
    if config is None and predictions is None:
        from .config import ITACLIPConfig

        config = ITACLIPConfig.preset(key)
    metric = IoUMetric(spec.num_classes, reduce_zero_label=spec.reduce_zero_label)
    t0 = time.perf_counter()
    for done, (sample_id, img_path, lbl_path) in enumerate(samples, start=1):
        label = read_label_map(lbl_path)
        if predictions is not None:
            pred = _prediction_for(Path(predictions), sample_id, img_path)
        else:
            src = open_image(img_path)
            image = src.data if not src.plane_shape else src.data[(0,) * len(src.plane_shape)]
            pred = segmenter.segment(image, vocab, config=config).labels
        if pred.shape != label.shape:
            raise ValueError(f"{sample_id}: prediction {pred.shape} vs label {label.shape}")
        metric.update(pred, label)
        if progress is not None:
            progress(done, len(samples))
    out = metric.compute()
    return EvaluationResult(
        dataset=key, class_names=list(vocab.class_names), iou=out["IoU"] * 100,
        acc=out["Acc"] * 100, miou=out["mIoU"] * 100, macc=out["mAcc"] * 100,
        aacc=out["aAcc"] * 100, num_images=len(samples), seconds=time.perf_counter() - t0,
        info={"config": config.to_dict() if config is not None else None,
              "predictions": str(predictions) if predictions is not None else None,
              "limit": limit},
    )


def plot_per_class_iou(result: EvaluationResult, path: str | Path) -> Path | None:
    """Save a horizontal bar chart of the per-class IoU; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping the per-class IoU plot "
                      "(pip install matplotlib)", stacklevel=2)
        return None
    names = result.class_names
    values = np.nan_to_num(result.iou, nan=0.0)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(names) + 1.2)))
    try:
        y = np.arange(len(names))
        ax.barh(y, values, color="tab:blue")
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=7 if len(names) > 40 else 9)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("IoU (%)")
        ax.axvline(result.miou, color="tab:red", linestyle="--",
                   label=f"mIoU {result.miou:.2f}")
        paper = PAPER_MIOU.get(result.dataset)
        if paper is not None:
            ax.axvline(paper, color="tab:gray", linestyle=":", label=f"paper {paper}")
        ax.legend(loc="lower right")
        ax.set_title(f"{result.dataset}: per-class IoU ({result.num_images} images)")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def save_result(result: EvaluationResult, out_dir: str | Path, *, plot: bool = True) -> dict:
    """Write ``metrics.json``, ``per_class_iou.csv`` and (optionally) the plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / f"{result.dataset}_metrics.json",
             "csv": out / f"{result.dataset}_per_class_iou.csv"}
    paths["metrics"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    rows = ["class,IoU,Acc"] + [f"{_csv(n)},{_pct(i)},{_pct(a)}"
                                for n, i, a in zip(result.class_names, result.iou, result.acc)]
    paths["csv"].write_text("\n".join(rows) + "\n")
    if plot:
        png = plot_per_class_iou(result, out / f"{result.dataset}_per_class_iou.png")
        if png is not None:
            paths["plot"] = png
    return paths


def _csv(text: str) -> str:
    return f'"{text}"' if "," in text else text

