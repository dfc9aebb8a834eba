"""Batch segmentation of image files: one input -> labels, similarity and a JSON sidecar.

:class:`BatchSegmenter` owns what a run shares across its inputs (the vocabulary, the
configuration, the model from :mod:`~napari_itaclip.engine.registry`, one dask scheduler
for chunked inputs) and segments the inputs one by one: in memory into TIFFs, or in
exact chunks into zarr stores for large (zarr, or ``chunk_size``) inputs. The sidecar
``<stem>.json`` is written last, so its presence marks an input as finished and a
re-run skips it. The command line (:mod:`napari_itaclip.cli`) only parses arguments
and builds one of these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .chunked import (
    ChunkingError,
    SegmenterSpec,
    check_config,
    get_segmenter,
    labels_dtype,
    open_scheduler,
    segment_chunked,
    staged_outputs,
)
from .console import ProgressBar, UsageError, versions
from .engine.scale import working_factor
from .files import (
    OutputPaths,
    is_zarr,
    open_image,
    output_paths,
    write_json_atomic,
    write_tiff_atomic,
)
from .sidecars import (
    WRITTEN_BY,
    earlier_outputs,
    foreign_measurements,
    foreign_outputs,
    foreign_summary,
    model_identity,
    out_dir_problem,
    path_fingerprint,
    read_sidecar,
    release_claim,
    resume_check,
    run_record,
)

__all__ = ["DEFAULT_CHUNK", "BatchReport", "BatchSegmenter", "ProgressBar", "UsageError",
           "load_segmenter", "versions"]

#: Default core (output chunk) side for images processed in chunks.
DEFAULT_CHUNK = 1024
#: Schedulers that run chunks in this process's threads (they share one loaded model).
THREAD_SCHEDULERS = ("threads", "sync", "synchronous", "single-threaded")


def config_model_problem(config, n_blocks: int | None) -> str | None:
    """Why ``config`` cannot run on a ViT of ``n_blocks`` blocks (``None``: fits or unknown)."""
    if n_blocks is None:
        return None
    from .engine.blocks import mid_layers_problem

    return mid_layers_problem(config.mid_layers, int(n_blocks))


def known_depth(model) -> int | None:
    """The ViT depth of ``model`` read from its configuration alone (no weights loaded):
    a model-config ``.json`` file's or an open_clip name's ``vision_cfg.layers``;
    ``None`` when it cannot be known before loading (hub models, ResNets, built models).
    """
    text = str(model)
    try:
        if text.lower().endswith(".json") and Path(text).is_file():
            import json

            cfg = json.loads(Path(text).read_text(encoding="utf-8"))
        elif text.startswith(("hf-hub:", "local-dir:")) or os.sep in text or "/" in text:
            return None
        else:
            from ._torch_setup import before_torch

            before_torch()  # open_clip loads torch
            from open_clip import get_model_config

            cfg = get_model_config(text)
        layers = (cfg or {}).get("vision_cfg", {}).get("layers")
    except Exception:  # unreadable: loading the model reports it
        return None
    return layers if isinstance(layers, int) and not isinstance(layers, bool) else None


def load_segmenter(spec: SegmenterSpec):
    """The registry's loaded Segmenter for ``spec``; a model that cannot load is a usage error."""
    try:
        return get_segmenter(spec)
    except Exception as exc:  # ModelError, CheckpointError, WeightsUnavailableError, ...
        raise UsageError(f"cannot load model {spec.model!r} (pretrained "
                         f"{spec.pretrained if spec.pretrained is not None else 'none'!r}): "
                         f"{exc}") from exc


