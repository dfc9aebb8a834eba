"""What the plugin wrote into a Labels layer, and so which pixels the user edited.

An *edit* is a pixel whose value in the Labels layer differs from the value the plugin
last wrote there: brush, fill, polygon, eraser, undo/redo and ``layer.data[...] = v``
from napari's console all count, because the layer is compared with the record rather
than followed through its events (undo and code writes emit no ``paint`` event).

Every write of the plugin (a run, a relabel, a Live re-run, ``segment_layer``) goes
through :meth:`LabelsRecord.write`, which writes only where the layer still holds what
the plugin wrote, so an edited pixel keeps its value until the user discards the edits.

Memory: the record keeps, for each plane the plugin wrote, a copy of what it wrote, in
the smallest integer type that holds the values (1 byte per pixel with < 256 label
values, 2 bytes up to 65535, else 4). Planes never written hold 0 in the layer and
take no memory. The record lives beside the layer object (a weak reference: it goes
with the layer) for the whole session, so closing and reopening the widget keeps it;
a layer loaded from a file, or written in another session, has none (see
:func:`labels_target`). Records are keyed by the layer object behind napari's proxies
(:func:`~napari_itaclip.plugin.refs.unwrap`), so any handle of a layer finds its record.

Writes come in row bands (:meth:`LabelsRecord.write_band`), so the GUI thread can write a
large plane in short steps; each band reads the layer as it is at that moment, so a
stroke painted between two steps is kept too.

Undo: napari's undo history holds, for each stroke, the values under it *before* the
stroke. After the plugin has written the layer again, undoing an older stroke would put
back an earlier run's labels and the record would call them the model's. So every
write of the plugin starts a new undo history (:func:`reset_undo`): Ctrl+Z undoes the
strokes painted since the plugin last wrote the layer; older strokes stay edits (kept,
and given back with *Discard edits*).

No napari or Qt import here: the functions take the layer objects they are given.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .refs import unwrap

__all__ = ["PAINTED_MARKER", "LabelsRecord", "adopt", "compact", "exemplar_values",
           "labels_target", "record_of", "reset_undo", "split_painted", "strokes",
           "value_lut", "with_painted"]

_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WRITES = itertools.count(1)  # orders the records: the layer written last wins
_CLASS_N = re.compile(r"^class (\d+)$")


def compact(values: np.ndarray) -> np.ndarray:
    """``values`` in the smallest unsigned type that holds them (int32 if any is < 0)."""
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:
        return values.astype(np.int32)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.int64)


@dataclass
class LabelsRecord:
    """What the plugin last wrote into one Labels layer, plane by plane.

    Attributes
    ----------
    shape : tuple of int
        The layer's data shape when the record was made (a layer of another shape has
        no valid record).
    source : LayerRef, str or None
        The image layer the labels belong to (a
        :class:`~napari_itaclip.plugin.refs.LayerRef`, which follows renames).
    planes : dict
        Slice index -> the values last written there (compact dtype); planes missing
        here were written as 0.
    lut : ndarray or None
        Layer value of each default value (engine label + offset): the painted values
        of exemplar-only classes; None = identity.
    """

    shape: tuple[int, ...]
    source: Any = None
    planes: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict)
    lut: np.ndarray | None = None
    serial: int = field(default_factory=lambda: next(_WRITES))

    def touch(self) -> None:
        """Mark this record as the one written last (see :func:`labels_target`)."""
        self.serial = next(_WRITES)

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the slice grid."""
        return tuple(self.shape[:-2])

    def all_slices(self) -> list[tuple[int, ...]]:
        """Every slice index of the layer, in C order."""
        return [tuple(int(i) for i in idx) for idx in np.ndindex(*self.leading_shape)]

    def written(self, idx: tuple[int, ...]) -> np.ndarray | int:
        """What the plugin last wrote into plane ``idx`` (0 for a plane never written)."""
        return self.planes.get(tuple(idx), 0)

    def edited(self, data, idx: tuple[int, ...], rows: slice = slice(None)) -> np.ndarray:
        """Boolean (H, W) mask of the edited pixels of plane ``idx`` of ``data`` (of its
        rows ``rows`` only, when given: a band read from ``data`` alone).
        """
        idx = tuple(idx)
        written = self.written(idx)
        if isinstance(written, np.ndarray):
            written = written[rows]
        return np.asarray(data[idx + (rows,)]) != written

    def count(self, data, idx: tuple[int, ...], rows: slice = slice(None)) -> int:
        """How many pixels of plane ``idx`` (of its rows ``rows``) are edited."""
        return int(np.count_nonzero(self.edited(data, idx, rows)))

    def to_layer(self, values: np.ndarray) -> np.ndarray:
        """Default layer values (engine label + offset) -> this layer's values."""
        if self.lut is None:
            return values
        lut = self.lut
        if values.size and int(values.max()) >= len(lut):
            lut = np.concatenate([lut, np.arange(len(lut), int(values.max()) + 1)])
        return lut[values].astype(np.int32, copy=False)

    def write(self, data, idx: tuple[int, ...], values: np.ndarray) -> int:
        """Write ``values`` into plane ``idx`` except where it is edited; returns edits kept.

        The record of an edited pixel keeps its old value (the pixel stays an edit).
        """
        if isinstance(data, np.ndarray) and data.flags.writeable:
            return self.write_band(data, idx, slice(None), values)
        idx = tuple(idx)  # another array type (zarr, ...): whole-plane assignment
        values = np.asarray(values)
        current = np.array(data[idx])
        plane = self._plane(idx, values)
        mask = current != plane
        n = int(np.count_nonzero(mask))
        np.copyto(current, values, where=~mask, casting="unsafe")
        np.copyto(plane, values, where=~mask, casting="unsafe")
        data[idx] = current
        return n

    def write_band(self, data, idx: tuple[int, ...], rows: slice, values: np.ndarray,
                   cols: slice = slice(None)) -> int:
        """:meth:`write` for the rows ``rows`` (and columns ``cols``: a tile) of plane
        ``idx`` only (``values``: that part).

        ``data`` must be a writable numpy array (the layer's); the band is compared with
        the record as the layer holds it now, so one plane can be written in several
        steps with strokes painted in between.
        """
        idx = tuple(idx)
        values = np.asarray(values)
        plane = self._plane(idx, values)
        current = data[idx][rows, cols]
        old = plane[rows, cols]
        mask = current != old
        n = int(np.count_nonzero(mask))
        if n:
            keep = ~mask
            np.copyto(current, values, where=keep, casting="unsafe")
            np.copyto(old, values, where=keep, casting="unsafe")
        else:
            current[...] = values
            old[...] = values
        return n

    def _plane(self, idx: tuple[int, ...], values: np.ndarray) -> np.ndarray:
        """The record's (writable) plane ``idx``, wide enough for ``values``."""
        plane = self.planes.get(idx)
        need = compact(np.asarray([0, int(values.max()) if values.size else 0,
                                   int(values.min()) if values.size else 0]))
        if plane is None:
            plane = np.zeros(self.shape[-2:], dtype=need.dtype)
        elif np.promote_types(plane.dtype, need.dtype) != plane.dtype:
            plane = plane.astype(np.promote_types(plane.dtype, need.dtype))
        elif not plane.flags.writeable:
            plane = plane.copy()
        self.planes[idx] = plane
        return plane

    def discard(self, data, idx: tuple[int, ...], values: np.ndarray) -> int:
        """Give the edited pixels of plane ``idx`` back to ``values`` (the model's labels).

        Only those pixels are written, and only they change in the record: the others
        hold what the plugin last wrote, which may differ from ``values`` (thresholds set
        without a relabel), and stay the model's.
        """
        idx = tuple(idx)
        mask = self.edited(data, idx)
        n = int(np.count_nonzero(mask))
        if n:
            plane = np.asarray(data[idx]).copy()
            plane[mask] = np.asarray(values, dtype=np.int32)[mask]
            data[idx] = plane
            written = np.broadcast_to(np.asarray(self.written(idx), dtype=np.int32),
                                      plane.shape)
            self.planes[idx] = compact(np.where(mask, plane, written).astype(np.int32))
        return n

    def edited_planes(self, data) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        """``(idx, mask)`` for every plane holding an edit (compares every plane)."""
        for idx in self.all_slices():
            mask = self.edited(data, idx)
            if mask.any():
                yield idx, mask


