"""The device path (neo.lm.device; backend="device" / "torch" / "triton"): same states, masks, tokens,
items and scores as the C++ core, on mixed item types (3, 2 and 1 levels, plus a type without items),
with exclusions, allow-lists, item limits and formats; and no host round trip inside the decode loop.

Kernels run as torch references and (under TRITON_INTERPRET=1, set by conftest) as Triton kernels on
CPU tensors; the interpreter is slow, so the Triton cases are few and small."""
import copy
import os

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LogitsProcessorList

from _tiny import make_world
from test_generation import PROMPTS, boost_spans
from neo.core.bitmask import allocate_token_bitmask
from neo.core.index import DecodeState
from neo.kernels.reference import unpack_bitmask
from neo.lm import generation
from neo.lm.device import DeviceDecodeState, DeviceIndex, resolve_backend
from neo.lm.generation import generate, topk_items
from neo.lm.processor import SidLogitsProcessor
from neo.lm.prompts import Prompt

_TRITON = os.environ.get("TRITON_INTERPRET", "0") == "1" or torch.cuda.is_available()
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton cases run


def _on(model, device):
    return model if device == "cpu" else copy.deepcopy(model).to(device)
SIZES = {"movie": [4, 4, 3], "book": [3, 5], "tag": [6], "song": [2, 2]}
COUNTS = {"movie": 20, "book": 12, "tag": 5, "song": 0}  # song: a type without items
N_ITEMS = 37


@pytest.fixture(scope="module")
def world4():
    return make_world("llama", seed=1, sizes=SIZES, counts=COUNTS)


@pytest.fixture(scope="module")
def world():
    return boost_spans(make_world("llama", seed=2))


