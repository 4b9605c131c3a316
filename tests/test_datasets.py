"""Loaders on tiny fixtures in the real formats; the bundled MovieLens copy and its license."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neo.items.datasets import (
    DatasetError,
    Interactions,
    load_catalog_jsonl,
    load_dataset,
    load_interactions_csv,
    load_movielens,
    load_sequences,
)


def test_interactions_csv_sorted_by_time_with_detected_columns(tmp_path):
    p = tmp_path / "inter.csv"
    p.write_text("userId,movieId,rating,timestamp\n1,10,4,300\n1,20,5,100\n2,10,3,50\n1,30,1,200\n")
    inter = load_interactions_csv(p)
    assert inter.user_ids == ["1", "2"]
    assert [inter.item_ids[i] for i in inter.sequences[0]] == ["20", "30", "10"]
    assert inter.timestamps[0].tolist() == [100, 200, 300]
    assert inter.n_interactions == 4 and inter.n_items == 3
    tsv = tmp_path / "inter.tsv"
    tsv.write_text("u\ti\tt\nA\tx\t2\nA\ty\t1\n")
    inter2 = load_interactions_csv(tsv, user_col="u", item_col="i", time_col="t")
    assert [inter2.item_ids[i] for i in inter2.sequences[0]] == ["y", "x"]


def test_interactions_csv_errors_name_the_problem(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("who,what\n1,2\n")
    with pytest.raises(DatasetError, match="user and item columns"):
        load_interactions_csv(p)
    p.write_text("user,item,timestamp\n1,2,yesterday\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: timestamp 'yesterday'"):
        load_interactions_csv(p)
    p.write_text("user,item,timestamp\n1,2\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: expected at least 3 columns"):
        load_interactions_csv(p)


def test_p5_sequences_with_item_text(tmp_path):
    seq = tmp_path / "Beauty.txt"
    seq.write_text("1 5 3 7\n2 3 9\n")
    txt = tmp_path / "items.tsv"
    txt.write_text("5\tred lipstick\n3\tface cream\n")
    ds = load_sequences(seq, item_text=txt)
    cat = ds.catalog
    assert cat.ids == ["5", "3", "7", "9"]
    assert [cat.ids[i] for i in ds.interactions.sequences[0]] == ["5", "3", "7"]
    assert cat.text["title"][cat.row("5")] == "red lipstick"
    assert cat.text["title"][cat.row("7")] == "item 7"  # no text: the id stands in
    assert ds.interactions.timestamps is None
    jl = tmp_path / "items.jsonl"
    jl.write_text(json.dumps({"id": "9", "title": "shampoo", "brand": "x"}) + "\n")
    ds2 = load_sequences(seq, item_text=jl)
    assert ds2.catalog.text["title"][ds2.catalog.row("9")] == "shampoo"
    seq.write_text("1 5 3\n1 4\n")
    with pytest.raises(DatasetError, match=r"Beauty.txt:2: user '1' appears on more than one line"):
        load_sequences(seq)
    seq.write_text("1\n")
    with pytest.raises(DatasetError, match="no items"):
        load_sequences(seq)


def test_jsonl_catalog_and_reindex(tmp_path):
    p = tmp_path / "cat.jsonl"
    p.write_text('{"id": "a", "title": "Alpha"}\n{"id": "b", "type": "tag", "title": "beta"}\n')
    cat = load_catalog_jsonl(p)
    assert cat.type_names == ["item", "tag"] and len(cat) == 2
    inter = Interactions.from_triples(["u", "u"], ["b", "a"], [2, 1])
    re_ = inter.reindex(cat.ids)
    assert [cat.ids[i] for i in re_.sequences[0]] == ["a", "b"]
    with pytest.raises(DatasetError, match="not in the catalog"):
        Interactions.from_triples(["u"], ["zzz"], item_ids=cat.ids)


def test_movielens_directory_two_types_and_held_out_queries(tmp_path):
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Matrix, The (1999)",Action|Sci-Fi\n'
        "3,Heat (1995),(no genres listed)\n")
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,2,5.0,20\n1,1,4.0,10\n1,3,2.0,30\n2,1,3.0,5\n")
    (tmp_path / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n1,1,Pixar,1\n2,1,pixar ,2\n1,2,cyberpunk,3\n")
    ds = load_movielens(tmp_path, held_out_queries=0.0)
    cat = ds.catalog
    assert cat.type_names == ["movie", "tag"]
    assert list(cat.type_counts()) == [3, 2]
    m = cat.row("2")
    assert cat.text["title"][m] == "The Matrix" and cat.text["year"][m] == "1999"
    assert cat.text["genres"][m] == "Action, Sci-Fi"
    assert cat.text["tags"][cat.row("1")] == "pixar"  # normalised, de-duplicated
    assert cat.text["title"][cat.row("tag:pixar")] == "pixar"
    assert cat.popularity[cat.row("tag:pixar")] == 2
    assert [cat.ids[i] for i in ds.interactions.sequences[0]] == ["1", "2", "3"]
    q = {x.query: x for x in ds.queries}
    assert q["pixar"].relevant.tolist() == [cat.row("1")] and q["pixar"].split == "train"
    held = load_movielens(tmp_path, held_out_queries=1.0)
    assert all(x.split == "test" for x in held.queries)
    assert held.catalog.text["tags"][held.catalog.row("1")] == ""  # held-out tags leave the item text
    # tag applications are side events of the tag type, merged into training before the cut-off only
    assert ds.side is not None and ds.side.n_interactions == 3
    from neo.evaluation import leave_one_out

    sp = leave_one_out(ds.interactions)
    merged = ds.training_sequences(sp.train, [20.0, float("inf")])
    assert [cat.ids[i] for i in merged["1"]] == ["tag:pixar", "tag:cyberpunk", "1"]
    assert [cat.ids[i] for i in ds.training_sequences(sp.train, [2.0, 0.0])["1"]] == ["tag:pixar", "1"]
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,99,5.0,20\n")
    with pytest.raises(DatasetError, match="ratings.csv:2: movie 99"):
        load_movielens(tmp_path)


def test_bundled_movielens_loads_with_both_types_and_license():
    from neo.data import bundled_path, movielens_license

    ds = load_dataset("movielens")
    assert ds.name == "ml-latest-small"
    assert ds.interactions.n_users == 610 and ds.interactions.n_interactions == 100_836
    counts = dict(zip(ds.catalog.type_names, ds.catalog.type_counts()))
    assert counts["movie"] == 9742 and counts["tag"] > 1000
    assert ds.target_type == "movie"
    assert np.isin(np.concatenate(ds.interactions.sequences), ds.candidate_rows()).all()
    assert {q.split for q in ds.queries} == {"train", "test"}
    lic = movielens_license()
    assert "redistribute the data set" in lic and "Harper" in lic and "10.1145/2827872" in lic
    assert bundled_path("ml-latest-small.tar.xz").stat().st_size < 1_000_000


# ============================================================================ read_interactions: every format

EVENTS = [("u1", "b", 20), ("u2", "a", 5), ("u1", "a", 10), ("u1", "c", 30), ("u2", "c", 1)]
WANT = {"u1": ["a", "b", "c"], "u2": ["c", "a"]}


def _seqs(inter):
    return {u: [inter.item_ids[i] for i in s] for u, s in zip(inter.user_ids, inter.sequences)}


def _write_all_formats(d):
    import gzip

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    files = {}
    files["csv"] = d / "e.csv"
    files["csv"].write_text("user_id,item_id,rating,timestamp\n" + "".join(f"{u},{i},1,{t}\n" for u, i, t in EVENTS))
    files["tsv"] = d / "e.tsv"
    files["tsv"].write_text("userId\tmovieId\ttime\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in EVENTS))
    files["semicolon"] = d / "e.txt"
    files["semicolon"].write_text("customer_id;sku;date\n" + "".join(
        f"{u};{i};2020-01-01T00:00:{t:02d}\n" for u, i, t in EVENTS))
    files["ml-1m"] = d / "ratings.dat"
    files["ml-1m"].write_text("".join(f"{u}::{i}::5::{1_000_000_000 + t}\n" for u, i, t in EVENTS))
    files["jsonl"] = d / "e.jsonl"
    files["jsonl"].write_text("".join(json.dumps({"user": u, "item": i, "ts": t}) + "\n" for u, i, t in EVENTS))
    files["json"] = d / "e.json"
    files["json"].write_text(json.dumps([{"user": u, "item": i, "timestamp": t} for u, i, t in EVENTS]))
    files["json-map"] = d / "m.json"
    files["json-map"].write_text(json.dumps({"u1": [["b", 20], ["a", 10], ["c", 30]], "u2": [["a", 5], ["c", 1]]}))
    files["jsonl-lists"] = d / "seq.jsonl"  # one user per line with parallel item / time lists
    files["jsonl-lists"].write_text(json.dumps({"user": "u1", "items": ["c", "a", "b"], "time": [30, 10, 20]}) + "\n"
                                    + json.dumps({"user": "u2", "items": ["c", "a"], "time": [1, 5]}) + "\n")
    files["parquet"] = d / "e.parquet"
    pq.write_table(pa.table({"user": [e[0] for e in EVENTS], "item": [e[1] for e in EVENTS],
                             "timestamp": pa.array([1_000_000_000_000 * e[2] for e in EVENTS], pa.timestamp("ns"))}),
                   files["parquet"])
    files["gzip"] = d / "e.csv.gz"
    files["gzip"].write_bytes(gzip.compress(files["csv"].read_bytes()))
    files["no-extension"] = d / "events"
    files["no-extension"].write_text(files["jsonl"].read_text())
    return files


def test_read_interactions_every_format_gives_the_same_sequences(tmp_path):
    from neo.items.datasets import read_interactions

    for fmt, path in _write_all_formats(tmp_path).items():
        inter = read_interactions(path)
        assert _seqs(inter) == WANT, fmt
        assert inter.timestamps is not None and all(np.all(np.diff(t) >= 0) for t in inter.timestamps), fmt
        assert inter.info["rows"] == len(EVENTS) and inter.info["source"] == path.name, fmt
    csv_info = read_interactions(tmp_path / "e.csv").info
    assert csv_info["format"] == "CSV" and csv_info["columns"]["time"] == "timestamp"
    assert read_interactions(tmp_path / "e.parquet").info["format"] == "Parquet"
    assert read_interactions(tmp_path / "e.csv.gz").info["format"] == "CSV (gzip)"
    assert read_interactions(tmp_path / "events").info["format"] == "JSONL"  # decided by content


def test_read_interactions_headerless_sequences_and_no_time(tmp_path):
    from neo.items.datasets import read_interactions

    p = tmp_path / "u.data"  # ml-100k: user, item, rating, unix time; no header
    p.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n")
    inter = read_interactions(p)
    assert _seqs(inter) == {"196": ["377", "242"], "186": ["302"]}
    assert inter.info["columns"]["how"] == {"user": "position", "item": "position", "time": "position (unix seconds)"}
    q = tmp_path / "pairs.csv"  # no header, no time: file order
    q.write_text("1,10\n1,11\n2,10\n")
    assert _seqs(read_interactions(q)) == {"1": ["10", "11"], "2": ["10"]} and read_interactions(q).timestamps is None
    s = tmp_path / "LastFM.txt"  # user item item ... (P5 / S3-Rec)
    s.write_text("1 5 3 7\n2 3 9\n")
    inter = read_interactions(s)
    assert _seqs(inter) == {"1": ["5", "3", "7"], "2": ["3", "9"]} and inter.info["format"] == "sequences"
    c = tmp_path / "e.csv"
    c.write_text("user,item,timestamp\nu,b,2\nu,a,1\n")
    assert _seqs(read_interactions(c, time_col="none")) == {"u": ["b", "a"]}  # file order on request
    with pytest.raises(DatasetError, match="no time column 'when'; the columns are"):
        read_interactions(c, time_col="when")
    with pytest.raises(DatasetError, match="sequence file"):
        read_interactions(s, user_col="user")


def test_read_interactions_catalog_unknown_items_and_item_id_format(tmp_path):
    from neo.items.datasets import read_interactions

    cat = load_catalog_jsonl(_jl(tmp_path / "c.jsonl", [{"id": f"movie:{k}", "title": k} for k in "abc"]))
    p = tmp_path / "e.csv"
    p.write_text("user,item,timestamp\nu1,a,1\nu1,zz,2\nu2,b,3\nu2,zz,4\nu2,yy,5\n")
    inter = read_interactions(p, catalog=cat, item_id="movie:{}", unknown_items="skip")
    assert inter.item_ids == cat.ids and _seqs(inter) == {"u1": ["movie:a"], "u2": ["movie:b"]}
    assert inter.info["unknown_items"] == {"policy": "skip", "rows_skipped": 3, "distinct": 2,
                                           "examples": ["movie:zz", "movie:yy"]}
    with pytest.raises(DatasetError, match=r"^e.csv:3: item 'movie:zz' is not in the catalog .*3 of 5 rows name 2 "
                                           r"unknown item\(s\).*--unknown-items skip"):
        read_interactions(p, catalog=cat, item_id="movie:{}")
    with pytest.raises(DatasetError, match="none of the 5 interactions names an item of the catalog"):
        read_interactions(p, catalog=cat, unknown_items="skip")
    with pytest.raises(DatasetError, match="unknown_items must be one of"):
        read_interactions(p, catalog=cat, unknown_items="drop")


def _jl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("name, text, match", [
    ("empty.csv", "", r"empty.csv: the file is empty"),
    ("hdr.csv", "user,item\n", r"hdr.csv: no interactions"),
    ("dupcol.csv", "user,user,item\n1,2,3\n", r"dupcol.csv:1: duplicate column names \['user'\]"),
    ("short.csv", "user,item,timestamp\n1,2,3\n1,2\n", r"short.csv:3: expected at least 3 columns, found 2"),
    ("emptyid.csv", "user,item\n1,\n", r"emptyid.csv:2: empty item id"),
    ("frac.jsonl", '{"user": 1, "item": 2.5}\n', r"frac.jsonl:1: item id 2.5 is not an integer"),
    ("bool.jsonl", '{"user": true, "item": 2}\n', r"bool.jsonl:1: user id must be text or an integer, found True"),
    ("notobj.jsonl", '{"user": 1, "item": 2}\n[1, 2]\n', r"notobj.jsonl:2: expected a JSON object"),
    ("nokey.jsonl", '{"user": 1, "item": 2}\n{"user": 1}\n', r"nokey.jsonl:2: no 'item' field"),
    ("notime.jsonl", '{"user": 1, "item": 2, "ts": 5}\n{"user": 1, "item": 3}\n', r"notime.jsonl:2: no 'ts' field"),
    ("badjson.json", '[{"user": 1, "item": 2},\n', r"badjson.json:2: not valid JSON"),
    ("catalog.json", '{"m1": {"title": "x"}}', r"looks like a catalog .* pass it as --catalog"),
    ("seqlen.jsonl", '{"user": 1, "items": [1, 2], "time": [5]}\n', r"seqlen.jsonl:1: 2 items need a list of 2"),
    ("latin.csv", "user,item\n1,caf\xe9\n", r"latin.csv:2: not valid utf-8 text .*--encoding"),
])
def test_read_interactions_errors_name_file_row_and_fix(tmp_path, name, text, match):
    from neo.items.datasets import read_interactions

    p = tmp_path / name
    from neo.core.errors import NeoDataError

    p.write_bytes(text.encode("latin-1")) if "\xe9" in text else p.write_text(text)
    with pytest.raises(NeoDataError, match=match) as ei:
        read_interactions(p)
    assert "\n" not in str(ei.value)  # one line: the command prints it as is


def test_read_interactions_parquet_schema_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from neo.core.errors import NeoDataError
    from neo.items.datasets import read_interactions

    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user": ["u"], "item": ["a"], "timestamp": pa.array([[1, 2]])}), p)
    inter = read_interactions(p, time_col="none")
    assert _seqs(inter) == {"u": ["a"]}
    pq.write_table(pa.table({"user": ["u"], "item": ["a"], "timestamp": pa.array([True])}), p)
    with pytest.raises(DatasetError, match=r"column 'timestamp' \(the time column\) has type bool.*wrong schema"):
        read_interactions(p)
    pq.write_table(pa.table({"user": pa.array([], pa.string()), "item": pa.array([], pa.string())}), p)
    with pytest.raises(DatasetError, match="0 rows"):
        read_interactions(p)
    p.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(NeoDataError, match="not a readable Parquet file"):
        read_interactions(p)


def test_load_user_dataset_infers_the_target_type_and_events_round_trip(tmp_path):
    from neo.items.datasets import load_user_dataset
    from neo.training.tasks import load_interactions

    c = _jl(tmp_path / "c.jsonl", [{"id": "m1", "type": "movie", "title": "A"}, {"id": "m2", "type": "movie",
                                   "title": "B"}, {"id": "t1", "type": "tag", "title": "funny"}])
    e = tmp_path / "e.csv"
    e.write_text("user,item,time\nu,m2,2\nu,m1,1\nv,m1,3\n")
    ds = load_user_dataset(e, c)
    assert ds.target_type == "movie" and ds.candidate_rows().tolist() == [0, 1]
    assert ds.interactions.item_ids == ds.catalog.ids
    ev = ds.interactions.as_events()
    assert ev == {"u": [("m1", 1), ("m2", 2)], "v": [("m1", 3)]}
    tasks_inter = load_interactions(ev, ds.catalog, min_length=1)
    assert tasks_inter.users == ["u", "v"] and tasks_inter.rows[0].tolist() == [0, 1]
    assert load_user_dataset(e, c, target_type="tag").target_type == "tag"
    with pytest.raises(DatasetError, match="not an item type of the catalog"):
        load_user_dataset(e, c, target_type="book")


def test_read_codes_every_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from neo.items.datasets import read_codes

    want = {"a": [3, 1, 4], "b": [1, 5, 9]}
    (tmp_path / "index.json").write_text(json.dumps({"a": ["<a_3>", "<b_1>", "<c_4>"], "b": ["<a_1>", "<b_5>",
                                                                                            "<c_9>"]}))
    (tmp_path / "ints.json").write_text(json.dumps(want))
    (tmp_path / "c.csv").write_text("item_id,codes\na,3 1 4\nb,<a_1><b_5><c_9>\n")
    (tmp_path / "levels.tsv").write_text("id\tc0\tc1\tc2\na\t3\t1\t4\nb\t1\t5\t9\n")
    (tmp_path / "c.jsonl").write_text('{"id": "a", "sid": [3, 1, 4]}\n{"id": "b", "sid": [1, 5, 9]}\n')
    pq.write_table(pa.table({"asin": ["a", "b"], "codes": [[3, 1, 4], [1, 5, 9]]}), tmp_path / "c.parquet")
    for f in ("index.json", "ints.json", "c.csv", "levels.tsv", "c.jsonl", "c.parquet"):
        assert read_codes(tmp_path / f) == want, f
    cat = load_catalog_jsonl(_jl(tmp_path / "cat.jsonl", [{"id": "a", "title": "A"}, {"id": "b", "title": "B"},
                                                          {"id": "z", "title": "Z"}]))
    with pytest.raises(DatasetError, match=r"1 catalog item\(s\) have no codes, e.g. \['z'\]"):
        read_codes(tmp_path / "c.csv", catalog=cat)
    (tmp_path / "bad.csv").write_text("id,codes\na,3 1 4\na,1 2 3\nb,x\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: item 'a' has codes twice \(first at bad.csv:2\)"):
        read_codes(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("id,codes\na,3 1 4\nb,none\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: no codes in 'none'"):
        read_codes(tmp_path / "bad.csv")
    (tmp_path / "unk.json").write_text(json.dumps({"a": [1], "b": [2], "z": [3], "q": [4]}))
    with pytest.raises(DatasetError, match=r"unk.json item 'q': item 'q' is not in the catalog"):
        read_codes(tmp_path / "unk.json", catalog=cat)