def record_of(layer) -> LabelsRecord | None:
    """The plugin's record of ``layer``, or None (not written by the plugin, or resized)."""
    if layer is None:
        return None
    try:
        record = _RECORDS.get(unwrap(layer))
    except TypeError:  # not weak-referenceable: never ours
        return None
    data = getattr(layer, "data", None)
    if record is None or tuple(getattr(data, "shape", ())) != record.shape:
        return None
    return record


def adopt(layer, source=None, record: LabelsRecord | None = None) -> LabelsRecord:
    """Start (or attach) the record of a layer the plugin has just written as a whole."""
    if record is None:
        record = LabelsRecord(tuple(layer.data.shape), source)
    record.touch()
    _RECORDS[unwrap(layer)] = record
    return record


def reset_undo(layer) -> bool:
    """Start a new undo history of a Labels layer (see the module docstring); True if done.

    Uses napari's public route: a Labels layer resets its history when it stops being
    editable. The user's tool (brush, fill, ...) is restored afterwards.
    """
    if not getattr(layer, "editable", False):
        return False
    mode = getattr(layer, "mode", None)
    layer.editable = False
    layer.editable = True
    if mode is not None and layer.mode != mode:
        layer.mode = mode
    return True


def ours_for(layers, source, kind: type, shape: Sequence[int] | None = None):
    """The Labels layer the plugin wrote last for ``source`` (a LayerRef), or None.

    Found by the records, whatever the layer and the source are called now.
    """
    best, serial = None, -1
    for layer in layers:
        record = record_of(layer) if isinstance(layer, kind) else None
        if (record is None or record.source is None or not hasattr(record.source, "is_")
                or record.source != source):
            continue
        if shape is not None and tuple(shape) != record.shape:
            continue
        if record.serial > serial:
            best, serial = layer, record.serial
    return best


