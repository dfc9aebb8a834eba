"""The ``napari-itaclip`` command line: batch segmentation and benchmark evaluation.

Subcommands::

    napari-itaclip segment INPUT... --vocab TEXT|FILE [--vocab ...] --out DIR [options]
    napari-itaclip segment INPUT... --exemplars FILE [--vocab ...] --out DIR [options]
    napari-itaclip exemplars IMAGE LABELS [--vocab TEXT|FILE] --out FILE [options]
    napari-itaclip evaluate --dataset voc21 --root PATH [options]

Every entry point is ``main(argv=None) -> int`` so that tests run it in-process.
Exit status: 0 success (skipped inputs included), 1 some inputs failed, 2 usage error,
130 interrupted (Ctrl-C).
See ``docs/cli.md`` and ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import textwrap
from argparse import RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

import numpy as np

from .batch import DEFAULT_CHUNK
from .config import AUX_KINDS, METHOD_DATASETS, METHODS, field_info, list_presets
from .console import UsageError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


# -------------------------------------------------------------------------- parsing
def _field_value(name: str):
    """An argparse ``type`` parsing a flag's value as config field ``name`` does for
    ``--set`` (one parser, one vocabulary: ``none``/``null``/``off``, lists, booleans).
    """
    info = field_info()[name]

    def parse(text: str):
        try:
            return info.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


#: The configuration fields with a flag of their own (``--short-side`` = ``--set short_side=``).
FLAG_FIELDS = ("short_side", "stride", "prob_threshold", "area_threshold", "pamr_steps",
               "object_size")


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number >= 1 (else a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    from .catalogue import DEFAULT_MODEL, DEFAULT_PRETRAINED, catalogue_help

    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="a catalogue model (their open_clip ids: docs/models.md): "
                        + catalogue_help().replace("%", "%%")
                        + "; or any open_clip model name, hf-hub:org/name or "
                        "local-dir:/path id, or a model-config .json path (default: ViT-B-16)")
    g.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="pretrained tag, local checkpoint file, or 'none' for random "
                        "weights (default: openai; hf-hub:/local-dir: models and catalogue "
                        "names use their own weights)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    g.add_argument("--batch-memory-mb", type=float, default=None, metavar="MB",
                   help="bound on the activations of one batched ViT forward "
                        "(default: 128 on the CPU, 2048 on a GPU)")
    g.add_argument("--feature-cache-mb", type=float, default=None, metavar="MB",
                   help="bound of the in-memory image-feature cache, which lets several "
                        "--vocab share one ViT pass per image (default: 1024; 0 = off)")


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", default=default_preset,
                   help=f"configuration preset: ITACLIP's {', '.join(list_presets('itaclip'))}; "
                        "or METHOD-DATASET, the authors' settings of another method, METHOD "
                        f"in {', '.join(m for m in METHODS if m != 'itaclip')}, DATASET in "
                        f"{', '.join(METHOD_DATASETS)} (e.g. naclip-voc21)" + (
                            f"; default {default_preset}" if default_preset else
                            "; default: the dataset's"))
    g.add_argument("--short-side", type=_field_value("short_side"), default=argparse.SUPPRESS,
                   metavar="N|none", help="resize so the short side is N px; none = native")
    g.add_argument("--object-size", type=_field_value("object_size"), default=argparse.SUPPRESS,
                   metavar="PX", help="typical object size in input pixels (>= 16): segment "
                   "at the working resolution reduced by PX // 32, replacing the short-side "
                   "resize; chunked inputs write the similarity at that resolution "
                   "(docs/models.md, 'Object size')")
    g.add_argument("--stride", type=_field_value("stride"), default=argparse.SUPPRESS)
    g.add_argument("--prob-threshold", type=_field_value("prob_threshold"),
                   default=argparse.SUPPRESS)
    g.add_argument("--area-threshold", type=_field_value("area_threshold"),
                   default=argparse.SUPPRESS, metavar="F|none|off")
    g.add_argument("--pamr-steps", type=_field_value("pamr_steps"), default=argparse.SUPPRESS)
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any ITACLIPConfig field, e.g. --set crop=224 --set mid_layers=7,8 "
                        "--set short_side=none; repeatable (the fields are listed below)")
    g.add_argument("--generate-aux", choices=AUX_KINDS, default=None,
                   help="ask an LLM for auxiliary texts of the classes "
                        "(configured through the environment, see docs)")


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measurements (docs/measure.md)")
    g.add_argument("--measure", action="store_true",
                   help="also write <stem>_classes.csv (area per class) and <stem>_objects.csv "
                        "(one row per connected object) beside each output, and "
                        "summary_classes.csv (a row per image and class) in --out")
    g.add_argument("--spacing", default=None, metavar="Y[,X]",
                   help="pixel size for the areas (default: the TIFF's resolution tags or "
                        "OME/ImageJ metadata when present, else 1 pixel)")
    g.add_argument("--unit", default=None, help="unit of --spacing, e.g. um (default: units)")
    g.add_argument("--min-size", type=int, default=1, metavar="PX",
                   help="smallest object in pixels (default 1)")
    g.add_argument("--measure-plot", action="store_true",
                   help="also draw summary_classes.png, the class fractions per image "
                        "(needs matplotlib: pip install napari-itaclip[plot]); implies --measure")


def _measure_from_args(args):
    """The run's BatchMeasure, or None without --measure."""
    wanted = args.measure or args.measure_plot
    if not wanted:
        given = [f for f, v in (("--spacing", args.spacing), ("--unit", args.unit),
                                ("--min-size", args.min_size != 1)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --measure")
        return None
    from .measurements.outputs import BatchMeasure, MeasureOptions

    spacing = None
    if args.spacing is not None:
        try:
            values = [float(v) for v in args.spacing.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or min(values) <= 0:
            raise UsageError(f"--spacing {args.spacing!r}: expected Y or Y,X, positive numbers")
        spacing = (values[0], values[-1])
    if args.min_size < 1:
        raise UsageError("--min-size must be at least 1")
    if args.measure_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--measure-plot needs matplotlib; install it with: "
                             "pip install napari-itaclip[plot]") from None
    return BatchMeasure(MeasureOptions(spacing=spacing, unit=args.unit, min_size=args.min_size,
                                       plot=args.measure_plot), overwrite=args.overwrite)


def _fields_help() -> str:
    """The --set table: every ITACLIPConfig field with its values, default and meaning."""
    lines = ["ITACLIPConfig fields (--set FIELD=VALUE):"]
    for info in field_info().values():
        lines.append(textwrap.fill(info.describe(), width=96, initial_indent="  ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def _add_exemplars_parser(sub) -> None:
    ex = sub.add_parser("exemplars", help="make an exemplar file from painted labels",
                        description="Pool the image's features under each painted label "
                                    "value into an exemplar file for segment --exemplars.",
                        formatter_class=RawDescriptionHelpFormatter)
    ex.add_argument("image", metavar="IMAGE", help="the image the labels were painted on")
    ex.add_argument("labels", metavar="LABELS",
                    help="integer label image of the same plane shape (TIFF, PNG), read as "
                         "--values says; values beyond the vocabulary's classes are 'class N'")
    ex.add_argument("--vocab", default=None, metavar="TEXT|FILE",
                    help="the vocabulary whose classes the label values are (default: none; "
                         "every value is 'class N')")
    ex.add_argument("--values", choices=("layer", "index"), default="layer",
                    help="how label values name classes: 'layer' (default; napari's Labels "
                         "layer as the plugin writes it and napari saves it: 0 is unlabelled, "
                         "and without a background class 1 is the first class) or 'index' "
                         "(as segment writes _labels.tif: value N is class N)")
    ex.add_argument("--out", required=True, metavar="FILE", help="exemplar file to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ex.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    _add_model_args(ex)
    _add_config_args(ex, "balanced")


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
    seg.add_argument("--vocab", action="append", metavar="TEXT|FILE",
                     help="the classes: a vocabulary file (UTF-8; an argument that looks "
                          "like a path must be one), its text form, or 'a, b, c'. "
                          "Give it several times to compare vocabularies: each image's "
                          "features are computed once and every vocabulary gets its own "
                          "outputs, <stem>__<name>_labels.tif etc. (name: the file's stem, "
                          "else the class names). Required unless --exemplars is given"),
    seg.add_argument("--exemplars", default=None, metavar="FILE",
                     help="an exemplar file (napari-itaclip exemplars, the widget or "
                          "Exemplars.save): its classes add to the vocabulary's classes of the "
                          "same name, the others are appended; alone, the classes are the "
                          "exemplars'")
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
    _add_measure_args(seg)

    _add_exemplars_parser(sub)

    ev = sub.add_parser("evaluate", help="mIoU / per-class IoU / aAcc on a benchmark",
                        description="Evaluate on a benchmark as MMSegmentation's IoUMetric "
                                    "does (ignore index 255).",
                        epilog=_fields_help(), formatter_class=RawDescriptionHelpFormatter)
    from .evaluation import DATASET_SPECS

    ev.add_argument("--dataset", required=True, choices=list(DATASET_SPECS))
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
    ev.add_argument("--limit", type=_at_least_one, default=None, metavar="N",
                    help="only the first N images (N >= 1)")
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
    for field in FLAG_FIELDS:
        if hasattr(args, field):
            changes[field] = getattr(args, field)
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


#: Endings that make a ``--vocab`` argument a file name rather than classes.
VOCAB_FILE_SUFFIXES = (".txt", ".text", ".csv", ".tsv", ".vocab", ".md", ".json", ".yaml",
                       ".yml", ".list", ".names")


def _is_vocab_file(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and Path(text).is_file()


def _looks_like_path(text: str) -> bool:
    """A one-line argument without a comma that has a path separator, a text file's
    ending (:data:`VOCAB_FILE_SUFFIXES`) or names an existing folder.
    """
    if "\n" in text or "," in text or len(text) >= 4096:
        return False
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return (any(sep in text for sep in seps) or text.strip().lower().endswith(VOCAB_FILE_SUFFIXES)
            or Path(text).is_dir())


def _vocab_from_arg(text: str, option: str = "--vocab"):
    """A vocabulary file, or classes written inline; a path-like argument that is not a
    readable vocabulary file is a usage error, never a class named after the file.
    """
    from .vocabulary import Vocabulary, VocabularyError

    path = Path(text)
    try:
        if _is_vocab_file(text):
            return Vocabulary.load(path)
        if _looks_like_path(text):
            what = "is a folder" if path.is_dir() else "does not exist"
            raise UsageError(f"{option} {text!r} looks like a file name but {what}; give a "
                             "readable vocabulary file, or the classes inline ('cat, dog')")
        return Vocabulary.coerce(text)
    except VocabularyError as exc:
        raise UsageError(f"{option}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option} {text}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                         f"at offset {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"{option} {text}: cannot read it "
                         f"({exc.strerror or type(exc).__name__})") from None


def _vocab_tags(texts: list[str], vocabs: list) -> list[str]:
    """A file-name-safe, unique name per vocabulary: the file's stem, else its classes."""
    tags: list[str] = []
    for text, vocab in zip(texts, vocabs):
        base = Path(text).stem if _is_vocab_file(text) else "-".join(vocab.class_names)
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")[:40].rstrip("-._") or "vocab"
        tag, k = base, 2
        while tag in tags:
            tag, k = f"{base}-{k}", k + 1
        tags.append(tag)
    return tags


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


def _model_from_args(args):
    """(model, pretrained): catalogue names resolved, normalised by the model identity."""
    from .catalogue import resolve
    from .identity import ModelIdentity, parse_none

    pretrained = args.pretrained
    if isinstance(pretrained, str):
        pretrained = parse_none(pretrained)
    identity = ModelIdentity(*resolve(args.model, pretrained))
    return identity.model, identity.pretrained


def _spec_from_args(args, cfg):
    from .chunked import SegmenterSpec

    model, pretrained = _model_from_args(args)
    return SegmenterSpec(model=model, pretrained=pretrained,
                         device=args.device, config=cfg, half=args.half,
                         batch_memory_mb=args.batch_memory_mb,
                         feature_cache_mb=getattr(args, "feature_cache_mb", None))


# ---------------------------------------------------------------------------- segment
def _collect_inputs(args) -> list[Path]:
    """The inputs, without the outputs of earlier runs (named by the output scheme and
    claimed by their sidecar; a user's own ``x_labels.tif`` stays an input).
    """
    from .files import collect_inputs
    from .sidecars import is_own_output, is_own_summary

    found = collect_inputs(args.inputs)
    inputs = [p for p in found if not (is_own_output(p) or is_own_summary(p))]
    if len(inputs) < len(found):
        print(f"ignoring {len(found) - len(inputs)} output(s) of an earlier napari-itaclip "
              "run among the inputs", file=sys.stderr)
    if not inputs:
        raise UsageError("no input images found")
    return inputs


def _one_or_named(vocabs: list, tags: list):
    """What BatchSegmenter takes: no vocabulary (exemplars alone), one, or named ones."""
    return None if not vocabs else vocabs[0] if len(vocabs) == 1 else dict(zip(tags, vocabs))


def _run_segment(args) -> int:
    from .batch import BatchSegmenter
    from .files import output_clashes
    from .measurements.outputs import summary_clash

    cfg = _config_from_args(args, args.preset)
    exemplars = _exemplars_from_arg(args.exemplars)
    if not args.vocab and exemplars is None:
        raise UsageError("give --vocab, --exemplars or both")
    texts = args.vocab or []
    vocabs = [_vocab_from_arg(text) for text in texts]
    tags = _vocab_tags(texts, vocabs)
    inputs = _collect_inputs(args)
    clashes = output_clashes(inputs)
    if clashes:
        text = "; ".join(f"{stem}: " + ", ".join(str(p) for p in paths)
                         for stem, paths in clashes.items())
        raise UsageError(f"inputs with the same name stem would write the same outputs "
                         f"({text}); rename them or segment them into different --out "
                         "folders")
    # chunks work at native resolution unless --short-side was given
    chunk_cfg = cfg if hasattr(args, "short_side") else dataclasses.replace(cfg, short_side=None)
    out_dir = Path(args.out)
    spec = _spec_from_args(args, cfg)
    measure = _measure_from_args(args)
    clash = summary_clash(inputs) if measure is not None and len(vocabs) <= 1 else None
    if clash is not None:
        raise UsageError(f"{clash}: its class table would be the batch summary of --measure; "
                         "rename the input or segment it into its own --out folder")
    # every check that needs no model and no LLM, before either is asked anything
    plain = _one_or_named(vocabs, tags)
    BatchSegmenter(plain, cfg, spec, chunk_config=chunk_cfg, chunk_size=args.chunk_size,
                   quiet=True, measure=measure, exemplars=exemplars,
                   exemplars_path=args.exemplars).check_outputs(inputs, out_dir)
    vocab = _one_or_named([_with_aux(v, args.generate_aux) for v in vocabs], tags)
    with BatchSegmenter(vocab, cfg, spec, chunk_config=chunk_cfg,
                        chunk_size=args.chunk_size, scheduler=args.scheduler,
                        workers=args.workers, preset=args.preset, quiet=args.quiet,
                        debug=getattr(args, "debug", False), measure=measure,
                        exemplars=exemplars, exemplars_path=args.exemplars) as batch:
        batch.check_chunking(inputs)
        batch.check_model_fit()
        report = batch.run(inputs, out_dir, overwrite=args.overwrite)
    if measure is not None:
        for line in measure.messages:
            print(f"note: {line}", file=sys.stderr)
        written = measure.finish(out_dir)
        if written:
            print("measured -> " + ", ".join(str(p) for p in written), file=sys.stderr)
    print(f"{report.done} segmented, {report.skipped} skipped (already done), "
          f"{len(report.failed)} failed -> {out_dir}", file=sys.stderr)
    for _path, message in report.failed:
        print(f"  failed: {message}", file=sys.stderr)
    return EXIT_FAILED if report.failed else EXIT_OK


def _exemplars_from_arg(path: str | None):
    if path is None:
        return None
    from .engine.exemplars import Exemplars
    from .errors import ExemplarsError

    try:
        return Exemplars.load(path)
    except ExemplarsError as exc:
        raise UsageError(f"--exemplars: {exc}") from None


# -------------------------------------------------------------------------- exemplars
def _run_exemplars(args) -> int:
    from .batch import load_segmenter
    from .engine.exemplars import masks_from_labels
    from .errors import ExemplarsError
    from .files import open_image, read_label_image

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists (use --overwrite to replace it)")
    cfg = _config_from_args(args, args.preset)
    vocab = _vocab_from_arg(args.vocab) if args.vocab else None
    try:
        with open_image(args.image) as source:
            planes = [np.asarray(p) for _, p in source.planes()]
            lead = source.plane_shape
        labels = read_label_image(args.labels)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    image = planes[0] if not lead else np.stack(planes)
    if lead:  # a stack: one label plane per image plane
        if labels.shape != (*lead, *image.shape[1:3]):
            raise UsageError(f"labels of shape {labels.shape} do not fit the image's planes "
                             f"{(*lead, *image.shape[1:3])}")
        labels = labels.reshape(-1, *labels.shape[-2:])
    try:
        masks = masks_from_labels(labels, vocab.class_names if vocab else None,
                                  bool(vocab and vocab.has_background), args.values)
        seg = load_segmenter(_spec_from_args(args, cfg))
        ex = seg.exemplars(image, masks, config=cfg)
    except ExemplarsError as exc:
        raise UsageError(str(exc)) from None
    ex.save(out)
    if not args.quiet:
        print(f"{len(ex)} exemplar classes ({', '.join(ex.names)}) -> {out}", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------- evaluate
def _run_evaluate(args) -> int:
    from .batch import load_segmenter
    from .console import ProgressBar
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
        seg = load_segmenter(_spec_from_args(args, cfg))
    bar = ProgressBar(0, f"evaluate {args.dataset}", args.quiet)
    with contextlib.closing(bar):
        try:
            result = evaluate(args.dataset, args.root, segmenter=seg, vocabulary=vocab,
                              config=cfg if seg is not None else None,
                              predictions=args.predictions, limit=args.limit,
                              progress=bar.progress)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
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
        if args.command == "exemplars":
            return _run_exemplars(args)
        return _run_evaluate(args)
    except KeyboardInterrupt:
        print(f"napari-itaclip {args.command}: interrupted; finished outputs are kept (re-run "
              "the same command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"napari-itaclip {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"napari-itaclip {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
