"""``neo bench``: the quick mode end to end (providers agree, JSON schema stable), the oracle, the peer
grammars, and the checks that make a wrong provider visible."""

from __future__ import annotations

import json
from importlib.util import find_spec

import numpy as np
import pytest

from neo import bench
from neo.bench import providers
from neo.cli.bench import main as bench_main

PEERS_INSTALLED = [p for p in bench.PEERS if find_spec(p) is not None]


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"bench.{k}" for k in ("json", "png", "md")}
    argv = ["--quick", "--json", str(paths["json"]), "--markdown", str(paths["md"])]
    if find_spec("matplotlib") is not None:
        argv += ["--plot", str(paths["png"])]
    rc = bench_main(argv)
    doc = json.loads(paths["json"].read_text())
    return rc, doc, paths


def test_quick_mode_all_providers_agree(quick_doc):
    rc, doc, paths = quick_doc
    assert rc == 0
    res = doc["results"]
    seen = {r["provider"] for r in res}
    assert {"neo-cpu", "python-trie-hf", "torch-searchsorted", *PEERS_INSTALLED} <= seen
    for r in res:
        assert r["status"] == "ok", r
        assert r["agree"] is True and r["checked_rows"] == r["rows"]
        assert r["step_median_us"] > 0 and r["row_median_us"] == pytest.approx(r["step_median_us"] / r["rows"])
        # RSS deltas of a small build can round to 0 (the allocator reuses freed pages); exact counts cannot
        if r["memory_source"] == "exact":
            assert r["memory_bytes_per_item"] > 0, r
        else:
            assert r["memory_bytes_per_item"] >= 0, r
        assert r["build_s"] >= 0, r
        if not r["provider"].startswith("neo"):
            assert r["neo_speedup"] > 0
    sizes = doc["config"]["sizes"]
    for p in ("neo-cpu", *PEERS_INSTALLED):
        assert sorted({r["items"] for r in res if r["provider"] == p}) == sizes
    for p in PEERS_INSTALLED:
        assert doc["peers"][p]["available"] and doc["peers"][p]["largest_items_ok"] == max(sizes)
    e = doc["e2e"]
    assert e["outputs_agree"] is True
    assert [r["mode"] for r in e["runs"]] == ["unconstrained", "neo", "prefix_allowed_tokens_fn"]
    assert all(r["tokens_per_s"] > 0 for r in e["runs"])
    assert e["runs"][0]["mask_us_per_step"] is None and all(r["mask_us_per_step"] > 0 for r in e["runs"][1:])
    # No timing comparison here (DESIGN.md section 6): how much cheaper neo's processor is than the
    # dict-trie one is a benchmark figure (the "mask overhead" budget row), not a test.
    assert isinstance(e["mask_overhead_ratio"], float)
    for r in res:
        assert r["extra"]["step"], r
    assert paths["md"].read_text().startswith("| provider |")
    if find_spec("matplotlib") is not None:
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_mode_json_schema_is_stable(quick_doc):
    _, doc, _ = quick_doc
    assert doc["schema"] == bench.SCHEMA == "neo-bench/1"
    assert set(doc) == set(bench.TOP_KEYS) == {
        "schema", "machine", "versions", "config", "results", "peers", "e2e", "budgets"}
    assert set(bench.RESULT_KEYS) == {
        "provider", "device", "items", "rows", "status", "note", "build_s", "memory_bytes_per_item",
        "memory_source", "agree", "checked_rows", "samples", "step_median_us", "step_p99_us",
        "row_median_us", "row_p99_us", "neo_speedup", "extra"}
    for r in doc["results"]:
        assert set(r) == set(bench.RESULT_KEYS)
    assert set(doc["e2e"]) == set(bench.E2E_KEYS) == {
        "items", "batch", "new_tokens", "model", "outputs_agree", "runs", "mask_overhead_ratio"}
    for r in doc["e2e"]["runs"]:
        assert set(r) == set(bench.E2E_RUN_KEYS) == {
            "mode", "wall_s_median", "tokens_per_s", "overhead_vs_unconstrained_pct", "mask_us_per_step",
            "mask_share_of_unconstrained_step_pct"}
    assert set(doc["peers"]) == set(bench.PEERS)
    for p in doc["peers"].values():
        assert set(p) == set(bench.PEER_KEYS) == {"available", "version", "limit_s", "largest_items_ok", "failure"}
    for b in doc["budgets"]:
        assert set(b) == set(bench.BUDGET_KEYS) == {"what", "budget", "measured", "met"}
    for k in ("commit", "cpu_count", "threads", "platform", "date"):
        assert k in doc["machine"]
    for k in ("neo", "torch", "transformers", "numpy", "xgrammar", "llguidance"):
        assert k in doc["versions"]