def labels_target(layers, base: str, kind: type, shape: Sequence[int] | None = None
                  ) -> tuple[Any, str]:
    """The Labels layer to write for the output name ``base``, and its name.

    The first of ``base``, ``base [2]``, ``base [3]``, ... that is either a Labels layer
    the plugin wrote (it has a record: updated in place, edits kept) or free (written
    new). A layer of that name the plugin cannot vouch for (loaded from a file, written
    in another session, made by hand, not a Labels layer) is never overwritten, nor
    one of ours holding edits whose shape differs from ``shape`` (a new image).
    """
    names = {layer.name: layer for layer in layers}
    k = 1
    while True:
        name = base if k == 1 else f"{base} [{k}]"
        layer = names.get(name)
        if layer is None:
            return None, name
        record = record_of(layer) if isinstance(layer, kind) else None
        if record is not None and (shape is None or tuple(shape) == record.shape
                                   or next(record.edited_planes(layer.data), None) is None):
            return layer, name
        k += 1


def exemplar_values(class_names: Sequence[str], n_text: int, offset: int,
                    preferred: Mapping[str, int] | None = None,
                    features_values: Mapping[str, int] | None = None) -> list[int]:
    """The layer value of every class: text classes ``index + offset``, then the others.

    An exemplar-only class (index >= ``n_text``) keeps the value the user painted it
    with: ``preferred[name]``, else the value the layer's features give its name,
    else ``N`` for a name ``"class N"``, else the next free value.
    """
    values = [i + offset for i in range(n_text)]
    taken = set(values) | {0}
    preferred = dict(preferred or {})
    known = dict(features_values or {})
    nxt = n_text + offset
    for name in class_names[n_text:]:
        match = _CLASS_N.match(str(name))
        want = [preferred.get(name), known.get(name), int(match.group(1)) if match else None]
        value = next((v for v in want if v is not None and v > 0 and v not in taken), None)
        if value is None:
            while nxt in taken:
                nxt += 1
            value = nxt
        values.append(int(value))
        taken.add(int(value))
    return values


