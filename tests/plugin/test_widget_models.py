"""The widget's model picker (the catalogue) and a run with a timm + Hugging Face model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

RUN_TIMEOUT = 60_000  # ms; the first run also builds the tiny BERT tower


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    from _timm_hf import tiny_timm_bert_folder

    return tiny_timm_bert_folder(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def widget(make_napari_viewer, tiny_config):
    from _widgets import open_widget

    viewer = make_napari_viewer()
    w = open_widget(viewer)
    w.use_segmenter(None)
    w.set_config(tiny_config)
    w.model_panel.device_combo.setCurrentText("cpu")
    return viewer, w


def _model(w):
    settings = w.model_panel.settings()
    return settings.model, settings.pretrained


def test_model_picker_lists_the_catalogue(widget):
    from napari_itaclip.catalogue import CATALOGUE
    from napari_itaclip.engine.registry import SegmenterKey

    _viewer, w = widget
    items = [w.model_panel.model_combo.itemText(i) for i in range(w.model_panel.model_combo.count())]
    assert items[: len(CATALOGUE)] == [e.label for e in CATALOGUE]
    assert w.model_panel.model_combo.currentText() == CATALOGUE[0].label
    assert _model(w) == ("ViT-B-16", "openai")
    tip = w.model_panel.model_combo.itemData(2, 3)  # Qt.ToolTipRole: towers, size, licence
    assert "PubMedBERT" in tip and "MIT" in tip and "napari-itaclip[hf]" in tip
    for e in CATALOGUE:
        w.model_panel.model_combo.setCurrentIndex(items.index(e.label))
        assert w.model_panel.pretrained_combo.currentText() == (e.pretrained or "")
        model, pretrained = _model(w)
        assert (model, pretrained) == (e.model, e.pretrained)
        key = SegmenterKey(model, pretrained, "cpu")
        assert key.model == e.model and key.pretrained == e.pretrained
    # a name typed by hand is used as it is, with the pretrained field's value
    w.model_panel.model_combo.setCurrentText("ViT-L-14")
    w.model_panel.pretrained_combo.setCurrentText("/data/ckpt.pt")
    assert _model(w) == ("ViT-L-14", "/data/ckpt.pt")


def test_widget_runs_a_timm_trunk_with_a_bert_text_tower(widget, qtbot, hub_dir):
    """local-dir: model with a timm ViT trunk and a Hugging Face BERT, through the picker."""
    from napari.layers import Labels

    from napari_itaclip.engine import registry
    from napari_itaclip.engine.backbone import TimmViT

    registry.clear()
    viewer, w = widget
    rng = np.random.default_rng(0)
    viewer.add_image((rng.random((40, 48, 3)) * 255).astype(np.uint8), name="img")
    w.set_vocabulary("background: wall\ncell\nnucleus")
    w.model_panel.model_combo.setCurrentText(f"local-dir:{hub_dir}")
    w.model_panel.pretrained_combo.setCurrentText("")
    w.run_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=RUN_TIMEOUT)
    assert w.status_label.text().startswith("Done"), w.status_label.text()
    seg = registry.get_segmenter(w.model_panel.settings().key())
    assert seg.is_loaded and isinstance(seg.backbone, TimmViT)
    labels = [lay for lay in viewer.layers if isinstance(lay, Labels)]
    assert len(labels) == 1 and labels[0].data.shape == (40, 48)
    ref = seg.segment(viewer.layers["img"].data, "background: wall\ncell\nnucleus",
                      config=w.config())
    np.testing.assert_array_equal(labels[0].data, ref.labels)
    registry.clear()


def test_domain_samples_suggest_their_model(make_napari_viewer):
    from napari_itaclip import Vocabulary
    from napari_itaclip.plugin.sample_data import SAMPLES

    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
    viewer.open_sample("napari-itaclip", "shepp_logan_phantom")
    layer = viewer.layers["CT phantom"]
    assert layer.data.shape == (400, 400) and layer.data.dtype == np.uint8
    assert w.vocabulary() == Vocabulary.parse(SAMPLES["shepp_logan_phantom"][2])
    assert "BiomedCLIP" in w.status_label.text()
