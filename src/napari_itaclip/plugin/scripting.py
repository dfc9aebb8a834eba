"""napari side of the public API: :func:`segment_layer`, :func:`exemplars_from_layers`
and :func:`measure_layer`, for scripts and the napari console.

napari is imported inside the functions only; ``napari_itaclip`` re-exports
them lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..chunked.tiles import WorkingPlanes, inner_config
from ..engine.memory import memory_limit
from ..identity import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..planes import COMPOSITE
from ..progress import drain
from ..stack import RunProgress, iter_segment_slices
from .assign import apply_now, apply_plan
from .edits import (
    LabelsRecord,
    record_of,
    stroke_image,
    stroke_masks,
    strokes,
)
from .layers import labels_name, layer_data, layout_for_layer, resolve_slices
from .output_plan import build_plan, class_values, plan_targets
from .sources import layer_pixel_size, source_for, tiles_needed

if TYPE_CHECKING:
    import napari

    from ..config import ITACLIPConfig
    from ..vocabulary import Vocabulary

__all__ = ["WithExemplars", "exemplars_from_layers", "measure_layer", "segment_layer"]


class WithExemplars:
    """A segmenter whose ``iter_segment`` always uses these exemplars (None: none).

    Lets the plane-by-plane runner, which knows nothing of exemplars, score them.
    """

    def __init__(self, segmenter, exemplars) -> None:
        self.inner = segmenter
        self.exemplars = exemplars
        self.config = getattr(segmenter, "config", None)

    def iter_segment(self, image, vocabulary, *, config=None):
        """The inner segmenter's ``iter_segment`` with the exemplars."""
        if self.exemplars is None:
            return self.inner.iter_segment(image, vocabulary, config=config)
        return self.inner.iter_segment(image, vocabulary, config=config,
                                       exemplars=self.exemplars)

    def has_cached_features(self, image, config=None) -> bool:
        """Whether the inner segmenter has this image's features cached."""
        check = getattr(self.inner, "has_cached_features", None)
        return bool(check is not None and check(image, config=config))


