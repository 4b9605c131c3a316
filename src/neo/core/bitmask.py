"""Token bitmask helpers, in the packed int32 format xgrammar, llguidance and vLLM use.

A bitmask has shape ``(rows, ceil(vocab_size / 32))`` and dtype int32; bit ``j`` of word ``w`` is
token ``32 * w + j``, 1 = allowed. So masks from neo plug into their apply kernels and theirs into
ours. The apply itself lives in ``neo.kernels`` (Triton on CUDA, the torch reference elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: neo.core loads without it
    import torch

__all__ = ["get_bitmask_shape", "allocate_token_bitmask", "apply_token_bitmask_inplace", "bitmask_to_bool"]


def get_bitmask_shape(batch_size: int, vocab_size: int) -> tuple[int, int]:
    """``(batch_size, ceil(vocab_size / 32))``."""
    from .layout import as_int

    batch_size, vocab_size = as_int(batch_size, "batch_size"), as_int(vocab_size, "vocab_size")
    if batch_size < 0 or vocab_size <= 0:
        raise ValueError(f"need batch_size >= 0 and vocab_size > 0, got {batch_size}, {vocab_size}")
    return (batch_size, (vocab_size + 31) // 32)


def allocate_token_bitmask(batch_size: int, vocab_size: int, *, device: str | torch.device = "cpu",
                           pin_memory: bool = False) -> torch.Tensor:
    """An int32 bitmask of shape :func:`get_bitmask_shape`, all tokens allowed (every word -1)."""
    import torch

    shape = get_bitmask_shape(batch_size, vocab_size)
    return torch.full(shape, -1, dtype=torch.int32, device=device, pin_memory=pin_memory)


def apply_token_bitmask_inplace(logits: torch.Tensor, bitmask: torch.Tensor, indices: Any = None,
                                *, vocab_size: int | None = None, backend: str = "auto") -> None:
    """Set disallowed logits to ``-inf`` in place.

    Parameters
    ----------
    logits : float tensor (batch, V) or (V,) (fp32/fp16/bf16; row stride may exceed V)
    bitmask : int32 tensor (batch, ceil(V/32)) on the logits' device
    indices : int sequence or tensor, optional
        Only these rows; as in xgrammar, bitmask row ``indices[i]`` applies to logits row
        ``indices[i]``, so neo's and xgrammar's masks are interchangeable.
    vocab_size : int, optional
        Columns at or past it are left alone (xgrammar's behaviour for padded logits); by default
        columns past ``32 * bitmask.shape[1]`` are disallowed and mask words past V are ignored.
    backend : {"auto", "triton", "torch"}
        ``auto`` uses Triton on CUDA tensors and the torch reference otherwise.
    """
    from ..kernels import apply_token_bitmask_inplace as _apply

    _apply(logits, bitmask, indices=indices, vocab_size=vocab_size, backend=backend)


def bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpack to a bool tensor ``(rows, vocab_size)`` (True = allowed); for tests and debugging."""
    import torch

    if bitmask.dtype != torch.int32:
        raise TypeError(f"bitmask must be int32, got {bitmask.dtype}")
    bits = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    unpacked = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().reshape(bitmask.shape[0], -1)
    return unpacked[:, :vocab_size]
