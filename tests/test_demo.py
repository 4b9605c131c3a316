"""``neo demo --quick`` end to end: every generated item is a real catalog item and neo beats popularity
on HR@10 and NDCG@10 (the CI smoke test of the whole pipeline; about 2 minutes on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_demo_quick_end_to_end(tmp_path):
    from neo.cli import main
    from neo.cli.demo import QUICK
    from neo.lm.system import NeoSystem

    torch.set_num_threads(1)
    out = tmp_path / "demo"
    js = tmp_path / "m.json"
    rc = main(["demo", "--quick", "--out", str(out), "--json", str(js), "--no-progress", "--threads", "1"])
    assert rc == 0
    res = json.loads(js.read_text())
    assert res["generated_items_all_valid"] is True and res["generated_items_checked"] > 0
    rec = res["recommendation"]
    assert rec["neo"]["n"] == QUICK.eval_cases
    # seeded and epoch-bounded (no time budget): neo ranks better than a popularity list, not only chance
    for m in ("hr@10", "ndcg@10"):
        assert rec["neo"][m] > rec["popularity"][m] > 0, rec
    assert res["top1_distinct"]["neo"] > 1  # not one list for everybody
    for ex in res["examples"]:
        assert all(it["valid"] for it in ex["items"]), ex
    steer = res["type_steering_constraints_off"]
    assert set(steer) == {"movie", "tag"}
    assert res["format_compliance"]["constraints_on"]["ids"] == 1.0
    assert (out / "demo.png").stat().st_size > 0 and (out / "metrics.json").is_file()
    system = NeoSystem.load(out / "system")
    assert system.catalog is not None and len(system.catalog) == QUICK.max_movies + QUICK.max_tags


def test_demo_model_path_must_be_a_local_hf_directory(tmp_path):
    from neo.cli.demo import _load_model

    with pytest.raises(FileNotFoundError, match="no config.json"):
        _load_model(str(tmp_path))


def test_cli_registers_demo_and_eval():
    from neo.cli.main import build_parser

    ap = build_parser()
    a = ap.parse_args(["demo", "--quick", "--json", "x.json"])
    assert a.quick and a.json == "x.json" and callable(a.run)
    e = ap.parse_args(["eval", "--data", "movielens", "--protocol", "temporal", "--baselines", "popularity"])
    assert e.protocol == "temporal" and e.baselines == "popularity" and callable(e.run)


def test_demo_bad_data_fails_before_printing_or_creating_anything(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    bad = tmp_path / "not-movielens"
    bad.mkdir()
    (bad / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    for data, why in ((tmp_path / "missing", "not a directory"), (bad, "movies.csv, tags.csv missing")):
        r = subprocess.run([sys.executable, "-m", "neo.cli", "demo", "--data", str(data), "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stdout == "" and not out.exists(), (r.stdout, out)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("neo demo: error: --data") and why in lines[0], r.stderr
