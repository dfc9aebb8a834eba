"""What one segmentation needs, against what the machine can give: the up-front refusal.

:func:`segmentation_estimate` fills the model of :mod:`.memory_model` for a segmenter,
an image and a vocabulary: the sizes the run goes through (:func:`.memory_model.pipeline_shapes`),
the uint8 conversion, the ViT batch (``batch_memory_mb``), a text batch, the
image-feature cache entry and the switches (PAMR, thresholds, closing). The result is
what the run *adds* to its process: memory the process already holds (the interpreter,
torch, a loaded model, the input) is left out, because the figures it is compared with
already leave it out.

:func:`check_segmentation` compares it, before anything image-sized is allocated, with

- host memory: :func:`memory_limit` (``MemAvailable``, or
  ``$NAPARI_ITACLIP_MEMORY_LIMIT_MB``);
- for a CUDA model, also GPU memory: the image-sized tensors (normalised image, logits,
  PAMR, the softmax, the batches) against :func:`device_memory_limit` (the device's free
  memory plus what torch holds unused in its cache, or
  ``$NAPARI_ITACLIP_GPU_MEMORY_LIMIT_MB``); the numpy results count as host memory.

and raises :class:`~napari_itaclip.errors.InsufficientMemoryError` saying how much of which
memory is needed, at which step, and the way out. Both limits can be injected
(:func:`check_memory`), so all of it is testable without a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import _env
from ..errors import InsufficientMemoryError
from .memory_model import MemoryEstimate, estimate_memory, input_costs, pipeline_shapes

__all__ = ["GPU_MEMORY_LIMIT_ENV", "MEMORY_LIMIT_ENV", "PIXEL_BYTES", "QUERY_PIXEL_BYTES",
           "TEXT_CONTEXT", "available_memory", "check_memory", "check_segmentation",
           "device_memory_limit", "estimate_peak_bytes", "memory_limit", "model_bytes",
           "segmentation_estimate", "vit_batch_bytes", "working_pixels"]

#: Environment variables overriding the host's available memory and the GPU's free
#: memory, in MB (``0``/``none``/``off``: no check).
MEMORY_LIMIT_ENV = _env.MEMORY_LIMIT
GPU_MEMORY_LIMIT_ENV = _env.GPU_MEMORY_LIMIT
#: Tokens of a text batch the estimate assumes (open_clip's full context).
TEXT_CONTEXT = 77
_MB = 2**20


#: The earlier flat bound's bytes per pixel and per query and pixel (deprecated: see
#: :func:`estimate_peak_bytes`).
PIXEL_BYTES = 1300
QUERY_PIXEL_BYTES = 32


def working_pixels(height: int, width: int, short_side: int | None) -> int:
    """Pixels of a ``height x width`` plane or of its ``short_side`` resize, the larger
    (deprecated, with :func:`estimate_peak_bytes`).
    """
    pixels = int(height) * int(width)
    if short_side is not None:
        from .resize import mmseg_resize_shape

        rh, rw = mmseg_resize_shape(int(height), int(width), short_side)
        pixels = max(pixels, rh * rw)
    return pixels


def estimate_peak_bytes(pixels: int, n_queries: int, *, batch_memory_mb: float,
                        model_bytes: int = 0) -> int:
    """Deprecated: the earlier flat bound, ``model + batch_memory_mb + pixels x (1.3 kB +
    32 B x queries)``, which counts PAMR's cost for every configuration (up to 10 x the
    measured peak). Kept for callers of 0.1 pre-releases; the package uses
    :meth:`~napari_itaclip.Segmenter.memory_estimate` (:func:`segmentation_estimate`).
    """
    import warnings

    warnings.warn("estimate_peak_bytes is deprecated: use Segmenter.memory_estimate "
                  "(napari_itaclip.engine.memory.segmentation_estimate)", DeprecationWarning,
                  stacklevel=2)
    per_pixel = PIXEL_BYTES + QUERY_PIXEL_BYTES * int(n_queries)
    return int(model_bytes + batch_memory_mb * _MB + int(pixels) * per_pixel)


def available_memory() -> int | None:
    """Bytes of memory the machine can still give, or ``None`` when it cannot be read.

    Linux: ``MemAvailable`` of ``/proc/meminfo``; elsewhere ``psutil`` when installed;
    else Windows' ``GlobalMemoryStatusEx`` or, on macOS and other Unixes, the physical
    memory (``os.sysconf``). ``None`` (no check) only when none of these answers.
    """
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or unsupported here
        pass
    if os.name == "nt":  # pragma: no cover - Windows
        return _windows_available()
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _windows_available() -> int | None:  # pragma: no cover - Windows
    """``ullAvailPhys`` of ``GlobalMemoryStatusEx``."""
    import ctypes

    class Status(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong),
                    ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong),
                    ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = Status()
    status.dwLength = ctypes.sizeof(Status)
    try:
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
    except (AttributeError, OSError):
        pass
    return None


def _override(name: str) -> tuple[int | None, str] | None:
    """``$name`` in MB as ``(bytes or None, origin)``; ``None`` when unset."""
    text = _env.get(name)
    if not text:
        return None
    if text.lower() in ("0", "none", "off"):
        return None, f"{name}={text}"
    try:
        return int(float(text) * _MB), f"{name}={text}"
    except ValueError:
        raise ValueError(f"{name} must be a number of MB or 'none', got {text!r}") from None


def memory_limit() -> tuple[int | None, str]:
    """``(bytes, where the figure comes from)`` of host memory: ``$NAPARI_ITACLIP_MEMORY_LIMIT_MB``
    when set (``0`` or ``none``: no check), else :func:`available_memory` (``None``:
    unknown, no check).
    """
    return _override(MEMORY_LIMIT_ENV) or (available_memory(), "available memory")


def device_memory_limit(device) -> tuple[int | None, str]:
    """``(bytes, origin)`` a CUDA device can still give this process.

    ``$NAPARI_ITACLIP_GPU_MEMORY_LIMIT_MB`` when set; else the device's free memory
    (``torch.cuda.mem_get_info``) plus what torch's caching allocator holds reserved but
    unused (it hands that out first); ``None`` (no check) for other devices or when it
    cannot be read.
    """
    forced = _override(GPU_MEMORY_LIMIT_ENV)
    if forced is not None:
        return forced
    from . import _torch_ready  # noqa: F401  (before torch)

    # isort: split
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None, f"{device.type} (no device memory of its own)"
    try:
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except (RuntimeError, AssertionError, AttributeError):
        return None, f"free memory of {device} (unreadable)"
    return int(free) + max(0, int(cached)), f"free memory of {device}"


def model_bytes(seg) -> int:
    """Bytes of a segmenter's loaded model parameters and buffers (0 while not loaded)."""
    from . import _torch_ready  # noqa: F401  (before torch)

    # isort: split
    import torch

    if not seg.is_loaded:
        return 0
    module = seg._loaded.model if seg._loaded.model is not None else seg._backbone
    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _classes(vocab, exemplars) -> tuple[int, int, int]:
    """(queries, classes, most queries of one class) of a vocabulary with exemplars."""
    qc = list(vocab.query_class) if vocab is not None else []
    n = len(vocab) if vocab is not None else 0
    names = getattr(exemplars, "names", None)  # not Exemplars: refused later, by the run
    if isinstance(names, list):
        from .prototypes import combine_classes

        out, ex_class = combine_classes(vocab, names)
        qc, n = qc + list(ex_class), len(out)
    counts = [qc.count(c) for c in range(n)]
    return max(len(qc), 1), max(n, 1), max(counts, default=1)


