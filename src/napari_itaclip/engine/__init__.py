"""The ITACLIP engine: no Qt, no napari; numpy in, numpy out at its edge."""
