"""sample_masked: Triton (interpreter on CPU / compiled on GPU) vs the torch reference, and the
reference's statistics vs the exact distribution. Triton draws equal the reference's draws exactly
(same counter-based Gumbel noise), so the many-trial statistics are checked on the fast reference."""
import os

import pytest
import torch

from neo.kernels import sample_masked
from neo.kernels.reference import gumbel_noise, sample_masked_torch, unpack_bitmask

_INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = (["cpu"] if _INTERP else []) + (["cuda"] if torch.cuda.is_available() else [])


def _exact_probs(logits, allowed, T, k, p):
    """Independent per-row definition: softmax(x/T) over allowed, top-k (ties kept), top-p."""
    x = logits.double()[allowed] / T
    idx = torch.nonzero(allowed).flatten()
    if 0 < k < x.numel():
        kth = torch.sort(x, descending=True).values[k - 1]
        keep = x >= kth
        x, idx = x[keep], idx[keep]
    pr = torch.softmax(x, 0)
    if p < 1:
        order = torch.argsort(pr, descending=True)
        cum = torch.cumsum(pr[order], 0)
        n = int((cum < p).sum()) + 1
        thr = x[order[n - 1]]
        keep = x >= thr
        x, idx = x[keep], idx[keep]
        pr = torch.softmax(x, 0)
    out = torch.zeros(logits.numel(), dtype=torch.float64)
    out[idx] = pr
    return out


def _mask(g, R, V, density=0.6):
    bits = torch.rand(R, (V + 31) // 32 * 32, generator=g) < density
    w = (bits.view(R, -1, 32).long() << torch.arange(32)).sum(-1)
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32), bits[:, :V]


@pytest.mark.parametrize("T,k,p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 6, 0.7),
                                   (2.0, 1, 1.0)])
def test_reference_frequencies_match_distribution(T, k, p):
    g = torch.Generator().manual_seed(0)
    V, N = 37, 20000
    row = torch.randn(V, generator=g) * 1.5
    bm1, allowed = _mask(g, 1, V)
    bm = bm1.expand(N, -1).contiguous()
    toks = sample_masked_torch(row.expand(N, -1), bm, temperature=T, top_k=k, top_p=p,
                               seeds=torch.arange(N) * 7 + 3)
    assert (toks >= 0).all()
    assert allowed[0][toks].all(), "a masked token was drawn"
    freq = torch.bincount(toks, minlength=V).double() / N
    exp = _exact_probs(row, allowed[0], T, k, p)
    assert (freq[exp == 0] == 0).all(), "a filtered token was drawn"
    cos = torch.nn.functional.cosine_similarity(freq, exp, dim=0)
    assert cos > 0.99, float(cos)


def test_gumbel_noise_is_uniform_and_seeded():
    g = gumbel_noise(torch.tensor([1, 2, -5, 2**40 + 1]), 50000)
    assert torch.isfinite(g).all()
    u = torch.exp(-torch.exp(-g))  # back to uniforms
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.01
    assert torch.equal(g[1], gumbel_noise(torch.tensor([2]), 50000)[0])
    assert not torch.equal(g[0], g[1])


def _params(R, g):
    T = torch.rand(R, generator=g) * 1.5 + 0.3
    T[::7] = 0.0  # greedy through temperature
    k = torch.randint(0, 8, (R,), generator=g)
    p = torch.where(torch.rand(R, generator=g) < 0.5, torch.rand(R, generator=g) * 0.7 + 0.2,
                    torch.ones(R))
    greedy = torch.zeros(R, dtype=torch.bool)
    greedy[3::9] = True
    return T, k, p, greedy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("V", [33, 97])
def test_triton_equals_reference(device, V):
    g = torch.Generator().manual_seed(V)
    R = 18
    x = torch.randn(R, V, generator=g) * 2
    bm, _ = _mask(g, R, V, 0.5)
    bm[0] = 0  # empty row
    bm[1] = 0
    bm[1, 0] = 1 << 5  # one allowed token
    bm[2] = -1  # all allowed ...
    x[2, 7] = float("-inf")  # ... but one logit is -inf
    T, k, p, greedy = _params(R, g)
    seeds = torch.randint(-2**62, 2**62, (R,), generator=g)
    kw = dict(temperature=T, top_k=k, top_p=p, seeds=seeds, greedy=greedy, return_logprobs=True)
    ref_t, ref_lp = sample_masked_torch(x, bm, **kw)
    dkw = {a: (b.to(device) if isinstance(b, torch.Tensor) else b) for a, b in kw.items()}
    tri_t, tri_lp = sample_masked(x.to(device), bm.to(device), backend="triton", **dkw)
    assert torch.equal(tri_t.cpu(), ref_t)
    torch.testing.assert_close(tri_lp.cpu(), ref_lp, atol=1e-5, rtol=1e-5)
    assert ref_t[0] == -1 and ref_lp[0] == float("-inf") and ref_t[1] == 5
    assert ref_t[2] != 7 and not torch.isnan(ref_lp).any()


