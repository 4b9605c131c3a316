"""apply_token_bitmask_inplace: Triton (interpreter on CPU, compiled on GPU) vs the torch reference."""
import os

import pytest
import torch

from neo.kernels import apply_token_bitmask_inplace
from neo.kernels.reference import apply_token_bitmask_inplace_torch, unpack_bitmask

_INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = (["cpu"] if _INTERP else []) + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _brute(logits, bitmask, rows=None, ncols=None):
    """Per-element Python-level oracle (independent of unpack_bitmask)."""
    out = logits.clone()
    R, V = out.shape
    ncols = V if ncols is None else ncols
    W = bitmask.shape[1]
    for r in (range(R) if rows is None else rows):
        for t in range(ncols):
            w = t // 32
            ok = w < W and ((int(bitmask[r, w]) >> (t % 32)) & 1) == 1
            if not ok:
                out[r, t] = float("-inf")
    return out


def _rand_mask(g, R, W):
    return torch.randint(-2**31, 2**31 - 1, (R, W), dtype=torch.int32, generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 31, 32, 33, 95, 4097])
def test_matches_reference_and_brute_force(device, dtype, V):
    g = torch.Generator().manual_seed(V)
    R = 3
    W = (V + 31) // 32
    base = torch.randn(R, V + 5, generator=g).to(dtype)  # row stride V+5 != width
    bm = _rand_mask(g, R, W)
    bm[0] = 0
    bm[0, W - 1] = 1 << ((V - 1) % 32) if (V - 1) % 32 != 31 else -2**31  # one allowed: the last
    bm[1] = -1
    bm[1, 0] = -2  # all but token 0
    got = base.clone().to(device)[:, :V]
    apply_token_bitmask_inplace(got, bm.to(device), backend="triton")
    ref = base.clone()[:, :V]
    apply_token_bitmask_inplace_torch(ref, bm)
    assert torch.equal(got.cpu(), ref)
    if V <= 95:
        assert torch.equal(ref, _brute(base[:, :V], bm))
    assert torch.isinf(got[0]).sum() == V - 1 and torch.isfinite(got[0, V - 1])
    assert torch.isinf(got[1, 0]) and torch.isfinite(got[1, 1:]).all()
    # columns outside the view untouched
    assert torch.equal(got.cpu(), got.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_sign_bit_and_bit_order(device):
    V = 64
    for bit in (0, 1, 30, 31):
        bm = torch.zeros(1, 2, dtype=torch.int32)
        bm[0, 1] = torch.tensor(1 << bit if bit < 31 else -2**31, dtype=torch.int32)
        x = torch.zeros(1, V, device=device)
        apply_token_bitmask_inplace(x, bm.to(device), backend="triton")
        finite = torch.nonzero(torch.isfinite(x[0])).flatten().tolist()
        assert finite == [32 + bit]


@pytest.mark.parametrize("device", DEVICES)
def test_indices_xgrammar_semantics(device):
    """Rows indices[i] of logits use bitmask row indices[i]; the other rows stay untouched."""
    g = torch.Generator().manual_seed(1)
    R, V = 6, 70
    base = torch.randn(R, V, generator=g)
    bm = _rand_mask(g, R, 3)
    for idx in ([4, 1], torch.tensor([0, 5, 2], dtype=torch.int64), []):
        got = base.clone().to(device)
        apply_token_bitmask_inplace(got, bm.to(device), indices=idx, backend="triton")
        ref = base.clone()
        apply_token_bitmask_inplace_torch(ref, bm, indices=idx)
        rows = [int(i) for i in idx]
        assert torch.equal(ref, _brute(base, bm, rows=rows))
        assert torch.equal(got.cpu(), ref)
        untouched = [r for r in range(R) if r not in rows]
        assert torch.equal(got.cpu()[untouched], base[untouched])
    with pytest.raises(IndexError):
        apply_token_bitmask_inplace(base.clone(), bm, indices=[6], backend="torch")


@pytest.mark.parametrize("device", DEVICES)
def test_wider_and_narrower_masks_vocab_size(device):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 100, generator=g)
    narrow = _rand_mask(g, 2, 2)  # covers 64 columns: 64..99 are masked
    wide = _rand_mask(g, 2, 9)  # 9 words for 100 columns: extra words ignored
    for bm in (narrow, wide):
        got = base.clone().to(device)
        apply_token_bitmask_inplace(got, bm.to(device), backend="triton")
        assert torch.equal(got.cpu(), _brute(base, bm))
    got = base.clone().to(device)
    apply_token_bitmask_inplace(got, narrow.to(device), vocab_size=64, backend="triton")
    assert torch.equal(got.cpu()[:, 64:], base[:, 64:])  # xgrammar's vocab_size: padding untouched
    assert torch.equal(got.cpu(), _brute(base, narrow, ncols=64))


