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
