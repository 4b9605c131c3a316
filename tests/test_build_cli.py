"""``neo build`` -> ``neo train`` -> ``neo eval`` on a user's own files in every format, and the one-line
errors (exit 2) that bad files give. Tiny models and a few steps: the whole file runs in seconds after
the first import of torch and transformers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from neo.cli.main import main  # noqa: E402

GENRES = ["comedy", "drama", "space", "horror", "romance", "history"]
N_MOVIES, N_TAGS, N_USERS, PER_USER = 24, 6, 30, 6
TINY = ["--stage0-steps", "2", "--hidden", "32", "--layers", "1", "--vocab-size", "300", "--no-progress",
        "--threads", "1"]


def _catalog() -> list[dict]:
    """Movies and tags (two types); users interact with movies only, so the target type is movie."""
    recs = [{"id": f"m{i}", "type": "movie", "title": f"the {GENRES[i % 6]} story number {i}",
             "genres": [GENRES[i % 6], GENRES[(i * 5) % 6]]} for i in range(N_MOVIES)]
    recs += [{"id": f"tag:{g}", "type": "tag", "title": g, "genres": []} for g in GENRES[:N_TAGS]]
    return recs


def _events() -> list[tuple[str, str, int]]:
    rng = np.random.default_rng(0)
    out = []
    for u in range(N_USERS):
        start = int(rng.integers(N_MOVIES))
        for j in range(PER_USER):
            out.append((f"u{u}", f"m{(start + 2 * j) % N_MOVIES}", 1_600_000_000 + 3600 * j + u))
    rng.shuffle(out)  # the loader sorts by time
    return out


def _write(fmt: str, d) -> tuple[str, str, list[str]]:
    """Catalog and interactions files in ``fmt`` with varied column names; returns the paths and the
    interactions options a user would pass (only where detection cannot know)."""
    cat, ev = _catalog(), _events()
    if fmt == "csv":  # item_id / user_id / timestamp, detected by name
        cp, ip = d / "items.csv", d / "events.csv"
        with open(cp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["item_id", "type", "title", "genres"])
            w.writerows([r["id"], r["type"], r["title"], "|".join(r["genres"])] for r in cat)
        with open(ip, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["user_id", "item_id", "rating", "timestamp"])
            w.writerows([u, i, 4, t] for u, i, t in ev)
        return str(cp), str(ip), []
    if fmt == "tsv":  # catalog with a header; interactions without one (user, item, unix time by position)
        cp, ip = d / "items.tsv", d / "events.tsv"
        cp.write_text("id\ttype\ttitle\tgenres\n" + "".join(
            f"{r['id']}\t{r['type']}\t{r['title']}\t{', '.join(r['genres'])}\n" for r in cat))
        ip.write_text("".join(f"{u[1:]}\t{i[1:]}\t5\t{t}\n" for u, i, t in ev))
        return str(cp), str(ip), ["--item-id", "m{}"]
    if fmt == "jsonl":  # list-valued text, ISO dates
        import datetime as dt

        cp, ip = d / "items.jsonl", d / "events.jsonl"
        cp.write_text("".join(json.dumps(r) + "\n" for r in cat))
        ip.write_text("".join(json.dumps({"user": u, "item": i, "time": dt.datetime.fromtimestamp(
            t, dt.timezone.utc).isoformat()}) + "\n" for u, i, t in ev))
        return str(cp), str(ip), []
    assert fmt == "parquet"  # names no detector knows: the user says which columns
    cp, ip = d / "items.parquet", d / "events.parquet"
    pq.write_table(pa.Table.from_pylist([{"asin": r["id"], "type": r["type"], "title": r["title"],
                                          "genres": r["genres"]} for r in cat]), cp)
    pq.write_table(pa.table({"who": [e[0] for e in ev], "what": [e[1] for e in ev],
                             "when": pa.array([e[2] for e in ev], pa.int64())}), ip)
    return str(cp), str(ip), ["--user-col", "who", "--item-col", "what", "--time-col", "when"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A local 'pre-trained' causal LM directory for ``--model`` (a tiny random Llama and its tokenizer)."""
    from _tiny import make_model, make_tokenizer

    d = tmp_path_factory.mktemp("tiny-lm")
    tok = make_tokenizer("bpe")
    model = make_model("llama", len(tok), hidden=32, layers=1, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_build_train_eval_on_user_files(fmt, tmp_path, tiny_model_dir):
    from neo.lm.prompts import Prompt
    from neo.lm.system import NeoSystem

    torch.set_num_threads(1)
    cp, ip, opts = _write(fmt, tmp_path)
    sysdir, rundir, js = tmp_path / "sys", tmp_path / "run", tmp_path / "m.json"
    model = ["--model", tiny_model_dir] if fmt == "parquet" else []
    assert main(["build", "--catalog", cp, "--interactions", ip, *opts, "--output", str(sysdir), *model,
                 "--json", str(tmp_path / "build.json"), *TINY]) == 0

    # the saved system: every catalog item, both types, indexed and reachable; the report beside it
    system = NeoSystem.load(sysdir)
    ids = [r["id"] for r in _catalog()]
    assert system.catalog.ids == ids and system.catalog.type_names == ["movie", "tag"]
    assert system.index.num_items == len(ids) and system.sids is not None
    rep = json.loads((sysdir / "neo" / "build_report.json").read_text())
    assert rep == json.loads((tmp_path / "build.json").read_text())
    assert rep["catalog"]["items"] == len(ids) and rep["catalog"]["types"] == {"movie": N_MOVIES, "tag": N_TAGS}
    assert rep["interactions"]["users"] == N_USERS and rep["interactions"]["interactions"] == N_USERS * PER_USER
    assert rep["interactions"]["target_type"] == "movie" and rep["sids"]["unreachable"] == 0
    for t in ("movie", "tag"):
        s = rep["sids"]["types"][t]
        assert 0.0 <= s["collision_rate"] < 1.0 and s["codebook_use"][0]["used"] >= 1
    assert rep["vocabulary"]["sid_tokens"] > 0 and rep["model"]["parameters"] > 0
    assert rep["model"]["pretrained"] is bool(model)
    assert set(rep["timings_s"]) >= {"read", "embeddings", "sids", "model", "adapt", "save", "total"}

    # the command: no stage given -> align (pre-trained backbone only), then instruct
    assert main(["train", "--system", str(sysdir), "--interactions", ip, *opts, "--output",
                 str(rundir), "--max-steps", "2", "--batch-size", "8", "--packing", "--pack-length", "96",
                 "--average-decay", "0.9", "--sid-smoothing", "0.1"]) == 0
    log = json.loads((rundir / "train_log.json").read_text())
    assert log["stage"] == ("align+instruct" if model else "instruct"), log["stage"]
    assert main(["eval", "--system", str(rundir / "system"), "--interactions", ip, *opts, "--baselines",
                 "random,popularity", "--num-beams", "4", "--no-progress", "--json", str(js), "--threads", "1"]) == 0
    res = json.loads(js.read_text())
    assert res["test_cases"] == N_USERS and res["target_type"] == "movie" and res["candidates"] == N_MOVIES
    assert res["exclude_history"] is True and "excluded" in res["history"]
    assert res["recommendation"]["neo"]["n"] == N_USERS
    gen = res["neo_generated_items"]
    assert gen["all_valid"] is True and gen["items_checked"] == N_USERS * (N_MOVIES - (PER_USER - 1))

    # every item the trained system generates is a real catalog item of the asked type
    trained = NeoSystem.load(rundir / "system")
    hist = [trained.catalog.row(f"m{i}") for i in (0, 2, 4)]
    span = max(t.levels for t in trained.vocab.layout.types) + 2  # [SID] codes [/SID]
    outs = trained.generate([Prompt(task="recommend", target_types="movie", format="ids", history=hist, k=3),
                             Prompt(task="recommend", target_types="tag", format="ids", history=hist, k=2)],
                            max_new_tokens=3 * (span + 4))  # room for 3 spans and separators: none is cut off
    for g, t in zip(outs, ("movie", "tag")):
        assert g.status != "span" and g.items, g
        assert all(it.valid and it.type == t for it in g.items), g
    for lst in trained.topk_items([Prompt(task="recommend", target_types="movie", history=hist)], k=5, num_beams=5):
        assert len(lst) == 5 and all(it.valid and it.type == "movie" and it.row not in hist for it in lst)


def test_keep_history_is_stated_and_changes_the_candidates(tmp_path):
    cp, ip, _ = _write("csv", tmp_path)
    res = {}
    for flag in ("--exclude-history", "--keep-history"):
        js = tmp_path / f"{flag}.json"
        assert main(["eval", "--interactions", ip, "--catalog", cp, "--baselines", "random,popularity",
                     flag, "--json", str(js), "--no-progress"]) == 0
        res[flag] = json.loads(js.read_text())
    ex, keep = res["--exclude-history"], res["--keep-history"]
    assert ex["exclude_history"] is True and keep["exclude_history"] is False
    assert "kept" in keep["history"] and "excluded" in ex["history"]
    # random ranking over 24 movies: 19 candidates after excluding the 5 history items, 24 when kept
    assert ex["recommendation"]["random (expected)"]["hr@5"] == pytest.approx(5 / 19)
    assert keep["recommendation"]["random (expected)"]["hr@5"] == pytest.approx(5 / 24)


def test_unknown_items_error_or_counted_skip(tmp_path, capsys):
    cp, ip, _ = _write("csv", tmp_path)
    with open(ip, "a") as fh:
        fh.write("u0,zz9,4,1700000000\nu1,zz9,4,1700000001\nu1,yy1,4,1700000002\n")
    assert main(["eval", "--interactions", ip, "--catalog", cp, "--baselines", "popularity"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "events.csv:" in err[0] and "'zz9' is not in the catalog" in err[0], err
    assert "--unknown-items skip" in err[0]
    js = tmp_path / "m.json"
    assert main(["eval", "--interactions", ip, "--catalog", cp, "--baselines", "popularity", "--unknown-items",
                 "skip", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "3 rows with items outside the catalog skipped" in out
    d = json.loads(js.read_text())["dataset"]["interactions_file"]["unknown_items"]
    assert d == {"policy": "skip", "rows_skipped": 3, "distinct": 2, "examples": ["zz9", "yy1"]}


def _bad_files(d) -> list[tuple[str, list[str], str]]:
    """(name, build arguments, text the one-line error must contain)."""
    cp, ip, _ = _write("csv", d)
    cases = []

    def f(name: str, text: str | bytes) -> str:
        p = d / name
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        return str(p)

    cases.append(("catalog without id column", ["--catalog", f("noid.csv", "name,title\nx,X\n"), "--interactions", ip],
                  "noid.csv:1: no item id column among ['name', 'title']"))
    cases.append(("catalog duplicate id", ["--catalog", f("dup.csv", "id,title\na,A\na,B\n")],
                  "dup.csv:3, field 'id': duplicate id 'a'"))
    cases.append(("catalog popularity not a number", ["--catalog", f("pop.jsonl", '{"id": "a", "title": "A", '
                                                                                  '"popularity": "lots"}\n')],
                  "pop.jsonl:1, field 'popularity'"))
    cases.append(("catalog text column missing", ["--catalog", cp, "--text-cols", "title,plot"],
                  "no text column 'plot'"))
    cases.append(("empty catalog", ["--catalog", f("empty_items.csv", "")], "empty_items.csv: the file is empty"))
    cases.append(("catalog header only", ["--catalog", f("hdr_items.csv", "id,title\n")], "hdr_items.csv: no items"))
    cases.append(("missing interaction columns", ["--catalog", cp, "--interactions", f("cols.csv", "who,what\nu,m1\n")],
                  "cols.csv:1: cannot find the user and item columns"))
    cases.append(("named column absent", ["--catalog", cp, "--interactions", ip, "--time-col", "when"],
                  "events.csv: no time column 'when'"))
    cases.append(("unknown items", ["--catalog", cp, "--interactions", f("unk.csv", "user,item\nu,m1\nu,zz\n")],
                  "unk.csv:3: item 'zz' is not in the catalog"))
    cases.append(("empty interactions", ["--catalog", cp, "--interactions", f("empty.jsonl", "")],
                  "empty.jsonl: the file is empty"))
    cases.append(("header-only interactions", ["--catalog", cp, "--interactions", f("hdr.csv", "user,item\n")],
                  "hdr.csv: no interactions"))
    cases.append(("timestamp not a time", ["--catalog", cp, "--interactions",
                                           f("ts.csv", "user,item,timestamp\nu,m1,1\nu,m2,yesterday\n")],
                  "ts.csv:3: timestamp 'yesterday' is neither a number nor an ISO date"))
    cases.append(("user id of the wrong type", ["--catalog", cp, "--interactions",
                                                f("typ.jsonl", '{"user": {"id": 1}, "item": "m1"}\n')],
                  "typ.jsonl:1: user id must be text or an integer, found dict"))
    bad_jsonl = '{"user": "u", "item": "m1"}\n{"user": "u", "item"\n'
    cases.append(("JSONL line that is not JSON", ["--catalog", cp, "--interactions", f("bad.jsonl", bad_jsonl)],
                  "bad.jsonl:2: not valid JSON"))
    struct = d / "schema.parquet"
    pq.write_table(pa.table({"user": ["u"], "item": pa.array([{"id": 1}])}), struct)
    cases.append(("Parquet with the wrong schema", ["--catalog", cp, "--interactions", str(struct)],
                  "schema.parquet: column 'item' (the item column) has type struct<id: int64>"))
    nocol = d / "nocol.parquet"
    pq.write_table(pa.table({"a": ["u"], "b": ["m1"]}), nocol)
    cases.append(("Parquet without the columns", ["--catalog", cp, "--interactions", str(nocol)],
                  "nocol.parquet: cannot find the user and item columns"))
    cases.append(("text named .parquet", ["--catalog", cp, "--interactions", f("fake.parquet", "user,item\nu,m1\n")],
                  "fake.parquet: not a Parquet file"))
    cases.append(("catalog Parquet with the wrong id type", ["--catalog", str(struct), "--id-col", "item"],
                  "schema.parquet row 0, field 'item'"))
    junk = d / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    cases.append(("output holds other files", ["--catalog", cp, "--output", str(junk)], "exists and holds files"))
    cases.append(("unknown SID method", ["--catalog", cp, "--sids", "magic"], "--sids 'magic': unknown SID method"))
    cases.append(("--model not a model directory", ["--catalog", cp, "--model", str(junk)],
                  "not a local Hugging Face model directory (no config.json)"))
    cases.append(("--item-id without {}", ["--catalog", cp, "--interactions", ip, "--item-id", "movie:"],
                  "--item-id 'movie:' must contain '{}'"))
    return cases


def test_bad_files_give_one_line_errors_exit_2(tmp_path, capsys):
    for name, args, expect in _bad_files(tmp_path):
        if "--output" not in args:
            args = args + ["--output", str(tmp_path / "out")]
        rc = main(["build", *args, *TINY])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 2, (name, rc, err)
        assert len(err) == 1 and err[0].startswith("neo build: error: "), (name, err)
        assert expect in err[0], (name, err[0])
        assert not (tmp_path / "out").exists(), name  # nothing is written when the input is bad
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_bad_file_from_the_shell_is_one_line(tmp_path):
    cp, _, _ = _write("csv", tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user": "u", "item": "m1"}\nnot json\n')
    cmd = [sys.executable, "-m", "neo.cli", "build", "--catalog", cp, "--interactions", str(bad), "--output",
           str(tmp_path / "o")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("neo build: error: bad.jsonl:2: not valid JSON (Expecting value at column 1); "
                                "fix or remove that line"), r.stderr


def test_existing_system_needs_overwrite(tmp_path, capsys):
    cp, ip, _ = _write("csv", tmp_path)
    out = tmp_path / "sys"
    assert main(["build", "--catalog", cp, "--output", str(out), *TINY]) == 0
    before = (out / "neo" / "neo_system.json").read_text()
    capsys.readouterr()
    assert main(["build", "--catalog", cp, "--output", str(out), *TINY]) == 2
    assert "already holds a neo system; pass --overwrite" in capsys.readouterr().err
    assert (out / "neo" / "neo_system.json").read_text() == before
    assert main(["build", "--catalog", cp, "--interactions", ip, "--output", str(out), "--overwrite", *TINY]) == 0
    assert json.loads((out / "neo" / "build_report.json").read_text())["interactions"]["users"] == N_USERS


def test_build_system_from_python_leaves_the_catalog_alone(tmp_path):
    from neo.items.catalog import Catalog
    from neo.items.datasets import read_interactions
    from neo.training.build import BuildConfig, build_system, format_build_report

    cp, ip, _ = _write("jsonl", tmp_path)
    cat = Catalog.load(cp)
    inter = read_interactions(ip, catalog=cat)
    res = build_system(cat, inter, None, config=BuildConfig(stage0_steps=1, hidden=32, layers=1, vocab_size=300),
                       progress=False, log=None)
    assert cat.popularity is None  # the interaction counts went to a copy
    assert res.output_dir is None and res.report["output_dir"] is None
    assert res.system.catalog.popularity.sum() == N_USERS * (PER_USER - 2)  # held-out targets do not count
    text = format_build_report(res.report)
    assert "collision rate" in text and "unreachable items: 0" in text and "time per step" in text


@pytest.mark.parametrize("method", ["cf", "hybrid", "codes"])
def test_sid_methods(method, tmp_path, capsys):
    from neo.lm.system import NeoSystem

    cp, ip, _ = _write("csv", tmp_path)
    spec = method
    given = {f"m{i}": [i % 4, (i // 4) % 3, i % 5] for i in range(N_MOVIES)}  # tags: no codes -> text SIDs
    if method == "codes":
        (tmp_path / "codes.json").write_text(json.dumps({k: [f"<a_{a}>", f"<b_{b}>", f"<c_{c}>"]
                                                         for k, (a, b, c) in given.items()}))
        spec = f"codes:{tmp_path / 'codes.json'}"
    out = tmp_path / "sys"
    extra = ["--item-level", "append"] if method == "codes" else []  # the user's codes, then one per movie
    assert main(["build", "--catalog", cp, "--interactions", ip, "--sids", spec, "--output", str(out), *extra,
                 *TINY]) == 0
    rep = json.loads((out / "neo" / "build_report.json").read_text())
    assert rep["sids"]["method"] == method and rep["sids"]["unreachable"] == 0
    system = NeoSystem.load(out)
    assert system.index.num_items == N_MOVIES + N_TAGS
    if method == "codes":
        rows = system.catalog.rows_of_type("movie")
        want = np.asarray([given[system.catalog.ids[r]] for r in rows])
        np.testing.assert_array_equal(system.sids.codes["movie"][:, :3], want)  # the user's codes, as given
        np.testing.assert_array_equal(system.sids.codes["movie"][:, 3], np.arange(N_MOVIES))  # --item-level append
        assert system.sids.levels("movie") == 4 and system.sids.config["item_level"]["mode"] == "append"
        assert rep["sids"]["embeddings"]["types_from_embeddings"] == ["tag"]
    else:
        assert rep["sids"]["embeddings"]["types"]["movie"]["source"] == method
        assert rep["sids"]["embeddings"]["types"]["tag"]["source"] == "text (no interactions)"  # no tag events
        assert any("tag" in w and "text embeddings only" in w for w in rep["warnings"])
    assert "Build report" in capsys.readouterr().out


def test_bad_codes_and_options_give_one_line_errors(tmp_path, capsys):
    cp, ip, _ = _write("csv", tmp_path)

    def codes(name: str, obj) -> str:
        (tmp_path / name).write_text(json.dumps(obj))
        return f"codes:{tmp_path / name}"

    full = {f"m{i}": [i % 4, i % 3] for i in range(N_MOVIES)}
    cases = [
        (["--sids", "cf"], "--sids cf learns from interactions: add --interactions FILE"),
        (["--interactions", ip, "--sids", codes("unk.json", {**full, "zz": [1, 2]})],
         "unk.json: item 'zz' has codes but is not in the catalog"),
        (["--interactions", ip, "--sids", codes("part.json", {"m0": [1, 2]})],
         "part.json: 23 item(s) of type 'movie' have no codes"),
        (["--interactions", ip, "--sids", codes("len.json", {**full, "m3": [1, 2, 3]})],
         "len.json: items of type 'movie' have codes of different lengths [2, 3]"),
        (["--interactions", ip, "--sids", codes("neg.json", {**full, "m3": "<a_1><b_-2>"})],
         "neg.json item 'm3': negative code"),
        (["--interactions", ip, "--sids", "codes:" + str(tmp_path / "nope.json")], "nope.json: no such file"),
        (["--interactions", ip, "--sids", "hybrid", "--cf-weight", "2"], "--cf-weight 2.0: give a share in [0, 1]"),
        (["--interactions", ip, "--balance", "0.5"], "--balance 0.5: give a number >= 1"),
        (["--interactions", ip, "--holdout", "-1"], "--holdout -1: give 0 or more"),
        (["--user-col", "who"], "--user-col name(s) columns of --interactions, which was not given"),
    ]
    for args, expect in cases:
        rc = main(["build", "--catalog", cp, *args, "--output", str(tmp_path / "out"), *TINY])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 2 and len(err) == 1 and err[0].startswith("neo build: error: "), (args, rc, err)
        assert expect in err[0], (args, err[0])
        assert not (tmp_path / "out").exists()


def test_holdout_keeps_test_targets_out_of_the_collaborative_embeddings():
    from neo.items.catalog import Catalog
    from neo.items.datasets import Interactions
    from neo.training.build import BuildConfig, build_system, training_part

    assert [s.tolist() for s in training_part([np.arange(5), np.arange(2)], 2)] == [[0, 1, 2], [0, 1]]
    cat = Catalog.from_records([{"id": f"m{i}", "title": f"movie {i}"} for i in range(10)], default_type="movie")
    # m9 is only ever a user's last item (the leave-one-out test target); m0..m8 appear earlier too
    seqs = [np.asarray([(u + k) % 9 for k in range(4)] + [9]) for u in range(9)]
    inter = Interactions([f"u{u}" for u in range(9)], cat.ids, seqs, None)
    cold = {}
    for h in (2, 0):
        cfg = BuildConfig(sids="cf", holdout=h, stage0_steps=1, hidden=32, layers=1, vocab_size=300, levels=2,
                          codebook_size=4)
        rep = build_system(cat, inter, None, config=cfg, progress=False, log=None).report
        cold[h] = rep["sids"]["embeddings"]["types"]["movie"]["n_cold"]
        assert rep["interactions"]["held_out_per_user"] == h
    assert cold[0] == 0 and cold[2] >= 1  # with the hold-out, m9 has no collaborative signal at all
