"""beam_topk: Triton vs torch reference vs a brute-force Python oracle."""
import math
import os

import pytest
import torch

from neo.kernels import beam_topk
from neo.kernels.reference import beam_topk_torch

_INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = (["cpu"] if _INTERP else []) + (["cuda"] if torch.cuda.is_available() else [])


def _brute(x, scores, bs, bm, k, nb):
    R, V = x.shape
    lse = torch.logsumexp(x.double(), 1)
    out = []
    for q in range(R // nb):
        cands = []
        for b in range(nb):
            r = q * nb + b
            if bs[r] < 0:
                continue
            for c in range(bm.shape[1] * 32):
                t = int(bs[r]) + c
                if t < V and (int(bm[r, c // 32]) >> (c % 32)) & 1 and x[r, t] > -math.inf:
                    s = float(x[r, t] - lse[r] + scores[r])
                    if s > -math.inf:  # a dead beam (-inf score) offers nothing
                        cands.append((s, b, t))
        cands.sort(key=lambda z: -z[0])
        cands = cands[:k] + [(-math.inf, -1, -1)] * max(0, k - len(cands))
        out.append(cands)
    return out


def _case(g, NR, NB, V, words, dtype=torch.float32):
    R = NR * NB
    x = (torch.randn(R, V, generator=g) * 2).to(dtype)
    bs = torch.randint(0, max(V - 16, 1), (R,), generator=g)
    bm = torch.randint(-2**31, 2**31 - 1, (R, words), dtype=torch.int32, generator=g)
    sc = torch.randn(R, generator=g) * 3
    return x, sc, bs, bm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("NR,NB,V,words,k", [(3, 2, 33, 1, 4), (2, 3, 4097, 3, 7), (4, 1, 97, 2, 1),
                                             (2, 4, 200, 1, 40)])
def test_matches_reference_and_oracle(device, NR, NB, V, words, k):
    g = torch.Generator().manual_seed(V + k)
    x, sc, bs, bm = _case(g, NR, NB, V, words)
    bs[0] = -1  # empty band
    bs[-1] = V - 5  # band runs past the vocabulary
    bm[1] = 0
    bm[1, 0] = -2**31  # one allowed code: 31 (sign bit)
    if NB > 1:
        sc[NB] = float("-inf")  # dead beam
    ref = beam_topk_torch(x, sc, bs, bm, k, NB)
    got = beam_topk(x.to(device), sc.to(device), bs.to(device), bm.to(device), k, NB, backend="triton")
    torch.testing.assert_close(got[0].cpu(), ref[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1].cpu(), ref[1]) and torch.equal(got[2].cpu(), ref[2])
    oracle = _brute(x, sc, bs, bm, k, NB)
    for q, cands in enumerate(oracle):
        for i, (s, b, t) in enumerate(cands):
            assert int(ref[1][q, i]) == b and int(ref[2][q, i]) == t, (q, i)
            if b >= 0:
                assert abs(float(ref[0][q, i]) - s) < 1e-4
            else:
                assert ref[0][q, i] == float("-inf")


@pytest.mark.parametrize("device", DEVICES)
def test_padding_and_full_vocab_normalisation(device):
    V = 64
    x = torch.zeros(2, V)
    x[:, 40:] = 5.0  # mass outside the band: the band's log-probs must reflect it
    bs = torch.tensor([0, -1])
    bm = torch.tensor([[0b101], [0]], dtype=torch.int32)
    s, b, t = beam_topk(x.to(device), torch.zeros(2, device=device), bs.to(device), bm.to(device),
                        3, 2, backend="triton")
    lse = torch.logsumexp(x[0], 0)
    assert t.cpu().tolist() == [[0, 2, -1]] and b.cpu().tolist() == [[0, 0, -1]]
    assert abs(float(s[0, 0]) - float(-lse)) < 1e-5 and s[0, 2] == float("-inf")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_twice_torch_error(device, dtype):
    g = torch.Generator().manual_seed(9)
    x32, sc, bs, bm = _case(g, 2, 2, 500, 2)
    bm[:] = -1
    xl = x32.to(dtype)
    s, b, t = beam_topk(xl.to(device), sc.to(device), bs.to(device), bm.to(device), 5, 2,
                        backend="triton")
    s, b, t = s.cpu(), b.cpu(), t.cpu()
    rows = torch.arange(2)[:, None] * 2 + b
    exact = torch.log_softmax(x32.double(), 1)[rows, t] + sc.double()[rows]
    torch_lp = torch.log_softmax(xl, 1).float()[rows, t] + sc[rows]
    err_k = (s.double() - exact).abs().max()
    err_t = (torch_lp.double() - exact).abs().max()
    assert err_k <= 2 * err_t + 1e-6, (float(err_k), float(err_t))


def test_bad_arguments():
    x = torch.zeros(4, 10)
    bm = torch.zeros(4, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="num_beams"):
        beam_topk(x, torch.zeros(4), torch.zeros(4, dtype=torch.long), bm, 2, 3)
    with pytest.raises(ValueError, match="band_bitmap"):
        beam_topk(x, torch.zeros(4), torch.zeros(4, dtype=torch.long), bm.long(), 2, 2)
    with pytest.raises(ValueError, match="k must"):
        beam_topk(x, torch.zeros(4), torch.zeros(4, dtype=torch.long), bm, 0, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_shared_lse_and_logsumexp_rows(device):
    """beam_topk with a precomputed log-sum-exp equals beam_topk computing it; logsumexp_rows matches torch."""
    from neo.kernels import logsumexp_rows

    g = torch.Generator().manual_seed(5)
    x, sc, bs, bm = _case(g, 3, 2, 2100, 2)
    x[0, 7] = float("nan")
    x[1] = float("-inf")  # an all -inf row: lse -inf, no candidates
    ref_lse = torch.logsumexp(torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x), 1)
    for backend in ("torch", "triton"):
        lse = logsumexp_rows(x.to(device), backend=backend).cpu()
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
        a = beam_topk(x.to(device), sc.to(device), bs.to(device), bm.to(device), 4, 2, backend=backend)
        b = beam_topk(x.to(device), sc.to(device), bs.to(device), bm.to(device), 4, 2, backend=backend,
                      lse=lse.to(device))
        torch.testing.assert_close(a[0].cpu(), b[0].cpu(), atol=1e-5, rtol=1e-5)
        assert torch.equal(a[1].cpu(), b[1].cpu()) and torch.equal(a[2].cpu(), b[2].cpu())
    with pytest.raises(ValueError, match="lse"):
        beam_topk(x, sc, bs, bm, 4, 2, lse=torch.zeros(5))
