"""SidLogitsProcessor with model.generate: greedy, sampling, beam search; all formats; exclusions;
structured mask == full bitmask; state follows beam reordering."""
import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from _tiny import make_world
from neo.core.bitmask import bitmask_to_bool
from neo.lm.generation import parse_output
from neo.core.index import RowStatus
from neo.lm.processor import SidLogitsProcessor, SidMasker

PROMPTS = ["recommend a movie", "hello world, how are you? the user", "space opera"]


@pytest.fixture(scope="module")
def world():
    w = make_world("llama", seed=1)
    # make spans frequent in mixed mode: push [SID] towards the model's mean final hidden state
    m, tok, v = w["model"], w["tokenizer"], w["vocab"]
    with torch.no_grad():
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        h = m(**enc, output_hidden_states=True).hidden_states[-1].mean((0, 1))
        m.get_output_embeddings().weight[v.open_id] += 3.0 * h / h.pow(2).sum()
    return w


def check_spans(w, token_ids, allowed_types=None, exclude=(), fmt="mixed"):
    v, idx = w["vocab"], w["index"]
    token_ids = list(token_ids)
    if v.open_id in token_ids:  # a span cut by max_new_tokens is not an answer: drop it
        last_open = len(token_ids) - 1 - token_ids[::-1].index(v.open_id)
        if v.close_id not in token_ids[last_open:]:
            token_ids = token_ids[:last_open]
    segs = parse_output(token_ids, w["tokenizer"], v, idx, w["catalog"])
    items = [s for s in segs if not isinstance(s, str)]
    for it in items:
        assert it.valid, f"invalid span {it.tokens} in {token_ids}"
        if allowed_types is not None:
            assert it.type in allowed_types
        assert it.row not in exclude
    rows = [it.row for it in items]
    assert len(rows) == len(set(rows))  # exclude_emitted
    if fmt == "text":
        assert not items and not any(v.token_begin <= t < v.token_end for t in token_ids)
    if fmt == "ids":
        text = [t for t in token_ids if not v.token_begin <= t < v.token_end]
        assert set(text) <= {w["tokenizer"].eos_token_id, w["tokenizer"].pad_token_id}
    return items


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("fmt", ["mixed", "ids", "text"])
def test_every_span_is_a_valid_item(world, mode, fmt):
    tok, m, idx = world["tokenizer"], world["model"], world["index"]
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    exclude = [0, 3, 21]
    p = SidLogitsProcessor(idx, tok.eos_token_id, format=fmt, allowed_types=["movie"], exclude=exclude)
    kw = {"greedy": dict(do_sample=False), "sample": dict(do_sample=True, top_k=0),
          "beam": dict(num_beams=4, num_return_sequences=2, do_sample=False)}[mode]
    torch.manual_seed(0)
    out = m.generate(**enc, max_new_tokens=24, logits_processor=LogitsProcessorList([p]), **kw)
    assert p.errors() == {}
    n_items = 0
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        n_items += len(check_spans(world, row, {"movie"}, exclude, fmt))
    if fmt != "text":
        assert n_items > 0  # the constraint was actually exercised


def test_per_item_options_and_beam_rows(world):
    tok, m, idx = world["tokenizer"], world["model"], world["index"]
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    p = SidLogitsProcessor(idx, tok.eos_token_id, format=["ids", "ids"], allowed_types=[["movie"], ["book"]],
                           exclude=[[1, 2], [20, 21]])
    out = m.generate(**enc, max_new_tokens=16, logits_processor=LogitsProcessorList([p]), num_beams=3,
                     num_return_sequences=3, do_sample=False)
    gen = out[:, enc["input_ids"].shape[1]:].tolist()
    for r, row in enumerate(gen):
        b = r // 3
        check_spans(world, row, {"movie"} if b == 0 else {"book"}, [1, 2] if b == 0 else [20, 21], "ids")


