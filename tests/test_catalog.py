"""Catalog loading, validation (errors name row and field), selection and save/load."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from neo.core.errors import NeoDataError
from neo.items.catalog import Catalog, CatalogError

RECORDS = [
    {"id": "m1", "type": "movie", "title": "Toy Story", "genres": "Animation|Comedy", "popularity": 10, "year": 1995},
    {"id": "m2", "type": "movie", "title": "Heat", "genres": "Crime", "popularity": 3.5, "year": 1995},
    {"id": "t1", "type": "tag", "title": "pixar", "genres": "", "popularity": 1, "year": None},
    {"id": "m3", "type": "movie", "title": "Amélie, \"le fabuleux\"", "genres": "Romance", "popularity": 7, "year": 2001},
]
KW = dict(text_fields=["title", "genres"], feature_fields=["year"])


def _write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return path


def _write_csv(path, recs):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        for r in recs:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    return path


def _check_example(cat: Catalog) -> None:
    assert cat.ids == ["m1", "m2", "t1", "m3"]
    assert cat.type_names == ["movie", "tag"]
    assert cat.item_types.tolist() == [0, 0, 1, 0]
    assert cat.text["title"][3] == 'Amélie, "le fabuleux"'
    assert cat.text["genres"][2] == ""
    np.testing.assert_allclose(cat.popularity, [10, 3.5, 1, 7])
    assert cat.feature_names == ["year"]
    assert cat.features[0, 0] == 1995 and math.isnan(cat.features[2, 0])
    assert cat.row("m3") == 3 and cat.id(1) == "m2" and cat.type_of(2) == "tag"
    assert cat.rows_of_type("movie").tolist() == [0, 1, 3]
    assert cat.rows_of_type(1).tolist() == [2]
    assert cat.load_report.n_read == 4 and cat.load_report.n_skipped == 0


def test_load_jsonl_csv_parquet_agree(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    cats = [
        Catalog.from_jsonl(_write_jsonl(tmp_path / "c.jsonl", RECORDS), **KW),
        Catalog.from_csv(_write_csv(tmp_path / "c.csv", RECORDS), **KW),
        Catalog.load(_write_jsonl(tmp_path / "d.jsonl", RECORDS), **KW),
    ]
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "c.parquet")
    cats.append(Catalog.load(tmp_path / "c.parquet", **KW))
    for cat in cats:
        _check_example(cat)
    assert len({c.fingerprint() for c in cats}) == 1


def test_iterate_select_and_lookup():
    cat = Catalog.from_records(RECORDS, **KW)
    items = list(cat)
    assert [it.id for it in items] == cat.ids
    assert items[0].text == {"title": "Toy Story", "genres": "Animation|Comedy"}
    assert items[0].popularity == 10.0 and items[0].features == {"year": 1995.0}
    movies = cat.select("movie")
    assert movies.ids == ["m1", "m2", "m3"] and movies.type_names == cat.type_names
    assert movies.row("m3") == 2 and movies.popularity.tolist() == [10, 3.5, 7]
    assert cat.select(["tag"]).ids == ["t1"]
    assert cat.rows(["m3", "m1"]).tolist() == [3, 0]
    assert "m1" in cat and "zz" not in cat
    assert cat.texts(rows=[0]) == ["Toy Story. Animation|Comedy"]
    assert cat.item_text(2) == "pixar"
    with pytest.raises(KeyError, match="'zz' is not in the catalog"):
        cat.row("zz")
    with pytest.raises(KeyError, match="unknown item type 'book'"):
        cat.select("book")
    with pytest.raises(IndexError, match="row 9 out of range"):
        cat.item(9)


def test_text_fields_inferred_lists_joined_numbers_formatted():
    cat = Catalog.from_records([
        {"id": 1, "type": "movie", "title": "A", "tags": ["funny", "dark"], "year": 1999},
        {"id": 2, "type": "movie", "title": "B", "extra": "only here"},
    ])
    assert cat.ids == ["1", "2"]
    assert cat.text_fields == ["title", "tags", "year", "extra"]
    assert cat.text["tags"] == ["funny, dark", ""] and cat.text["year"] == ["1999", ""]
    assert cat.text["extra"] == ["", "only here"]
    assert cat.popularity is None and cat.features is None


def test_csv_multiline_record_line_numbers(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('id,type,title\na,movie,"two\nlines"\na,movie,dup\nb,,x\n', encoding="utf-8")
    with pytest.raises(CatalogError) as ei:
        Catalog.from_csv(p)
    msg = str(ei.value)
    # record a spans lines 2-3, so the duplicate is on line 4 and the missing type on line 5
    assert "c.csv:4, field 'id': duplicate id 'a' (first seen at c.csv:2)" in msg
    assert "c.csv:5, field 'type': missing item type" in msg
    assert len(ei.value.issues) == 2


def test_errors_name_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"id": "a", "type": "movie", "title": "ok"}),
        "",  # blank lines are ignored but still counted
        json.dumps({"id": "a", "type": "movie", "title": "again"}),
        json.dumps({"id": "b", "title": "no type"}),
        json.dumps({"id": "c", "type": "book", "title": "unknown type"}),
        json.dumps({"id": "d", "type": "movie", "title": "  "}),
        "{not json",
        json.dumps({"id": "e", "type": "movie", "title": "x", "popularity": -1}),
        json.dumps({"type": "movie", "title": "no id"}),
    ]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CatalogError) as ei:
        Catalog.from_jsonl(p, types=["movie", "tag"], text_fields=["title"])
    msg = str(ei.value)
    assert "bad.jsonl:3, field 'id': duplicate id 'a' (first seen at bad.jsonl:1)" in msg
    assert "bad.jsonl:4, field 'type': missing item type" in msg
    assert "bad.jsonl:5, field 'type': unknown item type 'book'; allowed: ['movie', 'tag']" in msg
    assert "bad.jsonl:6: empty text" in msg
    assert "bad.jsonl:7: not valid JSON" in msg
    assert "bad.jsonl:8, field 'popularity'" in msg
    assert "bad.jsonl:9, field 'id': missing item id" in msg
    assert "skip_invalid=True" in msg
    assert len(ei.value.issues) == 7


def test_bad_encoding_names_line_and_field(tmp_path):
    p = tmp_path / "enc.csv"
    p.write_bytes(b"id,type,title,desc\na,movie,fine,ok\nb,movie,caf\xe9,ok\n")
    with pytest.raises(CatalogError, match=r"enc.csv:3, field 'title': not valid text .*byte 0xe9"):
        Catalog.from_csv(p)
    # the same bytes are fine when the declared encoding matches
    cat = Catalog.from_csv(p, encoding="latin-1")
    assert cat.text["title"][1] == "café"
    pj = tmp_path / "enc.jsonl"
    pj.write_bytes(b'{"id": "a", "type": "movie", "title": "ok"}\n{"id": "b", "type": "movie", "title": "\xff"}\n')
    with pytest.raises(CatalogError, match=r"enc.jsonl:2, field 'title': not valid text"):
        Catalog.from_jsonl(pj)


def test_skip_invalid_is_reported_not_silent(tmp_path):
    p = tmp_path / "s.jsonl"
    _write_jsonl(p, [
        {"id": "a", "type": "movie", "title": "A"},
        {"id": "a", "type": "movie", "title": "dup"},
        {"id": "b", "type": "movie", "title": ""},
        {"id": "c", "type": "movie", "title": "C"},
    ])
    with pytest.warns(UserWarning, match="skipped 2 of 4 records"):
        cat = Catalog.from_jsonl(p, skip_invalid=True)
    assert cat.ids == ["a", "c"]
    rep = cat.load_report
    assert (rep.n_read, rep.n_kept, rep.n_skipped) == (4, 2, 2)
    assert [i.location for i in rep.skipped] == ["s.jsonl:2", "s.jsonl:3"]
    assert "duplicate id" in rep.skipped[0].message and "empty text" in rep.skipped[1].message
    assert rep.to_dict()["n_skipped"] == 2 and "s.jsonl:2" in str(rep)


def test_default_type_require_text_and_features():
    recs = [{"id": "x", "title": "T", "desc": "", "n": "3"}, {"id": "y", "title": "U", "desc": "d", "n": "oops"}]
    with pytest.raises(CatalogError) as ei:
        Catalog.from_records(recs, default_type="item", require_text=["title", "desc"], feature_fields=["n"])
    msg = str(ei.value)
    assert "records row 0, field 'desc': empty text in a required text field" in msg
    assert "records row 1, field 'n': feature must be a number, found 'oops'" in msg
    cat = Catalog.from_records(recs[:1], default_type="item", text_fields=["title"])
    assert cat.type_names == ["item"] and cat.item_types.tolist() == [0]
    with pytest.raises(ValueError, match="not text fields"):
        Catalog.from_records(recs, default_type="item", text_fields=["title"], require_text=["desc"])
    # require_text=False admits items without text
    cat = Catalog.from_records([{"id": "z", "type": "user"}], require_text=False)
    assert len(cat) == 1 and cat.text_fields == []


def test_csv_structure_errors(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("id,type,title\na,movie,x,EXTRA\n")
    with pytest.raises(CatalogError, match=r"w.csv:2: expected 3 columns \(header\), found 4"):
        Catalog.from_csv(p)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CatalogError, match="no header"):
        Catalog.from_csv(tmp_path / "empty.csv")
    (tmp_path / "dup.csv").write_text("id,id,type\n")
    with pytest.raises(CatalogError, match="duplicate column names"):
        Catalog.from_csv(tmp_path / "dup.csv")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(NeoDataError, match="x.txt: the file is empty"):
        Catalog.load(tmp_path / "x.txt")
    (tmp_path / "y.txt").write_text("just words\nno columns here\n")
    with pytest.raises(NeoDataError, match="y.txt: cannot tell the format"):
        Catalog.load(tmp_path / "y.txt")


def test_dataframe_errors_name_index():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"id": ["a", "b"], "type": ["movie", None], "title": ["A", "B"]}, index=[10, 11])
    with pytest.raises(CatalogError, match=r"dataframe index 11, field 'type': missing item type"):
        Catalog.from_dataframe(df)


def test_save_load_round_trip(tmp_path):
    cat = Catalog.from_records(RECORDS, **KW)
    cat.save(tmp_path / "cat")
    back = Catalog.load(tmp_path / "cat")
    assert back.ids == cat.ids and back.type_names == cat.type_names
    assert back.item_types.tolist() == cat.item_types.tolist()
    assert back.text == cat.text and back.text_fields == cat.text_fields
    np.testing.assert_array_equal(back.popularity, cat.popularity)
    np.testing.assert_array_equal(back.features, cat.features)
    assert back.fingerprint() == cat.fingerprint()
    # tampering with the items file is detected, not silently accepted
    items = (tmp_path / "cat" / "items.jsonl").read_text().splitlines()
    (tmp_path / "cat" / "items.jsonl").write_text("\n".join(items[:-1]) + "\n")
    with pytest.raises(ValueError, match="inconsistent"):
        Catalog.load(tmp_path / "cat")


def test_fingerprint_depends_on_order_and_types():
    a = Catalog.from_records(RECORDS, **KW)
    b = Catalog.from_records(RECORDS[::-1], **KW)
    c = Catalog.from_records([{**r, "type": "movie"} for r in RECORDS], **KW)
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


def test_constructor_validation():
    with pytest.raises(ValueError, match="duplicate item id 'a' at rows 0 and 1"):
        Catalog(["a", "a"], [0, 0], ["movie"])
    with pytest.raises(ValueError, match="type index 3 outside"):
        Catalog(["a"], [3], ["movie"])
    with pytest.raises(ValueError, match="text field 'title' has 1 values for 2 items"):
        Catalog(["a", "b"], [0, 0], ["movie"], {"title": ["x"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load must not warn
        Catalog.from_records(RECORDS, **KW)


# ============================================================================ a user's catalog file, any format


def test_load_detects_format_and_columns(tmp_path):
    import gzip

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [("m1", "Toy Story", "Animation"), ("m2", "Heat", "Crime")]
    files = {
        "items.csv": "item_id,title,genres\n" + "".join(f"{i},{t},{g}\n" for i, t, g in rows),
        "items.tsv": "asin\ttitle\tgenres\n" + "".join(f"{i}\t{t}\t{g}\n" for i, t, g in rows),
        "items.psv": "movieId|title|genres\n" + "".join(f"{i}|{t}|{g}\n" for i, t, g in rows),
        "items.txt": "".join(json.dumps({"id": i, "title": t, "genres": g}) + "\n" for i, t, g in rows),
        "items.json": json.dumps([{"item_id": i, "title": t, "genres": g} for i, t, g in rows]),
        "lcrec.json": json.dumps({i: {"title": t, "genres": g} for i, t, g in rows}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "items.csv.gz").write_bytes(gzip.compress(files["items.csv"].encode()))
    pq.write_table(pa.table({"product_id": [r[0] for r in rows], "title": [r[1] for r in rows],
                             "genres": [r[2] for r in rows]}), tmp_path / "items.parquet")
    for name in list(files) + ["items.csv.gz", "items.parquet"]:
        cat = Catalog.load(tmp_path / name)
        assert cat.ids == ["m1", "m2"] and cat.type_names == ["item"], name  # no type column: one type, "item"
        assert cat.text["title"] == ["Toy Story", "Heat"] and cat.text["genres"] == ["Animation", "Crime"], name
        assert set(cat.text_fields) == {"title", "genres"}, name  # the id column is not text
    # named columns and a type column
    p = tmp_path / "typed.csv"
    p.write_text("key,kind,name,plot\nm1,movie,Toy Story,toys\nt1,tag,pixar,\n")
    cat = Catalog.load(p, id_field="key", type_field="kind", text_fields=["name"])
    assert cat.ids == ["m1", "t1"] and cat.type_names == ["movie", "tag"] and cat.text_fields == ["name"]
    assert Catalog.load(p, id_field="key", default_type="thing").type_names == ["thing"]


def test_load_errors_name_file_row_and_fix_on_the_first_line(tmp_path):
    from neo.core.errors import NeoDataError

    p = tmp_path / "c.csv"
    p.write_text("name,title\nx,X\n")
    with pytest.raises(CatalogError, match=r"^c.csv:1: no item id column among \['name', 'title'\]; name it with "
                                           r"--id-col NAME"):
        Catalog.load(p)
    p.write_text("id,title\nx,X\n")
    for kw, col in (({"id_field": "key"}, "item id"), ({"type_field": "kind"}, "item type"),
                    ({"text_fields": ["title", "plot"]}, "text")):
        with pytest.raises(CatalogError, match=rf"^c.csv: no {col} column '\w+'; the columns are \['id', 'title'\]; "
                                               "pass --"):
            Catalog.load(p, **kw)
    p.write_text("id,title\n")
    with pytest.raises(CatalogError, match=r"^c.csv: no items"):
        Catalog.load(p)
    p.write_text("id,title\na,A\na,B\nb,\n")
    with pytest.raises(CatalogError) as ei:
        Catalog.load(p)
    first, *rest = str(ei.value).splitlines()
    assert first.startswith("c.csv:3, field 'id': duplicate id 'a' (first seen at c.csv:2) (and 1 more problem(s) in "
                            "c.csv); fix the record, or skip invalid records with --skip-invalid"), first
    assert any("c.csv:4: empty text" in ln for ln in rest)
    assert ei.value.one_line().startswith(first)
    q = tmp_path / "c.json"
    q.write_text('[{"id": "a", "title": "A"},')
    with pytest.raises(CatalogError, match=r"^c.json:1: not valid JSON"):
        Catalog.load(q)
    q.write_text('"just a string"')
    with pytest.raises(NeoDataError, match=r"^c.json: line 1 is not a JSON object or array"):
        Catalog.load(q)
    r = tmp_path / "c.parquet"
    r.write_text("id,title\na,A\n")
    with pytest.raises(NeoDataError, match=r"^c.parquet: not a Parquet file"):
        Catalog.load(r)
