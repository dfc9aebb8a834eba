"""The package's public surface (the names users import) and its import cost."""

from _imports import loaded_by


def test_import_is_cheap_and_gui_free():
    assert loaded_by("import napari_itaclip") == []
    # the public names resolve lazily; the engine's pull in torch, never Qt or napari
    assert loaded_by("from napari_itaclip import ITACLIPConfig, Segmenter, Vocabulary, "
                     "SegmentationResult, segment", ("napari", "qtpy", "magicgui")) == []


def test_measure_import_is_cheap():
    assert loaded_by("from napari_itaclip import measure, Measurements",
                     ("pandas", "skimage", "torch", "napari")) == []


def test_public_names():
    import napari_itaclip as m
    from napari_itaclip.config import ITACLIPConfig
    from napari_itaclip.engine import registry, segmenter
    from napari_itaclip.measurements import Measurements, measure
    from napari_itaclip.plugin import scripting
    from napari_itaclip.vocabulary import Vocabulary

    homes = {"ITACLIPConfig": ITACLIPConfig, "Segmenter": segmenter.Segmenter,
             "Vocabulary": Vocabulary, "SegmentationResult": segmenter.SegmentationResult,
             "segment": registry.segment, "segment_layer": scripting.segment_layer,
             "Progress": segmenter.Progress, "measure": measure, "Measurements": Measurements,
             "measure_layer": scripting.measure_layer}
    for name, obj in homes.items():
        assert name in m.__all__ and getattr(m, name) is obj  # the real thing, lazily
    assert callable(m.Segmenter.iter_segment) and callable(m.SegmentationResult.relabel)
    assert callable(m.SegmentationResult.measure)