def test_backend_choice_and_errors(world, monkeypatch):
    assert resolve_backend("auto", "cpu") == (False, "auto")
    assert resolve_backend("auto", "cuda") == (True, "auto")
    assert resolve_backend("core", "cuda") == (False, "auto")
    assert resolve_backend("device", "cpu") == (True, "auto")
    assert resolve_backend("triton", "cpu") == (True, "triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("gpu", "cpu")
    with monkeypatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            resolve_backend("triton", "cpu")
    tok, m, idx, v = world["tokenizer"], world["model"], world["index"], world["vocab"]
    with pytest.raises(ValueError, match="backend must be one of"):
        generate(m, tok, v, idx, ["hi"], backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        SidLogitsProcessor(idx, 2, backend="xgrammar")
    # a bad item row gets the core's message on both paths
    for be in ("core", "torch"):
        with pytest.raises(ValueError, match="exclude: item row 999 is not in the index"):
            generate(m, tok, v, idx, ["hi"], exclude=[999], backend=be, max_new_tokens=2)
        with pytest.raises(ValueError, match="allow: item row -3 is not in the index"):
            topk_items(m, tok, v, idx, ["hi"], allow=[1, -3], backend=be, k=2, num_beams=2)


# ------------------------------------------------------------------------ decode state vs the C++ core
def _random_options(rng, R):
    types = [None, ["movie"], ["book"], ["movie", "book"], [], ["tag", "song"], ["song"], ["tag"]]
    return dict(
        formats=[str(rng.choice(["mixed", "ids", "text", "mixed"])) for _ in range(R)],
        allowed_types=[types[rng.integers(len(types))] for _ in range(R)],
        exclude=[None if rng.random() < 0.4 else rng.choice(N_ITEMS, rng.integers(0, 25), replace=False)
                 for _ in range(R)],
        allow=[None if rng.random() < 0.6 else rng.choice(N_ITEMS, rng.integers(0, 10), replace=False)
               for _ in range(R)],
        max_items=[None if rng.random() < 0.5 else int(rng.integers(0, 4)) for _ in range(R)],
    )


def _walk(world4, seed, kernels, R, steps, exclude_emitted=True, device="cpu"):
    """Random walk mostly along the core's masks (some invalid tokens, partial advances, reorders);
    the device state must give the same status, full bitmask, errors and emitted items every step."""
    idx = world4["index"]
    lay = idx.layout
    V = lay.vocab_size
    rng = np.random.default_rng(seed)
    o = _random_options(rng, R)
    eos, seps = [2], [5, 6]
    core = DecodeState(idx, R, eos, seps, 1)
    for r in range(R):
        core.set_row_options(r, format=o["formats"][r], allowed_types=o["allowed_types"][r],
                             exclude=o["exclude"][r], allow=o["allow"][r], max_items=o["max_items"][r],
                             exclude_emitted=exclude_emitted)
    dev = DeviceDecodeState(DeviceIndex.get(idx, device), R, eos, seps, exclude_emitted=exclude_emitted,
                            capacity=steps // 3 + 1, kernel_backend=kernels, **o)
    buf = allocate_token_bitmask(R, V)
    n_items = 0
    for step in range(steps):
        core.fill_next_token_bitmask(buf)
        want = np.asarray(buf)
        np.testing.assert_array_equal(dev.status_host(), core.status, err_msg=f"step {step}")
        np.testing.assert_array_equal(dev.bitmask().cpu().numpy(), want, err_msg=f"step {step}")
        assert dev.errors() == core.errors(), step
        allowed = unpack_bitmask(torch.as_tensor(want), V).numpy()
        toks = np.zeros(R, np.int64)
        for r in range(R):
            ok = np.flatnonzero(allowed[r])
            if rng.random() < 0.03 or ok.size == 0:
                toks[r] = rng.integers(-1, V + 1)  # anything, even outside the vocabulary
            else:
                sid = ok[ok >= lay.open_id]
                toks[r] = rng.choice(sid) if sid.size and rng.random() < 0.7 else rng.choice(ok)
        if rng.random() < 0.3:  # advance a subset of the rows
            rows = np.flatnonzero(rng.random(R) < 0.7)
            core.advance(toks[rows], rows)
            sel = np.zeros(R, bool)
            sel[rows] = True
            dev.advance(torch.as_tensor(toks), torch.as_tensor(sel))
        else:
            core.advance(toks)
            dev.advance(torch.as_tensor(toks))
        if rng.random() < 0.15:
            src = rng.integers(0, R, R)
            core.reorder(src)
            dev.reorder(torch.as_tensor(src))
    for r in range(R):
        assert list(dev.emitted_items(r)) == list(core.emitted(r)), r
        n_items += len(core.emitted(r))
    return n_items, len(core.errors())


def test_state_matches_core_on_random_walks(world4):
    items = errors = 0
    for seed in range(12):
        n, e = _walk(world4, seed, "torch", R=10, steps=36, exclude_emitted=seed % 3 != 0)
        items += n
        errors += e
    assert items > 50 and errors > 5  # the walks really completed items and hit error states


@pytest.mark.skipif(not _TRITON, reason="needs TRITON_INTERPRET=1 or a GPU")
def test_state_matches_core_triton(world4):
    _walk(world4, 5, "triton", R=4, steps=6, device=DEV)


def test_prime_and_span_start_union(world4):
    """A prompt ending in [SID] (or inside a span) starts there; right after [SID] the mask is the
    union of the allowed types' root bands; an over-long open span is an error, like the core."""
    idx = world4["index"]
    lay = idx.layout
    mv, bk = lay.types[0], lay.types[1]
    prompts = [[7, 8, lay.open_id], [lay.open_id, mv.band_starts[0]], [9, 9, 9],
               [lay.open_id] + [mv.band_starts[0]] * 4, [3, lay.open_id, bk.band_starts[0], lay.open_id]]
    R = len(prompts)
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    types = [["movie", "book"], None, None, None, ["book"]]
    core = DecodeState(idx, R, [2], (), 1)
    for r in range(R):
        core.set_row_options(r, allowed_types=types[r])
        a = np.asarray(prompts[r])
        opens = np.flatnonzero(a == lay.open_id)
        for t in a[opens[-1]:] if opens.size else []:
            core.advance(np.asarray([t]), np.asarray([r]))
    dev = DeviceDecodeState(DeviceIndex.get(idx, "cpu"), R, [2], allowed_types=types, kernel_backend="torch")
    dev.prime(ids)
    buf = allocate_token_bitmask(R, lay.vocab_size)
    core.fill_next_token_bitmask(buf)
    np.testing.assert_array_equal(dev.status_host(), core.status)
    np.testing.assert_array_equal(dev.bitmask().numpy(), np.asarray(buf))
    allowed = unpack_bitmask(dev.bitmask(), lay.vocab_size)[0].numpy()
    got = set(np.flatnonzero(allowed))
    assert got and all(lay.classify(t)[0] in (0, 1) and lay.classify(t)[1] == 0 for t in got)
    assert {lay.classify(t)[0] for t in got} == {0, 1}
    assert dev.status_host()[3] == 3  # four level-1 codes in a row: error


# ------------------------------------------------------------------------ generate
@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("fmt", ["mixed", "ids", "text"])
def test_generate_device_equals_core(world, fmt, sample):
    tok, m, idx, v, cat = world["tokenizer"], world["model"], world["index"], world["vocab"], world["catalog"]
    cases = [dict(allowed_types=["movie"], exclude=[4, 5]), dict(allow=[1, 2, 3, 21, 22, 25]),
             dict(max_items=2, separator_token_ids=[5], exclude=[20, 22])]
    n_items = 0
    for kw in cases:
        a = generate(m, tok, v, idx, PROMPTS, format=fmt, do_sample=sample, seed=3, max_new_tokens=20,
                     catalog=cat, backend="core", **kw)
        b = generate(m, tok, v, idx, PROMPTS, format=fmt, do_sample=sample, seed=3, max_new_tokens=20,
                     catalog=cat, backend="torch", **kw)
        for x, y in zip(a, b):
            assert (x.token_ids, x.status, x.error) == (y.token_ids, y.status, y.error)
            assert [i.row for i in x.items] == [i.row for i in y.items]
            n_items += len(x.items)
    if fmt != "text" and not sample:
        assert n_items > 0


@pytest.mark.skipif(not _TRITON, reason="needs TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("sample", [False, True])
def test_generate_triton_equals_core(world, sample):
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    m = _on(world["model"], DEV)  # the core path copies its masks there; the device path stays there
    kw = dict(format="ids", exclude=[4, 5], do_sample=sample, seed=1, max_new_tokens=7)
    a = generate(m, tok, v, idx, PROMPTS[:2], backend="core", **kw)
    b = generate(m, tok, v, idx, PROMPTS[:2], backend="triton", **kw)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    assert any(x.items for x in a)


def test_generate_unconstrained_device(world):
    tok, m, idx, v = world["tokenizer"], world["model"], world["index"], world["vocab"]
    a = generate(m, tok, v, idx, PROMPTS, constrained=False, max_new_tokens=8, backend="core")
    b = generate(m, tok, v, idx, PROMPTS, constrained=False, max_new_tokens=8, backend="device")
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    assert {y.status for y in b} == {"unconstrained"}


# ------------------------------------------------------------------------ top-K items
def _same_items(a, b, atol=1e-5):
    for x, y in zip(a, b):
        assert [i.row for i in x] == [i.row for i in y]
        assert [i.tokens for i in x] == [i.tokens for i in y]
        np.testing.assert_allclose([i.score for i in x], [i.score for i in y], atol=atol)


def test_topk_device_equals_core(world4):
    tok, m, idx, v, cat = world4["tokenizer"], world4["model"], world4["index"], world4["vocab"], world4["catalog"]
    prompts = ["recommend a movie", "space", [1, 5, 7, 9],
               Prompt(task="recommend", history=["movie1", "book2", "tag0"], target_types=["movie", "book", "tag"])]
    rng = np.random.default_rng(0)
    cases = [dict(k=6, num_beams=30), dict(k=12, num_beams=4), dict(k=3, num_beams=2, allowed_types=["tag", "book"]),
             dict(k=5, num_beams=3, exclude=[0, 1, 2, 21, 33]), dict(k=40, num_beams=30, allowed_types=["song", "tag"]),
             dict(k=4, num_beams=5, allow=list(rng.choice(N_ITEMS, 15, replace=False)))]
    for kw in cases:
        a = topk_items(m, tok, v, idx, prompts, catalog=cat, backend="core", **kw)
        b = topk_items(m, tok, v, idx, prompts, catalog=cat, backend="torch", **kw)
        _same_items(a, b)
        assert any(a)
    # the only items of the allowed types: every tag, and the (empty) song type adds nothing
    tags = topk_items(m, tok, v, idx, ["x"], k=40, allowed_types=["song", "tag"], backend="torch")[0]
    assert sorted(i.row for i in tags) == list(range(32, 37))


@pytest.mark.skipif(not _TRITON, reason="needs TRITON_INTERPRET=1 or a GPU")
def test_topk_triton_equals_core(world4):
    tok, idx, v = world4["tokenizer"], world4["index"], world4["vocab"]
    m = _on(world4["model"], DEV)
    kw = dict(k=5, num_beams=3, exclude=[3, 22], allowed_types=["movie", "book", "tag"])
    _same_items(topk_items(m, tok, v, idx, ["space", "hello world"], backend="core", **kw),
                topk_items(m, tok, v, idx, ["space", "hello world"], backend="triton", **kw))


# ------------------------------------------------------------------------ SidLogitsProcessor
@pytest.mark.parametrize("mode", [dict(do_sample=False), dict(do_sample=True, top_k=0),
                                  dict(num_beams=3, num_return_sequences=2, do_sample=False)])
def test_processor_device_equals_core(world, mode):
    tok, m, idx = world["tokenizer"], world["model"], world["index"]
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    for fmt in ("mixed", "ids"):
        for opts in (dict(allowed_types=["movie"], exclude=[4, 5]),
                     dict(exclude=[[1, 2], [3], []], allowed_types=[["book"], None, ["movie"]], max_items=[1, None, 2])):
            outs = []
            for be in ("core", "torch"):
                p = SidLogitsProcessor(idx, tok.eos_token_id, format=fmt, backend=be, **opts)
                torch.manual_seed(0)
                seqs = m.generate(**enc, max_new_tokens=14, logits_processor=LogitsProcessorList([p]), **mode)
                outs.append((seqs, p.errors(), [list(p.emitted(r)) for r in range(seqs.shape[0])]))
            assert torch.equal(outs[0][0], outs[1][0])
            assert outs[0][1:] == outs[1][1:]


@pytest.mark.skipif(not _TRITON, reason="needs TRITON_INTERPRET=1 or a GPU")
def test_processor_triton_equals_core(world):
    tok, idx = world["tokenizer"], world["index"]
    m = _on(world["model"], DEV)
    enc = {k: x.to(DEV) for k, x in tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left").items()}
    outs = []
    for be in ("core", "triton"):
        p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids", backend=be, exclude=[4, 5])
        outs.append(m.generate(**enc, max_new_tokens=6, num_beams=2, do_sample=False,
                               logits_processor=LogitsProcessorList([p])))
    assert torch.equal(outs[0], outs[1])


def test_processor_device_assisted_decoding_equals_plain_greedy(world):
    """Assisted decoding and prompt lookup call the processor on drafts, then on shorter inputs: the
    device branch rebuilds its state from the prompt, so the output equals plain greedy decoding."""
    tok, m, idx = world["tokenizer"], world["model"], world["index"]
    assistant = make_world("llama", seed=5)["model"]
    opts = dict(format="ids", exclude=[4, 5], max_items=2, separator_token_ids=[5])
    for prompt in PROMPTS[:2]:
        enc = tok([prompt], return_tensors="pt")
        plain = m.generate(**enc, max_new_tokens=16, do_sample=False, logits_processor=LogitsProcessorList(
            [SidLogitsProcessor(idx, tok.eos_token_id, backend="core", **opts)]))
        for kw in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=assistant)):
            p = SidLogitsProcessor(idx, tok.eos_token_id, backend="torch", **opts)
            out = m.generate(**enc, max_new_tokens=16, do_sample=False, logits_processor=LogitsProcessorList([p]),
                             **kw)
            assert out[0].tolist() == plain[0].tolist(), kw
            assert not p.errors()


def test_processor_device_flags_foreign_sequences(world):
    """A row that continues no row of the previous call cannot raise without a host round trip: it
    enters the error state, which errors() reports."""
    tok, idx = world["tokenizer"], world["index"]
    p = SidLogitsProcessor(idx, tok.eos_token_id, backend="torch")
    V = idx.layout.vocab_size
    ids = torch.tensor([[5, 6, 7], [5, 6, 8]])
    p(ids, torch.zeros(2, V))
    p(torch.cat([ids, torch.tensor([[9], [9]])], 1), torch.zeros(2, V))
    p(torch.tensor([[5, 6, 7, 9, 4], [5, 6, 8, 3, 4]]), torch.zeros(2, V))  # row 1 was never generated
    errs = p.errors()
    assert list(errs) == [1] and "did not generate" in errs[1]


# ------------------------------------------------------------------------ no host round trip
class _NoHostReads(TorchDispatchMode):
    """Fail on every op that makes the host wait for the device: reading a value (item / bool /
    int), data-dependent shapes (nonzero, masked_select, boolean indexing, unique), device->host copies."""

    BANNED = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
              "repeat_interleave.Tensor", "equal", "is_nonzero"}

    def __init__(self):
        super().__init__()
        self.active = True
        self.inside = False
        self.calls = 0

    def __enter__(self):
        self.inside = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.inside = False
        return super().__exit__(*exc)

    def guard(self, method):
        """Wrap a Tensor method that copies to the host (tolist, numpy, cpu): banned inside the mode."""
        def wrapped(t, *args, **kwargs):
            if self.inside and self.active:
                raise AssertionError(f"host round trip: Tensor.{method.__name__}")
            return method(t, *args, **kwargs)
        return wrapped

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        if self.active:
            self.calls += 1
            if name in self.BANNED or func.__name__ in self.BANNED:
                raise AssertionError(f"host round trip: {func}")
            if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                       for i in (args[1] if len(args) > 1 else [])):
                raise AssertionError(f"boolean indexing (data-dependent shape): {func}")
        return func(*args, **kwargs)


def test_device_loop_never_reads_the_device(world4, monkeypatch):
    """The constrained parts of the device loop (state advance, masks, greedy pick, beam selection,
    trie steps, pool merge) contain no op that waits for the device. Checked op by op on CPU tensors
    with the torch kernels; the model forward (HF's code) is outside the check."""
    idx, m = world4["index"], world4["model"]
    dx = DeviceIndex.get(idx, "cpu")
    R = 6
    o = _random_options(np.random.default_rng(3), R)
    state = DeviceDecodeState(dx, R, [2], [5], capacity=8, kernel_backend="torch", **o)
    logits = torch.randn(R, idx.layout.vocab_size)
    from neo.kernels import apply_token_bitmask_inplace, sample_masked

    mode = _NoHostReads()
    for name in ("tolist", "numpy", "cpu", "__bool__", "item"):
        monkeypatch.setattr(torch.Tensor, name, mode.guard(getattr(torch.Tensor, name)))
    with mode:
        for step in range(12):
            bm = state.bitmask()
            tok = sample_masked(logits, bm, greedy=True, backend="torch")
            tok = sample_masked(logits, bm, temperature=0.7, seeds=torch.arange(R) + step, backend="torch")
            state.advance(tok, tok >= 0)
            apply_token_bitmask_inplace(logits.clone(), bm, backend="torch")
        state.reorder(torch.tensor([1, 1, 0, 3, 5, 5]))
        state.bitmask()
    assert mode.calls > 100
    # beam search: everything between the forwards
    real_forward = generation._forward

    def forward_unchecked(*args, **kwargs):
        mode.active = False
        try:
            return real_forward(*args, **kwargs)
        finally:
            mode.active = True

    monkeypatch.setattr(generation, "_forward", forward_unchecked)
    ids_list = [[1, 7, 9, idx.layout.open_id], [1, 8, idx.layout.open_id]]
    opts = [dict(allowed_types=None, exclude=[0, 21], allow=None), dict(allowed_types=["tag", "book"], exclude=None,
                                                                        allow=None)]
    with mode:
        pool_s, pool_t = generation._beam_search_device(m, idx, ids_list, opts, [2], 0, k=5, W=4, num_threads=1,
                                                        kernels="torch")
    assert (pool_s > float("-inf")).all()
    # generate: the whole decode loop (setup before it and the host report after it are not checked)
    real_loop = generation._decode_loop_device

    def loop_checked(*args, **kwargs):
        with mode:
            return real_loop(*args, **kwargs)

    monkeypatch.setattr(generation, "_decode_loop_device", loop_checked)
    # on CPU tensors the finished flag is read directly; on CUDA it comes from completed async copies
    # (checked on a GPU by benchmarks/bench_recommend.py --sections sync)
    real_done = generation._FinishWatch.all_done

    def done_unchecked(self, finished):
        mode.active = False
        try:
            return real_done(self, finished)
        finally:
            mode.active = True

    monkeypatch.setattr(generation._FinishWatch, "all_done", done_unchecked)
    before = mode.calls
    outs = generate(m, world4["tokenizer"], world4["vocab"], idx, ["recommend", "space"], max_new_tokens=12,
                    do_sample=True, exclude=[3], backend="torch")
    assert mode.calls > before + 100 and sum(len(o.token_ids) for o in outs) > 12


def test_device_index_is_cached_and_released(world4):
    import gc
    import weakref

    from neo.core.index import SidIndex

    idx = world4["index"]
    assert DeviceIndex.get(idx, "cpu") is DeviceIndex.get(idx, "cpu")
    lay = idx.layout
    fresh = SidIndex.build(lay, {"tag": world4["sid_tokens"]["tag"]}, {"tag": world4["rows"]["tag"]})
    d = weakref.ref(DeviceIndex.get(fresh, "cpu"))
    del fresh
    gc.collect()
    assert d() is None  # the device copy goes with its index
