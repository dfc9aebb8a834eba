"""What a batch run wrote: sidecars, which files are ours, and whether a result is current.

A batch run records every input in a sidecar ``<stem>.json`` (see
:func:`~napari_itaclip.files.output_paths`). The sidecar's first key is
``"written_by": "napari-itaclip"``; it is written *before* the outputs with
``"status": "running"`` and the names of the outputs it is about to write, and again
after them with ``"status": "done"``. Three rules follow from it:

* **Ownership.** A file named by the output scheme (``<stem>_labels.tif`` ...) is ours
  only when the sidecar of its stem is ours and lists it (or is recognisably ours but
  unreadable, e.g. truncated). Anything else is the user's: a run never writes over it
  (:func:`foreign_outputs`) and a folder given as input still contributes it
  (:func:`is_own_output`).
* **Resume.** An input is skipped only when its sidecar is readable, ``done``, its
  outputs exist, and its :func:`run_record` (vocabulary text, every configuration
  field, model identity, the input's size and modification time) equals this run's
  (:func:`resume_check`); otherwise it is recomputed, with the reason.
* **Corruption.** An unreadable sidecar means "not done".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import OutputPaths
from .outputs import WRITTEN_BY

__all__ = ["WRITTEN_BY", "Sidecar", "earlier_outputs", "foreign_measurements",
           "foreign_outputs", "foreign_summary", "is_own_output", "is_own_summary",
           "model_identity", "release_claim", "out_dir_problem", "path_fingerprint",
           "read_sidecar", "resume_check", "run_record"]

#: How a sidecar's text starts (this version's, and earlier versions' first key).
_OURS_PREFIX = re.compile(r'^\s*\{\s*"(written_by"\s*:\s*"napari-itaclip"|vocabulary_name")')
#: Output names: ``<stem>_labels.tif``, ``<stem>__<tag>_similarity.zarr``, ...
_OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(labels|similarity)\.(tif|zarr)$")
_LEGACY_KEYS = {"input", "outputs", "config", "class_names"}


@dataclass(frozen=True)
class Sidecar:
    """A sidecar as found on disk.

    Attributes
    ----------
    kind : {"missing", "ours", "corrupt", "foreign"}
        ``corrupt``: recognisably ours (by its first key) but not readable JSON.
    data : dict or None
        The parsed content (``kind == "ours"``).
    """

    path: Path
    kind: str
    data: dict | None = None

    @property
    def outputs(self) -> set[str]:
        """File names of the result the sidecar describes (written, or being written)."""
        if not self.data or not isinstance(self.data.get("outputs"), dict):
            return set()
        return {str(v) for v in self.data["outputs"].values()}

    @property
    def claimed(self) -> set[str]:
        """Every file name the sidecar claims as ours: its outputs and those of earlier
        runs for the same input still beside them (``earlier_outputs``), e.g. the TIFFs
        of an in-memory run before a chunked one wrote zarr stores.
        """
        earlier = self.data.get("earlier_outputs") if self.data else None
        return self.outputs | ({str(n) for n in earlier} if isinstance(earlier, list) else set())

    def input_name(self) -> str | None:
        """The file name of the input it belongs to."""
        if not self.data:
            return None
        name = self.data.get("input_name") or Path(str(self.data.get("input", ""))).name
        return str(name) or None


def read_sidecar(path: Path) -> Sidecar:
    """Read ``path`` as a sidecar: missing, ours, ours but corrupt, or someone else's."""
    path = Path(path)
    if not path.exists():
        return Sidecar(path, "missing")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return Sidecar(path, "foreign")
    try:
        data = json.loads(text)
    except ValueError:
        return Sidecar(path, "corrupt" if _OURS_PREFIX.match(text) else "foreign")
    if isinstance(data, dict) and (data.get("written_by") == WRITTEN_BY
                                   or set(data) >= _LEGACY_KEYS):
        return Sidecar(path, "ours", data)
    return Sidecar(path, "foreign")


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is an output of an earlier run (named by the scheme AND claimed by
    its sidecar), so that a folder given as input does not contribute it.
    """
    path = Path(path)
    m = _OUTPUT_NAME.match(path.name)
    if not m:
        return False
    side = read_sidecar(path.with_name(m.group("stem") + ".json"))
    return side.kind == "corrupt" or (side.kind == "ours" and path.name in side.claimed)


def _summary_claim(out_dir: Path) -> tuple[tuple[Path, Path], Sidecar]:
    from .measurements.outputs import summary_files

    csv, png, claim = summary_files(out_dir)
    return (csv, png), read_sidecar(claim)


def foreign_summary(out_dir: Path) -> list[Path]:
    """``--measure``'s batch summary files (``summary_classes.csv``/``.png``) in
    ``out_dir`` that this tool's claim beside them does not name: a user's own files of
    those names, which a run must not write over.
    """
    files, side = _summary_claim(Path(out_dir))
    if side.kind == "corrupt":
        return []
    ours = side.claimed if side.kind == "ours" else set()
    return [f for f in files if f.exists() and f.name not in ours]


def is_own_summary(path: Path) -> bool:
    """Whether ``path`` is a batch summary an earlier ``--measure`` run wrote (so a
    folder given as input does not contribute it).
    """
    path = Path(path)
    files, side = _summary_claim(path.parent)
    return path in files and (side.kind == "corrupt"
                              or (side.kind == "ours" and path.name in side.claimed))


def foreign_outputs(source: Path, variants: list[OutputPaths]) -> list[tuple[Path, str]]:
    """Existing files among ``variants`` (the output paths of ``source``) that this run
    must not write over, each with the reason.
    """
    found: list[tuple[Path, str]] = []
    for sidecar_path in dict.fromkeys(v.sidecar for v in variants):
        side = read_sidecar(sidecar_path)
        owner = side.input_name()
        other = side.kind == "ours" and owner is not None and owner != source.name
        if side.kind == "foreign":
            found.append((sidecar_path, "not a napari-itaclip sidecar"))
        elif other:
            found.append((sidecar_path, f"written by napari-itaclip for another input "
                                        f"({owner})"))
        for out in (v for v in variants if v.sidecar == sidecar_path):
            for p in (out.labels, out.similarity):
                if not (p.exists() or p.is_symlink()) or side.kind == "corrupt":
                    continue
                if side.kind == "ours" and not other and p.name in side.claimed:
                    continue
                found.append((p, f"written by napari-itaclip for another input ({owner})"
                              if other else "not written by napari-itaclip for this input"))
    return found


def out_dir_problem(out_dir: Path) -> str | None:
    """Why ``out_dir`` cannot receive outputs (a file, or a folder that cannot be written),
    else ``None``; a missing folder is fine when its nearest existing parent is writable.
    """
    out_dir = Path(out_dir)
    folder = out_dir
    while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        what = "is" if folder == out_dir else f"is inside {folder}, which is"
        return f"--out {out_dir} {what} a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-itaclip-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (f"--out {out_dir}: cannot write into {folder} "
                f"({exc.strerror or type(exc).__name__})")
    return None


def foreign_measurements(source: Path, variants: list[OutputPaths]) -> list[tuple[Path, str]]:
    """``--measure``'s per-input CSV files (``<stem>_classes.csv``, ``<stem>_objects.csv``)
    that exist without a sidecar of ours for ``source`` beside them.
    """
    from .measurements.outputs import measure_paths

    found = []
    for sidecar in dict.fromkeys(v.sidecar for v in variants):
        side = read_sidecar(sidecar)
        ours = side.kind == "corrupt" or (side.kind == "ours"
                                          and side.input_name() in (None, source.name))
        found += [(csv, "not written by napari-itaclip for this input")
                  for csv in measure_paths(sidecar) if csv.exists() and not ours]
    return found


def release_claim(sidecar: Path, previous: Sidecar, before: dict, message: str) -> None:
    """Undo a ``running`` sidecar after its input failed or was interrupted.

    When none of the outputs changed since the claim (``before``: their
    :func:`path_fingerprint` then), the sidecar is put back as it was (``previous``: an
    earlier complete result stays complete; none if there was none); otherwise it says
    ``"status": "failed"`` with the error, so that nothing left looks finished.
    """
    from .files import write_json_atomic

    side = read_sidecar(sidecar)
    if side.kind != "ours" or side.data.get("status") != "running":
        return
    with contextlib.suppress(OSError):  # else the running sidecar says enough
        touched = any(path_fingerprint(p) != fp for p, fp in before.items())
        if not touched and previous.kind == "ours":
            write_json_atomic(sidecar, previous.data)
        elif not touched and previous.kind == "missing":
            sidecar.unlink()
        else:  # new outputs (partly) written, or an unreadable sidecar before
            write_json_atomic(sidecar, {**side.data, "status": "failed", "error": message})


def earlier_outputs(out: OutputPaths, source: Path) -> list[str]:
    """Our files beside ``out`` that its current sidecar claims for ``source`` and that
    the new result does not replace: the next sidecar claims them too.
    """
    side = read_sidecar(out.sidecar)
    if side.kind != "ours" or side.input_name() not in (None, source.name):
        return []
    current = {out.labels.name, out.similarity.name}
    return sorted(n for n in side.claimed - current if (out.sidecar.parent / n).exists())


def path_fingerprint(path: str | os.PathLike) -> dict[str, int] | None:
    """Size and modification time of a file, or of every file under a folder
    (count, total size, latest time); ``None`` when it does not exist.
    """
    p = Path(path)
    try:
        if p.is_file():
            st = p.stat()
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if p.is_dir():
            n = size = latest = 0
            for root, _dirs, files in os.walk(p):
                for name in files:
                    st = os.stat(os.path.join(root, name))
                    n, size, latest = n + 1, size + st.st_size, max(latest, st.st_mtime_ns)
            return {"files": n, "size": size, "mtime_ns": latest}
    except OSError:
        return None
    return None


def model_identity(model: Any, pretrained: Any, half: bool) -> dict[str, Any]:
    """What tells one model's results from another's: the model and weights as given,
    the precision, and the fingerprints of the local files among them.
    """
    files = {}
    for role, value in (("model", model), ("pretrained", pretrained)):
        text = None if value is None else str(value)
        if text and text.startswith("local-dir:"):
            text = text[len("local-dir:"):]
        if text and (os.sep in text or "/" in text or text.endswith((".json", ".pt", ".bin",
                                                                     ".safetensors"))):
            fp = path_fingerprint(text)
            if fp is not None:
                files[role] = fp
    return {"model": None if model is None else str(model),
            "pretrained": None if pretrained is None else str(pretrained),
            "precision": "float16" if half else "float32", "files": files}


def run_record(vocabulary, config, model: dict[str, Any], source: Path,
               exemplars: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a result depends on: the vocabulary's text form (``None``: exemplars
    alone), every configuration field, :func:`model_identity`, the input's
    :func:`path_fingerprint` and, with ``--exemplars``, the exemplar file's names and
    fingerprint.
    """
    return {"vocabulary": None if vocabulary is None else vocabulary.format(),
            "config": config.to_dict(), "model": model, "input": path_fingerprint(source),
            "exemplars": exemplars}


