"""Measurements of the command line's outputs: per-input CSV files and a batch summary.

For every finished output ``<stem>_labels.tif`` (or ``.zarr``) of ``segment --measure``
this writes ``<stem>_classes.csv`` and ``<stem>_objects.csv`` beside it, and for the
whole run ``summary_classes.csv`` (a row per image, plane and class) in the output
folder, optionally drawn as ``summary_classes.png``. The labels are read back from the
written file, so a resumed input (segmented by an earlier run) is measured the same
way; its CSV files are reused when they are newer than its sidecar and have the same
spacing. Chunked (zarr) outputs get exact class areas from per-chunk counts, and no
object table (objects crossing chunks are not merged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import WRITTEN_BY, write_atomic, write_json_atomic
from .core import measure, plane_columns
from .units import unit_name

__all__ = ["SUMMARY_NAME", "BatchMeasure", "MeasureOptions", "chunked_class_table", "summary_clash",
           "measure_paths", "plot_summary", "spacing_from_tiff"]

SUMMARY_NAME = "summary_classes"


@dataclass(frozen=True)
class MeasureOptions:
    """What ``segment --measure`` measures.

    Attributes
    ----------
    spacing : (y, x), optional
        Pixel size; None: from each TIFF's resolution tags, else 1 pixel.
    unit : str, optional
        Unit of ``spacing`` (default ``"units"`` with a spacing).
    min_size : int
        Smallest object in pixels.
    connectivity : int
        1 or 2.
    plot : bool
        Also draw the summary as ``summary_classes.png`` (needs matplotlib).
    """

    spacing: tuple[float, float] | None = None
    unit: str | None = None
    min_size: int = 1
    connectivity: int = 1
    plot: bool = False


def measure_paths(sidecar: Path) -> tuple[Path, Path]:
    """``<stem>_classes.csv`` and ``<stem>_objects.csv`` beside an output's sidecar."""
    stem = sidecar.name[: -len(".json")] if sidecar.name.endswith(".json") else sidecar.stem
    return sidecar.with_name(f"{stem}_classes.csv"), sidecar.with_name(f"{stem}_objects.csv")


def spacing_from_tiff(path: Path) -> tuple[tuple[float, float], str] | None:
    """``((y, x), unit)`` from a TIFF's metadata, or None when it records none.

    In order: OME-XML ``PhysicalSizeY``/``PhysicalSizeX`` (and their units, default
    µm); ImageJ's ``unit`` with the pixels-per-unit ``YResolution``/``XResolution``;
    ``XResolution``/``YResolution`` with ``ResolutionUnit`` inch or centimetre
    (converted to µm). A resolution without a unit (``ResolutionUnit`` none) is ignored.
    """
    if not path.name.lower().endswith((".tif", ".tiff")):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            found = _ome_spacing(tif.ome_metadata)
            if found is not None:
                return found
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        xres = _ratio(tags["XResolution"].value)
        yres = _ratio(tags["YResolution"].value)
        unit_code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        ij_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if not xres or not yres:
        return None
    if ij_unit and str(ij_unit).lower() not in ("pixel", "pixels", ""):
        return (1 / yres, 1 / xres), unit_name(ij_unit) or str(ij_unit)
    per_um = {2: 25400.0, 3: 10000.0}.get(unit_code)  # micrometres per inch / centimetre
    if per_um is None:
        return None
    return (per_um / yres, per_um / xres), "µm"


def _ratio(value) -> float:
    if isinstance(value, tuple):
        num, den = value
        return float(num) / float(den) if den else 0.0
    return float(value)


def _ome_spacing(xml: str):
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if pixels is None:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    try:
        sy, sx = float(attrs["PhysicalSizeY"]), float(attrs["PhysicalSizeX"])
    except (KeyError, ValueError):
        return None
    return (sy, sx), unit_name(attrs.get("PhysicalSizeXUnit", "µm")) or "µm"


