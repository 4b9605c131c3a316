"""Plausibility scoring (issue 8): scores against brute-force references, batching/padding invariance,
options, margin-loss gradients, bad input, loaders, formatting, and the training paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import CORPUS, make_model, make_tokenizer
from neo.scoring import (ChoiceText, ClassifierHead, MaskedMultipleChoiceCollator, MultipleChoiceCollator, choice_scores, encode_pair,
                         evaluate_choices, fine_tune, format_copa, format_qa, margin_ranking_loss, restart_summary,
                         accuracy, rank, score, score_text, score_tokens, sequence_logprobs)
from neo.scoring.datasets import build_description_choice_task, evaluate_examples, load_commonsenseqa, load_copa

torch.set_num_threads(1)

PREMISE = "the user watched these movies"
CANDS = [" and liked them", " a funny film about a dog and a cat", " space", " romantic comedy in paris"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer("bpe")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def causal(request, tok):
    return make_model(request.param, len(tok), hidden=32, seed=1)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def brute_causal(model, tok, premise, cands, direction):
    """One unpadded forward per candidate; per-token log-probs of the scored segment."""
    out = []
    for c in cands:
        p, ci = ids_of(tok, premise), ids_of(tok, c)
        ctx, tgt = ([tok.bos_token_id] + p, ci) if direction == "candidate" else ([tok.bos_token_id] + ci, p)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ctx + tgt])).logits[0].double(), -1)
        out.append(torch.tensor([lp[len(ctx) + k - 1, t].item() for k, t in enumerate(tgt)], dtype=torch.float64))
    return out


# ------------------------------------------------------------------------------------------------ causal

@pytest.mark.parametrize("direction", ["candidate", "premise"])
@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_causal_matches_bruteforce(causal, tok, direction, reuse, side):
    ref = brute_causal(causal, tok, PREMISE, CANDS, direction)
    got = score_tokens(causal, tok, PREMISE, CANDS, direction=direction, reuse_prefix=reuse, padding_side=side,
                       batch_size=3)
    assert [len(g) for g in got] == [len(r) for r in ref]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.double(), r, atol=2e-5, rtol=1e-5)
    s = score(causal, tok, PREMISE, CANDS, direction=direction, normalize="sum", reuse_prefix=reuse,
              padding_side=side, batch_size=3)
    torch.testing.assert_close(s.double(), torch.stack([r.sum() for r in ref]), atol=1e-4, rtol=1e-5)


def test_batched_equals_unbatched_and_padding_invariant(causal, tok):
    ref = score(causal, tok, PREMISE, CANDS, batch_size=1, reuse_prefix=False)
    for bs in (2, 4, 16):
        for side in ("left", "right"):
            for reuse in (True, False):
                got = score(causal, tok, PREMISE, CANDS, batch_size=bs, padding_side=side, reuse_prefix=reuse)
                torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_normalisation_and_direction_defaults(causal, tok):
    for direction in ("candidate", "premise"):
        toks = score_tokens(causal, tok, PREMISE, CANDS, direction=direction)
        sums = torch.stack([t.sum() for t in toks])
        means = torch.stack([t.mean() for t in toks])
        torch.testing.assert_close(score(causal, tok, PREMISE, CANDS, direction=direction, normalize="sum"), sums)
        torch.testing.assert_close(score(causal, tok, PREMISE, CANDS, direction=direction, normalize="mean"), means)
        default = sums if direction == "premise" else means
        torch.testing.assert_close(score(causal, tok, PREMISE, CANDS, direction=direction), default)
    # candidate direction scores the candidate tokens, premise direction the premise tokens
    cand_lens = [len(t) for t in score_tokens(causal, tok, PREMISE, CANDS, direction="candidate")]
    prem_lens = [len(t) for t in score_tokens(causal, tok, PREMISE, CANDS, direction="premise")]
    assert cand_lens == [len(ids_of(tok, c)) for c in CANDS]
    assert prem_lens == [len(ids_of(tok, PREMISE))] * len(CANDS)
    # the two directions are different quantities
    assert not torch.allclose(score(causal, tok, PREMISE, CANDS, direction="candidate", normalize="sum"),
                              score(causal, tok, PREMISE, CANDS, direction="premise", normalize="sum"))


def test_token_id_candidates_and_no_bos(causal, tok):
    text = score(causal, tok, PREMISE, CANDS, normalize="sum")
    ids = score(causal, tok, ids_of(tok, PREMISE), [ids_of(tok, c) for c in CANDS], normalize="sum")
    torch.testing.assert_close(text, ids)
    # pre-tokenized everything (e.g. SID spans): no tokenizer needed; numpy / tensor inputs accepted
    bos = tok.bos_token_id
    no_tok = score(causal, None, np.array([bos] + ids_of(tok, PREMISE)),
                   [torch.tensor(ids_of(tok, c)) for c in CANDS], normalize="sum")
    torch.testing.assert_close(no_tok, text, atol=2e-5, rtol=1e-5)
    no_bos = score(causal, tok, PREMISE, CANDS, normalize="sum", add_bos=False)
    ids_no_bos = score(causal, None, ids_of(tok, PREMISE), [ids_of(tok, c) for c in CANDS], normalize="sum")
    torch.testing.assert_close(no_bos, ids_no_bos)  # without a tokenizer there is no BOS to add
    assert not torch.allclose(no_bos, text)


def test_rank_orders_by_score(causal, tok):
    order, s = rank(causal, tok, PREMISE, CANDS, direction="premise")
    assert sorted(order) == list(range(len(CANDS)))
    assert all(s[order[i]] >= s[order[i + 1]] for i in range(len(order) - 1))
    torch.testing.assert_close(s, score(causal, tok, PREMISE, CANDS, direction="premise"))


def test_training_flag_restored_and_dropout_off(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                   resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    m.train()
    a = score(m, tok, PREMISE, CANDS)
    b = score(m, tok, PREMISE, CANDS)
    assert m.training
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_errors(tok):
    m = make_model("gpt2", len(tok), hidden=32)
    with pytest.raises(ValueError, match="candidates is empty"):
        score(m, tok, PREMISE, [])
    with pytest.raises(ValueError, match="candidate 1 is empty"):
        score(m, tok, PREMISE, [" ok", ""])
    with pytest.raises(ValueError, match="premise is empty"):
        score(m, tok, "", [" ok"])
    with pytest.raises(TypeError, match="candidates must be a list"):
        score(m, tok, PREMISE, " a single string")
    with pytest.raises(ValueError, match="direction must be"):
        score(m, tok, PREMISE, CANDS, direction="backwards")
    with pytest.raises(ValueError, match="normalize must be"):
        score(m, tok, PREMISE, CANDS, normalize="max")
    with pytest.raises(ValueError, match="padding_side"):
        score(m, tok, PREMISE, CANDS, padding_side="middle")
    long_premise = " ".join(["hello world"] * 400)
    for direction in ("candidate", "premise"):
        with pytest.raises(ValueError, match=r"premise \(\d+ tokens\).*longer than the model's context of 512"):
            score(m, tok, long_premise, CANDS, direction=direction)
    with pytest.raises(TypeError, match="no tokenizer"):
        score(m, None, PREMISE, [[1, 2]])


# ------------------------------------------------------------------------------------------------ masked LM

def make_mlm_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(CORPUS, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def mlm_tok():
    return make_mlm_tokenizer()


@pytest.fixture(scope="module", params=["bert", "roberta"])
def mlm(request, mlm_tok):
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    kw = dict(vocab_size=len(mlm_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)
    if request.param == "bert":
        return BertForMaskedLM(BertConfig(**kw)).eval()
    return RobertaForMaskedLM(RobertaConfig(**kw, pad_token_id=mlm_tok.pad_token_id)).eval()


def brute_masked(model, tok, premise, cands, premise_first, ngram):
    p = ids_of(tok, premise)
    out = []
    for c in cands:
        ci = ids_of(tok, c)
        body = p + ci if premise_first else ci + p
        seq = [tok.cls_token_id] + body + [tok.sep_token_id]
        off = 1 + (0 if premise_first else len(ci))
        lps = torch.zeros(len(p), dtype=torch.float64)
        for s in range(0, len(p), ngram):
            span = list(range(s, min(s + ngram, len(p))))
            x = list(seq)
            for j in span:
                x[off + j] = tok.mask_token_id
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([x])).logits[0].double(), -1)
            for j in span:
                lps[j] = lp[off + j, p[j]]
        out.append(lps)
    return out


@pytest.mark.parametrize("ngram", [1, 2, 3])
@pytest.mark.parametrize("premise_first", [False, True])
def test_masked_lm_matches_bruteforce(mlm, mlm_tok, ngram, premise_first):
    premise = "the user watched these movies and liked them"
    cands = ["a funny film", "space opera with robots and a cat", "hello"]
    ref = brute_masked(mlm, mlm_tok, premise, cands, premise_first, ngram)
    for bs in (1, 5, 64):
        got = score_tokens(mlm, mlm_tok, premise, cands, direction="premise", premise_first=premise_first,
                           ngram=ngram, batch_size=bs)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g.double(), r, atol=2e-5, rtol=1e-5)
    s = score(mlm, mlm_tok, premise, cands, direction="premise", premise_first=premise_first, ngram=ngram)
    torch.testing.assert_close(s.double(), torch.stack([r.sum() for r in ref]), atol=1e-4, rtol=1e-5)


def test_masked_lm_errors(mlm, mlm_tok):
    with pytest.raises(ValueError, match="direction='premise'"):
        score(mlm, mlm_tok, "the user", ["hello"], direction="candidate")
    with pytest.raises(ValueError, match="ngram"):
        score(mlm, mlm_tok, "the user", ["hello"], direction="premise", ngram=0)
    with pytest.raises(ValueError, match="candidates is empty"):
        score(mlm, mlm_tok, "the user", [], direction="premise")
    with pytest.raises(ValueError, match="longer than the model's context"):
        score(mlm, mlm_tok, " ".join(["hello world"] * 40), ["hello"], direction="premise")
    no_mask = make_tokenizer("wordlevel")
    with pytest.raises(ValueError, match="no mask token"):
        score(mlm, no_mask, "the user", ["hello"], direction="premise")


@pytest.mark.parametrize("premise_first", [False, True])
def test_masked_collated_scores_equal_score_and_train(mlm_tok, premise_first):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    m = BertForMaskedLM(BertConfig(vocab_size=len(mlm_tok), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)).eval()
    feats = [{"premise": "the user watched these movies", "candidates": ["a funny film", "space", "hello world"],
              "label": 0},
             {"premise": "search for a book", "candidates": ["about space travel", "the sea"], "label": 1}]
    col = MaskedMultipleChoiceCollator(mlm_tok, premise_first=premise_first, ngram=2)
    batch = col(feats)
    with torch.no_grad():
        got = choice_scores(m, batch, normalize="sum")
    for b, f in enumerate(feats):
        ref = score(m, mlm_tok, f["premise"], f["candidates"], direction="premise", premise_first=premise_first,
                    ngram=2)
        n = len(f["candidates"])
        torch.testing.assert_close(got[b, :n], ref, atol=2e-5, rtol=1e-5)
        assert torch.isinf(got[b, n:]).all()
    hist = fine_tune(m, col, feats, epochs=15, batch_size=2, lr=3e-3, seed=0)
    assert hist[-1] < hist[0]
    assert evaluate_choices(m, col, feats)[0] == 1.0


def test_score_text_dispatch(causal, tok, mlm, mlm_tok):
    ct = format_copa("The user watched these movies.", ["He liked them.", "A space opera."], "cause")
    assert not ct.premise_first and ct.direction == "premise"
    torch.testing.assert_close(score_text(causal, tok, ct),
                               score(causal, tok, ct.premise, ct.candidates, direction="premise"))
    torch.testing.assert_close(score_text(mlm, mlm_tok, ct),
                               score(mlm, mlm_tok, ct.premise, ct.candidates, direction="premise",
                                     premise_first=False))


# ------------------------------------------------------------------------------------------------ formatting

def test_copa_formatting_and_cause_reversal():
    prem, alts = "My body cast a shadow over the grass.", ["The sun was rising.", "The grass was cut."]
    rev = format_copa(prem, alts, "cause")
    assert rev.full_texts() == ["The sun was rising so my body cast a shadow over the grass.",
                                "The grass was cut so my body cast a shadow over the grass."]
    assert rev.premise == " my body cast a shadow over the grass." and not rev.premise_first
    keep = format_copa(prem, alts, "cause", reverse_cause=False)
    assert keep.full_texts()[0] == "My body cast a shadow over the grass because the sun was rising."
    assert keep.premise_first and keep.candidates[1] == " the grass was cut."
    eff = format_copa("I emptied my pockets.", ["I retrieved a ticket stub.", "TV was on."], "effect")
    # effect questions are already in effect form; "I" and acronyms keep their case
    assert eff.full_texts() == ["I emptied my pockets so I retrieved a ticket stub.",
                                "I emptied my pockets so TV was on."]
    assert eff.premise_first and eff.direction == "candidate"
    with pytest.raises(ValueError, match="asks_for"):
        format_copa(prem, alts, "reason")
    with pytest.raises(ValueError, match="candidates is empty"):
        format_copa(prem, [], "cause")


def test_qa_formatting():
    ct = format_qa(" Where do you keep milk? ", ["fridge", " oven"])
    assert ct == ChoiceText("Q: Where do you keep milk? A:", [" fridge", " oven"], True)
    assert ct.full_texts() == ["Q: Where do you keep milk? A: fridge", "Q: Where do you keep milk? A: oven"]


# ------------------------------------------------------------------------------------------------ losses

def reference_margin(scores, labels, eta, mask=None):
    total = 0.0
    for b in range(scores.shape[0]):
        terms = [torch.clamp(eta - scores[b, labels[b]] + scores[b, i], min=0)
                 for i in range(scores.shape[1]) if i != labels[b] and (mask is None or mask[b, i])]
        total = total + sum(terms) / len(terms)
    return total / scores.shape[0]


@pytest.mark.parametrize("eta", [0.5, 0.0, 2.0])
def test_margin_loss_value_and_gradient(eta):
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 1, 3, 0])
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[1, 0] = mask[2, 3:] = False
    for m in (None, mask):
        a = raw.clone().requires_grad_(True)
        b = raw.clone().requires_grad_(True)
        la = margin_ranking_loss(a, labels, eta=eta, candidate_mask=m)
        lb = reference_margin(b, labels, eta, m)
        la.backward()
        lb.backward()
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(a.grad, b.grad)
    assert torch.autograd.gradcheck(lambda s: margin_ranking_loss(s, labels, eta=eta, candidate_mask=mask),
                                    (raw.clone().requires_grad_(True) * 1.0001,))


def test_margin_loss_semantics():
    s = torch.tensor([[3.0, 1.0, 2.6], [0.0, 0.2, 0.1]])
    y = torch.tensor([0, 1])
    # q0: wrong 1 -> max(0, .5-3+1)=0, wrong 2 -> max(0, .5-3+2.6)=.1 -> mean .05; q1: (.3 + .4)/2 = .35
    torch.testing.assert_close(margin_ranking_loss(s, y, reduction="none"), torch.tensor([0.05, 0.35]))
    torch.testing.assert_close(margin_ranking_loss(s, y), torch.tensor(0.2))
    with pytest.raises(ValueError, match="shape"):
        margin_ranking_loss(s[0], y)
    with pytest.raises(ValueError, match="masked-out"):
        margin_ranking_loss(s, y, candidate_mask=torch.tensor([[False, True, True], [True, True, True]]))


# ------------------------------------------------------------------------------------------------ batches and training

def features():
    return [{"premise": PREMISE, "candidates": CANDS, "label": 1},
            {"premise": "search for a book", "candidates": [" about space travel", " hello"], "label": 0},
            {"premise": "describe the user", "candidates": [" in a few words", " the sea", " robots"], "label": 2}]


@pytest.mark.parametrize("direction", ["candidate", "premise"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_collated_scores_equal_score(causal, tok, direction, side):
    col = MultipleChoiceCollator(tok, direction=direction, padding_side=side)
    feats = features()
    batch = col(feats)
    B, C, T = batch["input_ids"].shape
    assert (B, C) == (3, 4) and batch["candidate_mask"].sum().item() == 9
    assert batch["labels"].tolist() == [1, 0, 2]
    for normalize in ("sum", "mean"):
        with torch.no_grad():
            s = choice_scores(causal, batch, normalize=normalize)
        for b, f in enumerate(feats):
            ref = score(causal, tok, f["premise"], f["candidates"], direction=direction, normalize=normalize)
            n = len(f["candidates"])
            torch.testing.assert_close(s[b, :n], ref, atol=2e-5, rtol=1e-5)
            assert torch.isinf(s[b, n:]).all()


def test_sequence_logprobs_rejects_unpredictable_target(causal):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="first real token"):
        sequence_logprobs(causal, ids, torch.ones_like(ids), torch.tensor([[True, True, False]]))


def test_encode_pair_layout(tok):
    ids, tm = encode_pair(tok, "hello world", " dog", direction="premise")
    assert ids == [tok.bos_token_id] + ids_of(tok, " dog") + ids_of(tok, "hello world")
    assert tm == [False] * (1 + len(ids_of(tok, " dog"))) + [True] * len(ids_of(tok, "hello world"))


def test_classifier_head_padding_invariant(tok):
    m = make_model("llama", len(tok), hidden=32, seed=2)
    head = ClassifierHead(m, seed=0).eval()
    outs = []
    for side in ("left", "right"):
        batch = MultipleChoiceCollator(tok, padding_side=side)(features())
        with torch.no_grad():
            outs.append(choice_scores(head, batch))
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=1e-5)
    assert outs[0].shape == (3, 4)


@pytest.mark.parametrize("kind", ["margin", "classifier"])
def test_fine_tune_learns_toy_task(tok, kind):
    m = make_model("gpt2", len(tok), hidden=32, seed=3)
    feats = features()
    col = MultipleChoiceCollator(tok)
    model = m if kind == "margin" else ClassifierHead(m, seed=0)
    hist = fine_tune(model, col, feats, epochs=40, batch_size=3, lr=3e-3, seed=0)
    assert hist[-1] < hist[0]
    acc, pred = evaluate_choices(model, col, feats)
    assert acc == 1.0 and pred.tolist() == [1, 0, 2]


def test_scoring_trainer(tok, tmp_path):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    from neo.scoring import ScoringTrainer

    m = make_model("gpt2", len(tok), hidden=32, seed=4)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=3,
                             max_steps=3, learning_rate=1e-3, remove_unused_columns=False, report_to=[],
                             save_strategy="no", logging_steps=1, use_cpu=True)
    before = score(m, tok, PREMISE, CANDS).clone()
    tr = ScoringTrainer(model=m, args=args, train_dataset=features(), eval_dataset=features(),
                        data_collator=MultipleChoiceCollator(tok), eta=0.5,
                        compute_metrics=lambda p: {"acc": accuracy(p.predictions, p.label_ids)})
    assert tr.mc_loss == "margin"
    tr.train()
    metrics = tr.evaluate()
    assert "eval_loss" in metrics and 0.0 <= metrics["eval_acc"] <= 1.0
    pred = tr.predict(features())
    assert pred.predictions.shape == (3, 4)
    assert not torch.allclose(before, score(m, tok, PREMISE, CANDS))


# ------------------------------------------------------------------------------------------------ data

COPA_XML = """<?xml version="1.0" encoding="UTF-8"?>
<copa-corpus version="1.0">
  <item id="1" asks-for="cause" most-plausible-alternative="1">
    <p>My body cast a shadow over the grass.</p>
    <a1>The sun was rising.</a1>
    <a2>The grass was cut.</a2>
  </item>
  <item id="2" asks-for="effect" most-plausible-alternative="2">
    <p>I emptied my pockets.</p>
    <a1>I found a weapon.</a1>
    <a2>I retrieved a ticket stub.</a2>
  </item>
