"""Staged training: frozen-backbone alignment, completion-only labels, packing, loss decrease, resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from neo import PromptBuilder, VocabMismatchError
from neo import train as T
from neo.training.tasks import Example, TaskBuilder, TaskDataError, load_interactions, split_interactions
from test_tasks import events, world_catalog


def _world(arch: str = "llama", tied=None):
    w, cat = world_catalog(arch, tied=tied)
    pb = PromptBuilder(w["tokenizer"], w["vocab"], w["index"], cat)
    return w, cat, TaskBuilder(pb, cat, seed=0)


@pytest.fixture(scope="module")
def llama():
    return _world("llama", tied=False)


@pytest.mark.parametrize("method", ["trainable_tokens", "row_masked"])
@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_align_changes_only_the_sid_rows(arch, tied, method):
    if method == "trainable_tokens":
        pytest.importorskip("peft")
    w, cat, tb = _world(arch, tied=tied)
    m, vocab = w["model"], w["vocab"]
    assert (m.get_output_embeddings().weight is m.get_input_embeddings().weight) == tied
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    res = T.align(m, w["tokenizer"], vocab, tb.alignment(), max_steps=6, batch_size=8, lr=1e-2,
                  weight_decay=0.1, progress=False, method=method)
    assert res.model is m and type(m).__name__.endswith("ForCausalLM")  # trained in place, no wrapper left
    assert res.global_step == 6
    b, e = vocab.token_begin, vocab.token_end
    changed = []
    for n, p in m.named_parameters():
        if p.ndim == 2 and p.shape[0] >= e and ("embed" in n or "lm_head" in n):
            assert torch.equal(p[:b], before[n][:b]) and torch.equal(p[e:], before[n][e:]), n
            assert not torch.equal(p[b:e], before[n][b:e]), f"{n}: SID rows did not learn"
            changed.append(n)
        else:
            assert torch.equal(p, before[n]), f"{n} changed during alignment"
    assert len(changed) == (1 if tied else 2)
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags  # freezing undone
    assert res.trainable_params == (e - b) * m.config.hidden_size * (1 if tied else 2)


def test_align_rejects_an_unadapted_model(llama):
    w, cat, tb = llama
    from _tiny import make_model
    bare = make_model("llama", w["vocab"].token_begin)
    with pytest.raises(VocabMismatchError, match="adapt_model"):
        T.align(bare, w["tokenizer"], w["vocab"], tb.alignment()[:4], max_steps=1, progress=False)


def test_completion_only_labels(llama):
    w, cat, tb = llama
    tok = w["tokenizer"]
    ex = tb.alignment(rows=[0, 25])
    feats, rep = T.encode_examples(ex, tok, max_length=512)
    assert rep == {"encoded": len(ex), "truncated": 0, "skipped_too_long": 0}
    for e, f in zip(ex, feats):
        p, c = e.encode(tok)
        assert f["input_ids"] == p + c
        assert f["labels"] == [-100] * len(p) + c  # prompt masked, completion (with EOS) learnt
        assert f["input_ids"][0] == tok.bos_token_id and c[-1] == tok.eos_token_id
    batch = T.CompletionCollator(tok.pad_token_id)(feats[:2])
    n0 = len(feats[0]["input_ids"])
    assert batch["attention_mask"][0].sum() == n0
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    # truncation drops the oldest prompt tokens, keeps BOS and the whole completion
    p, c = ex[0].encode(tok)
    short, rep = T.encode_examples(ex[:1], tok, max_length=len(c) + 3)
    assert rep["truncated"] == 1 and short[0]["input_ids"] == [p[0]] + p[-2:] + c
    none, rep = T.encode_examples(ex[:1], tok, max_length=len(c))
    assert none == [] and rep["skipped_too_long"] == 1


def test_packing_keeps_examples_apart(llama):
    w, cat, tb = llama
    m, tok = w["model"], w["tokenizer"]
    feats, _ = T.encode_examples(tb.alignment(rows=[1, 2, 30]), tok)
    packed = T.pack_features(feats, 10_000, shuffle=False)
    assert len(packed) == 1
    coll = T.CompletionCollator(tok.pad_token_id)
    m.eval()
    with torch.no_grad():
        pb = coll(packed)
        assert "attention_mask" not in pb
        lp = torch.log_softmax(m(input_ids=pb["input_ids"], position_ids=pb["position_ids"], use_cache=False).logits, -1)
        off = 0
        for f in feats:
            n = len(f["input_ids"])
            ls = torch.log_softmax(m(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits, -1)
            # same next-token distributions as running the example alone: no attention across examples
            torch.testing.assert_close(lp[0, off:off + n], ls[0], atol=1e-4, rtol=1e-4)
            off += n


def test_pack_length_sets_the_row_length_and_keeps_the_loss(llama):
    w, cat, tb = llama
    tok = w["tokenizer"]
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    ex = tb.instruction(split)
    feats = [T._encode_one(ex["recommend"][i], tok, 512)[0] for i in range(8)]
    longest = max(len(f["input_ids"]) for f in feats)
    for n in (1, longest + 5, 3 * longest):
        b = T.CompletionCollator(tok.pad_token_id, pack_length=n, count_tokens=True)(feats)
        assert longest <= b["input_ids"].shape[1] <= max(n, longest)  # at most n, never below the longest example
        assert int(b["neo_num_tokens"]) == sum(len(f["input_ids"]) for f in feats)
        assert int((b["labels"] != -100).sum()) == sum(sum(x != -100 for x in f["labels"]) for f in feats)
    assert T.CompletionCollator(tok.pad_token_id, pack_length=3 * longest)(feats)["input_ids"].shape[0] < len(feats)
    # the same batches, packed or padded: the same loss at every step (the model has no dropout here)
    start = copy.deepcopy(w["model"])
    kw = dict(max_steps=3, batch_size=6, lr=1e-3, logging_steps=1, progress=False, num_examples=18,
              weights={"recommend": 2.0, "search": 1.0})
    padded = T.instruct(copy.deepcopy(start), tok, ex, **kw)
    packed = T.instruct(copy.deepcopy(start), tok, ex, packing=True, pack_length=2 * longest, **kw)
    np.testing.assert_allclose(packed.losses, padded.losses, rtol=2e-4, atol=2e-4)
    assert packed.tokens == padded.tokens and packed.loss_tokens == padded.loss_tokens
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="pack_length"):
            T.instruct(copy.deepcopy(start), tok, ex, packing=True, pack_length=bad, **kw)
    # a row length alone turns packing on
    assert T._pack_length(False, 64, 512) == 64 and T._pack_length(True, None, 512) == 512
    assert T._pack_length(False, None, 512) is None


def test_instruct_with_sid_band_smoothing(llama):
    w, cat, tb = llama
    tok = w["tokenizer"]
    ex = tb.instruction(split_interactions(load_interactions(events(cat), cat), "leave_one_out"))
    start = copy.deepcopy(w["model"])
    kw = dict(max_steps=2, batch_size=6, lr=1e-3, logging_steps=1, progress=False, num_examples=12,
              weights={"recommend": 1.0})
    plain = T.instruct(copy.deepcopy(start), tok, ex, **kw)
    smooth = T.instruct(copy.deepcopy(start), tok, ex, sid_smoothing=0.3, vocab=w["vocab"], **kw)
    # the same first batch, another loss (the exact value is checked in test_sid_smoothing.py)
    assert np.isfinite(smooth.losses).all() and smooth.losses[0] != pytest.approx(plain.losses[0], abs=1e-6)
    with pytest.raises(ValueError, match="needs vocab"):
        T.instruct(copy.deepcopy(start), tok, ex, sid_smoothing=0.1, **kw)
    with pytest.raises(ValueError, match="not both"):
        T.instruct(copy.deepcopy(start), tok, ex, sid_smoothing=0.1, vocab=w["vocab"],
                   training_args={"label_smoothing_factor": 0.1}, **kw)
    with pytest.raises(ValueError, match="epsilon"):
        T.instruct(copy.deepcopy(start), tok, ex, sid_smoothing=1.5, vocab=w["vocab"], **kw)


def test_weight_average_follows_the_formula_and_swaps_back():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    m.bias.requires_grad_(False)  # only trainable weights are averaged
    wa = T.WeightAverage(m, 0.5)
    ref = None
    for n in range(1, 6):
        with torch.no_grad():
            m.weight.add_(torch.randn_like(m.weight))
            m.bias.add_(1.0)
        wa.update()
        w = m.weight.detach().clone()
        if ref is None:
            ref = w
        else:
            d = min(0.5, (1 + n) / (10 + n))
            ref = d * ref + (1 - d) * w
    torch.testing.assert_close(wa.average[0], ref)
    own_w, own_b = m.weight.detach().clone(), m.bias.detach().clone()
    with wa.applied():
        torch.testing.assert_close(m.weight, ref)
        assert torch.equal(m.bias, own_b)
    assert torch.equal(m.weight, own_w)  # the trained weights are back
    wa.copy_to_model()
    torch.testing.assert_close(m.weight, ref)
    for bad in (0.0, 1.0, float("nan"), -1):
        with pytest.raises(ValueError, match="decay"):
            T.WeightAverage(m, bad)


def test_instruct_validates_and_returns_the_averaged_weights(llama):
    w, cat, tb = llama
    tok = w["tokenizer"]
    ex = tb.instruction(split_interactions(load_interactions(events(cat), cat), "leave_one_out"))
    seen = []

    def fn(model):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return {"ndcg@10": -float(len(seen))}  # the first validation stays the best

    kw = dict(max_steps=6, batch_size=4, lr=1e-2, progress=False, num_examples=24, weights={"recommend": 1.0},
              validation=T.Validation(fn, every_epochs=0.5, patience=10))
    T.instruct(copy.deepcopy(w["model"]), tok, ex, **kw)
    raw, seen[:] = list(seen), []
    res = T.instruct(copy.deepcopy(w["model"]), tok, ex, average_decay=0.9, **kw)
    assert len(seen) == len(raw) >= 2 and res.best["step"] == res.eval_history[0]["step"]
    # same data and seed: the same trained weights, so what validation saw differs only by the averaging
    assert all(any(not torch.equal(a[n], b[n]) for n in a) for a, b in zip(seen, raw))
    # the returned model holds the weights the best validation saw: the average, not the last trained ones
    for n, p in res.model.named_parameters():
        assert torch.equal(p, seen[0][n]), n
    assert any(not torch.equal(seen[0][n], seen[-1][n]) for n in seen[0])


def test_mix_tasks_weights_and_errors():
    items, counts = T.mix_tasks({"a": list(range(10)), "b": list(range(100, 103))}, {"a": 1, "b": 3},
                                num_examples=40, seed=0)
    assert counts == {"a": 10, "b": 30} and len(items) == 40
    assert sum(1 for x in items if x >= 100) == 30
    again, _ = T.mix_tasks({"a": list(range(10)), "b": list(range(100, 103))}, {"a": 1, "b": 3},
                           num_examples=40, seed=0)
    assert again == items
    with pytest.raises(ValueError, match="no examples"):
        T.mix_tasks({"a": [1]}, {"zzz": 1.0})
    with pytest.raises(ValueError, match="positive weight"):
        T.mix_tasks({"a": [], "b": [1]}, {"a": 1.0, "b": 0.0})


def test_instruct_rejects_empty_data(llama):
    w, cat, tb = llama
    with pytest.raises(TaskDataError, match="nothing to train on"):
        T.instruct(w["model"], w["tokenizer"], [], max_steps=1, progress=False)
    with pytest.raises(TaskDataError, match="empty completion"):
        T.encode_examples([Example("x", ["a" + "\nAnswer:"], [])], w["tokenizer"], add_eos=False)


def _first_last(losses, n=4):
    return float(np.mean(losses[:n])), float(np.mean(losses[-n:]))


def test_loss_goes_down_on_each_stage():
    from _tiny import CORPUS

    from neo import SidVocab, adapt_model
    from neo.core.index import SidIndex

    torch.manual_seed(0)
    model, tok, r0 = T.stage0(texts=CORPUS, vocab_size=300, hidden=32, layers=2, block_size=64, max_steps=30,
                              batch_size=4, lr=3e-3, logging_steps=1, progress=False)
    a, b = _first_last(r0.losses)
    assert b < a - 0.5, f"stage0 loss {a:.3f} -> {b:.3f}"
    # SID block on top of the stage-0 model, catalog and tasks from the shared fixture layout
    w, cat = world_catalog()
    vocab = SidVocab.for_tokenizer(tok, {"movie": [4, 4, 3], "book": [3, 5]})
    vocab.install(tok)
    adapt_model(model, vocab)
    old = w["vocab"].layout
    index = SidIndex.build(vocab.layout, {t: vocab.layout.codes_to_tokens(t, old.tokens_to_codes(t, x))
                                          for t, x in w["sid_tokens"].items()}, w["rows"])
    tb = TaskBuilder(PromptBuilder(tok, vocab, index, cat), cat, seed=0)
    r1 = T.align(model, tok, vocab, tb.alignment(), max_steps=40, batch_size=8, lr=3e-2, logging_steps=1,
                 progress=False)
    a, b = _first_last(r1.losses)
    assert b < a - 0.2, f"align loss {a:.3f} -> {b:.3f}"
    split = split_interactions(load_interactions(events(cat, n_users=10), cat), "leave_one_out")
    r2 = T.instruct(model, tok, tb.instruction(split), max_steps=30, batch_size=8, lr=3e-3, logging_steps=1,
                    packing=True, max_length=256, progress=False)
    a, b = _first_last(r2.losses)
    assert b < a - 0.3, f"instruct loss {a:.3f} -> {b:.3f}"


def test_resume_reproduces_the_next_steps(tmp_path, llama):
    w, cat, tb = llama
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    ex = tb.instruction(split)
    start = copy.deepcopy(w["model"])
    kw = dict(max_steps=6, batch_size=4, lr=1e-3, logging_steps=1, save_steps=3, progress=False,
              weights={"recommend": 2.0, "search": 1.0, "describe_user": 1.0}, num_examples=40)
    full = T.instruct(copy.deepcopy(start), w["tokenizer"], ex, output_dir=tmp_path / "run", **kw)
    assert (tmp_path / "run" / "checkpoint-3").is_dir() and len(full.losses) == 6
    resumed = T.instruct(copy.deepcopy(start), w["tokenizer"], ex, output_dir=tmp_path / "run",
                         resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"), **kw)
    steps = [h["step"] for h in resumed.loss_history]
    assert steps[-3:] == [4.0, 5.0, 6.0]
    np.testing.assert_allclose(resumed.losses[-3:], full.losses[-3:], rtol=1e-6, atol=1e-7)
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def test_align_resume_keeps_the_backbone(tmp_path, llama):
    w, cat, tb = llama
    m = copy.deepcopy(w["model"])
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    kw = dict(max_steps=4, batch_size=8, logging_steps=1, save_steps=2, progress=False)
    a = T.align(copy.deepcopy(m), w["tokenizer"], w["vocab"], tb.alignment(), output_dir=tmp_path / "al", **kw)
    r = T.align(m, w["tokenizer"], w["vocab"], tb.alignment(), output_dir=tmp_path / "al",
                resume_from_checkpoint=str(tmp_path / "al" / "checkpoint-2"), **kw)
    assert r.global_step == 4 and [h["step"] for h in r.loss_history][-2:] == [3.0, 4.0]
    np.testing.assert_allclose(r.losses[-2:], a.losses[-2:], rtol=1e-6)
    b, e = w["vocab"].token_begin, w["vocab"].token_end
    for n, p in m.named_parameters():
        if "embed" in n or "lm_head" in n:
            assert torch.equal(p[:b], before[n][:b]), n
        else:
            assert torch.equal(p, before[n]), n


def test_lora_instruct_merges():
    pytest.importorskip("peft")
    w, cat, tb = _world("llama", tied=False)
    vocab = w["vocab"]
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    res = T.instruct(w["model"], w["tokenizer"], tb.instruction(split), max_steps=4, batch_size=4, lr=1e-3,
                     lora=True, lora_config={"r": 4, "sid_rows": (vocab.token_begin, vocab.token_end)},
                     logging_steps=1, progress=False)
    assert type(res.model).__name__ == "LlamaForCausalLM" and len(res.losses) == 4
    assert res.trainable_params < sum(p.numel() for p in res.model.parameters()) / 2


def _fingerprint(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_early_stopping_keeps_the_best_weights(llama):
    w, cat, tb = llama
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    model = copy.deepcopy(w["model"])
    was = model.training
    scores = iter([0.1, 0.5, 0.2, 0.3, 0.05, 0.9, 0.9])
    seen: list[dict] = []

    def fn(m):
        seen.append(_fingerprint(m))
        assert not m.training  # validation runs in eval mode
        return {"ndcg@10": next(scores), "hr@10": 0.0}

    v = T.Validation(fn, metric="ndcg@10", every_epochs=0.5, patience=2)
    res = T.instruct(model, w["tokenizer"], tb.instruction(split, tasks=["recommend"], window=3), epochs=20,
                     batch_size=4, lr=1e-2, logging_steps=1, progress=False, validation=v)
    assert res.stop_reason == "early stopping"
    assert [h["ndcg@10"] for h in res.eval_history] == [0.1, 0.5, 0.2, 0.3]  # two without improvement: stop
    assert res.best["ndcg@10"] == 0.5 and res.best["step"] == res.eval_history[1]["step"]
    best = seen[1]
    assert not all(torch.equal(p, seen[3][n]) for n, p in best.items())  # it kept training after the best
    for n, p in res.model.named_parameters():
        assert torch.equal(p, best[n]), f"{n} is not the best validated weight"
    assert res.model.training == was  # the caller's mode is restored
    assert res.tokens > 0 and 0 < res.loss_token_share <= 1 and res.tokens_per_s > 0


def test_time_budget_stops_a_stage_and_keeps_the_best(llama):
    w, cat, tb = llama
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    calls = []

    def fn(m):
        calls.append(1)
        return {"ndcg@10": float(len(calls))}

    res = T.instruct(copy.deepcopy(w["model"]), w["tokenizer"], tb.instruction(split), epochs=50, batch_size=2,
                     lr=1e-3, logging_steps=1, progress=False, max_minutes=1e-5,
                     validation=T.Validation(fn, every_epochs=10))
    assert res.stop_reason == "time budget" and res.global_step == 1
    assert len(res.eval_history) == 1 and res.best["step"] == 1  # validated once at the stop
    r0 = T.align(copy.deepcopy(w["model"]), w["tokenizer"], w["vocab"], tb.alignment(), epochs=50, batch_size=2,
                 progress=False, max_minutes=1e-5)
    assert r0.stop_reason == "time budget" and r0.global_step == 1
    with pytest.raises(ValueError, match="max_minutes must be > 0"):
        T.align(w["model"], w["tokenizer"], w["vocab"], tb.alignment(), max_steps=1, progress=False, max_minutes=0)


def test_validation_must_return_its_metric(llama):
    w, cat, tb = llama
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    with pytest.raises(KeyError, match="ndcg@10"):
        T.instruct(copy.deepcopy(w["model"]), w["tokenizer"], tb.instruction(split), max_steps=2, batch_size=2,
                   progress=False, validation=T.Validation(lambda m: {"hr@10": 0.1}, every_epochs=100))


def test_backbone_picks_the_learning_rate_defaults(llama):
    w, cat, tb = llama
    from neo.training.train import HPARAMS, backbone_kind

    m = w["model"]
    assert backbone_kind(m) == "pretrained"
    scratch = T.small_model(w["tokenizer"], hidden=16, layers=1, heads=2)
    assert backbone_kind(scratch) == "scratch" and scratch.config.neo_backbone == "scratch"
    assert HPARAMS[("instruct", "scratch")]["lr"] > HPARAMS[("instruct", "pretrained")]["lr"]
    gpt = T.small_model(w["tokenizer"], hidden=16, layers=1, heads=2, arch="gpt2", dropout=0.2)
    assert gpt.config.resid_pdrop == 0.2 and backbone_kind(gpt) == "scratch"
    with pytest.raises(ValueError, match="backbone"):
        backbone_kind(m, "huge")


def test_budget_schedule_decays_to_where_the_budget_ends():
    from neo.training.train import _Horizon

    h = _Horizon(total=100, warmup=10, min_rate=0.1)
    assert h(0) == pytest.approx(1 / 11) and h(10) == pytest.approx(1.0)
    assert h(55) == pytest.approx(0.55) and h(100) == pytest.approx(0.1) and h(500) == pytest.approx(0.1)
    h.total = 50  # the budget will end training at step 50: the decay is re-aimed there
    assert h(50) == pytest.approx(0.1) and h(30) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))