def test_one_dim_inputs_and_errors():
    x = torch.zeros(40)
    bm = torch.tensor([5, 0], dtype=torch.int32)
    apply_token_bitmask_inplace(x, bm)
    assert torch.nonzero(torch.isfinite(x)).flatten().tolist() == [0, 2]
    with pytest.raises(TypeError, match="int32"):
        apply_token_bitmask_inplace(torch.zeros(2, 40), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="rows"):
        apply_token_bitmask_inplace(torch.zeros(2, 40), torch.zeros(3, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="backend"):
        apply_token_bitmask_inplace(torch.zeros(2, 40), torch.zeros(2, 2, dtype=torch.int32),
                                    backend="cuda")
    assert unpack_bitmask(torch.tensor([[-1]], dtype=torch.int32), 33).sum() == 32


# ---------------------------------------------------------------------------------- scatter_bands_
def _bits(row_words, ncols):
    return {t for t in range(ncols) if (int(row_words[t // 32]) >> (t % 32)) & 1}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("W,NB", [(1, 1), (4, 1), (5, 2), (9, 3)])
def test_scatter_bands_matches_reference_and_oracle(device, W, NB):
    """OR semantics, any bit offset (0, 1, 31, ...), bands running past the mask, no band, sign bits."""
    from neo.kernels import scatter_bands_

    g = torch.Generator().manual_seed(W * 10 + NB)
    R = 12
    base = _rand_mask(g, R, W)
    base[::2] = 0
    bm = _rand_mask(g, R, NB)
    bm[3] = -1  # every bit, sign bits included
    bm[4] = 0
    bm[4, 0] = -2**31  # only bit 31
    starts = [0, 1, 31, 32, 33, 32 * W - 1, 32 * W, -1, 5, 63, 32 * W - 32 * NB, 7]
    bs = torch.tensor([min(s, 40 * W) for s in starts], dtype=torch.int64)
    ref = base.clone()
    scatter_bands_(ref, bs, bm, backend="torch")
    got = base.clone().to(device)
    scatter_bands_(got, bs.to(device), bm.to(device), backend="triton")
    assert torch.equal(got.cpu(), ref)
    for r in range(R):
        want = _bits(base[r], 32 * W)
        if bs[r] >= 0:
            want |= {int(bs[r]) + c for c in range(32 * NB) if (int(bm[r, c // 32]) >> (c % 32)) & 1
                     and int(bs[r]) + c < 32 * W}
        assert _bits(ref[r], 32 * W) == want, r


def test_scatter_bands_errors_and_band_to_bitmask_without_nonzero():
    from neo.kernels import band_to_bitmask, scatter_bands_

    with pytest.raises(ValueError, match="bitmask must be int32"):
        scatter_bands_(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="band_start"):
        scatter_bands_(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3, dtype=torch.long),
                       torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="band_bitmap"):
        scatter_bands_(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.long),
                       torch.zeros(2, 1, dtype=torch.int64))
    # a band past the vocabulary: bits at tokens >= vocab_size never set
    full = band_to_bitmask(torch.tensor([60]), torch.tensor([[-1]], dtype=torch.int32), 70)
    assert sorted(_bits(full[0], 96)) == list(range(60, 70))