@dataclass
class BatchReport:
    """What a batch run did: inputs segmented, skipped (finished before) and failed."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


class BatchSegmenter:
    """Segments image files one by one with one model and one dask scheduler.

    Use it as a context manager (the scheduler is closed on exit).

    Parameters
    ----------
    vocabulary : Vocabulary or mapping
        The classes (auxiliary texts included), or several vocabularies by name
        (``{tag: Vocabulary}``): then each input's image features are computed once
        (the Segmenter's feature cache) and every vocabulary gets its own outputs,
        ``<stem>__<tag>_labels.tif`` and so on.
    config : ITACLIPConfig
        The configuration of in-memory inputs.
    spec : SegmenterSpec
        The model (its ``config`` is ignored; chunk workers get ``chunk_config``).
    chunk_config : ITACLIPConfig, optional
        The configuration of chunked inputs (default ``config``); the CLI passes
        ``config`` at native resolution unless ``--short-side`` was given.
    chunk_size : int, optional
        Process planes larger than this in chunks of this size; default:
        :data:`DEFAULT_CHUNK` for lazily read (zarr) inputs, never for others.
    scheduler : str
        dask scheduler of chunked inputs (see :func:`~napari_itaclip.chunked.open_scheduler`).
    workers : int, optional
        Workers of the local schedulers.
    preset : str, optional
        Recorded in the sidecars.
    quiet : bool
        No progress bars.
    exemplars : Exemplars, optional
        Painted exemplars scored with every vocabulary (``vocabulary=None``: exemplar-only
        classes). In-memory inputs only: an input processed in chunks is refused.
    exemplars_path : str, optional
        Recorded in the sidecars.
    measure : BatchMeasure, optional
        Also measure every finished output, skipped ones included
        (:mod:`napari_itaclip.measurements.outputs`).
    """

    def __init__(self, vocabulary, config, spec: SegmenterSpec, *, chunk_config=None,
                 chunk_size: int | None = None, scheduler: str = "threads",
                 workers: int | None = None, preset: str | None = None,
                 quiet: bool = False, debug: bool = False, measure=None, exemplars=None,
                 exemplars_path: str | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise UsageError("--chunk-size must be a positive integer")
        named = list(vocabulary.items()) if isinstance(vocabulary, Mapping) else [(None, vocabulary)]
        if not named or (named == [(None, None)] and exemplars is None):
            raise UsageError("no vocabulary given")
        self.exemplars = exemplars
        self.exemplars_path = exemplars_path
        #: ``(tag, Vocabulary)`` pairs; the tag is None for a single vocabulary
        self.vocabularies: list[tuple[str | None, Any]] = named
        self.vocabulary = named[0][1]
        #: Lines for the user about the last input (printed on stderr by :meth:`run`).
        self.notes: list[str] = []
        self.config = config
        self.chunk_config = chunk_config if chunk_config is not None else config
        self.spec = spec
        self.chunk_size = chunk_size
        self.scheduler_name = scheduler
        self.workers = workers
        self.preset = preset
        self.quiet = quiet
        self.debug = debug
        self.measure = measure
        #: the model's identity as sidecars record it (see :func:`.sidecars.model_identity`)
        self.model_id = model_identity(spec.model, spec.pretrained, spec.half)
        self._segmenter = None
        self._scheduler = None
        self._claims: dict[Path, tuple[Any, dict]] = {}  # see _claim_outputs
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> BatchSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the dask scheduler (client or process pool) if one was opened."""
        self._exit.close()
        self._scheduler = None

    def segmenter(self):
        """The loaded model, loaded on first use (a failure is a :class:`UsageError`, and
        so is a configuration the model cannot run, e.g. ``mid_layers`` beyond its depth).
        """
        if self._segmenter is None:
            seg = load_segmenter(self.spec)
            problem = config_model_problem(self.config, getattr(seg.backbone, "num_blocks", None))
            if problem:
                raise UsageError(f"the configuration does not fit model {self.spec.model!r}: "
                                 f"{problem}")
            self._segmenter = seg
        return self._segmenter

    def scheduler(self):
        """The run's dask scheduler: one client or process pool for all inputs."""
        if self._scheduler is None:
            self._scheduler = self._exit.enter_context(
                open_scheduler(self.scheduler_name, self.workers))
        return self._scheduler

    # -- before any work ---------------------------------------------------------------
    def check_model_fit(self) -> None:
        """Refuse before loading a configuration the model cannot run, when the model's
        depth can be read from its configuration (:func:`known_depth`); otherwise the
        same check runs right after loading (:meth:`segmenter`).
        """
        problem = config_model_problem(self.config, known_depth(self.spec.model))
        if problem:
            raise UsageError(f"the configuration does not fit model {self.spec.model!r}: "
                             f"{problem}")

    def check_chunking(self, inputs: Sequence[Path]) -> None:
        """Refuse up front a configuration that chunked inputs cannot use exactly.

        Raises :class:`UsageError` when ``chunk_size`` is given, or when a zarr input
        (chunked by default) is larger than :data:`DEFAULT_CHUNK`.
        """
        try:
            check_config(self.chunk_config)
            return
        except ChunkingError as exc:
            problem = str(exc)
        if self.chunk_size is not None:
            raise UsageError(problem)
        for path in inputs:
            if not is_zarr(path):
                continue
            try:
                with open_image(path, lazy=True) as source:
                    shape = source.image_shape
            except Exception:  # reported as a failure of this input later
                continue
            if max(shape) > DEFAULT_CHUNK:
                raise UsageError(f"{path} is processed in chunks (larger than "
                                 f"{DEFAULT_CHUNK} px): {problem}")

    def _variants(self, path: Path, out_dir: Path) -> list[tuple[Any, OutputPaths, OutputPaths]]:
        """``(vocabulary, tif outputs, zarr outputs)`` of one input, per vocabulary."""
        return [(vocab, output_paths(out_dir, path, zarr_out=False, tag=tag),
                 output_paths(out_dir, path, zarr_out=True, tag=tag))
                for tag, vocab in self.vocabularies]

    def check_outputs(self, inputs: Sequence[Path], out_dir: Path) -> None:
        """Refuse, before any work, an ``out_dir`` that cannot be written or an output
        path holding a file this tool did not write for that input (see
        :mod:`~napari_itaclip.sidecars`); ``overwrite`` never changes this.

        Raises
        ------
        UsageError
            Naming the folder or the file.
        """
        problem = out_dir_problem(out_dir)
        if problem:
            raise UsageError(problem)
        for path in inputs:
            variants = [v for _, tif, zarr in self._variants(path, out_dir) for v in (tif, zarr)]
            found = foreign_outputs(path, variants)
            if self.measure is not None:
                found += foreign_measurements(path, variants)
            for file, why in found:
                _refuse_foreign(file, why)
        for file in foreign_summary(out_dir) if self.measure is not None else ():
            _refuse_foreign(file, "not a summary napari-itaclip wrote")

    def _jobs_to_do(self, path: Path, out_dir: Path, overwrite: bool, say) -> list:
        """The vocabularies of ``path`` to (re)compute; says why a previous result is not
        reused (a different vocabulary, configuration, model or input, an unfinished or
        unreadable sidecar).
        """
        todo = []
        for vocab, tif, zarr in self._variants(path, out_dir):
            if overwrite:
                todo.append((vocab, tif, zarr))
                continue
            chunked = zarr.labels.name in read_sidecar(zarr.sidecar).outputs
            out, config = (zarr, self.chunk_config) if chunked else (tif, self.config)
            done, reason = resume_check(out, run_record(vocab, config, self.model_id, path,
                       exemplars_record(self.exemplars, self.exemplars_path)))
            if not done:
                todo.append((vocab, tif, zarr))
                if reason:
                    say(f"recomputing {path.name}"
                        + (f" ({out.sidecar.name})" if len(self.vocabularies) > 1 else "")
                        + f": {reason}")
        return todo

    # -- the run ---------------------------------------------------------------------------
    def run(self, inputs: Sequence[Path], out_dir: Path, *, overwrite: bool = False
            ) -> BatchReport:
        """Segment every input into ``out_dir``; finished inputs are skipped.

        A failing input is reported and the run goes on; a :class:`UsageError` (the
        model cannot load) stops it.
        """
        if self.exemplars is not None:
            self._check_exemplars()
        self.check_outputs(inputs, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = BatchReport()
        bar = ProgressBar(len(inputs), "segment", self.quiet)
        try:
            for path in inputs:
                jobs = self._jobs_to_do(path, out_dir, overwrite, bar.write)
                if not jobs:
                    report.skipped += 1
                    self._measure_input(path, out_dir, False, report, bar)
                    bar.update(1, f"skipped {path.name}")
                    continue
                self._claims = {}  # only this input's claims are released if it fails
                try:
                    self.segment_vocabularies(path, jobs)
                except (KeyboardInterrupt, UsageError):
                    self._release_claims("interrupted")
                    raise
                except Exception as exc:
                    text = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                    message = f"{text} ({type(exc).__name__})"
                    report.failed.append((path, message))
                    self._release_claims(message)
                    bar.write(f"error: {message}")
                    if self.debug:  # pragma: no cover
                        traceback.print_exc()
                    bar.update(1, f"failed {path.name}")
                    continue
                report.done += 1
                for note in self.notes:
                    bar.write(note)
                self.notes.clear()
                self._measure_input(path, out_dir, True, report, bar)
                bar.update(1, path.name)
        finally:
            bar.close()
        return report

    def _check_exemplars(self) -> None:
        """Refuse up front exemplars of another model or feature space."""
        from .engine.features import image_side_items
        from .engine.prototypes import model_signature
        from .errors import ExemplarsError

        try:
            self.exemplars.check_compatible(model_signature(self.segmenter()),
                                            dict(image_side_items(self.config)))
        except ExemplarsError as exc:
            raise UsageError(f"--exemplars: {exc}") from None

    def _measure_input(self, path: Path, out_dir: Path, segmented: bool, report, bar) -> None:
        """``--measure``: the input's CSV files; a failure is reported as the input's."""
        if self.measure is None:
            return
        try:
            vocabs = self.vocabularies
            if self.exemplars is not None:  # the classes written: with the exemplars'
                from .engine.prototypes import combine_classes

                vocabs = [(t, combine_classes(v, self.exemplars.names)[0]) for t, v in vocabs]
            self.measure.add_input(path, out_dir, vocabs, segmented=segmented)
        except Exception as exc:
            message = f"{path}: measuring failed: {exc} ({type(exc).__name__})"
            report.failed.append((path, message))
            bar.write(f"error: {message}")

    def segment_file(self, path: Path, tif_out: OutputPaths, zarr_out: OutputPaths) -> Path:
        """Segment one input and write its outputs, the sidecar last; returns the sidecar.

        With the first vocabulary; see :meth:`segment_vocabularies` for several.
        """
        return self.segment_vocabularies(path, [(self.vocabulary, tif_out, zarr_out)])[0]

    def segment_vocabularies(self, path: Path, jobs: Sequence[tuple[Any, OutputPaths, OutputPaths]]
                             ) -> list[Path]:
        """Segment one input with each ``(vocabulary, tif_out, zarr_out)``; returns the
        sidecars. In memory, every plane is segmented with all the vocabularies in turn,
        so its image features are computed once and reused from the feature cache.
        """
        t0 = time.perf_counter()
        # zarr always, and TIFF in chunked mode, are read lazily (tiles via dask)
        lazy = path.suffix.lower() == ".zarr" or (
            self.chunk_size is not None and path.name.lower().endswith((".tif", ".tiff")))
        with open_image(path, lazy=lazy) as source:
            chunk = self.chunk_size or (DEFAULT_CHUNK if source.lazy else None)
            if chunk is not None and max(source.image_shape) > chunk:
                if self.exemplars is not None:
                    raise ValueError(f"{path} would be processed in chunks, which exemplars do "
                                     "not support yet; segment it in memory (no --chunk-size, "
                                     "a TIFF instead of zarr)")
                config = self.chunk_config
                try:
                    check_config(config)
                except ChunkingError as exc:  # check_chunking should have caught it
                    raise UsageError(f"{path}: {exc}") from None
                outs = [(vocab, zarr_out) for vocab, _, zarr_out in jobs]
                self._claim_outputs(path, outs, config)
                infos = [self._segment_chunked(source, o, chunk, vocab) for vocab, o in outs]
            else:
                config = self.config
                outs = [(vocab, tif_out) for vocab, tif_out, _ in jobs]
                self._claim_outputs(path, outs, config)
                infos = segment_in_memory(self.segmenter(), source, outs, self.config,
                                          self.exemplars, self.exemplars_path, self.notes)
            sidecars = [self._sidecar(path, source, o, config, info, vocab)
                        for (vocab, o), info in zip(outs, infos)]
        for sidecar, (_, o) in zip(sidecars, outs):
            sidecar["seconds"] = round(time.perf_counter() - t0, 3)
            sidecar["created"] = datetime.now(UTC).isoformat(timespec="seconds")
            sidecar["versions"] = versions()
            write_json_atomic(o.sidecar, sidecar)
        return [o.sidecar for _, o in outs]

    def _claim_outputs(self, path: Path, outs: Sequence[tuple[Any, OutputPaths]], config
                       ) -> None:
        """Before writing any output: a ``running`` sidecar naming the outputs to come, so
        an interrupted input is known to be ours and not finished.
        """
        self._claims = {}
        for vocab, o in outs:
            before = {p: path_fingerprint(p) for p in (o.labels, o.similarity)}
            self._claims[o.sidecar] = (read_sidecar(o.sidecar), before)
            write_json_atomic(o.sidecar, {
                "written_by": WRITTEN_BY, "status": "running", "input": str(path),
                "input_name": path.name,
                "outputs": {"labels": o.labels.name, "similarity": o.similarity.name},
                "earlier_outputs": earlier_outputs(o, path),
                "run": run_record(vocab, config, self.model_id, path,
                       exemplars_record(self.exemplars, self.exemplars_path))})

    def _release_claims(self, message: str) -> None:
        """After a failed or interrupted input: see :func:`.sidecars.release_claim`."""
        claims, self._claims = self._claims, {}
        for sidecar, (previous, before) in claims.items():
            release_claim(sidecar, previous, before, message)

    def _sidecar(self, path: Path, source, outs: OutputPaths, config, info: dict,
                 vocab) -> dict[str, Any]:
        tag = next((t for t, v in self.vocabularies if v is vocab), None)
        return {
            "written_by": WRITTEN_BY,
            "status": "done",
            "vocabulary_name": tag,
            "input": str(path),
            "input_name": path.name,
            "outputs": {"labels": outs.labels.name, "similarity": outs.similarity.name},
            "earlier_outputs": earlier_outputs(outs, path),
            "class_names": list(vocab.class_names) if vocab is not None else [],
            "has_background": vocab is not None and vocab.has_background,
            "vocabulary": vocab.format() if vocab is not None else None,
            "preset": self.preset,
            "config": config.to_dict(),
            "model": str(self.spec.model),
            "pretrained": None if self.spec.pretrained is None else str(self.spec.pretrained),
            "device": self.spec.device,
            "image": {"shape": list(source.data.shape), "axes": source.axes,
                      "rgb": source.rgb, "dtype": str(source.data.dtype),
                      "planes": list(source.plane_shape)},
            **info,
            "run": run_record(vocab, config, self.model_id, path,
                       exemplars_record(self.exemplars, self.exemplars_path)),
        }

    def _segment_chunked(self, source, outs: OutputPaths, chunk: int, vocabulary=None) -> dict:
        config = self.chunk_config
        vocabulary = self.vocabulary if vocabulary is None else vocabulary
        # threads share this process's model; other schedulers load it per worker
        seg_arg = (self.segmenter() if self.scheduler_name in THREAD_SCHEDULERS
                   else dataclasses.replace(self.spec, config=config))
        sub = ProgressBar(0, "  chunks", self.quiet, unit="chunk", leave=False)
        try:  # written under temporary names, moved into place only when all chunks ran
            with staged_outputs(outs.labels, outs.similarity, source.plane_shape,
                                source.image_shape, len(vocabulary), chunk, sidecar=None,
                                factor=working_factor(config.object_size)) as (labels, sims):
                plan = segment_chunked(source.data, vocabulary, labels, sims,
                                       segmenter=seg_arg, config=config, chunk=chunk,
                                       rgb=source.rgb, scheduler=self.scheduler(),
                                       num_workers=self.workers, progress=sub.progress)
        finally:
            sub.close()
        return {"chunked": {"chunk": chunk, "halo": plan.halo, "chunks_per_plane": len(plan),
                            "max_region": list(plan.max_region), "scheduler": self.scheduler_name,
                            "similarity_scale": working_factor(config.object_size)}}


def segment_in_memory(seg, source, outs: Sequence[tuple[Any, OutputPaths]], config,
                      exemplars=None, exemplars_path: str | None = None,
                      notes: list[str] | None = None) -> list[dict]:
    """Each plane of ``source`` with every vocabulary of ``outs`` in turn (image features
    computed once), written to the outputs; returns each output's sidecar details. A line
    for ``notes`` says when the features had to be recomputed for a further vocabulary.
    """
    planes = source.plane_shape
    arrays: list[Any] = [None] * len(outs)
    reused = [0] * len(outs)
    classes: list[Any] = [None] * len(outs)
    n_planes = 0
    for index, plane in source.planes():
        plane = np.asarray(plane)
        n_planes += 1
        for k, (vocab, _) in enumerate(outs):
            res = seg.segment(plane, vocab, config=config, exemplars=exemplars)
            if arrays[k] is None:
                classes[k] = res.vocabulary
                arrays[k] = (np.zeros(planes + res.labels.shape,
                                      dtype=labels_dtype(len(res.class_names))),
                             np.zeros(planes + res.similarity.shape, dtype=np.float32))
            arrays[k][0][index] = res.labels
            arrays[k][1][index] = res.similarity
            reused[k] += bool(res.image_cached)
    recomputed = sum(n_planes - n for n in reused[1:])
    if recomputed and notes is not None:
        notes.append(_recompute_note(source, recomputed, seg))
    lead = "Q" * len(planes)
    for (_, o), (labels, sims) in zip(outs, arrays):
        write_tiff_atomic(o.similarity, sims, lead + "CYX")
        write_tiff_atomic(o.labels, labels, lead + "YX")
    infos = [{"chunked": None, "planes_with_image_features_reused": n} for n in reused]
    if exemplars is not None:  # the classes written: the vocabulary's and the exemplars'
        for info, out in zip(infos, classes):
            info.update({"class_names": list(out.class_names),
                         "has_background": out.has_background, "vocabulary": out.format(),
                         "exemplars": {"file": exemplars_path,
                                       "names": exemplars.names}})
    return infos


def _refuse_foreign(file: Path, why: str):
    """Stop the run before any work: ``file`` exists and is not this tool's to replace."""
    raise UsageError(f"{file} exists and is {why}; it is not overwritten: move it away or "
                     "choose another --out folder")


def exemplars_record(exemplars, path: str | None) -> dict[str, Any] | None:
    """What a result depends on of an exemplar set: its names and file (for resuming)."""
    if exemplars is None:
        return None
    return {"names": list(exemplars.names), "file": path_fingerprint(path) if path else None}


def _recompute_note(source, planes: int, seg) -> str:
    """The line saying an input's image features were recomputed for another vocabulary."""
    cache = getattr(seg, "feature_cache", None)
    name = getattr(source, "path", "the input")
    if cache is None or not cache.enabled:
        why = "the image-feature cache is off (--feature-cache-mb 0)"
    else:
        why = (f"its image features do not fit the image-feature cache "
               f"({cache.max_bytes / 2**20:g} MB; raise --feature-cache-mb)")
    return (f"note: {name}: {why}, so the ViT ran again for each further --vocab "
            f"({planes} plane run(s) recomputed)")
