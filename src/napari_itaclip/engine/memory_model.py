"""The peak memory of one segmentation, modelled from what the engine allocates.

The engine runs in steps (docs/engine.md): the uint8 conversion, the text, the
normalised image, the sliding windows at the *working* size, the logits resampled to
where PAMR runs, PAMR (affinities, then the steps), the class maps and labels at the
*post* size, and the maps at the *native* size it returns. Each step holds some
image-sized buffers; :func:`estimate_memory` lists them per step (a :class:`Stage`,
every buffer a named term in bytes) and the estimate is the largest step. The sizes are
explicit (:class:`RunShapes`), so a pipeline that runs at another working resolution is
one call with other shapes; :func:`pipeline_shapes` gives today's: the ViT at
``short_side``'s resize, PAMR and the outputs at the native size.

Terms (float32 = 4 bytes; ``n``, ``w``, ``r``, ``p``: pixels at the native, working,
refine and post sizes; ``Q`` queries, ``C`` classes, ``P = 8 x len(pamr_dilations)``):

- the uint8 conversion of a non-uint8 image: 24 B per value for a moment (float64
  copies), then 3 B per pixel (the RGB uint8 copy; none for a contiguous uint8 RGB image);
- the normalised image: 12 B per working pixel, 36 for a moment; PAMR's guide: 12 B per
  refine pixel;
- the window canvas and logits: 4 B per query and working pixel, each; the logits at
  the refine or post size: 4 Q B per pixel, once more while being resampled;
- PAMR: the affinities (4 P B per pixel, twice during their softmax), the standard
  deviation of the taps (replicate-padded copies of the guide), and per step two copies
  of the channels in flight plus a padded copy (:func:`pamr_chunk`);
- the class maps: the softmax over the queries (4 Q B per pixel for the scaled logits,
  4 Q for the result; per-class maxima when classes have several names), the labels
  (int32), the closing (three int32 maps), the area filter's and the renormalisation's
  copies when they are on; with ``post`` smaller than ``native``, the maps upsampled to
  the native size;
- the ViT batch (given by the caller; :func:`.memory.vit_batch_bytes`: ``batch_memory_mb``
  and a quarter more for what its bound leaves out, the views and the mid layers'
  attention maps, or more for towers whose crops are small), a text batch (320 prompts
  x 77 tokens x the text width x 4 B, twice), the image-feature cache entry and the
  model when it is still to load.

Every step also counts the allocator's slack: 10 % of its image-sized buffers
(:data:`SLACK`; rounding, fragmentation), 30 % when a one-channel float32 map of the
image is under 32 MB (:data:`SMALL_SLACK`: glibc serves such buffers from its heap and
keeps them when they are freed, measured up to a quarter more than the live buffers).

With ``on_device`` (a CUDA model) the tensors (normalised image, logits, PAMR, the
softmax, the batches, the model) are counted as device memory and the numpy arrays
(uint8 image, feature cache, returned maps, labels) as host memory; each has its own
peak. On the CPU all of it is host memory, and the ViT batch and half the text batch
stay counted after their steps: the C allocator keeps the memory of their many
medium-sized buffers (measured, docs/benchmarks.md "Memory").
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CONVERSION_BYTES", "DEVICE_SLACK", "PAMR_CHUNK_BYTES", "SLACK", "SMALL_SLACK",
           "MemoryEstimate", "RunShapes", "Stage", "estimate_memory", "host_slack",
           "input_costs", "pamr_chunk", "pipeline_shapes"]

F32 = 4
#: Bytes per value the conversion of a non-uint8 image to uint8 holds for a moment
#: (its float64 copy and two float64 temporaries of the percentile rescaling).
CONVERSION_BYTES = 24
_BAND = 4 * 2**20  # values of one band of postprocess.row_bands
#: Allocator slack on the image-sized buffers of a step: rounding, fragmentation, and
#: freed buffers kept for reuse (measured, docs/benchmarks.md "Memory").
SLACK = 0.10
#: glibc serves allocations under 32 MB (its largest mmap threshold) from its heap and
#: keeps much of them when they are freed: the slack when the image's one-channel map is
#: that small.
SMALL_SLACK = 0.30
HEAP_CEILING = 32 * 2**20
#: The slack on device buffers (CUDA's caching allocator rounds and splits blocks).
DEVICE_SLACK = 0.10
#: Bytes of the channels one PAMR chunk refines together (at most 8 channels, at least 1).
PAMR_CHUNK_BYTES = 64 * 2**20
_MAX_PAMR_CHUNK = 8


def pamr_chunk(height: int, width: int, channels: int, itemsize: int = 4) -> int:
    """Channels :func:`.refine.iter_pamr` refines together on a ``height x width`` map: as many as
    fit :data:`PAMR_CHUNK_BYTES` (1 to 8, at most ``channels``).

    The channels are independent, so the chunk changes the memory, never the result.
    """
    per_channel = max(1, int(height) * int(width) * int(itemsize))
    return max(1, min(_MAX_PAMR_CHUNK, int(channels), PAMR_CHUNK_BYTES // per_channel))


#: Terms that are not image-sized (no slack on them).
_FIXED = ("model", "text batch", "ViT batch", "feature-cache entry", "allocator slack")


def _px(shape) -> int:
    return int(shape[0]) * int(shape[1])


@dataclass(frozen=True)
class RunShapes:
    """The sizes one segmentation runs at.

    Attributes
    ----------
    native : (int, int)
        (H, W) of the plane, and of the maps returned.
    working : (int, int)
        (h, w) the ViT's sliding windows tile (``short_side``'s resize, or native).
    queries, classes : int
        Text queries (every name; auxiliary texts do not add queries) plus exemplar
        prototypes; output classes.
    refine : (int, int) or None
        Where PAMR runs (None: no PAMR). The logits and the guide image are resampled to
        it from the working size.
    post : (int, int) or None
        Where the class maps, probabilities and labels are computed (None: native). When
        it is not native, the maps are upsampled to native at the end.
    query_max : int or None
        Most queries of one class (None: ``queries - classes + 1``, the worst case).
    """

    native: tuple[int, int]
    working: tuple[int, int]
    queries: int
    classes: int
    refine: tuple[int, int] | None = None
    post: tuple[int, int] | None = None
    query_max: int | None = None

    @property
    def post_size(self) -> tuple[int, int]:
        """The post size (native when not given)."""
        return tuple(self.post) if self.post is not None else tuple(self.native)


@dataclass(frozen=True)
class Stage:
    """What one step of the engine holds at its peak: named terms in bytes."""

    name: str
    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)

    @property
    def host_bytes(self) -> int:
        """Host memory of the step."""
        return sum(self.host.values())

    @property
    def device_bytes(self) -> int:
        """Device (GPU) memory of the step."""
        return sum(self.device.values())


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory one segmentation adds to its process, step by step.

    ``host`` and ``device`` are the peaks (bytes) over the steps; :meth:`peak_stage`
    names the step and its terms. Memory the process already holds (the interpreter,
    torch, a loaded model, the input image) is not part of it.
    """

    shapes: RunShapes
    stages: tuple[Stage, ...]
    on_device: bool = False

    @property
    def host(self) -> int:
        """Peak host memory (bytes)."""
        return max((s.host_bytes for s in self.stages), default=0)

    @property
    def device(self) -> int:
        """Peak device memory (bytes; 0 on the CPU)."""
        return max((s.device_bytes for s in self.stages), default=0)

    def peak_stage(self, memory: str = "host") -> Stage:
        """The step with the largest ``memory`` (``"host"`` or ``"device"``)."""
        key = (lambda s: s.host_bytes) if memory == "host" else (lambda s: s.device_bytes)
        return max(self.stages, key=key)

    def describe(self, memory: str = "host", terms: int = 3) -> str:
        """``"while <step>: <largest terms>"``, for messages."""
        stage = self.peak_stage(memory)
        parts = stage.host if memory == "host" else stage.device
        big = sorted(((v, k) for k, v in parts.items() if v > 0), reverse=True)[:terms]
        return f"while {stage.name}: " + ", ".join(f"{k} {_size(v)}" for v, k in big)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def input_costs(shape, dtype, contiguous: bool = True) -> tuple[int, int]:
    """``(transient, kept)`` bytes of the uint8 RGB conversion of an image.

    uint8 RGB, C-contiguous: used as is (0, 0). Other uint8 (grey, RGBA, a strided
    view): a uint8 RGB copy. Any other dtype: :data:`CONVERSION_BYTES` per value used
    (alpha dropped) for a moment, then the uint8 RGB copy.
    """
    import numpy as np

    shape = tuple(int(s) for s in shape)
    n = shape[0] * shape[1]
    channels = 1 if len(shape) == 2 or shape[-1] == 1 else min(shape[-1], 3)
    if np.dtype(dtype) != np.uint8:
        return CONVERSION_BYTES * n * channels, 3 * n
    if channels == 3 and len(shape) == 3 and shape[-1] == 3 and contiguous:
        return 0, 0
    return 0, 3 * n


