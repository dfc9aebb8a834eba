"""The advanced settings: an editor for ITACLIPConfig built from its field table.

One control per field of :func:`napari_itaclip.config.field_info` (except the
thresholds, which have their own sliders), with the table's range, help text as
tooltip and ``None`` shown as the minimum of an optional number's spin box. A field
added to the config appears here without code changes. The editor sits in a superqt
``QCollapsible``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from ...config import FieldInfo, ITACLIPConfig, field_info
from ...identity import DEFAULT_FEATURE_CACHE_MB

__all__ = ["THRESHOLD_FIELDS", "AdvancedPanel"]

#: Fields edited by the threshold sliders instead.
THRESHOLD_FIELDS = ("prob_threshold", "area_threshold")
#: Fields edited elsewhere in the widget (the Scale panel: in the layer's units).
OTHER_FIELDS = ("object_size",)
_INT_MAX, _FLOAT_MAX = 100_000, 1.0e6


class AdvancedPanel(QCollapsible):
    """Collapsible editor of every config field (the thresholds excepted).

    ``fields`` maps each field name to its Qt control.
    """

    def __init__(self, parent=None) -> None:
        super().__init__("Advanced settings", parent)
        self.setDuration(0)  # no animation: the form is long
        self._base = ITACLIPConfig()
        self._info = {n: i for n, i in field_info().items()
                      if n not in THRESHOLD_FIELDS and n not in OTHER_FIELDS}
        self.fields: dict[str, QWidget] = {}
        form_widget = QWidget()
        form = QFormLayout(form_widget)
        form.setContentsMargins(0, 0, 0, 0)
        for name, info in self._info.items():
            control = _control(info)
            control.setToolTip(info.help)
            self.fields[name] = control
            form.addRow(name.replace("_", " "), control)
        self.feature_cache = QDoubleSpinBox()
        self.feature_cache.setRange(0.0, 1e6)
        self.feature_cache.setDecimals(0)
        self.feature_cache.setSingleStep(256.0)
        self.feature_cache.setSuffix(" MB")
        self.feature_cache.setValue(DEFAULT_FEATURE_CACHE_MB)
        self.feature_cache.setToolTip(
            "Bound of the model's in-memory image-feature cache (0 = off): a new vocabulary "
            "on an image already segmented skips the ViT while its features fit.")
        form.addRow("feature cache", self.feature_cache)
        self.addWidget(form_widget)
        self.set_config(self._base)

    def set_config(self, cfg: ITACLIPConfig) -> None:
        """Show ``cfg``'s values (the thresholds are kept from it too)."""
        self._base = cfg
        for name, info in self._info.items():
            _show(self.fields[name], info, getattr(cfg, name))

    def feature_cache_mb(self) -> float:
        """The image-feature cache bound the model gets (part of the model identity)."""
        return float(self.feature_cache.value())

    def config(self) -> ITACLIPConfig:
        """The panel's value: the edited configuration (ValueError with the reason)."""
        changes: dict[str, Any] = {}
        for name, info in self._info.items():
            changes[name] = _read(self.fields[name], info)
        return dataclasses.replace(self._base, **changes)


def _none_floor(info: FieldInfo) -> float | None:
    """The spin-box value standing for None (below the lowest valid value), or None."""
    if not info.optional:
        return None
    low = info.low if info.low is not None else 0
    return low if info.low_open else low - (info.step or 1)


def _control(info: FieldInfo) -> QWidget:
    if info.choices:
        w = QComboBox()
        w.addItems(list(info.choices))
        return w
    if info.kind == "bool":
        return QCheckBox()
    if info.kind in ("int", "float"):
        w = QSpinBox() if info.kind == "int" else QDoubleSpinBox()
        floor = _none_floor(info)
        low = floor if floor is not None else (info.low if info.low is not None else -_INT_MAX)
        high = info.high if info.high is not None else (
            info.ui_high or (_INT_MAX if info.kind == "int" else _FLOAT_MAX))
        if info.kind == "float":
            w.setDecimals(3)
            w.setSingleStep(info.step or 0.1)
        w.setRange(low, high)
        if floor is not None:
            w.setSpecialValueText(info.none_means or "none")
        return w
    w = QLineEdit()
    if info.kind == "ints":
        w.setPlaceholderText("comma-separated integers")
    return w


def _show(w: QWidget, info: FieldInfo, value: Any) -> None:
    if info.choices:
        w.setCurrentText(str(value))
    elif info.kind == "bool":
        w.setChecked(bool(value))
    elif info.kind in ("int", "float"):
        w.setValue(_none_floor(info) if value is None else value)
    else:
        w.setText(info.format(value) if info.kind == "ints" else str(value))


def _read(w: QWidget, info: FieldInfo) -> Any:
    if info.choices:
        return w.currentText()
    if info.kind == "bool":
        return w.isChecked()
    if info.kind in ("int", "float"):
        floor = _none_floor(info)
        value = w.value()
        return None if floor is not None and value <= floor else value
    if info.kind == "ints":
        return info.parse(w.text())  # ValueError names the field and an example
    return w.text()
