"""One unit spelling everywhere: the micro sign ``µ`` (U+00B5), whatever Pint writes.

Pint 0.26 and later format a micrometre as ``μm`` with the Greek mu (U+03BC), older Pint
with the micro sign; napari layers carry Pint units. The CI runs this module with both
(Python 3.11 gets Pint 0.25, 3.12 and 3.13 get 0.26).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip import measure
from napari_itaclip.measurements.units import MICRO_SIGN, unit_name

MICRO_UM = "\u00b5m"  # micro sign
GREEK_UM = "\u03bcm"  # Greek small letter mu


@pytest.mark.parametrize(("given", "expected"), [
    ("um", MICRO_UM), (GREEK_UM, MICRO_UM), (MICRO_UM, MICRO_UM), ("Micron", MICRO_UM),
    (" microns ", MICRO_UM), ("micrometre", MICRO_UM), ("\\u00b5m", MICRO_UM),
    ("nm", "nm"), ("mm", "mm"), ("Mm", "Mm"), ("units", "units"), ("px", "px"),
    ("\u03bcs", "\u00b5s"), ("", None), ("  ", None), (None, None),
])
def test_unit_name(given, expected):
    assert unit_name(given) == expected


def test_pint_units_of_any_version_give_the_micro_sign():
    pint = pytest.importorskip("pint")
    for registry in (pint.UnitRegistry(), pint.get_application_registry()):
        um = registry.Unit("micrometer")
        assert format(um, "~") in (MICRO_UM, GREEK_UM)  # what this Pint writes
        assert unit_name(um) == MICRO_UM
        assert unit_name(registry.Unit("nanometer")) == "nm"
        assert unit_name(registry.Unit("um")) == MICRO_UM
    assert unit_name(MICRO_UM)[0] == MICRO_SIGN


def test_measure_and_its_csv_use_the_micro_sign(tmp_path):
    import pandas as pd

    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 1
    for given in ("um", GREEK_UM, MICRO_UM):
        m = measure(lab, ["background", "cell"], spacing=(0.5, 0.5), unit=given)
        assert m.unit == MICRO_UM
        assert set(m.classes["unit"]) == set(m.objects["unit"]) == {MICRO_UM}
        classes_csv, objects_csv = m.to_csv(tmp_path / "c.csv", tmp_path / "o.csv")
        for path in (classes_csv, objects_csv):
            assert set(pd.read_csv(path, keep_default_na=False)["unit"]) == {MICRO_UM}


def test_a_napari_layers_unit_reads_as_the_csv_writes_it():
    pytest.importorskip("napari")
    from napari.layers import Labels

    from napari_itaclip.plugin.measure_layers import layer_unit

    layer = Labels(np.zeros((4, 4), np.int32), scale=(0.5, 0.5), units="um")
    assert layer_unit(layer) == MICRO_UM
    assert layer_unit(Labels(np.zeros((4, 4), np.int32))) is None  # pixels