def chunked_class_table(labels_path: Path, class_names, background: int | None,
                        spacing, unit: str, axes=None):
    """The class table of a zarr label output, from per-chunk bincounts (exact).

    Reads one chunk at a time; the same columns as :attr:`Measurements.classes` but
    without intensities, and ``objects`` left empty (not counted in chunked mode).
    """
    import pandas as pd
    import zarr

    arr = zarr.open_array(str(labels_path), mode="r")
    n = len(class_names)
    lead = tuple(arr.shape[:-2])
    cy, cx = arr.chunks[-2], arr.chunks[-1]
    cols = plane_columns(lead, axes)
    frames = []
    sy, sx = spacing
    for idx in np.ndindex(*lead):
        counts = np.zeros(n, np.int64)
        for y in range(0, arr.shape[-2], cy):
            for x in range(0, arr.shape[-1], cx):
                block = np.asarray(arr[(*idx, slice(y, y + cy), slice(x, x + cx))])
                counts += np.bincount(block.ravel(), minlength=n)[:n]
        total = int(counts.sum())
        labelled = total - (counts[background] if background is not None else 0)
        frac = counts / labelled if labelled else np.full(n, np.nan)
        if background is not None:
            frac = frac.astype(float)
            frac[background] = np.nan
        frame = dict(zip(cols, idx))
        frame.update({"class": np.arange(n), "class_name": list(class_names),
                      "pixels": counts, "area": counts * (sy * sx),
                      "fraction_image": counts / max(total, 1), "fraction_labelled": frac,
                      "objects": pd.array([pd.NA] * n, dtype="Int64"), "unit": unit})
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def _write_csv_atomic(frame, path: Path) -> None:
    """A table as CSV through the package's one atomic writer."""
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def summary_files(out_dir: Path) -> tuple[Path, Path, Path]:
    """The batch summary's table and plot in ``out_dir``, and the claim that says this
    tool wrote them (``summary_classes.itaclip.json``).
    """
    out_dir = Path(out_dir)
    return (out_dir / f"{SUMMARY_NAME}.csv", out_dir / f"{SUMMARY_NAME}.png",
            out_dir / f"{SUMMARY_NAME}.itaclip.json")


def summary_clash(inputs) -> Path | None:
    """The first input whose own class table (``<stem>_classes.csv``) would be the batch
    summary (``summary_classes.csv``: an input named ``summary.*``), or None.
    """
    return next((Path(p) for p in inputs if f"{Path(p).stem}_classes" == SUMMARY_NAME), None)


