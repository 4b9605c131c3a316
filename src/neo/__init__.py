"""neo: catalog-grounded generation with semantic-ID constrained decoding.

Core objects (C++ backed): :class:`SidIndex` (prefix trie over a catalog's semantic IDs) and
:class:`DecodeState` (batched per-row decoding state that fills packed int32 token bitmasks).
"""

from .bitmask import allocate_token_bitmask, apply_token_bitmask_inplace, bitmask_to_bool, get_bitmask_shape
from .index import DecodeState, IndexFormatError, RowStatus, SidIndex
from .layout import TokenLayout, TypeBands

__version__ = "0.1.0"

__all__ = [
    "TokenLayout",
    "TypeBands",
    "SidIndex",
    "DecodeState",
    "RowStatus",
    "IndexFormatError",
    "get_bitmask_shape",
    "allocate_token_bitmask",
    "apply_token_bitmask_inplace",
    "bitmask_to_bool",
]