</copa-corpus>
"""


def test_load_copa_xml_and_jsonl(tmp_path):
    x = tmp_path / "copa.xml"
    x.write_text(COPA_XML)
    j = tmp_path / "copa.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [
        {"id": 1, "asks-for": "cause", "most-plausible-alternative": 1, "p": "My body cast a shadow over the grass.",
         "a1": "The sun was rising.", "a2": "The grass was cut."},
        {"id": "2", "asks-for": "effect", "most-plausible-alternative": "2", "p": "I emptied my pockets.",
         "a1": "I found a weapon.", "a2": "I retrieved a ticket stub.", "human-explanations": []}]) + "\n")
    for path in (x, j):
        ex = load_copa(path)
        assert [e.id for e in ex] == ["1", "2"]
        assert [e.label for e in ex] == [0, 1]
        assert [e.asks_for for e in ex] == ["cause", "effect"]
        assert ex[0].premise == "My body cast a shadow over the grass."
        assert ex[1].choices == ["I found a weapon.", "I retrieved a ticket stub."]
        f = ex[0].to_feature()
        assert f["direction"] == "premise" and f["candidates"][0] == "The sun was rising so"
    model, tok = make_model("gpt2", 300, hidden=32), make_tokenizer()
    acc, pred = evaluate_examples(model, tok, ex)
    manual = [int(score(model, tok, e.text().premise, e.text().candidates, direction=e.text().direction).argmax())
              for e in ex]
    assert pred.tolist() == manual and acc == np.mean(np.array(manual) == [0, 1])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "asks-for": "cause", "p": "x", "a1": "y", "a2": "z"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing COPA field 'most-plausible-alternative'"):
        load_copa(bad)
    with pytest.raises(FileNotFoundError):
        load_copa(tmp_path / "missing.xml")


def test_load_commonsenseqa_both_schemas(tmp_path):
    flat = {"id": "a1", "question": "Where is milk kept?", "question_concept": "milk",
            "choices": {"label": ["A", "B", "C"], "text": ["fridge", "oven", "car"]}, "answerKey": "A"}
    nested = {"id": "b2", "question": {"stem": "What barks?", "question_concept": "bark",
                                       "choices": [{"label": "A", "text": "cat"}, {"label": "B", "text": "dog"}]},
              "answerKey": "B"}
    test = dict(flat, id="c3", answerKey="")
    p = tmp_path / "csqa.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in (flat, nested, test)) + "\n\n")
    ex = load_commonsenseqa(p)
    assert [(e.id, e.label) for e in ex] == [("a1", 0), ("b2", 1), ("c3", None)]
    assert ex[1].premise == "What barks?" and ex[1].choices == ["cat", "dog"]
    assert ex[0].text().full_texts()[0] == "Q: Where is milk kept? A: fridge"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(flat, answerKey="Z")) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: answerKey 'Z'"):
        load_commonsenseqa(bad)


def test_description_choice_task():
    titles = [f"movie {i}" for i in range(12)]
    descs = ["comedy", "drama", "horror"] * 4
    qs = build_description_choice_task(titles, descs, n_choices=4, seed=3)
    assert len(qs) == 12
    for q in qs:
        rows = q.meta["rows"]
        assert len(rows) == 4 and len(set(rows)) == 4
        assert q.choices[q.label] == titles[int(q.id[1:])]
        assert sum(descs[r] == q.premise for r in rows) == 1
    again = build_description_choice_task(titles, descs, n_choices=4, seed=3)
    assert [(q.choices, q.label) for q in again] == [(q.choices, q.label) for q in qs]
    with pytest.raises(ValueError, match="distractors"):
        build_description_choice_task(titles, descs, n_choices=10)


def test_accuracy_and_restart_summary():
    assert accuracy([1, 0, 2], [1, 1, 2]) == pytest.approx(2 / 3)
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), [1, 0]) == 1.0
    s = restart_summary([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["max"] == 0.7 and s["n"] == 3
    assert restart_summary([0.4])["std"] == 0.0
    with pytest.raises(ValueError):
        restart_summary([])
