"""Names shared by the widget and the sample data (no imports, so both stay cheap)."""

#: Layer metadata key holding a suggested vocabulary (text form); sample data sets it.
VOCAB_METADATA_KEY = "itaclip_vocabulary"
