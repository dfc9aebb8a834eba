"""The cursor's view direction in napari's 3D view, before the mouse has moved there.

napari writes the status bar from the cursor (in a thread of its own, for the active
layer). A Labels layer with ``features`` (the plugin's labels carry the class names)
passes the cursor's view direction on as ``np.asarray(view_direction)``; in 2D that
direction is None, and napari sets it only when the mouse moves over the canvas in 3D.
Between the switch to 3D and that first move (Ctrl+Y with the pointer on the canvas, a
script or the console setting ``viewer.dims.ndisplay = 3``, a run that adds a layer),
napari 0.9 fails on the 0-d array ("len() of unsized object", an error notification)
whenever it updates the status bar.

:func:`fill_view_direction` gives the cursor the camera's direction then, which is
what napari sets on the next mouse move for an orthographic camera (napari replaces it
on that move). :func:`follow` does it whenever the view turns 3D or the number of
dimensions changes in 3D (a run that adds heatmaps adds the class axis).
"""

from __future__ import annotations

import numpy as np

from .refs import unwrap

__all__ = ["camera_of", "fill_view_direction", "follow"]


def camera_of(viewer):
    """The viewer's camera: ``viewer.scene.camera`` (napari 0.9), else ``viewer.camera``
    (older napari; deprecated in 0.9), or None.
    """
    camera = getattr(getattr(viewer, "scene", None), "camera", None)
    return camera if camera is not None else getattr(viewer, "camera", None)


def fill_view_direction(viewer) -> bool:
    """In 3D, give the cursor the camera's view direction when it has none (or one of
    another length than the viewer's dimensions); whether it did.
    """
    viewer = unwrap(viewer)
    dims, cursor = getattr(viewer, "dims", None), getattr(viewer, "cursor", None)
    camera = camera_of(viewer)
    if dims is None or cursor is None or camera is None or dims.ndisplay != 3:
        return False
    current = getattr(cursor, "_view_direction", None)
    if current is not None and np.ndim(current) == 1 and len(current) == dims.ndim:
        return False
    try:
        direction = camera.calculate_nd_view_direction(dims.ndim, tuple(dims.displayed))
        if direction is None:
            return False
        cursor._view_direction = np.asarray(direction, dtype=float)
    except (AttributeError, TypeError, ValueError):  # another napari: leave it be
        return False
    return True


def follow(viewer, links) -> None:
    """Fill the view direction now and whenever the view turns 3D or gains dimensions;
    ``links`` (an :class:`~napari_itaclip.plugin.widget.links.EventLinks`) keeps the
    connections for the widget's teardown.
    """
    dims = viewer.dims

    def fill(_event=None) -> None:
        fill_view_direction(viewer)

    links.connect(dims.events.ndisplay, fill)
    links.connect(dims.events.ndim, fill)
    fill()
