"""SidLogitsProcessor under the generate modes of transformers 5.x (issue 16, part F).

* Assisted decoding (an assistant model, prompt lookup) calls the processor on draft tokens and then
  on shorter inputs: the state is replayed, so max_items / exclude_emitted hold and greedy output is
  identical to plain greedy.
* Options that mask every token neo allows in a row (min_new_tokens, no_repeat_ngram_size,
  suppress_tokens) raise an error naming the option, in greedy, sampling, beam and assisted modes,
  instead of silently breaking the row (greedy) or crashing sampling on inf/nan.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

from _tiny import make_model, make_world
from neo.core.bitmask import bitmask_to_bool
from neo.core.index import RowStatus
from neo.lm.adapt import adapt_model
from neo.lm.generation import parse_output
from neo.lm.processor import SidLogitsProcessor, SidMasker

PROMPTS = ["recommend a movie", "space opera with robots the user"]


@pytest.fixture(scope="module")
def world():
    w = make_world("llama", seed=1)
    m, tok, v = w["model"], w["tokenizer"], w["vocab"]
    with torch.no_grad():  # make spans frequent: push [SID] towards the mean final hidden state
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        h = m(**enc, output_hidden_states=True).hidden_states[-1].mean((0, 1))
        m.get_output_embeddings().weight[v.open_id] += 3.0 * h / h.pow(2).sum()
    # a different random model with the same vocabulary: its drafts are often rejected (rollbacks)
    asst = make_model("llama", v.token_begin, seed=5, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    adapt_model(asst, v, seed=5)
    w["assistant"] = asst
    return w


def _items(w, token_ids):
    """Complete spans of ``token_ids`` as catalog rows; asserts each names a real item."""
    v = w["vocab"]
    ids = list(token_ids)
    if v.open_id in ids:  # a span cut by max_new_tokens is not an answer
        last = len(ids) - 1 - ids[::-1].index(v.open_id)
        if v.close_id not in ids[last:]:
            ids = ids[:last]
    segs = parse_output(ids, w["tokenizer"], v, w["index"], w["catalog"])
    items = [s for s in segs if not isinstance(s, str)]
    assert all(it.valid for it in items), items
    return [it.row for it in items]


def _generate(w, prompt, proc, **kw):
    enc = w["tokenizer"]([prompt], return_tensors="pt")
    out = w["model"].generate(**enc, logits_processor=LogitsProcessorList([proc]), **kw)
    return out[0, enc["input_ids"].shape[1]:].tolist()


ASSISTED = {"assistant_model": lambda w: dict(assistant_model=w["assistant"]),
            "self_assist": lambda w: dict(assistant_model=w["model"]),
            "prompt_lookup": lambda w: dict(prompt_lookup_num_tokens=3)}


@pytest.mark.parametrize("fmt", ["ids", "mixed"])
@pytest.mark.parametrize("assist", list(ASSISTED))
def test_assisted_greedy_equals_greedy_and_keeps_the_limits(world, fmt, assist):
    tok, idx = world["tokenizer"], world["index"]
    spans = 0
    for prompt in PROMPTS:
        kw = dict(max_new_tokens=32, do_sample=False)
        plain = SidLogitsProcessor(idx, tok.eos_token_id, format=fmt, max_items=2)
        want = _generate(world, prompt, plain, **kw)
        p = SidLogitsProcessor(idx, tok.eos_token_id, format=fmt, max_items=2)
        got = _generate(world, prompt, p, **kw, **ASSISTED[assist](world))
        assert got == want, prompt  # HF guarantees assisted greedy == greedy; the processor must too
        rows = _items(world, got)
        assert len(rows) <= 2 and len(set(rows)) == len(rows)
        assert not plain.errors() and not p.errors()
        spans += len(rows)
    assert spans >= 2  # the limits were actually exercised


def test_assisted_sampling_keeps_the_limits(world):
    tok, idx = world["tokenizer"], world["index"]
    for seed in range(3):
        torch.manual_seed(seed)
        p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids", max_items=2, exclude=[3])
        got = _generate(world, PROMPTS[0], p, max_new_tokens=32, do_sample=True, top_k=0,
                        assistant_model=world["assistant"])
        rows = _items(world, got)
        assert len(rows) <= 2 and len(set(rows)) == len(rows) and 3 not in rows
        v = world["vocab"]
        assert all(v.token_begin <= t < v.token_end or t in (tok.eos_token_id, tok.pad_token_id) for t in got)


def _masks_from_scratch(w, prompt_ids, gen, **opts):
    """The mask a fresh processor gives after ``gen`` tokens, stepping one token per call."""
    V = w["vocab"].vocab_size
    p = SidLogitsProcessor(w["index"], w["tokenizer"].eos_token_id, **opts)
    seq = list(prompt_ids)
    out = p(torch.tensor([seq]), torch.zeros(1, V))
    for t in gen:
        seq.append(t)
        out = p(torch.tensor([seq]), torch.zeros(1, V))
    return torch.isneginf(out)


def test_rollbacks_and_jumps_replay_the_generated_tokens(world):
    """Call the processor on prefixes in the order assisted decoding does (drafts, then shorter inputs,
    repeats, jumps of several tokens): every mask equals a processor that saw the prefix step by step."""
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    prompt = tok(PROMPTS[0])["input_ids"]
    opts = dict(format="ids", max_items=2)
    seq = _generate(world, PROMPTS[0], SidLogitsProcessor(idx, tok.eos_token_id, **opts), max_new_tokens=20,
                    do_sample=False)
    assert seq.count(v.close_id) == 2
    V = v.vocab_size
    p = SidLogitsProcessor(idx, tok.eos_token_id, **opts)
    rng = np.random.default_rng(0)
    lengths = [0, 1, 2, 5, 3, 3, 4, 9, 6, 7, 12, 8, 15, 16, 10, 20, 20, 13]
    lengths += rng.integers(0, len(seq) + 1, size=12).tolist()
    for n in lengths:
        got = torch.isneginf(p(torch.tensor([prompt + seq[:n]]), torch.zeros(1, V)))
        want = _masks_from_scratch(world, prompt, seq[:n], **opts)
        assert torch.equal(got, want), n
        assert p.emitted(0).tolist() == _items(world, seq[:n])  # generated items counted, never the prompt's


def test_prompt_items_do_not_count_and_new_prompts_restart(world):
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    item = world["sid_tokens"]["movie"][0].tolist()
    V = v.vocab_size
    p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids", max_items=1)
    prompt = tok("recommend a movie")["input_ids"] + [v.open_id, *item, v.close_id]
    p(torch.tensor([prompt]), torch.zeros(1, V))
    assert p.emitted(0).size == 0 and p.masker.state.status[0] == RowStatus.TEXT
    # the row finishes; a longer input after that is the next turn's prompt, not generated tokens
    p(torch.tensor([prompt + [tok.eos_token_id]]), torch.zeros(1, V))
    assert p.masker.state.status[0] == RowStatus.DONE
    turn2 = prompt + [tok.eos_token_id] + tok(" space opera")["input_ids"]
    out = p(torch.tensor([turn2]), torch.zeros(1, V))
    assert p.masker.state.status[0] == RowStatus.TEXT and not torch.isneginf(out[0, v.open_id])
    # an unrelated prompt of the same length restarts too
    other = tok("hello world, how are you?")["input_ids"][: len(turn2)]
    p(torch.tensor([other]), torch.zeros(1, V))
    assert p._prompt_len == len(other)


def test_a_row_that_matches_nothing_is_refused(world):
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    V = v.vocab_size
    p = SidLogitsProcessor(idx, tok.eos_token_id)
    prompt = [[5, 6, 7], [5, 6, 7]]
    p(torch.tensor(prompt), torch.zeros(2, V))
    p(torch.tensor([r + [10, 11] for r in prompt]), torch.zeros(2, V))
    with pytest.raises(RuntimeError, match="did not generate"):  # row 0 repeats, row 1 is foreign
        p(torch.tensor([prompt[0] + [10, 11], prompt[1] + [12, 13]]), torch.zeros(2, V))


def test_prompt_lookup_refed_logits_are_not_a_conflict(world):
    """Prompt lookup tests each draft token by calling the processor list again on the logits tensor it
    just processed; the -inf left there by neo's own in-place mask must not read as a conflict."""
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    item = world["sid_tokens"]["movie"][0].tolist()
    prompt = tok("recommend a movie")["input_ids"] + [v.open_id]
    p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids", max_items=1)
    procs = LogitsProcessorList([NoRepeatNGramLogitsProcessor(5), p])
    fake = torch.ones(1, v.vocab_size)
    seq = list(prompt)
    for t in item:
        out = procs(torch.tensor([seq]), fake)  # same tensor every time, as PromptLookupCandidateGenerator does
        seq.append(t)
    assert out is not None and not p.errors()