def test_oracle_matches_python_trie():
    cat = bench.SyntheticCatalog(3000, seed=3)
    trie = bench.PythonTrie(cat.tokens)
    states = cat.sample_states(200, seed=1)
    for r in range(states.rows):
        want = trie.allowed(states.prefix(r)) or [cat.close_id]
        assert sorted(want) == cat.oracle_allowed(states.prefix(r)).tolist()
    present = set(map(tuple, cat.codes[:, :2].tolist()))
    c1, c2 = next((a, b) for a in range(256) for b in range(256) if (a, b) not in present)
    with pytest.raises(ValueError, match="not a prefix"):
        cat.oracle_allowed([int(cat.band_starts[0]) + c1, int(cat.band_starts[1]) + c2])


def test_catalog_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="catalog size"):
        bench.SyntheticCatalog(0)
    with pytest.raises(ValueError, match="do not fit"):
        bench.SyntheticCatalog(300, levels=1)
    with pytest.raises(ValueError, match="--sizes"):
        bench.run_bench(sizes=[0], e2e=False)
    with pytest.raises(ValueError, match="unknown provider"):
        bench.run_bench(sizes=[1000], providers=["outlines"], e2e=False)
    with pytest.raises(ValueError, match="--peer-timeout"):
        bench.run_bench(sizes=[1000], peer_timeout=0, e2e=False)


def test_token_set_syntax():
    assert providers._token_set(np.asarray([5, 6, 7, 9, 11, 12])) == "<[5-7,9,11-12]>"
    assert providers._token_set(np.asarray([3])) == "<[3]>"


def test_grammars_cover_every_item_once():
    cat = bench.SyntheticCatalog(500, seed=2)
    vocab, ebnf = bench.xgrammar_grammar(cat)
    assert len(vocab) == cat.vocab_size and len(set(vocab)) == cat.vocab_size
    # every SID token is one CJK character no text token shares
    sid = {vocab[t] for t in range(cat.layout.sid_token_begin + 2, cat.layout.sid_token_end)}
    assert all(len(s) == 1 and ord(s) >= bench.CJK_BASE for s in sid)
    assert ebnf.count("[") - ebnf.count('"[SID]"') - ebnf.count('"[/SID]"') == len(np.unique(cat.sorted_keys >> 8))
    lark = bench.llguidance_grammar(cat)
    assert lark.startswith(f"start: <[{cat.open_id}]> n0_0 <[{cat.close_id}]>")


@pytest.mark.skipif("xgrammar" not in PEERS_INSTALLED, reason="xgrammar not installed")
def test_xgrammar_accepts_exactly_the_catalog():
    import xgrammar as xgr

    cat = bench.SyntheticCatalog(200, seed=5)
    sess = providers._PeerSession("xgrammar", cat, threads=1)
    sess.make_grammar()
    sess.make_tokenizer()
    sess.compile()
    for sid in cat.tokens[:20]:
        m = xgr.GrammarMatcher(sess.compiled)
        assert all(m.accept_token(int(t)) for t in [cat.open_id, *sid.tolist(), cat.close_id])
    m = xgr.GrammarMatcher(sess.compiled)
    bogus = [cat.open_id, *cat.tokens[0, :3].tolist()]
    assert all(m.accept_token(int(t)) for t in bogus)
    taken = set(cat.oracle_allowed(bogus[1:]).tolist())
    free = next(int(cat.band_starts[3]) + c for c in range(256) if int(cat.band_starts[3]) + c not in taken)
    assert not m.accept_token(free)


def test_device_trie_reference_provider_agrees():
    doc = bench.run_bench(sizes=[1000], rows=[12], providers=["neo-device-trie-torch", "neo-cpu"], e2e=False,
                          repeat=2, min_time_s=0.0, max_time_s=0.2, log=lambda s: None)
    rows = {r["provider"]: r for r in doc["results"]}
    assert rows["neo-device-trie-torch"]["agree"] is True and rows["neo-cpu"]["agree"] is True
    assert json.loads(json.dumps(doc))["results"]


def test_wrong_provider_is_reported_and_not_timed(monkeypatch, capsys):
    real = bench.TorchSearchsortedProvider.allowed

    def off_by_one(self):
        a = real(self)
        a[0, self.cat.open_id] = True  # one extra allowed token in one row
        return a

    monkeypatch.setattr(bench.TorchSearchsortedProvider, "allowed", off_by_one)
    rc = bench_main(["--sizes", "1000", "--rows", "8", "--providers", "neo-cpu", "torch-searchsorted", "--no-e2e",
                     "--repeat", "2", "--min-time", "0", "--max-time", "0.2"])
    assert rc == 1
    assert "DISAGREEMENT" in capsys.readouterr().err
