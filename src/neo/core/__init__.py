"""The Python face of the C++ core: token layout, the SID index (trie) and the batched decode state that
fills packed int32 token bitmasks."""

from .bitmask import allocate_token_bitmask, apply_token_bitmask_inplace, bitmask_to_bool, get_bitmask_shape
from .index import DecodeState, IndexFormatError, RowStatus, SidIndex
from .layout import TokenLayout, TypeBands

__all__ = ["TokenLayout", "TypeBands", "SidIndex", "DecodeState", "RowStatus", "IndexFormatError",
           "get_bitmask_shape", "allocate_token_bitmask", "apply_token_bitmask_inplace", "bitmask_to_bool"]
