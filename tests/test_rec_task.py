"""The every-position recommendation task: windows, leakage, prompt = inference prompt, laziness, mixing."""

from __future__ import annotations

import numpy as np
import pytest

from neo import Prompt, PromptBuilder
from neo.training import train as T
from neo.training.tasks import RecSequences, TaskBuilder, TaskDataError, load_interactions, split_interactions
from test_tasks import events, world_catalog


@pytest.fixture(scope="module")
def setup():
    w, cat = world_catalog()
    pb = PromptBuilder(w["tokenizer"], w["vocab"], w["index"], cat)
    return w, cat, pb, TaskBuilder(pb, cat, seed=0, max_history=4)


def _targets(tb, rs: RecSequences) -> dict[tuple[str, str], list[int]]:
    """(user, type) -> the target rows of every window, in window order."""
    out: dict[tuple[str, str], list[int]] = {}
    for w in rs.windows:
        for j in w.target_positions(tb.catalog.type_of):
            r = int(w.rows[j])
            out.setdefault((w.user, tb.catalog.type_of(r)), []).append(r)
    return out


@pytest.mark.parametrize("window,stride", [(1, None), (3, None), (4, None), (10, None), (4, 2), (6, 1)])
def test_every_position_is_a_target_exactly_once(setup, window, stride):
    w, cat, pb, tb = setup
    seqs = {f"u{u}": np.arange(u, u + n) % len(cat) for u, n in enumerate([1, 2, 5, 9, 13, 30])}
    rs = tb.rec_sequences(seqs, window=window, stride=stride)
    got = _targets(tb, rs)
    for u, seq in seqs.items():
        for t in cat.type_names:
            want = [int(x) for x in seq if cat.type_of(int(x)) == t]
            assert got.get((u, t), []) == want, (u, t)  # each position once, in order, first item included
    st = stride or window
    for win in rs.windows:
        assert len(win.rows) <= window + 1 and len(win.rows) - win.first_target <= st
        # every target sees at least window - stride earlier items, unless the user's sequence starts sooner
        at_start = np.array_equal(win.rows, seqs[win.user][:len(win.rows)])
        assert at_start or win.first_target >= window + 1 - st
    assert rs.count_targets() == sum(len(s) for s in seqs.values())


def test_windows_are_contiguous_training_slices_and_never_hold_held_out_targets(setup):
    w, cat, pb, tb = setup
    inter = load_interactions(events(cat, n_users=12, n=15), cat)
    split = split_interactions(inter, "leave_one_out")
    full = inter.as_dict()
    rs = tb.rec_sequences(split, window=4)
    assert len(rs) > 0
    for win in rs.windows:
        train = split.train[win.user].tolist()
        rows = win.rows.tolist()
        starts = [i for i in range(len(train) - len(rows) + 1) if train[i:i + len(rows)] == rows]
        assert starts, "a window is not a slice of the user's training sequence"
        # the held-out events come after every training event: a window never reaches them
        assert starts[-1] + len(rows) <= len(full[win.user]) - 2
    for e in (rs[i] for i in range(len(rs))):
        # nothing outside the training part: every span is a training item of that user
        assert set(e.meta["rows"]) <= set(split.train[e.meta["user"]].tolist())


def test_training_prefix_is_the_inference_prompt_and_targets_never_see_themselves(setup):
    w, cat, pb, tb = setup
    tok = w["tokenizer"]
    seqs = {"a": [0, 25, 3, 4, 26, 5, 6, 27, 7], "b": [1, 2]}
    rs = tb.rec_sequences(seqs, window=4)
    n_checked = 0
    for i in range(len(rs)):
        ex = rs[i]
        win = rs.windows[i]
        ids, labels, n_prompt = ex.encode_labeled(tok)
        assert not ex.eos and ids[n_prompt - 1] != tok.eos_token_id
        pos = n_prompt
        for j, r in enumerate(win.rows):
            span = tb.span(int(r))
            assert ids[pos:pos + len(span)] == span
            is_target = j in win.target_positions(cat.type_of)
            assert labels[pos:pos + len(span)] == (span if is_target else [-100] * len(span))
            if is_target:
                # the tokens before this span are exactly what inference renders for the history so far, so
                # the span is predicted from the earlier items only (never from its own or later tokens)
                p = Prompt(task="recommend", target_types=win.target_types, format="ids", template=win.template,
                           history=[int(x) for x in win.rows[:j]], exclude_history=False)
                assert ids[:pos] == pb.encode(p)
                assert ids[:pos + 1] == pb.encode(p, open_span=True)
                n_checked += 1
            pos += len(span)
        assert pos == len(ids)
        assert all(x == -100 for x in labels[:n_prompt])
    assert n_checked == rs.count_targets()


