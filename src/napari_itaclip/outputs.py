"""Output files: their names and the one atomic writer (no image readers imported).

Every output (labels and similarity TIFFs, JSON sidecars, the LLM cache's files) is
written under a temporary name beside it and moved into place (:func:`write_atomic`),
so readers never see a half-written file.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .optional import require

#: Value of a sidecar's (and a claim's) first key, ``written_by`` (see :mod:`.sidecars`).
WRITTEN_BY = "napari-itaclip"

__all__ = ["IMAGE_SUFFIXES", "OutputPaths", "output_clashes", "output_paths", "output_stem",
           "temporary_name", "write_atomic", "write_json_atomic", "write_tiff_atomic"]

#: File name endings recognised as images when a folder is given.
IMAGE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg", ".bmp",
                  ".zarr")


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one input go.

    Attributes
    ----------
    labels, similarity : Path
        ``<stem>_labels.tif|.zarr`` and ``<stem>_similarity.tif|.zarr``.
    sidecar : Path
        ``<stem>.json``, written last: its presence marks the input as finished.
    """

    labels: Path
    similarity: Path
    sidecar: Path

    def complete(self) -> bool:
        """Whether all three outputs exist (what resuming checks)."""
        return self.sidecar.is_file() and self.labels.exists() and self.similarity.exists()


def output_stem(path: Path) -> str:
    """The name stem of an input's outputs (``a.ome.tif`` -> ``a``)."""
    name = path.name.rstrip("/")
    low = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_clashes(inputs: list[Path]) -> dict[str, list[Path]]:
    """Inputs whose outputs would have the same names: ``{stem: [paths...]}``."""
    by_stem: dict[str, list[Path]] = {}
    for p in inputs:
        by_stem.setdefault(output_stem(p), []).append(p)
    return {k: v for k, v in by_stem.items() if len(v) > 1}


def output_paths(out_dir: Path, source: Path, *, zarr_out: bool,
                 tag: str | None = None) -> OutputPaths:
    """Output paths of one input in ``out_dir``; with a vocabulary ``tag`` (several
    vocabularies in one run) ``<stem>__<tag>_labels.tif`` and so on.
    """
    stem = output_stem(source) + (f"__{tag}" if tag else "")
    ext = ".zarr" if zarr_out else ".tif"
    return OutputPaths(out_dir / f"{stem}_labels{ext}", out_dir / f"{stem}_similarity{ext}",
                       out_dir / f"{stem}.json")


def temporary_name(path: str | Path) -> Path:
    """A hidden name beside ``path`` that no other process or thread uses at once."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-"
                          f"{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """The one atomic writer: ``write(tmp)`` fills a temporary file, then it replaces ``path``.

    Readers never see a half-written file; a failed write leaves ``path`` as it was and
    no temporary file behind. The temporary file is created first (exclusively) with the
    permissions of any new file (``0o666`` less the umask), not a temporary file's
    ``0o600``.
    """
    path = Path(path)
    tmp = temporary_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_tiff_atomic(path: Path, data: np.ndarray, axes: str) -> None:
    """Write a TIFF under a temporary name, then move it into place."""
    tifffile = require("tifffile")
    write_atomic(path, lambda tmp: tifffile.imwrite(
        tmp, data, metadata={"axes": axes}, compression="zlib"))


def write_json_atomic(path: str | Path, payload: Any, *, indent: int = 2,
                      sort_keys: bool = False, ensure_ascii: bool = True) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place.

    Readers never see a half-written file. The file gets the permissions of any new
    file (``0o666`` less the umask, e.g. ``0o644``), not a temporary file's ``0o600``.
    numpy scalars and arrays, tuples and paths are written as JSON numbers, lists and
    text.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                      default=_json_default)
            fh.write("\n")

    write_atomic(path, write)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
