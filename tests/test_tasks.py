"""Task builders and splits: rendering through the prompt schema, determinism, leakage, bad data."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import make_world
from neo import Catalog, Prompt, PromptBuilder
from neo.training.tasks import (ALIGN_TASKS, ANSWER_SUFFIX, ITEM_SEPARATOR, TaskBuilder, TaskDataError, load_interactions,
                       split_interactions, validate_examples)

GENRES = ["comedy", "drama", "space", "romance", "history"]


def world_catalog(arch: str = "llama", tied=None):
    w = make_world(arch, tied=tied)
    tc = w["catalog"]
    recs = [{"id": i, "type": tc.type_of(r), "title": tc.titles[r],
             "genres": ", ".join(GENRES[(r + j) % 5] for j in range(2)), "popularity": r % 7}
            for r, i in enumerate(tc.ids)]
    cat = Catalog.from_records(recs, text_fields=["title", "genres"], types=["movie", "book"])
    return w, cat


def events(cat, n_users: int = 6, n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {f"u{u}": [(cat.ids[int(x)], 100 * u + t) for t, x in enumerate(rng.integers(0, len(cat), n))]
            for u in range(n_users)}


@pytest.fixture(scope="module")
def setup():
    w, cat = world_catalog()
    pb = PromptBuilder(w["tokenizer"], w["vocab"], w["index"], cat)
    return w, cat, pb


def test_alignment_examples_cover_every_item_and_task(setup):
    w, cat, pb = setup
    tb = TaskBuilder(pb, cat, seed=0)
    ex = tb.alignment()
    assert len(ex) == len(ALIGN_TASKS) * len(cat)
    validate_examples(ex)
    for e in ex:
        r = e.meta["row"]
        span = tb.span(r)
        assert isinstance(e.prompt[-1], str) and e.prompt[-1].endswith(ANSWER_SUFFIX)
        if e.task == "text_to_sid":
            assert e.completion == [span] and cat.text["title"][r] in e.prompt[0]
        else:
            assert span in e.prompt
            want = cat.text["title"][r] if e.task == "sid_to_text" else cat.type_of(r)
            assert want in e.completion[0]


def test_instruction_prompts_render_like_prompt_builder(setup):
    w, cat, pb = setup
    tb = TaskBuilder(pb, cat, seed=3)
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    ex = tb.recommend(split, k=1)
    assert ex
    for e in ex[:5]:
        tgt = e.meta["targets"][0]
        p = Prompt(task="recommend", target_types=[cat.type_of(tgt)], format="ids", k=1,
                   template=e.meta["template"], history=e.meta["history"])
        pid, cid = e.encode(w["tokenizer"])
        assert pid == pb.encode(p)  # training prompts are exactly what inference renders
        assert set(e.meta["history"]) <= set(split.train[e.meta["user"]].tolist())
        # the answer continues the sequence: the next span, no EOS (the decoder stops after k items)
        assert cid == tb.span(tgt) and not e.eos
        assert pb.encode(p, open_span=True) == pid + cid[:1]


def test_lists_and_formats(setup):
    w, cat, pb = setup
    tb = TaskBuilder(pb, cat, seed=0)
    seqs = {f"u{u}": np.arange(u, u + 12) % 20 for u in range(4)}  # movies only: lists always fill
    ids = tb.recommend(seqs, k=3, format="ids")
    mixed = tb.recommend(seqs, k=3, format="mixed")
    assert ids and mixed
    for e in ids:  # the sequence shape: spans back to back
        assert e.completion == [tb.span(r) for r in e.meta["targets"]] and len(e.completion) == 3
    for e in mixed:  # prose naming items by their spans only (no title text the model could get wrong)
        assert [s for s in e.completion if not isinstance(s, str)] == [tb.span(r) for r in e.meta["targets"]]
        assert not any(isinstance(s, str) and cat.text["title"][r] in s for s in e.completion
                       for r in e.meta["targets"])
        assert e.eos


def test_explanations_are_grounded_in_shared_attributes(setup):
    w, cat, pb = setup
    tb = TaskBuilder(pb, cat, seed=0)
    ex = tb.explain(load_interactions(events(cat), cat), max_per_user=4)
    assert {e.task for e in ex} == {"explain", "recommend_explain"}
    for e in ex:
        tgt = e.meta["targets"][0]
        for c in e.meta["cited"]:
            assert set(tb.attributes(c)) & set(tb.attributes(tgt))
            assert tb.span(c) in e.completion
        assert all(a in tb.attributes(tgt) for a in e.meta["shared"])


def test_search_and_profiles(setup):
    w, cat, pb = setup
    tb = TaskBuilder(pb, cat, seed=0)
    ex = tb.search(k=3)
    assert len(ex) == len(cat)
    for e in ex:
        n_targets = len(e.meta["targets"])
        assert n_targets >= 1 and n_targets <= 3, n_targets
    prof = tb.describe_user({"a": [0, 1, 2, 5]})
    assert len(prof) == 1
    assert "comedy" in prof[0].completion[0] or "drama" in prof[0].completion[0]
    q = tb.search(rows=[], queries=[("the first movie", "movie0")])
    assert q[0].completion == [tb.span(0)]
    with pytest.raises(TaskDataError, match="nope"):
        tb.search(rows=[], queries=[("x", "nope")])


def test_examples_are_deterministic_by_seed(setup):
    w, cat, pb = setup
    split = split_interactions(load_interactions(events(cat), cat), "leave_one_out")
    a = TaskBuilder(pb, cat, seed=1).instruction(split)
    b = TaskBuilder(pb, cat, seed=1).instruction(split)
    c = TaskBuilder(pb, cat, seed=2).instruction(split)
    assert a.keys() == b.keys()
    for k in a:
        assert [(e.prompt, e.completion) for e in a[k]] == [(e.prompt, e.completion) for e in b[k]]
    assert any([(e.prompt, e.completion) for e in a[k]] != [(e.prompt, e.completion) for e in c[k]] for k in a)


def test_missing_items_raise_or_are_counted(setup):
    w, cat, pb = setup
    data = events(cat)
    data["u0"].append(("ghost-item", 999))
    with pytest.raises(TaskDataError, match="ghost-item"):
        load_interactions(data, cat)
    inter = load_interactions(data, cat, on_missing="skip")
    assert inter.report.n_missing_items == 1 and inter.report.missing_item_ids == ["ghost-item"]
    assert inter.report.n_kept == inter.report.n_events - 1


def test_empty_and_short_histories_are_skipped_and_counted(setup):
    w, cat, pb = setup
    data = events(cat)
    data["empty"] = []
    data["single"] = [("movie1", 5)]
    inter = load_interactions(data, cat)
    assert inter.report.n_users_skipped == 2 and set(inter.report.skipped_users) == {"empty", "single"}
    assert "empty" not in inter.users
    with pytest.raises(TaskDataError, match="at least"):
        load_interactions({"a": [], "b": [("movie1", 1)]}, cat)
    tb = TaskBuilder(pb, cat, seed=0)
    assert tb.recommend({"one": [3]}) == [] and tb.skipped["recommend: history too short"] == 1
    from neo.training.tasks import EvalCase
    with pytest.raises(TaskDataError, match="empty history"):
        tb.eval_prompts([EvalCase("x", np.zeros(0, dtype=np.int64), 3)])
    with pytest.raises(TaskDataError, match="outside the catalog"):
        tb.recommend({"bad": [1, 10_000]})


def test_frame_input_and_item_id_format(setup):
    pd = pytest.importorskip("pandas")
    w, cat, pb = setup
    df = pd.DataFrame({"userId": [1, 1, 1, 2, 2], "movieId": [3, 1, 2, 4, 5], "timestamp": [30, 10, 20, 1, 2]})
    inter = load_interactions(df, cat, user_col="userId", item_col="movieId", item_id="movie{}")
    assert inter.as_dict()["1"].tolist() == [1, 2, 3]  # sorted by time
    with pytest.raises(TaskDataError, match="lacks column"):
        load_interactions(df, cat, user_col="user")


def test_leave_one_out_has_no_leakage_and_is_deterministic(setup):
    w, cat, pb = setup
    inter = load_interactions(events(cat, n_users=10), cat)
    s = split_interactions(inter, "leave_one_out")
    full = inter.as_dict()
    for case in s.test:
        seq = full[case.user]
        assert case.target == seq[-1] and np.array_equal(case.history, seq[:-1])
        assert np.array_equal(s.train[case.user], seq[:-2])  # neither held-out event is trained on
    for case in s.valid:
        assert case.target == full[case.user][-2]
    tb = TaskBuilder(pb, cat, seed=0)
    for e in tb.recommend(s, max_per_user=None):
        seq = list(s.train[e.meta["user"]])
        assert all(t in seq for t in e.meta["targets"])
    a = split_interactions(inter, "leave_one_out", max_users=5, seed=1)
    b = split_interactions(inter, "leave_one_out", max_users=5, seed=1)
    c = split_interactions(inter, "leave_one_out", max_users=5, seed=2)
    assert list(a.train) == list(b.train) and list(a.train) != list(c.train)


def test_temporal_split_trains_only_on_the_past(setup):
    w, cat, pb = setup
    rng = np.random.default_rng(0)
    data = {f"u{u}": [(cat.ids[int(rng.integers(len(cat)))], float(rng.integers(0, 1000))) for _ in range(10)]
            for u in range(12)}
    inter = load_interactions(data, cat)
    s = split_interactions(inter, "temporal", valid_frac=0.2, test_frac=0.2)
    cut = s.cutoffs["train_end"]
    times = {u: t for u, t in zip(inter.users, inter.times)}
    rows = inter.as_dict()
    for u, tr in s.train.items():
        n = len(tr)
        assert np.array_equal(tr, rows[u][times[u] <= cut]) and (times[u][:n] <= cut).all()
    assert s.test and s.valid
    for case in s.test:
        t_target = times[case.user][len(case.history)]
        assert t_target > s.cutoffs["valid_end"] >= cut
    s2 = split_interactions(inter, "temporal", valid_frac=0.2, test_frac=0.2)
    assert [(c.user, c.target) for c in s.test] == [(c.user, c.target) for c in s2.test]
    with pytest.raises(TaskDataError, match="unknown split"):
        split_interactions(inter, "random")
    with pytest.raises(TaskDataError, match="valid_frac"):
        split_interactions(inter, "temporal", valid_frac=0.6, test_frac=0.5)
