"""One spelling per length unit in every table, CSV file and layer: ``µm``, never ``μm``.

Units reach the measurements as text typed by users (``--unit um``), from TIFF metadata
(``micron``, ``\\u00b5m``) and from napari layers, whose ``units`` are Pint units: Pint
0.26 and later format a micrometre as ``μm`` with the Greek small letter mu (U+03BC),
older Pint with the micro sign (U+00B5). :func:`unit_name` is the one place they become
one spelling, the micro sign, which is what the CSV files have always written.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MICRO_SIGN", "unit_name"]

#: U+00B5 MICRO SIGN: the one spelling of "micro" in units.
MICRO_SIGN = "\u00b5"
_GREEK_MU = "\u03bc"
_ALIASES = {
    "um": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm", "micrometre": "µm",
    "micrometers": "µm", "micrometres": "µm", "\\u00b5m": "µm", "\\u03bcm": "µm",
    "nanometer": "nm", "nanometre": "nm", "millimeter": "mm", "millimetre": "mm",
    "centimeter": "cm", "centimetre": "cm", "meter": "m", "metre": "m",
}


def unit_name(unit: Any) -> str | None:
    """The spelling of a length unit: text or a Pint unit in, ``"µm"``-style text out.

    Micrometre spellings (``um``, ``micron``, ``μm`` with a Greek mu, a Pint unit) become
    ``µm`` with the micro sign; other names are kept as given, with any Greek mu replaced
    by the micro sign. None or blank text gives None.
    """
    if unit is None:
        return None
    text = format(unit, "~") if hasattr(unit, "dimensionality") else str(unit)
    text = text.strip()
    if not text:
        return None
    text = _ALIASES.get(text if len(text) <= 2 else text.lower(), text)  # "Mm" is not "mm"
    return text.replace(_GREEK_MU, MICRO_SIGN)
