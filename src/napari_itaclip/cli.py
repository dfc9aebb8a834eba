"""The ``napari-itaclip`` command line: batch segmentation and benchmark evaluation.

Subcommands::

    napari-itaclip segment INPUT... --vocab TEXT|FILE --out DIR [options]
    napari-itaclip evaluate --dataset voc21 --root PATH [options]

Every entry point is ``main(argv=None) -> int`` so that tests run it in-process.
Exit status: 0 success (skipped inputs included), 1 some inputs failed, 2 usage error.
See ``docs/cli.md`` and ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import sys
import textwrap
import time
import traceback
from argparse import RawDescriptionHelpFormatter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .config import AUX_KINDS, field_info, list_presets

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Default core (output chunk) side for images processed in chunks.
DEFAULT_CHUNK = 1024


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


# -------------------------------------------------------------------------- parsing
def _none_or(kind):
    def parse(text: str):
        if text.lower() in ("none", "null", "off"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16",
                   help="open_clip model name, hf-hub:/local-dir: id, or a model-config "
                        ".json path (default: ViT-B-16)")
    g.add_argument("--pretrained", default="openai",
                   help="pretrained tag, local checkpoint file, or 'none' for random "
                        "weights (default: openai)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    g.add_argument("--batch-memory-mb", type=float, default=None, metavar="MB",
                   help="bound on the activations of one batched ViT forward "
                        "(default: 128 on the CPU, 2048 on a GPU)")


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", default=default_preset,
                   help=f"configuration preset ({', '.join(list_presets())})" + (
                            f"; default {default_preset}" if default_preset else
                            "; default: the dataset's"))
    g.add_argument("--short-side", type=_none_or(int), default=argparse.SUPPRESS,
                   metavar="N|none", help="resize so the short side is N px; none = native")
    g.add_argument("--stride", type=int, default=argparse.SUPPRESS)
    g.add_argument("--prob-threshold", type=float, default=argparse.SUPPRESS)
    g.add_argument("--area-threshold", type=_none_or(float), default=argparse.SUPPRESS,
                   metavar="F|none")
    g.add_argument("--pamr-steps", type=int, default=argparse.SUPPRESS)
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any ITACLIPConfig field, e.g. --set crop=224 --set mid_layers=7,8 "
                        "--set short_side=none; repeatable (the fields are listed below)")
    g.add_argument("--generate-aux", choices=AUX_KINDS, default=None,
                   help="ask an LLM for auxiliary texts of the classes "
                        "(configured through the environment, see docs)")


def _fields_help() -> str:
    """The --set table: every ITACLIPConfig field with its values, default and meaning."""
    lines = ["ITACLIPConfig fields (--set FIELD=VALUE):"]
    for info in field_info().values():
        lines.append(textwrap.fill(info.describe(), width=96, initial_indent="  ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-itaclip",
        description="Training-free open-vocabulary semantic segmentation (ITACLIP).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    seg = sub.add_parser("segment", help="segment images in batch",
                         description="Segment images; per input write <stem>_labels, "
                                     "<stem>_similarity and <stem>.json into --out.",
                         epilog=_fields_help(), formatter_class=RawDescriptionHelpFormatter)
    seg.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="image files (TIFF/OME-TIFF, PNG, JPEG), zarr stores, or folders")
    seg.add_argument("--vocab", required=True, metavar="TEXT|FILE",
                     help="the classes: a vocabulary file, its text form, or 'a, b, c'")
    seg.add_argument("--out", required=True, metavar="DIR", help="output folder")
    seg.add_argument("--overwrite", action="store_true",
                     help="recompute inputs whose outputs already exist")
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_model_args(seg)
    _add_config_args(seg, "balanced")
    g = seg.add_argument_group("large images")
    g.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="process planes larger than N px in chunks of N x N (with an exact "
                        f"halo); default: {DEFAULT_CHUNK} for zarr inputs, off otherwise")
    g.add_argument("--scheduler", default="threads",
                   help="dask scheduler for chunks: threads (default), processes, sync, or a "
                        "dask.distributed scheduler address (tcp://host:8786)")
    g.add_argument("--workers", type=int, default=None, help="workers for threads/processes")

    ev = sub.add_parser("evaluate", help="mIoU / per-class IoU / aAcc on a benchmark",
                        description="Evaluate on a benchmark as MMSegmentation's IoUMetric "
                                    "does (ignore index 255).",
                        epilog=_fields_help(), formatter_class=RawDescriptionHelpFormatter)
    from .evaluation import DATASETS

    ev.add_argument("--dataset", required=True, choices=list(DATASETS))
    ev.add_argument("--root", required=True, metavar="PATH",
                    help="the dataset's data root, or its parent (see docs/evaluation.md)")
    ev.add_argument("--out", default=None, metavar="DIR",
                    help="write <dataset>_metrics.json, _per_class_iou.csv and .png here")
    ev.add_argument("--predictions", default=None, metavar="DIR",
                    help="score saved label maps instead of running the model: "
                         "<image stem>_labels.tif as segment writes them, or "
                         "<id>_labels.tif / <id>.png")
    ev.add_argument("--vocab", default=None, metavar="FILE",
                    help="class-name file replacing the packaged one (same classes, same "
                         "order)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N images")
    ev.add_argument("--no-plot", action="store_true", help="skip the per-class IoU plot")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_model_args(ev)
    _add_config_args(ev, None)
    return parser


# ---------------------------------------------------------------------------- helpers
def _config_from_args(args, preset: str):
    from .config import ITACLIPConfig

    try:
        cfg = ITACLIPConfig.preset(preset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    changes: dict[str, Any] = {}
    for field, attr in (("short_side", "short_side"), ("stride", "stride"),
                        ("prob_threshold", "prob_threshold"),
                        ("area_threshold", "area_threshold"), ("pamr_steps", "pamr_steps")):
        if hasattr(args, attr):
            changes[field] = getattr(args, attr)
    table = field_info()
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in table:
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(table))}")
        try:
            changes[key] = table[key].parse(value)
        except ValueError as exc:
            raise UsageError(f"--set {exc}") from None
    try:
        return dataclasses.replace(cfg, **changes) if changes else cfg
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _vocab_from_arg(text: str):
    from .vocabulary import Vocabulary, VocabularyError

    path = Path(text)
    try:
        if "\n" not in text and len(text) < 4096 and path.is_file():
            return Vocabulary.load(path)
        return Vocabulary.coerce(text)
    except VocabularyError as exc:
        raise UsageError(f"--vocab: {exc}") from None


def _with_aux(vocab, kind: str | None):
    if not kind:
        return vocab
    try:
        from .llm import LLMSettings, generate_aux
    except ImportError as exc:
        raise UsageError(f"--generate-aux needs napari_itaclip.llm, which is unavailable "
                         f"({exc})") from None
    try:
        return generate_aux(vocab, kind=kind, settings=LLMSettings.from_env())
    except Exception as exc:
        raise UsageError(f"--generate-aux {kind}: {exc}") from None


def _pretrained(text: str | None):
    return None if text is None or text.lower() == "none" else text


def _spec_from_args(args, cfg):
    from .chunked import SegmenterSpec

    return SegmenterSpec(model=args.model, pretrained=_pretrained(args.pretrained),
                         device=args.device, config=cfg, half=args.half,
                         batch_memory_mb=args.batch_memory_mb)


def _load_model(spec):
    """Build and load the Segmenter of ``spec``; a model that cannot load is a usage error."""
    from .chunked import get_segmenter

    try:
        return get_segmenter(spec)
    except Exception as exc:  # ModelError, CheckpointError, WeightsUnavailableError, ...
        raise UsageError(f"cannot load model {spec.model!r} (pretrained "
                         f"{spec.pretrained if spec.pretrained is not None else 'none'!r}): "
                         f"{exc}") from exc


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("napari_itaclip", "torch", "open_clip", "numpy"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:  # pragma: no cover
            out[name] = "missing"
    return out


class _Bar:
    """A tqdm progress bar when available and wanted; otherwise silent."""

    def __init__(self, total: int, desc: str, quiet: bool, unit: str = "image",
                 leave: bool = True):
        self._bar = None
        if not quiet:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                                 leave=leave, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                self._bar = None

    def update(self, n: int = 1, status: str | None = None) -> None:
        if self._bar is not None:
            if status:
                self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(n)

    def goto(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------- segment
def _run_segment(args) -> int:
    from .chunked import ChunkingError, check_config
    from .files import (
        collect_inputs,
        is_zarr,
        open_image,
        output_clashes,
        output_paths,
    )

    cfg = _config_from_args(args, args.preset)
    vocab = _with_aux(_vocab_from_arg(args.vocab), args.generate_aux)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UsageError("--chunk-size must be a positive integer")
    inputs = collect_inputs(args.inputs)
    if not inputs:
        raise UsageError("no input images found")
    clashes = output_clashes(inputs)
    if clashes:
        text = "; ".join(f"{stem}: " + ", ".join(str(p) for p in paths)
                         for stem, paths in clashes.items())
        raise UsageError(f"inputs with the same name stem would write the same outputs "
                         f"({text}); rename them or segment them into different --out "
                         "folders")
    short_side_given = hasattr(args, "short_side")
    chunk_cfg = cfg if short_side_given else dataclasses.replace(cfg, short_side=None)
    try:
        check_config(chunk_cfg)
        chunk_problem = None
    except ChunkingError as exc:
        chunk_problem = str(exc)
    if chunk_problem is not None:
        if args.chunk_size is not None:
            raise UsageError(chunk_problem)
        # zarr inputs are chunked by default when large: check them before any work
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
                                 f"{DEFAULT_CHUNK} px): {chunk_problem}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    spec = _spec_from_args(args, cfg)
    state: dict[str, Any] = {"segmenter": None}

    def segmenter():
        if state["segmenter"] is None:
            state["segmenter"] = _load_model(spec)
        return state["segmenter"]

    schedulers = contextlib.ExitStack()

    def scheduler():
        """The run's dask scheduler: one client or process pool for all inputs."""
        if "scheduler" not in state:
            from .chunked import open_scheduler

            state["scheduler"] = schedulers.enter_context(
                open_scheduler(args.scheduler, args.workers))
        return state["scheduler"]

    failed: list[tuple[Path, str]] = []
    done = skipped = 0
    bar = _Bar(len(inputs), "segment", args.quiet)
    try:
        with schedulers:
            for path in inputs:
                tif_out = output_paths(out_dir, path, zarr_out=False)
                zarr_out = output_paths(out_dir, path, zarr_out=True)
                if not args.overwrite and (tif_out.complete() or zarr_out.complete()):
                    skipped += 1
                    bar.update(1, f"skipped {path.name}")
                    continue
                try:
                    _segment_one(path, tif_out, zarr_out, args, cfg, vocab, spec, segmenter,
                                 scheduler, bar)
                    done += 1
                    bar.update(1, path.name)
                except KeyboardInterrupt:
                    raise
                except UsageError:
                    raise
                except Exception as exc:
                    text = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                    message = f"{text} ({type(exc).__name__})"
                    failed.append((path, message))
                    bar.write(f"error: {message}")
                    if getattr(args, "debug", False):  # pragma: no cover
                        traceback.print_exc()
                    bar.update(1, f"failed {path.name}")
    finally:
        bar.close()
    print(f"{done} segmented, {skipped} skipped (already done), {len(failed)} failed "
          f"-> {out_dir}", file=sys.stderr)
    for _path, message in failed:
        print(f"  failed: {message}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _segment_one(path, tif_out, zarr_out, args, cfg, vocab, spec, segmenter, scheduler,
                 bar) -> None:
    """Segment one input and write its outputs, the sidecar last."""
    from .chunked import ChunkingError, check_config
    from .files import open_image, write_json_atomic

    t0 = time.perf_counter()
    # zarr always, and TIFF in chunked mode, are read lazily (tiles via dask)
    lazy = path.suffix.lower() == ".zarr" or (
        args.chunk_size is not None and path.name.lower().endswith((".tif", ".tiff")))
    with open_image(path, lazy=lazy) as source:
        shape = source.image_shape
        chunk = args.chunk_size or (DEFAULT_CHUNK if source.lazy else None)
        chunked = chunk is not None and max(shape) > chunk
        outs = zarr_out if chunked else tif_out
        if chunked:
            run_cfg = cfg if hasattr(args, "short_side") else dataclasses.replace(
                cfg, short_side=None)
            try:
                check_config(run_cfg)
            except ChunkingError as exc:  # the pre-check should have caught it
                raise UsageError(f"{path}: {exc}") from None
            info = _segment_chunked(source, vocab, outs, run_cfg, chunk, args, spec,
                                    segmenter, scheduler, bar)
        else:
            run_cfg = cfg
            info = _segment_in_memory(source, vocab, outs, run_cfg, segmenter)
        sidecar = {
            "input": str(path),
            "outputs": {"labels": outs.labels.name, "similarity": outs.similarity.name},
            "class_names": list(vocab.class_names),
            "has_background": vocab.has_background,
            "vocabulary": vocab.format(),
            "preset": args.preset,
            "config": run_cfg.to_dict(),
            "model": str(args.model),
            "pretrained": None if _pretrained(args.pretrained) is None
            else str(args.pretrained),
            "device": args.device,
            "image": {"shape": list(source.data.shape), "axes": source.axes,
                      "rgb": source.rgb, "dtype": str(source.data.dtype),
                      "planes": list(source.plane_shape)},
            **info,
            "seconds": round(time.perf_counter() - t0, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
    write_json_atomic(outs.sidecar, sidecar)


def _segment_in_memory(source, vocab, outs, cfg, segmenter) -> dict:
    from .chunked import labels_dtype
    from .files import write_tiff_atomic

    seg = segmenter()
    planes = source.plane_shape
    labels = sims = None
    n = len(vocab)
    for index, plane in source.planes():
        res = seg.segment(np.asarray(plane), vocab, config=cfg)
        if labels is None:
            labels = np.zeros(planes + res.labels.shape, dtype=labels_dtype(n))
            sims = np.zeros(planes + res.similarity.shape, dtype=np.float32)
        labels[index] = res.labels
        sims[index] = res.similarity
    lead = "Q" * len(planes)
    write_tiff_atomic(outs.similarity, sims, lead + "CYX")
    write_tiff_atomic(outs.labels, labels, lead + "YX")
    return {"chunked": None}


def _segment_chunked(source, vocab, outs, cfg, chunk, args, spec, segmenter, scheduler,
                     bar) -> dict:
    from .chunked import open_outputs, segment_chunked

    n = len(vocab)
    labels, sims = open_outputs(outs.labels, outs.similarity, source.plane_shape,
                                source.image_shape, n, chunk)
    threads = args.scheduler in ("threads", "sync", "synchronous", "single-threaded")
    seg_arg = segmenter() if threads else dataclasses.replace(spec, config=cfg)
    sub = _Bar(0, "  chunks", args.quiet, unit="chunk", leave=False)

    def progress(done: int, total: int) -> None:
        if sub._bar is not None:
            sub._bar.total = total
            sub.goto(done)

    try:
        plan = segment_chunked(source.data, vocab, labels, sims, segmenter=seg_arg, config=cfg,
                               chunk=chunk, rgb=source.rgb, scheduler=scheduler(),
                               num_workers=args.workers, progress=progress)
    finally:
        sub.close()
    return {"chunked": {"chunk": chunk, "halo": plan.halo, "chunks_per_plane": len(plan),
                        "max_region": list(plan.max_region), "scheduler": args.scheduler}}


# --------------------------------------------------------------------------- evaluate
def _run_evaluate(args) -> int:
    from .evaluation import evaluate, save_result

    preset = args.preset or args.dataset
    cfg = _config_from_args(args, preset)
    vocab = None
    if args.vocab:
        vocab = _vocab_from_arg(args.vocab)
    if args.generate_aux:
        from .datasets import load_vocabulary

        vocab = _with_aux(vocab or load_vocabulary(args.dataset), args.generate_aux)
    seg = None
    if args.predictions is None:  # load the model up front: a failure is a usage error
        seg = _load_model(_spec_from_args(args, cfg))
    bar = _Bar(0, f"evaluate {args.dataset}", args.quiet)

    def progress(done: int, total: int) -> None:
        if bar._bar is not None:
            bar._bar.total = total
            bar.goto(done)

    try:
        try:
            result = evaluate(args.dataset, args.root, segmenter=seg, vocabulary=vocab,
                              config=cfg if seg is not None else None,
                              predictions=args.predictions, limit=args.limit,
                              progress=progress)
        except (FileNotFoundError, ValueError) as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    finally:
        bar.close()
    print(result.table())
    if args.out:
        paths = save_result(result, args.out, plot=not args.no_plot)
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        if args.command == "segment":
            return _run_segment(args)
        return _run_evaluate(args)
    except UsageError as exc:
        print(f"napari-itaclip {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"napari-itaclip {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