def resume_check(out: OutputPaths, record: dict[str, Any]) -> tuple[bool, str | None]:
    """``(done, reason)``: whether ``out`` holds this very run's finished result, else
    why it must be recomputed (``None`` when nothing was there before).
    """
    side = read_sidecar(out.sidecar)
    if side.kind == "missing":
        return False, None
    if side.kind != "ours":
        return False, f"its sidecar {out.sidecar.name} is unreadable (truncated or corrupt)"
    data = side.data
    if data.get("status") == "failed":
        return False, "the previous run failed on it"
    if data.get("status", "done") != "done":
        return False, "the previous run did not finish it"
    if not (out.labels.exists() and out.similarity.exists()) or \
            {out.labels.name, out.similarity.name} - side.outputs:
        return False, "its outputs are missing"
    old = data.get("run")
    if not isinstance(old, dict):
        return False, "its sidecar, from an earlier version, does not record the run"
    changes = _differences(old, record)
    return (not changes), ("; ".join(changes) or None)


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("vocabulary") != new["vocabulary"]:
        out.append("the vocabulary changed")
    old_cfg, new_cfg = old.get("config") or {}, new["config"]
    fields = [f"{k} {old_cfg.get(k)!r} -> {v!r}" for k, v in new_cfg.items()
              if old_cfg.get(k) != v]
    if fields or set(old_cfg) - set(new_cfg):
        more = f" and {len(fields) - 3} more" if len(fields) > 3 else ""
        out.append("the configuration changed (" + ", ".join(fields[:3]) + more + ")")
    if old.get("model") != new["model"]:
        out.append("the model or its weights changed")
    if old.get("input") != new["input"]:
        out.append("the input file changed (size or modification time)")
    if old.get("exemplars") != new["exemplars"]:
        out.append("the exemplars changed")
    return out