def test_prompt_ending_in_open_span_is_forced(world):
    tok, m, idx, v = world["tokenizer"], world["model"], world["index"], world["vocab"]
    ids = tok(["recommend a movie"], return_tensors="pt")["input_ids"]
    ids = torch.cat([ids, torch.tensor([[v.open_id]])], 1)
    p = SidLogitsProcessor(idx, tok.eos_token_id, allowed_types="book")
    out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                     logits_processor=LogitsProcessorList([p]), do_sample=False)
    gen = [v.open_id] + out[0, ids.shape[1]:].tolist()
    assert gen[-1] == v.close_id
    items = check_spans(world, gen, {"book"})
    assert len(items) == 1


def test_structured_mask_equals_full_bitmask(world):
    """The fast structured apply gives exactly the full-bitmask result, in every row status."""
    idx, v = world["index"], world["vocab"]
    rng = np.random.default_rng(0)
    rows = 12
    mk = SidMasker(idx, rows, [2], separator_token_ids=[5, 7])
    fmts = ["mixed", "ids", "text"]
    for r in range(rows):
        mk.set_row_options(r, format=fmts[r % 3], allowed_types=None if r % 2 else ["book"], exclude=[1, 2])
    V = v.vocab_size + 7  # logits wider than the layout (padded model rows)
    for step in range(8):
        logits = torch.randn(rows, V)
        ref = logits.clone()
        mk.apply(logits)
        allowed = bitmask_to_bool(mk.bitmask, V)
        ref[~allowed] = float("-inf")
        assert torch.equal(logits, ref), f"step {step}"
        # random allowed tokens, preferring SID tokens so spans open
        choice = []
        for r in range(rows):
            ok = np.flatnonzero(allowed[r].numpy())
            sid = ok[ok >= v.token_begin]
            choice.append(int(rng.choice(sid if sid.size and rng.random() < 0.8 else ok)))
        mk.advance(np.asarray(choice))
    assert set(mk.state.status.tolist()) >= {RowStatus.TEXT} and not mk.state.errors()


def test_text_state_allows_everything_but_sid_codes(world):
    idx, v = world["index"], world["vocab"]
    mk = SidMasker(idx, 1, [2])
    mk.set_row_options(0, format="mixed")
    logits = torch.zeros(1, v.vocab_size)
    mk.apply(logits)
    allowed = torch.isfinite(logits[0])
    expect = torch.ones(v.vocab_size, dtype=torch.bool)
    expect[v.token_begin:v.token_end] = False
    expect[v.open_id] = True
    assert torch.equal(allowed, expect)


def test_reorder_follows_beams(world):
    """Feed hand-made beam reorderings: the state must equal a fresh state on each row's tokens."""
    idx, v, tok = world["index"], world["vocab"], world["tokenizer"]
    p = SidLogitsProcessor(idx, tok.eos_token_id)
    prompt = torch.tensor([[1, 10, 11]] * 4)
    V = v.vocab_size
    rng = np.random.default_rng(3)
    seqs = prompt.clone()
    p(seqs, torch.zeros(4, V))
    for step in range(6):
        perm = rng.integers(0, 4, size=4)  # beams copy arbitrary parents
        seqs = seqs[torch.as_tensor(perm)]
        scores = torch.zeros(4, V)
        prev = p.masker.bitmask.clone()
        # choose an allowed token per row from the processor's own mask
        nxt = []
        for r in range(4):
            ok = np.flatnonzero(bitmask_to_bool(prev[perm[r]:perm[r] + 1], V)[0].numpy())
            sid = ok[ok >= v.token_begin]
            nxt.append(int(rng.choice(sid if sid.size else ok)))
        seqs = torch.cat([seqs, torch.tensor(nxt)[:, None]], 1)
        p(seqs, scores)
        for r in range(4):
            fresh = SidMasker(idx, 1, [tok.eos_token_id])
            fresh.set_row_options(0)
            for t in seqs[r, 3:].tolist():
                fresh.advance(np.asarray([t]))
            fresh.fill()
            assert torch.equal(fresh.bitmask[0], p.masker.bitmask[r]), (step, r)
    assert not p.errors()


def test_bad_options(world):
    idx, tok = world["index"], world["tokenizer"]
    with pytest.raises(KeyError, match="unknown item type 'song'"):
        SidLogitsProcessor(idx, tok.eos_token_id, allowed_types=["song"])
    with pytest.raises(ValueError, match="unknown output format"):
        SidLogitsProcessor(idx, tok.eos_token_id, format="json")