def segment_layer(
    layer: napari.layers.Image | str,
    vocabulary: Vocabulary | str | Sequence[str],
    *,
    viewer: napari.Viewer | None = None,
    config: ITACLIPConfig | None = None,
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    segmenter=None,
    half: bool = False,
    feature_cache_mb: float | None = None,
    channel_axis: int | None = None,
    channel: int | str = COMPOSITE,
    slices: str | Sequence = "all",
    progress: Callable[[RunProgress], None] | None = None,
    exemplars=None,
    object_size: float | None = None,
    tiled: bool | None = None,
    **kwargs: Any,
):
    r"""Segment a napari image layer and add (or update) its labels and heatmaps.

    A re-run never changes a pixel the user edited in the Labels layer; a layer of the
    output name that the plugin did not write in this session (loaded from a file, say)
    is left alone and the outputs go to ``"<layer> labels [2]"`` (and ``heatmaps [2]``).
    A multiscale layer is read at the pyramid level that serves; a layer too large for
    memory (numpy, dask, zarr, multiscale) is segmented tile by tile in bounded memory,
    with the same outputs as an in-memory run (docs/napari-scripting.md).

    Parameters
    ----------
    layer : napari.layers.Image or str
        The image layer (or its name in ``viewer``). 2D grey, RGB(A), or nD: every
        2D plane over the leading axes is segmented.
    vocabulary : Vocabulary, str, list of str or None
        Anything :meth:`Vocabulary.coerce` accepts, e.g. ``"cell, nucleus, background"``;
        None with ``exemplars``: exemplar-only classes.
    viewer : napari.Viewer, optional
        Where the output layers go; default: the current viewer. Without any viewer
        the layers are returned without being added anywhere.
    config : ITACLIPConfig, optional
        Default: the segmenter's (``balanced`` for a new one).
    model, pretrained, device : str
        open_clip model name, pretrained tag or local checkpoint path, and device
        (``"auto"``, ``"cuda"``, ``"mps"``, ``"cpu"``). The model is loaded once and
        cached for later calls with the same settings (the cache that
        :func:`~napari_itaclip.segment` and the widget share).
    segmenter : Segmenter, optional
        Use this segmenter instead (``model``/``pretrained``/``device`` are ignored).
    half : bool
        Half precision weights (GPU).
    feature_cache_mb : float, optional
        Bound of the model's image-feature cache (``0`` disables it; default: the
        engine's 1024). Also applied to a given ``segmenter``.
    channel_axis : int, optional
        Data axis of a non-RGB multichannel image.
    channel : int or "composite"
        Channel to segment along ``channel_axis``, or a composite of all channels.
    slices : "all", "current" or list of tuple of int
        Planes of an nD image to segment: all of them, the one the viewer shows, or
        these indices over the leading axes. Planes left out keep their previous
        labels when the output layers exist already.
    progress : callable, optional
        Called with a ``RunProgress`` between engine batches.
    exemplars : Exemplars, optional
        Painted exemplars (e.g. from :func:`exemplars_from_layers`): a name equal to a
        class's display name adds to it, others are appended as exemplar-only classes
        (their layer value: the one the Labels layer's features give the name, or ``N``
        for ``"class N"``, else the next free value).
    object_size : float, optional
        Typical size of the objects, in the layer's physical units when it has a scale
        and units (else in pixels): the working resolution (``ITACLIPConfig.object_size``;
        docs/models.md, "Object size"). The outputs are then written at the working
        resolution, with a scale and translate that overlay the image.
    tiled : bool, optional
        Segment tile by tile (True), in memory (False), or as the memory bound decides
        (None, the default: tiles when a plane's run would not fit). Tiles read the layer
        one region at a time (dask, zarr: never a whole plane) and give the same outputs.
    **kwargs
        ITACLIPConfig fields to override, e.g. ``stride=112``.

    Returns
    -------
    labels_layer : napari.layers.Labels
        ``"<layer> labels"``: class per pixel, class names in ``features``.
    heatmap_layer : napari.layers.Image
        ``"<layer> heatmaps"``: ``(C, ...)`` similarity maps, class axis first.

    Examples
    --------
    From the napari console (``viewer`` is predefined there)::

        from napari_itaclip import segment_layer
        labels, heat = segment_layer(viewer.layers["astronaut"],
                                     "background: sky, wall\\nperson\\nrocket",
                                     viewer=viewer, stride=112)
        labels.features          # index, class_name, class_index
    """
    from napari.layers import Image

    from ..engine.registry import get_segmenter
    from ..vocabulary import Vocabulary

    if viewer is None:
        import napari

        viewer = napari.current_viewer()
    if isinstance(layer, str):
        if viewer is None:
            raise ValueError("a layer name needs a viewer (pass viewer=...)")
        layer = viewer.layers[layer]
    if not isinstance(layer, Image):
        raise TypeError(f"segment_layer needs an image layer, got {type(layer).__name__}")
    if vocabulary is None and exemplars is None:
        raise ValueError("segment_layer needs a vocabulary, exemplars, or both")
    vocab = Vocabulary.coerce(vocabulary) if vocabulary is not None else None
    if segmenter is None:
        segmenter = get_segmenter(model, pretrained, device, half=half,
                                  feature_cache_mb=feature_cache_mb)
    elif feature_cache_mb is not None:
        segmenter.feature_cache.resize(feature_cache_mb)
    cfg = config if config is not None else segmenter.config
    if kwargs:
        cfg = cfg.replace(**kwargs)
    if object_size is not None:
        cfg = cfg.replace(object_size=float(object_size) / layer_pixel_size(layer)[0])
    source = source_for(layer, cfg, channel_axis, channel)
    indices = resolve_slices(layer, source.layout, slices, viewer)
    targets = plan_targets(viewer, layer, source.out_layout, source.geometry)
    seg = WithExemplars(segmenter, exemplars)
    n_queries = (len(vocab.queries) if vocab is not None else 0) + len(exemplars or ())
    if tiled is None:
        tiled = tiles_needed(source, cfg, n_queries, memory_limit()[0], len(indices),
                             segmenter.feature_cache.max_bytes / 2**20)
    if tiled:
        labels, heat = _segment_tiles(viewer, seg, source, indices, vocab, cfg, targets,
                                      progress)
    else:
        data, run_cfg = source.data, cfg
        if cfg.object_size is not None:
            run_cfg = inner_config(cfg)
            if source.factor > 1:
                data = WorkingPlanes(source.data, source.layout, source.factor)
        stack = drain(iter_segment_slices(seg, data, source.out_layout, indices, vocab,
                                          run_cfg), progress)
        values = class_values(stack, len(vocab) if vocab is not None else 0,
                              targets.feature_values)
        labels, heat = apply_now(apply_plan(viewer, build_plan(stack, targets, values)))
    if targets.diverted:
        from napari.utils.notifications import show_warning

        show_warning(f"'{labels_name(layer.name)}' {targets.diverted_why}: wrote "
                     f"'{labels.name}' instead.")
    return labels, heat


def _segment_tiles(viewer, segmenter, source, indices, vocab, config, targets, progress):
    """A tiled run, drained in this thread (the console's segment_layer)."""
    from ..chunked.tiles import TileDone
    from .assign import write_tile
    from .edits import reset_undo
    from .output_plan import OutputPlan
    from .tiled_run import DEFAULT_TILE, tiled_job

    gen = tiled_job(None, segmenter, source, indices, vocab, config, targets,
                    chunk=DEFAULT_TILE, keep_budget=0)
    layers = plan = None
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            done = stop.value
            break
        if isinstance(item, OutputPlan):
            plan, layers = item, apply_now(apply_plan(viewer, item))
        elif isinstance(item, TileDone):
            write_tile(*layers, item, plan.heat_step)
        elif progress is not None:
            progress(item)
    labels, heat = layers
    reset_undo(labels)
    if done.clim is not None:
        heat.contrast_limits_range = done.clim
        heat.contrast_limits = done.clim
    labels.refresh()
    heat.refresh()
    return labels, heat