def pipeline_shapes(height: int, width: int, cfg, queries: int, classes: int,
                    query_max: int | None = None, working: tuple[int, int] | None = None
                    ) -> RunShapes:
    """The sizes a configuration runs at.

    By default, today's pipeline: the ViT at ``cfg.short_side``'s resize (or native),
    then the logits and the guide upsampled to the native size, PAMR (when
    ``pamr_steps``) and the outputs there. With ``working`` (h, w), a run at a working
    resolution: the ViT, PAMR and the class maps and labels at ``working``, the maps and
    labels mapped to the native size at the end.
    """
    native = (int(height), int(width))
    pamr = cfg.pamr_steps > 0
    if working is not None:
        working = (int(working[0]), int(working[1]))
        return RunShapes(native, working, int(queries), int(classes),
                         refine=working if pamr else None, post=working, query_max=query_max)
    working = native
    if cfg.short_side is not None:
        from .resize import mmseg_resize_shape

        working = mmseg_resize_shape(native[0], native[1], cfg.short_side)
    return RunShapes(native, working, int(queries), int(classes),
                     refine=native if pamr else None, post=native, query_max=query_max)


class _Stages:
    """Collects the stages, each with its allocator slack; device terms go to the host
    on the CPU.
    """

    def __init__(self, on_device: bool, host_slack: float):
        self.on_device = on_device
        self.host_slack = host_slack
        self.stages: list[Stage] = []
        self.keep_host: dict[str, int] = {}
        self.keep_device: dict[str, int] = {}

    def add(self, name: str, host: dict | None = None, device: dict | None = None) -> None:
        h = {**self.keep_host, **(host or {})}
        d = {**self.keep_device, **(device or {})}
        if not self.on_device:
            h.update(d)
            d = {}
        self.stages.append(Stage(name, _with_slack(h, self.host_slack),
                                 _with_slack(d, DEVICE_SLACK) if d else {}))

    def keep(self, name: str, nbytes: int, on_device: bool) -> None:
        """A buffer held from now on (removed with ``nbytes=0``)."""
        self.keep_host.pop(name, None)
        self.keep_device.pop(name, None)
        if nbytes:
            target = self.keep_device if on_device and self.on_device else self.keep_host
            target[name] = int(nbytes)