def value_lut(values: Sequence[int], offset: int) -> np.ndarray | None:
    """The LUT of :attr:`LabelsRecord.lut` for these class values (None if identity)."""
    default = [i + offset for i in range(len(values))]
    if list(values) == default:
        return None
    lut = np.arange(max(len(values) + offset, 1), dtype=np.int32)
    for d, v in zip(default, values):
        lut[d] = v
    return lut


# -- painted classes in the vocabulary editor ---------------------------------------------
#: The line of the vocabulary editor under which the painted (exemplar-only) classes are
#: listed, one ``value: name`` per line (a comment to the vocabulary parser).
PAINTED_MARKER = "# painted classes (exemplars only, no text), value: name"
_PAINTED_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.*?)\s*$")


def split_painted(text: str) -> tuple[str, dict[int, str]]:
    """The vocabulary part of the editor's text, and its painted classes ``{value: name}``.

    Raises ValueError for a line under :data:`PAINTED_MARKER` that is not ``value: name``.
    """
    lines = text.splitlines()
    try:
        at = next(i for i, line in enumerate(lines) if line.strip() == PAINTED_MARKER)
    except StopIteration:
        return text, {}
    painted: dict[int, str] = {}
    for line in lines[at + 1:]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PAINTED_LINE.match(line)
        if match is None or not match.group(2) or int(match.group(1)) <= 0:
            raise ValueError(f"painted class line {line.strip()!r}: write 'value: name', "
                             "e.g. '7: mitochondrion'")
        painted[int(match.group(1))] = match.group(2)
    names = list(painted.values())
    if len(set(names)) != len(names):
        raise ValueError("two painted classes have the same name")
    return "\n".join(lines[:at]), painted


def with_painted(text: str, painted: Mapping[int, str]) -> str:
    """``text`` with a ``value: name`` line for each value of ``painted`` it lacks."""
    _vocab, have = split_painted(text)
    missing = [(v, n) for v, n in painted.items() if v not in have]
    if not missing:
        return text
    out = text.rstrip("\n")
    if PAINTED_MARKER not in (line.strip() for line in text.splitlines()):
        out += "\n" + PAINTED_MARKER
    return out + "".join(f"\n{v}: {n}" for v, n in missing)


def strokes(layer, record: LabelsRecord) -> dict[int, dict[tuple[int, ...], np.ndarray]]:
    """The edited pixels of ``layer`` by value: ``{value: {plane: mask}}``; 0 (erased) left out."""
    out: dict[int, dict[tuple[int, ...], np.ndarray]] = {}
    for idx, mask in record.edited_planes(layer.data):
        plane = np.asarray(layer.data[idx])
        for v in np.unique(plane[mask]):
            if int(v) != 0:
                out.setdefault(int(v), {})[idx] = mask & (plane == v)
    return out


def stroke_masks(by_value: Mapping[int, Mapping[tuple[int, ...], np.ndarray]],
                 names: Mapping[int, str]) -> tuple[list[tuple[int, ...]], dict[str, np.ndarray]]:
    """The planes holding strokes, and one boolean mask per class name.

    The masks are (H, W) when the strokes lie on one plane, else ``(planes, H, W)`` in
    the order of the returned planes. Values with the same name are merged.
    """
    planes = sorted({idx for per_plane in by_value.values() for idx in per_plane})
    if not planes:
        return [], {}
    shape = next(iter(next(iter(by_value.values())).values())).shape
    masks: dict[str, np.ndarray] = {}
    for value, per_plane in by_value.items():
        name = names[value]
        m = masks.setdefault(name, np.zeros((len(planes), *shape), dtype=bool))
        for idx, mask in per_plane.items():
            m[planes.index(idx)] |= mask
    if len(planes) == 1:
        masks = {k: v[0] for k, v in masks.items()}
    return planes, masks


def stroke_image(data, layout, planes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """The image under the strokes: one plane, or the planes stacked (matching the masks)."""
    images = [layout.get_plane(data, idx) for idx in planes]
    return images[0] if len(images) == 1 else np.stack(images)