# ------------------------------------------------------------------------------- conflicting options
def _single_child_prefix(w):
    """A movie SID prefix (all levels but the last) with exactly one child, and that child."""
    kids = defaultdict(set)
    for t in w["sid_tokens"]["movie"].tolist():
        kids[tuple(t[:-1])].add(t[-1])
    pref = next(k for k, c in kids.items() if len(c) == 1)
    return list(pref), next(iter(kids[pref]))


def _conflict_case(w, option):
    """(prompt ids, generate kwargs) that make `option` mask every token neo allows at some step."""
    tok, v = w["tokenizer"], w["vocab"]
    base = tok("recommend a movie")["input_ids"]
    if option == "min_new_tokens":  # after its one item, format='ids' + max_items=1 leaves only EOS
        return base + [v.open_id], dict(min_new_tokens=12)
    if option == "suppress_tokens":  # a span can only end with [/SID]
        return base + [v.open_id], dict(suppress_tokens=[v.close_id])
    pref, last = _single_child_prefix(w)  # the only child of `pref` would repeat the bigram (pref[-1], last)
    return base + [v.open_id, *pref, last, v.close_id, v.open_id, *pref], dict(no_repeat_ngram_size=2)


MODES = {"greedy": dict(do_sample=False), "sample": dict(do_sample=True, top_k=0),
         "beam": dict(num_beams=3, num_return_sequences=2, do_sample=False),
         "assisted": None}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("option", ["min_new_tokens", "no_repeat_ngram_size", "suppress_tokens"])