def _with_slack(terms: dict, rate: float) -> dict[str, int]:
    """The terms in whole bytes, plus the allocator's slack on the image-sized ones."""
    out = {k: int(v) for k, v in terms.items()}
    sized = sum(v for k, v in out.items() if not k.startswith(_FIXED))
    out["allocator slack"] = int(rate * sized)
    return out


def host_slack(shapes: RunShapes) -> float:
    """:data:`SLACK`, or :data:`SMALL_SLACK` when a one-channel float32 map of the largest
    size the run uses is under :data:`HEAP_CEILING` (such buffers come from the heap).
    """
    biggest = max(_px(shapes.native), _px(shapes.working))
    return SMALL_SLACK if F32 * biggest < HEAP_CEILING else SLACK


def estimate_memory(
    shapes: RunShapes, *, on_device: bool = False, conversion: int = 0, image_copy: int = 0,
    batch: int = 0, batch_kept: int | None = None, text: int = 0, features: int = 0,
    model: int = 0,
    pamr_dilations=(8, 16), pamr_chunk: int | None = None, area_filter: bool = False,
    prob_threshold: bool = False, close_size: int = 3, renormalize: bool = False,
) -> MemoryEstimate:
    """The steps of one segmentation and what each holds (see the module's docstring).

    Parameters
    ----------
    shapes : RunShapes
        Where each part runs.
    on_device : bool
        Tensors on an accelerator (CUDA): counted as device memory.
    conversion, image_copy : int
        Bytes of the uint8 conversion, transient and kept (:func:`input_costs`).
    batch, batch_kept, text : int
        Bytes of one ViT batch, of what the C allocator keeps of it on the CPU (None:
        all), and of one text batch.
    features : int
        Bytes of the image-feature cache entry this run stores (0: none).
    model : int
        Bytes of the model still to load (0 when loaded: the process holds it).
    pamr_dilations, pamr_chunk
        PAMR's dilations and channels per chunk (None: :func:`.refine.pamr_chunk`).
    area_filter, prob_threshold, renormalize : bool
        Whether the area threshold is set, the probability threshold is above 0, and
        NACLIP's renormalisation is on (each makes buffers of its own).
    close_size : int
        The closing's size (``<= 1``: no closing).
    """
    b = _Stages(on_device, host_slack(shapes))
    b.add("converting the image to uint8", host={"conversion": conversion})
    b.keep("uint8 RGB image", image_copy, on_device=False)
    b.keep("model", model, on_device=True)
    b.add("encoding the text", device={"text batch": text})
    if not on_device:  # the C allocator keeps about half of it (measured)
        b.keep("text batch (kept by the allocator)", text // 2, on_device=False)
    kept = batch if batch_kept is None else min(batch, batch_kept)
    size = _image_stages(b, shapes, batch, kept, features)
    if shapes.refine is not None:
        size = _refine_stages(b, shapes, size, tuple(pamr_dilations), pamr_chunk)
    else:
        size = _resample_logits(b, shapes, size, shapes.post_size)
    b.keep("guide image", 0, on_device=True)
    _post_stages(b, shapes, dict(area_filter=area_filter, prob_threshold=prob_threshold,
                                 close_size=close_size, renormalize=renormalize))
    return MemoryEstimate(shapes, tuple(b.stages), bool(on_device))


def _image_stages(b: _Stages, s: RunShapes, batch: int, kept: int, features: int
                  ) -> tuple[int, int]:
    """Normalising the image and the sliding windows at the working size."""
    w, q = _px(s.working), s.queries
    resized = 3 * w if tuple(s.working) != tuple(s.native) else 0
    b.add("normalising the image", host={"resized uint8 image": resized},
          device={"normalised image and its temporaries": 3 * 3 * F32 * w})
    b.keep("guide image", 3 * F32 * w, on_device=True)
    b.keep("feature-cache entry", features, on_device=False)
    windows = {"window canvas and coverage": F32 * (q + 1) * w, "ViT batch": batch}
    b.add("running the ViT over the windows", device=windows)
    b.add("averaging the windows", device={**windows, "logits (working size)": F32 * q * w})
    if not b.on_device:  # the C allocator keeps the batches' memory (measured)
        b.keep("ViT batch (kept by the allocator)", kept, on_device=False)
    b.keep("logits", F32 * q * w, on_device=True)
    return tuple(s.working)


def _resample_logits(b: _Stages, s: RunShapes, size, target, with_guide: bool = False
                     ) -> tuple[int, int]:
    """The logits (and, for PAMR, the guide) resampled from ``size`` to ``target``."""
    size, target = tuple(size), tuple(target)
    if size == target:
        return size
    q = s.queries
    b.add("resampling the logits", device={"logits (resampled)": F32 * q * _px(target)})
    b.keep("logits", F32 * q * _px(target), on_device=True)
    if with_guide:
        b.add("resampling the guide image",
              device={"guide image (resampled)": 3 * F32 * _px(target)})
        b.keep("guide image", 3 * F32 * _px(target), on_device=True)
    return target


def _refine_stages(b: _Stages, s: RunShapes, size, dilations, chunk) -> tuple[int, int]:
    """PAMR at ``s.refine``: the taps' deviation, the affinities, their softmax, the steps."""
    target = tuple(s.refine)
    _resample_logits(b, s, size, target, with_guide=True)
    r, (hr, wr) = _px(target), target
    pads = [(hr + 2 * d) * (wr + 2 * d) for d in dilations]
    img, taps = 3 * F32, 8 * len(dilations)
    b.add("PAMR (standard deviation of the taps)",
          device={"padded guide copies": img * sum(pads),
                  "mean, variance and a temporary": 3 * img * r})
    aff = F32 * taps * r
    b.add("PAMR (affinities)", device={
        "PAMR affinities": aff, "deviation, one difference and its mean": (2 * img + F32) * r,
        "padded guide copy": img * max(pads)})
    b.add("PAMR (softmax of the affinities)", device={"PAMR affinities": aff,
                                                   "their softmax": aff})
    b.keep("guide image", 0, on_device=True)
    k = pamr_chunk(hr, wr, s.queries) if chunk is None else max(1, min(int(chunk), s.queries))
    b.add("PAMR (steps)", device={
        "PAMR affinities": aff,
        f"two copies of {k} channel(s) and a padded one": F32 * k * (2 * r + max(pads))})
    return _resample_logits(b, s, target, s.post_size)


def _post_stages(b: _Stages, s: RunShapes, opts: dict) -> None:
    """Class maps and probabilities (softmax over the queries), labels, outputs."""
    p, q, c = _px(s.post_size), s.queries, s.classes
    if q == c:
        b.add("the softmax over the queries", device={
            "scaled logits": F32 * q * p, "probabilities": F32 * q * p})
        maps = {"probabilities": F32 * c * p}  # similarity: the logits themselves
    else:
        qmax = s.query_max if s.query_max is not None else q - c + 1
        b.add("the per-class maxima", device={
            "query probabilities": F32 * q * p, "class similarity": F32 * c * p,
            "class probabilities and their parts": 2 * F32 * c * p,
            "one class's queries": F32 * qmax * p})
        maps = {"class similarity": F32 * c * p, "class probabilities": F32 * c * p}
    b.add("checking the maps are finite",
          device={**maps, "finite check (bands)": 7 * _BAND + p})
    if b.on_device:  # the maps come to the host; the logits stay on the device
        for name, nbytes in maps.items():
            b.keep(f"{name} (host)", nbytes, on_device=False)
    else:
        for name, nbytes in maps.items():
            b.keep(name, nbytes, on_device=False)
    labels = {"labels (int32)": F32 * p, "argmax band": F32 * _BAND + 8 * _BAND // max(c, 1)}
    if opts["area_filter"]:
        b.keep("area-filtered probabilities", F32 * c * p, on_device=False)
    if opts["close_size"] > 1:
        labels["closing (three int32 maps)"] = 3 * F32 * p
    elif opts["prob_threshold"]:
        labels["threshold (max and mask)"] = (F32 + 1) * p
    b.add("labelling", host=labels)
    b.keep("labels (int32)", F32 * p, on_device=False)
    if opts["renormalize"]:
        b.add("renormalising", host={"renormalised probabilities": F32 * c * p,
                                     "class sums": F32 * p})
    if s.post_size != tuple(s.native):  # the maps, then the labels, to the native size
        n = _px(s.native)
        b.keep("logits", 0, on_device=True)
        b.add("mapping the outputs to the native size", host={
            "similarity and probabilities (native; one of them twice while cut)": 3 * F32 * c * n,
            "labels (native, int32)": F32 * n})
