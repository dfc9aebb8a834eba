"""Everything napari: the dock widget, the output layers, ``segment_layer``, sample data.

The only subpackage that imports napari, Qt (qtpy), superqt or magicgui; the rest of
napari-itaclip runs without a display.
"""