@pytest.mark.parametrize("device", DEVICES)
def test_triton_frequencies_and_masked_never_drawn(device):
    g = torch.Generator().manual_seed(5)
    V, N = 12, 160
    row = torch.randn(V, generator=g)
    bm1, allowed = _mask(g, 1, V, 0.7)
    x = row.expand(N, -1).contiguous().to(device)
    toks = sample_masked(x, bm1.expand(N, -1).contiguous().to(device), seeds=torch.arange(N).to(device),
                         backend="triton").cpu()
    assert allowed[0][toks].all()
    freq = torch.bincount(toks, minlength=V).double() / N
    cos = torch.nn.functional.cosine_similarity(freq, _exact_probs(row, allowed[0], 1.0, 0, 1.0), dim=0)
    assert cos > 0.99, float(cos)
    assert torch.equal(toks, sample_masked_torch(x.cpu(), bm1.expand(N, -1), seeds=torch.arange(N)))


@pytest.mark.parametrize("backend,device", [("torch", "cpu")] + [("triton", d) for d in DEVICES])
def test_near_one_hot_seeds_and_empty_rows(backend, device):
    V = 70
    x = torch.zeros(6, V)
    x[:, 41] = 40.0  # near one-hot
    x[5] = float("-inf")  # every logit -inf
    bm = torch.full((6, 3), -1, dtype=torch.int32)
    bm[4] = 0  # nothing allowed
    x, bm = x.to(device), bm.to(device)
    for kw in (dict(), dict(top_k=3), dict(top_p=0.5), dict(greedy=True), dict(temperature=0.3)):
        t, lp = sample_masked(x, bm, seeds=torch.arange(6, device=device), return_logprobs=True,
                              backend=backend, **kw)
        assert t.cpu().tolist() == [41, 41, 41, 41, -1, -1], kw
        assert lp[4] == float("-inf") and lp[5] == float("-inf") and not torch.isnan(lp).any()
    # same seed -> same draw; other seeds -> other draws; rows are independent of the batch
    y = torch.randn(4, V, generator=torch.Generator().manual_seed(0))
    y[1] = y[0]
    y = y.to(device)
    s = torch.tensor([11, 11, 12, 13], device=device)
    a = sample_masked(y, None, seeds=s, backend=backend)
    b = sample_masked(y, None, seeds=s, backend=backend)
    assert torch.equal(a, b)
    assert a[0] == a[1]
    c = sample_masked(y[2:3], None, seeds=s[2:3], backend=backend)
    assert c[0] == a[2]
    draws = {int(sample_masked(y[:1], None, seeds=int(v), backend=backend)[0]) for v in range(12)}
    assert len(draws) > 1
    # greedy ties -> first index
    z = torch.zeros(1, V, device=device)
    assert int(sample_masked(z, None, greedy=True, backend=backend)[0]) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logprobs_within_twice_torch_error(device, dtype):
    g = torch.Generator().manual_seed(3)
    R, V = 6, 300
    x32 = torch.randn(R, V, generator=g) * 3
    xl = x32.to(dtype)
    t, lp = sample_masked(xl.to(device), None, seeds=torch.arange(R).to(device), return_logprobs=True,
                          backend="triton")
    t = t.cpu()
    ref = torch.log_softmax(x32, 1).gather(1, t[:, None])[:, 0]
    torch_lp = torch.log_softmax(xl, 1).gather(1, t[:, None])[:, 0].float()
    err_k = (lp.cpu() - ref).abs().max()
    err_t = (torch_lp - ref).abs().max()
    assert err_k <= 2 * err_t + 1e-6, (float(err_k), float(err_t))
    assert torch.equal(t, sample_masked_torch(xl, None, seeds=torch.arange(R)))


def test_bad_arguments():
    x = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="temperature"):
        sample_masked(x, None, temperature=torch.ones(3))
    with pytest.raises(ValueError, match="bitmask"):
        sample_masked(x, torch.zeros(3, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="logits"):
        sample_masked(torch.zeros(10), None)
    assert unpack_bitmask(torch.zeros(1, 1, dtype=torch.int32), 5).sum() == 0