@dataclass
class BatchMeasure:
    """Measures each finished output of a batch run and writes the summary at the end.

    Parameters
    ----------
    options : MeasureOptions
    overwrite : bool
        Recompute the CSV files even when reusable ones exist (``--overwrite``).
    """

    options: MeasureOptions
    overwrite: bool = False
    rows: list[Any] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def spacing_for(self, path: Path) -> tuple[tuple[float, float], str, str]:
        """``((y, x), unit, where_from)`` of an input."""
        if self.options.spacing is not None:
            return tuple(self.options.spacing), unit_name(self.options.unit) or "units", "--spacing"
        try:
            found = spacing_from_tiff(path)
        except Exception:  # unreadable metadata: pixels
            found = None
        if found is not None:
            return found[0], found[1], "TIFF metadata"
        return (1.0, 1.0), "px", "none (pixels)"

    def add(self, path: Path, outs, vocab, *, tag: str | None = None,
            segmented: bool = True) -> None:
        """Measure (or read back) one input's output and keep its class rows."""
        spacing, unit, _ = self.spacing_for(path)
        classes_csv, objects_csv = measure_paths(outs.sidecar)
        classes = None
        if not segmented and not self.overwrite:
            classes = self._reusable(classes_csv, outs.sidecar, spacing, unit)
        if classes is None:
            classes = self._measure(path, outs, vocab, spacing, unit, classes_csv, objects_csv)
        classes = classes.copy()
        classes.insert(0, "image", path.name)
        if tag is not None:
            classes.insert(1, "vocabulary", tag)
        self.rows.append(classes)

    def add_input(self, path: Path, out_dir: Path, vocabularies, *, segmented: bool) -> None:
        """Measure every finished output of one input (``(tag, vocabulary)`` pairs)."""
        from ..files import output_paths

        for tag, vocab in vocabularies:
            for zarr_out in (False, True):
                outs = output_paths(out_dir, path, zarr_out=zarr_out, tag=tag)
                if outs.complete():
                    self.add(path, outs, vocab, tag=tag, segmented=segmented)
                    break

    def _reusable(self, classes_csv: Path, sidecar: Path, spacing, unit):
        import pandas as pd

        if not classes_csv.is_file() or not sidecar.is_file():
            return None
        if classes_csv.stat().st_mtime < sidecar.stat().st_mtime:
            return None  # the labels were written again after the CSV
        try:
            old = pd.read_csv(classes_csv, keep_default_na=False, na_values=[""])
        except Exception:
            return None
        if old.empty or set(old["unit"].astype(str)) != {unit}:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (old["area"] / old["pixels"]).dropna()
        if len(ratio) and not np.allclose(ratio, spacing[0] * spacing[1], rtol=1e-9):
            return None
        return old

    def _measure(self, path: Path, outs, vocab, spacing, unit, classes_csv, objects_csv):
        from ..files import open_image

        names = list(vocab.class_names)
        background = 0 if vocab.has_background else None
        if outs.labels.suffix == ".zarr":
            classes = chunked_class_table(outs.labels, names, background, spacing, unit)
            _write_csv_atomic(classes, classes_csv)
            if objects_csv.exists():
                objects_csv.unlink()  # ours, from an earlier in-memory run of this input
            self.messages.append(
                f"{path.name}: chunked output: class areas only (exact); no object table, "
                "since objects crossing chunk borders are not merged")
            return classes
        import tifffile

        labels = np.asarray(tifffile.imread(outs.labels))
        image, axes = None, None
        try:
            with open_image(path) as source:
                data = np.asarray(source.data)
                lead = source.axes[: len(source.plane_shape)]
                if lead and "Q" not in lead and len(set(lead)) == len(lead):
                    axes = lead
            if data.shape[: labels.ndim] == labels.shape:
                image = data
        except Exception:  # the input is gone or unreadable: areas without intensities
            image = None
        m = measure(labels, names, spacing=spacing, unit=unit,
                    image=image, background=background, min_size=self.options.min_size,
                    connectivity=self.options.connectivity, axes=axes)
        _write_csv_atomic(m.objects, objects_csv)
        _write_csv_atomic(m.classes, classes_csv)
        return m.classes

    def finish(self, out_dir: Path) -> list[Path]:
        """Write the summary table (and its plot); returns the files written."""
        import pandas as pd

        if not self.rows:
            return []
        summary = pd.concat(self.rows, ignore_index=True)
        path, png, claim = summary_files(out_dir)
        written = [path]
        if self.options.plot:
            written.append(png)
        # the claim first: a file it names that is half-written is still ours to replace
        write_json_atomic(claim, {"written_by": WRITTEN_BY, "status": "done",
                                  "outputs": {"summary": path.name,
                                              **({"plot": png.name} if self.options.plot else {})}})
        _write_csv_atomic(summary, path)
        if self.options.plot:
            plot_summary(summary, png)
        return written


def plot_summary(summary, path: Path) -> Path:
    """A stacked bar per image (and vocabulary) of its class fractions; saved as PNG.

    Raises
    ------
    ImportError
        When matplotlib is missing (``pip install napari-itaclip[plot]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the summary plot needs matplotlib; install it with: "
                          "pip install napari-itaclip[plot]") from exc
    keys = [k for k in ("image", "vocabulary") if k in summary.columns]
    table = summary.groupby([*keys, "class_name"], sort=False)["pixels"].sum().unstack(fill_value=0)
    fractions = table.div(table.sum(axis=1).replace(0, 1), axis=0)
    colours = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(fractions) + 1.5))
    left = np.zeros(len(fractions))
    labels = [" / ".join(str(v) for v in (k if isinstance(k, tuple) else (k,)))
              for k in fractions.index]
    for i, name in enumerate(fractions.columns):
        values = fractions[name].to_numpy()
        ax.barh(labels, values, left=left, color=colours[i % len(colours)], label=str(name))
        left += values
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the image")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15 - 0.2 / max(len(fractions), 1)),
              ncol=min(5, len(fractions.columns)), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
