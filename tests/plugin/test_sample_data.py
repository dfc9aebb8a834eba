"""Sample data: offline scikit-image pictures with a suggested vocabulary each."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip import Vocabulary
from napari_itaclip.plugin.sample_data import SAMPLES


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_sample_functions(key):
    from napari_itaclip.plugin import sample_data as _sample_data

    [(data, kwargs, kind)] = getattr(_sample_data, f"make_{key}")()
    assert kind == "image"
    assert data.dtype == np.uint8
    assert data.ndim == 2 or (data.ndim == 3 and data.shape[-1] == 3)
    vocab = Vocabulary.parse(kwargs["metadata"]["itaclip_vocabulary"])
    assert vocab.has_background and len(vocab) >= 2
    suggested = kwargs["metadata"].get("itaclip_model")
    if suggested is not None:
        from napari_itaclip.catalogue import find_entry

        assert find_entry(suggested) is not None


def test_samples_cover_photos_and_science():
    assert {"astronaut", "chelsea", "coffee"} <= set(SAMPLES)
    assert {"immunohistochemistry", "retina", "cell", "shepp_logan_phantom"} <= set(SAMPLES)
    from napari_itaclip.catalogue import find_entry
    from napari_itaclip.plugin.sample_data import SUGGESTED_MODELS

    # every suggestion is a sample and a catalogue model whose domain suits science images
    assert set(SUGGESTED_MODELS) <= set(SAMPLES) and "cell" in SUGGESTED_MODELS
    for model in SUGGESTED_MODELS.values():
        assert find_entry(model).domain != "general photos"


def test_sample_from_manifest_feeds_widget(make_napari_viewer):
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-itaclip",
                                                         "ITACLIP segmentation")
    viewer.open_sample("napari-itaclip", "chelsea")
    layer = viewer.layers["chelsea"]
    assert layer.rgb and layer.data.shape == (300, 451, 3)
    assert widget.image_panel.layer_picker.current_choice == "chelsea"
    assert widget.vocabulary() == Vocabulary.parse(SAMPLES["chelsea"][2])