def exemplars_from_layers(labels_layer, image_layer, segmenter=None, *,
                          names: dict[int, str] | None = None,
                          config: ITACLIPConfig | None = None, model: str = DEFAULT_MODEL,
                          pretrained: str | None = DEFAULT_PRETRAINED, device: str = "auto",
                          half: bool = False, channel_axis: int | None = None,
                          channel: int | str = COMPOSITE):
    """Exemplars from the pixels painted in a Labels layer over its image layer.

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        The painted layer. If the plugin wrote it (this session), its edited pixels are
        the strokes; otherwise (a labels file painted by hand, say) every non-zero pixel
        is. Value 0 (erased / unlabelled) is never a stroke.
    image_layer : napari.layers.Image
        The image the labels belong to (same planes).
    segmenter : Segmenter, optional
        Default: the registry's for ``model``/``pretrained``/``device``/``half``.
    names : dict, optional
        ``{value: class name}``; default: the layer's ``features`` (``class_name`` of the
        row whose ``index`` is the value), else ``"class <value>"``.
    config : ITACLIPConfig, optional
        The image-side settings (must be those of the runs using the exemplars).
    channel_axis, channel
        As for :func:`segment_layer`.

    Returns
    -------
    Exemplars
        One class per painted name; strokes on several planes pool into one prototype.
    """
    from ..engine.registry import get_segmenter

    layout = layout_for_layer(image_layer, channel_axis, channel)
    if tuple(labels_layer.data.shape) != tuple(layout.out_shape):
        raise ValueError(f"the labels layer has shape {tuple(labels_layer.data.shape)}, "
                         f"the image's planes {tuple(layout.out_shape)}")
    record = record_of(labels_layer) or LabelsRecord(tuple(labels_layer.data.shape))
    by_value = strokes(labels_layer, record)
    if not by_value:
        raise ValueError(f"no painted pixels in '{labels_layer.name}'")
    known = {}
    if "class_name" in labels_layer.features:
        known = {int(v): str(n) for v, n in zip(labels_layer.features["index"],
                                                labels_layer.features["class_name"])}
    known.update(names or {})
    planes, masks = stroke_masks(by_value, {v: known.get(v, f"class {v}") for v in by_value})
    if segmenter is None:
        segmenter = get_segmenter(model, pretrained, device, half=half)
    image = stroke_image(layer_data(image_layer), layout, planes)
    return segmenter.exemplars(image, masks, config=config)


def measure_layer(labels_layer, image_layer=None, viewer=None, *, add_layer: bool = True,
                  **kwargs: Any):
    """Measure a Labels layer as it is now (edits included); add its objects layer.

    Parameters
    ----------
    labels_layer : napari.layers.Labels or str
        The labels (or its name in ``viewer``), e.g. ``"<image> labels"`` from
        :func:`segment_layer`: its current data is measured, class names come from its
        ``features``, physical units from its ``scale``, ``translate`` and ``units``.
    image_layer : napari.layers.Image or str, optional
        Intensities from this image (default: the layer the labels were segmented from,
        when its shape fits).
    viewer : napari.Viewer, optional
        Where the ``"<image> objects"`` layer goes (default: the current viewer).
    add_layer : bool
        Add (or update) the objects Labels layer: the instances, with the object rows in
        its ``features`` (hovering shows an object's class and area).
    **kwargs
        More options of :func:`napari_itaclip.measure` (``min_size``, ``connectivity``,
        ``object_classes``, ``split``, ...).

    Returns
    -------
    Measurements
        ``.classes``, ``.objects``, ``.instances`` as :func:`napari_itaclip.measure`.

    Examples
    --------
    ::

        from napari_itaclip import measure_layer
        m = measure_layer(viewer.layers["cells labels"], viewer=viewer, min_size=20)
        m.classes.to_csv("classes.csv", index=False)
    """
    from ..measurements import measure
    from .measure_layers import measure_inputs, write_objects_layer

    if viewer is None:
        import napari

        viewer = napari.current_viewer()
    if isinstance(labels_layer, str) or isinstance(image_layer, str):
        if viewer is None:
            raise ValueError("a layer name needs a viewer (pass viewer=...)")
        labels_layer = viewer.layers[labels_layer] if isinstance(labels_layer, str) else labels_layer
        image_layer = viewer.layers[image_layer] if isinstance(image_layer, str) else image_layer
    from napari.layers import Labels

    if not isinstance(labels_layer, Labels):
        raise TypeError(f"measure_layer needs a Labels layer, got {type(labels_layer).__name__}")
    inputs = measure_inputs(labels_layer, image_layer, viewer, strict_image=image_layer is not None)
    inputs.update(kwargs)
    result = measure(**inputs)
    if add_layer:
        write_objects_layer(viewer, labels_layer, result)
    return result
