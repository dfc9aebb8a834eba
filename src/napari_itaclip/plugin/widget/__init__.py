"""The ITACLIP dock widget (see :mod:`.dock`)."""

from .dock import ITACLIPWidget

__all__ = ["ITACLIPWidget"]
