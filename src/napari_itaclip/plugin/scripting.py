"""napari side of the public API: :func:`segment_layer` and :func:`measure_layer`, for
scripts and the napari console.

napari is imported inside the function only; ``napari_itaclip`` re-exports
both lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..catalogue import DEFAULT_PRETRAINED
from ..planes import COMPOSITE, RunProgress, iter_segment_slices
from ..progress import drain
from .layers import layer_data, layout_for_layer, resolve_slices, write_layers

if TYPE_CHECKING:
    import napari

    from ..config import ITACLIPConfig
    from ..vocabulary import Vocabulary

__all__ = ["measure_layer", "segment_layer"]


def segment_layer(
    layer: napari.layers.Image | str,
    vocabulary: Vocabulary | str | Sequence[str],
    *,
    viewer: napari.Viewer | None = None,
    config: ITACLIPConfig | None = None,
    model: str = "ViT-B-16",
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    segmenter=None,
    half: bool = False,
    channel_axis: int | None = None,
    channel: int | str = COMPOSITE,
    slices: str | Sequence = "all",
    progress: Callable[[RunProgress], None] | None = None,
    **kwargs: Any,
):
    r"""Segment a napari image layer and add (or update) its labels and heatmaps.

    Parameters
    ----------
    layer : napari.layers.Image or str
        The image layer (or its name in ``viewer``). 2D grey, RGB(A), or nD: every
        2D plane over the leading axes is segmented.
    vocabulary : Vocabulary, str or list of str
        Anything :meth:`Vocabulary.coerce` accepts, e.g. ``"cell, nucleus, background"``.
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
    vocab = Vocabulary.coerce(vocabulary)
    if segmenter is None:
        segmenter = get_segmenter(model, pretrained, device, half=half)
    if kwargs:
        base = config if config is not None else segmenter.config
        config = base.replace(**kwargs)
    layout = layout_for_layer(layer, channel_axis, channel)
    indices = resolve_slices(layer, layout, slices, viewer)
    gen = iter_segment_slices(segmenter, layer_data(layer), layout, indices, vocab, config)
    stack = drain(gen, progress)
    return write_layers(viewer, layer, stack)


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