def test_each_type_gets_its_own_examples_with_loss_on_that_type_only(setup):
    w, cat, pb, tb = setup
    movies, books = cat.rows_of_type("movie").tolist(), cat.rows_of_type("book").tolist()
    seq = [movies[0], books[0], movies[1], books[1], movies[2]]
    rs = tb.rec_sequences({"u": seq}, window=10)
    kinds = sorted(tuple(win.target_types) for win in rs.windows)
    assert kinds == [("book",), ("movie",)]
    for i, win in enumerate(rs.windows):
        t = win.target_types[0]
        ex = rs[i]
        assert ex.prompt[-1].startswith(f"Next {t}s:") or f"{t}s" in ex.prompt[-1]
        assert [cat.type_of(int(win.rows[j])) for j in range(len(win.rows)) if ex.loss[j]] == \
            [x for x in map(cat.type_of, seq) if x == t]
    one = tb.rec_sequences({"u": seq}, window=10, target_types="book")
    assert [win.target_types for win in one.windows] == [["book"]]
    anyt = tb.rec_sequences({"u": seq}, window=10, target_types="any")
    assert len(anyt) == 1 and all(anyt[0].loss)


def test_rec_sequences_are_lazy_and_deterministic(setup, monkeypatch):
    w, cat, pb, tb = setup
    calls = []
    orig = TaskBuilder.rec_example
    monkeypatch.setattr(TaskBuilder, "rec_example", lambda self, win: calls.append(1) or orig(self, win))
    seqs = {f"u{u}": (np.arange(20) * (u + 1)) % 25 for u in range(5)}
    rs = tb.rec_sequences(seqs, window=3)
    assert calls == []  # nothing rendered when built
    ds = T.MixtureDataset({"recommend": rs}, w["tokenizer"], epochs=2.0, seed=0)
    assert calls == [] and len(ds) == 2 * len(rs)
    a = ds[5]
    assert len(calls) == 1 and ds[5] == a
    again = TaskBuilder(pb, cat, seed=0, max_history=3).rec_sequences(seqs)
    assert [x.rows.tolist() for x in again.windows] == [x.rows.tolist() for x in rs.windows]


def test_mixture_epochs_cover_each_pool_and_keep_weights():
    pools = {"rec": [f"r{i}" for i in range(10)], "other": [f"o{i}" for i in range(7)]}

    class Tok:  # the schedule never touches the tokenizer
        pass

    ds = T.MixtureDataset(pools, Tok(), weights={"rec": 1.0, "other": 0.5}, num_examples=15, epochs=3, seed=1)
    assert ds.per_epoch == {"other": 5, "rec": 10}
    for e in range(3):
        block = ds.schedule[e * 15:(e + 1) * 15]
        recs = sorted(int(j) for t, j in block if ds.tasks[int(t)] == "rec")
        assert recs == list(range(10))  # one pass over the rec pool per epoch
    others = [int(j) for t, j in ds.schedule[:30] if ds.tasks[int(t)] == "other"]
    assert set(others) == set(range(7))  # the smaller share walks through its whole pool over the epochs
    half = T.MixtureDataset(pools, Tok(), weights={"rec": 1.0, "other": 0.5}, num_examples=15, epochs=1.5, seed=1)
    assert len(half) == 22 and (half.schedule == ds.schedule[:22]).all()


def test_bad_rec_task_input_is_named(setup):
    w, cat, pb, tb = setup
    with pytest.raises(TaskDataError, match="window must be >= 1"):
        tb.rec_sequences({"u": [1, 2]}, window=0)
    with pytest.raises(TaskDataError, match="stride"):
        tb.rec_sequences({"u": [1, 2]}, window=3, stride=4)
    with pytest.raises(TaskDataError, match="not catalog types"):
        tb.rec_sequences({"u": [1, 2]}, target_types=["song"])
    with pytest.raises(TaskDataError, match="outside the catalog"):
        tb.rec_sequences({"u": [1, 10_000]})
    with pytest.raises(TaskDataError, match="sequences must be"):
        tb.rec_sequences([1, 2, 3])
    with pytest.raises(ValueError, match="epochs must be > 0"):
        T.MixtureDataset({"a": [1]}, None, epochs=0)


def test_instruction_passes_the_stride_to_the_rec_windows(setup):
    w, cat, pb, tb = setup
    seqs = {f"u{u}": np.arange(u, u + n) % len(cat) for u, n in enumerate([9, 13, 30])}
    plain = tb.instruction(seqs, tasks=["recommend"], window=4)["recommend"]
    half = tb.instruction(seqs, tasks=["recommend"], window=4, stride=2)["recommend"]
    assert len(half.windows) > len(plain.windows)                # overlapping windows: more of them
    assert half.count_targets() == plain.count_targets() == sum(len(s) for s in seqs.values())
    assert all(len(x.rows) - x.first_target <= 2 for x in half.windows)
    with pytest.raises(Exception, match="stride"):
        tb.instruction(seqs, tasks=["recommend"], window=4, stride=5)