def test_options_that_empty_a_row_are_named(world, option, mode):
    tok, idx = world["tokenizer"], world["index"]
    ids, kw = _conflict_case(world, option)
    mk = MODES[mode] if mode != "assisted" else dict(do_sample=False, assistant_model=world["assistant"])
    p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids", max_items=1)
    x = torch.tensor([ids])
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=rf"`{option}` \(\w+LogitsProcessor\)") as e:
        world["model"].generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16,
                                logits_processor=LogitsProcessorList([p]), **kw, **mk)
    assert "no token left" in str(e.value) and "Options that conflict with neo" in str(e.value)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
def test_compatible_uses_of_those_options_still_work(world, mode):
    """min_new_tokens with room to write (separators, or free text), suppress_tokens of unrelated text
    tokens, no_repeat_ngram_size without spans: no error, every span a real item."""
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    sep = tok(",")["input_ids"][-1]
    base = tok("recommend a movie")["input_ids"]
    cases = [
        (dict(format="ids", max_items=1, separator_token_ids=[sep]), dict(min_new_tokens=8)),
        (dict(format="mixed", max_items=1), dict(min_new_tokens=8)),
        (dict(format="ids"), dict(suppress_tokens=[5, 6, 7])),
        (dict(format="text"), dict(no_repeat_ngram_size=2)),  # inside spans it conflicts (see above)
    ]
    for opts, kw in cases:
        x = torch.tensor([base + ([] if opts["format"] == "text" else [v.open_id])])  # start in a span
        p = SidLogitsProcessor(idx, tok.eos_token_id, **opts)
        torch.manual_seed(1)
        out = world["model"].generate(x, attention_mask=torch.ones_like(x), max_new_tokens=14,
                                      logits_processor=LogitsProcessorList([p]), **kw, **MODES[mode])
        assert not p.errors(), (opts, kw)
        for row in out[:, x.shape[1]:].tolist():
            rows = _items(world, ([] if opts["format"] == "text" else [v.open_id]) + row)
            if opts.get("max_items") == 1:
                assert len(rows) <= 1
            if "min_new_tokens" in kw:
                assert tok.eos_token_id not in row[: kw["min_new_tokens"]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_conflict_outside_generate_is_still_reported(world, dtype):
    """Called directly with scores another component already masked: no processor list to name, but a
    clear error instead of a row that silently breaks the rules (numpy and torch paths of the check)."""
    tok, idx, v = world["tokenizer"], world["index"], world["vocab"]
    p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids", max_items=1)
    ids = torch.tensor([tok("recommend")["input_ids"] + [v.open_id]] * 3)
    scores = torch.zeros(3, v.vocab_size, dtype=dtype)
    scores[1, v.token_begin:] = float("-inf")
    with pytest.raises(ValueError, match=r"row 1 has no token left.*another logits processor"):
        p(ids, scores)
    p.reset()
    p(ids, torch.zeros(3, v.vocab_size, dtype=dtype))  # nothing masked before: fine
    assert not p.errors()


def test_masker_apply_is_unchanged_by_the_check(world):
    """The conflict check only reads: the processor's result is exactly the structured mask."""
    idx, v, tok = world["index"], world["vocab"], world["tokenizer"]
    p = SidLogitsProcessor(idx, tok.eos_token_id, format="ids")
    ids = torch.tensor([[5, 6, v.open_id]])
    logits = torch.randn(1, v.vocab_size)
    out = p(ids, logits.clone())
    ref = logits.clone()
    ref[~bitmask_to_bool(p.masker.bitmask, v.vocab_size)] = float("-inf")
    assert torch.equal(out, ref)
    assert isinstance(p.masker, SidMasker)