def _windows(seg, cfg, working: tuple[int, int]):
    """``(windows, crops per forward, crop (h, w) with any padding, budget)`` of a run at
    ``working``, by arithmetic (a native-size grid can hold millions of windows).
    ``crops per forward`` is None when one window alone is refused by the batching.
    """
    from .augment import n_views
    from .sliding import patch_padding, window_side
    from .windows import BatchBudget, crops_per_batch

    backbone = seg._backbone if seg.is_loaded else None
    budget = BatchBudget(tuple(getattr(backbone, "patch_size", (16, 16))),
                         int(getattr(backbone, "width", 768)),
                         int(getattr(backbone, "num_heads", 12)), seg.half, seg.batch_memory_mb)
    h, w = int(working[0]), int(working[1])
    crop = window_side(cfg.crop, h, w)
    rows = max(h - crop + cfg.stride - 1, 0) // cfg.stride + 1
    cols = max(w - crop + cfg.stride - 1, 0) // cfg.stride + 1
    fh, fw = min(crop, h), min(crop, w)
    if cfg.pad_to_patch:
        pad = patch_padding(fh, fw, budget.patch_size)
        fh, fw = fh + pad.top + pad.bottom, fw + pad.left + pad.right
    views = n_views(cfg.image_engineering)
    try:
        per_batch = max(1, crops_per_batch(fh, fw, budget) // views)
    except ValueError:  # a window the run refuses with its own message
        return rows * cols, None, (fh, fw), budget
    return rows * cols, min(per_batch, rows * cols) * views, (fh, fw), budget


def _feature_bytes(seg, cfg, windows: int, crop: tuple[int, int], budget) -> int:
    """Bytes of the feature-cache entry a run stores (0 when it would not be stored)."""
    cache = seg.feature_cache
    if not cache.enabled:
        return 0
    model = seg._loaded.model if seg.is_loaded else None
    # the feature size; not known before loading: 768, ViT-B's width, above most
    dim = int(getattr(getattr(model, "visual", None), "output_dim", 768))
    ph, pw = budget.patch_size
    nbytes = windows * (crop[0] // ph) * (crop[1] // pw) * dim * 4 * (
        2 if cfg.image_engineering else 1)
    return nbytes if cache.fits(nbytes) else 0


def vit_batch_bytes(seg, cfg, working: tuple[int, int]) -> int:
    """Peak bytes of one batched ViT forward over windows of a ``working``-sized image.

    ``batch_memory_mb`` bounds the activations the batching counts; measured on the
    CPU, a forward takes up to a quarter more (the views, the mid layers' attention
    maps), and towers with small crops more again: each crop view's pixels, its view
    and a temporary (3 x 12 B per pixel). The larger of the two figures.
    """
    _, crops, (fh, fw), budget = _windows(seg, cfg, working)
    bound = seg.batch_memory_mb * _MB
    if crops is None:
        return int(1.25 * bound)
    tokens = 1 + (fh // budget.patch_size[0]) * (fw // budget.patch_size[1])
    per_crop = (2 if seg.half else 4) * (6 * budget.num_heads * tokens**2
                                         + 12 * tokens * budget.width)
    return int(max(1.25 * bound, crops * (1.25 * per_crop + 3 * 12 * fh * fw)))


def segmentation_estimate(seg, image, vocab, cfg, exemplars=None, *, after_load: bool = False,
                          working: tuple[int, int] | None = None) -> MemoryEstimate:
    """What ``seg.segment(image, vocab, config=cfg, exemplars=exemplars)`` adds to memory.

    ``image`` needs only ``shape`` and ``dtype`` (nothing is read); ``vocab`` is a
    :class:`~napari_itaclip.vocabulary.Vocabulary` or ``None`` (exemplar-only). With
    ``after_load`` the image is taken as converted already (its uint8 copy held). With
    ``working`` (h, w), a run at that working resolution whose maps are mapped to the
    image's size at the end (:func:`.memory_model.pipeline_shapes`); a configuration
    with an ``object_size`` runs at its working shape (:func:`.scale.working_shape`).
    """
    shape = tuple(int(s) for s in image.shape)
    if working is None and cfg.object_size is not None:  # the run at the objects' scale
        from .scale import working_factor, working_shape

        working = working_shape(shape, working_factor(cfg.object_size))
    queries, classes, qmax = _classes(vocab, exemplars)
    shapes = pipeline_shapes(shape[0], shape[1], cfg, queries, classes, qmax, working)
    flags = getattr(image, "flags", None)
    contiguous = bool(flags["C_CONTIGUOUS"]) if flags is not None else False
    conversion, copy = input_costs(shape, image.dtype, contiguous)
    model = seg._loaded.model if seg.is_loaded else None
    text_width = int(getattr(getattr(model, "transformer", None), "width", 512))
    batch = int(getattr(seg._text, "batch_size", 320))
    windows, _, crop, budget = _windows(seg, cfg, shapes.working)
    return estimate_memory(
        shapes, on_device=seg.device.type == "cuda",
        conversion=0 if after_load else conversion, image_copy=0 if after_load else copy,
        batch=vit_batch_bytes(seg, cfg, shapes.working), batch_kept=int(seg.batch_memory_mb * _MB),
        text=2 * batch * TEXT_CONTEXT * text_width * 4,
        features=_feature_bytes(seg, cfg, windows, crop, budget),
        pamr_dilations=cfg.pamr_dilations, area_filter=cfg.area_threshold is not None,
        prob_threshold=cfg.prob_threshold > 0, close_size=cfg.close_size,
        renormalize=cfg.renormalize_probs)


def check_segmentation(seg, image, vocab, cfg, exemplars=None, *, after_load: bool = False,
                       working: tuple[int, int] | None = None) -> MemoryEstimate | None:
    """Refuse a segmentation that does not fit (:func:`check_memory`); a malformed image
    (not 2-D or 3-D) is left to the image checks. Returns the estimate. The arguments
    are :func:`segmentation_estimate`'s.
    """
    if len(getattr(image, "shape", ())) not in (2, 3):
        return None
    est = segmentation_estimate(seg, image, vocab, cfg, exemplars, after_load=after_load,
                                working=working)
    return check_memory(est, device=seg.device)


def check_memory(estimate: MemoryEstimate, *, device=None,
                 host_limit: tuple[int | None, str] | None = None,
                 device_limit: tuple[int | None, str] | None = None) -> MemoryEstimate:
    """Refuse ``estimate`` when its host peak exceeds ``host_limit`` (default
    :func:`memory_limit`) or, for a model on an accelerator, its device peak exceeds
    ``device_limit`` (default :func:`device_memory_limit` of ``device``). Each limit is
    ``(bytes or None, where the figure comes from)``; ``None`` bytes: no check.

    Raises
    ------
    InsufficientMemoryError
        Saying how much of which memory is needed, at which step, how much there is,
        and the way out.
    """
    if estimate.on_device:
        limit, origin = device_limit if device_limit is not None else device_memory_limit(
            device if device is not None else "cuda")
        if limit is not None and estimate.device > limit:
            raise _refusal(estimate, "device", limit, origin, device)
    limit, origin = host_limit if host_limit is not None else memory_limit()
    if limit is not None and estimate.host > limit:
        raise _refusal(estimate, "host", limit, origin, device)
    return estimate


def _refusal(est: MemoryEstimate, memory: str, limit: int, origin: str, device
             ) -> InsufficientMemoryError:
    s = est.shapes
    need = est.host if memory == "host" else est.device
    which = "host memory" if memory == "host" else f"GPU memory ({device or 'cuda'})"
    at = f", ViT at {s.working[0]}x{s.working[1]}" if tuple(s.working) != tuple(s.native) else ""
    stage = est.peak_stage(memory).name
    hints = []
    if stage.startswith("PAMR"):
        hints.append("switch PAMR off (pamr_steps=0, as the fast preset does)")
    elif "softmax" in stage or "class" in stage or "finite" in stage:
        hints.append("segment fewer classes and names at a time")
    if memory == "device":
        hints.append("run on the CPU (device='cpu')")
        env = GPU_MEMORY_LIMIT_ENV
    else:
        env = MEMORY_LIMIT_ENV
    other = "; or " + "; or ".join(hints) if hints else ""
    return InsufficientMemoryError(
        f"segmenting a {s.native[0]}x{s.native[1]} image ({s.queries} queries{at}) in memory "
        f"needs about {_gb(need)} of {which} ({est.describe(memory)}), more than "
        f"the {_gb(limit)} of {origin}; process it in chunks: napari-itaclip segment "
        "--chunk-size 1024 (and --short-side none), or napari_itaclip.chunked.segment_chunked "
        "from Python"
        f"{other}; or set {env} to allow more", need=need, limit=limit, memory=memory)


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / _MB:.0f} MB"
