"""NeoSystem: one-directory save/load round trip, and clear errors when the parts disagree."""
import json
import shutil

import numpy as np
import pytest
import torch

from _tiny import COUNTS, SIZES, make_model, make_tokenizer, random_codes
from neo.core.index import SidIndex
from neo.items.catalog import Catalog
from neo.lm.prompts import Prompt
from neo.items.sids import SemanticIds
from neo.lm.system import NeoSystem, sids_hash
from neo.lm.vocab import SidVocab, VocabMismatchError


def make_catalog_and_sids(seed=0):
    rng = np.random.default_rng(seed)
    ids, types, titles, codes, rows = [], [], [], {}, {}
    start = 0
    for ti, (t, n) in enumerate(COUNTS.items()):
        codes[t] = random_codes(rng, n, SIZES[t])
        rows[t] = np.arange(start, start + n)
        ids += [f"{t}{i}" for i in range(n)]
        types += [ti] * n
        titles += [f"{t} title {i}" for i in range(n)]
        start += n
    cat = Catalog(ids, types, list(COUNTS), text={"title": titles})
    sids = SemanticIds(type_names=list(COUNTS), codes=codes, rows=rows, codebook_sizes=SIZES,
                       reachable={t: np.ones(n, bool) for t, n in COUNTS.items()},
                       extra_level={t: False for t in COUNTS}, collisions="extra_level", n_items=start,
                       catalog_fingerprint=cat.fingerprint(), catalog=cat)
    return cat, sids


@pytest.fixture(scope="module")
def system():
    cat, sids = make_catalog_and_sids()
    tok = make_tokenizer()
    model = make_model("qwen2", len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id)
    return NeoSystem.build(model, tok, cat, sids, init="semantic")


def save_format1(system, d):
    """The writer of neo's format 1 (before the HF-loadable layout), kept to test that old directories load."""
    d.mkdir(parents=True)
    system.model.save_pretrained(d / "model")
    system.tokenizer.save_pretrained(d / "tokenizer")
    system.vocab.save(d / "vocab.json")
    system.index.save(d / "index.neotrie")
    system.catalog.save(d / "catalog")
    system.sids.save(d / "sids", save_catalog=False)
    manifest = {
        "format": "neo.system", "version": 1, "vocab_fingerprint": system.vocab.fingerprint(),
        "vocab_size": system.vocab.vocab_size, "tokenizer_size": len(system.tokenizer),
        "model_rows": int(system.model.get_input_embeddings().weight.shape[0]),
        "num_items": system.index.num_items, "sids_hash": sids_hash(system.index),
        "catalog_fingerprint": system.catalog.fingerprint(), "has_catalog": True, "has_sids": True,
    }
    (d / "neo_system.json").write_text(json.dumps(manifest, indent=1))
    return d


def test_round_trip(system, tmp_path):
    d = system.save_pretrained(tmp_path / "sys")
    loaded = NeoSystem.from_pretrained(d)
    assert loaded.vocab == system.vocab and len(loaded.tokenizer) == len(system.tokenizer)
    assert loaded.index.num_items == system.index.num_items == len(system.catalog)
    assert loaded.catalog.ids == system.catalog.ids
    for t in system.sids.type_names:
        assert np.array_equal(loaded.sids.codes[t], system.sids.codes[t])
    for a, b in zip(loaded.model.parameters(), system.model.parameters()):
        assert torch.equal(a, b)
    p = Prompt(task="recommend", history=["movie2", "book0"], k=4)
    r1 = system.topk_items([p], k=4, num_beams=10)[0]
    r2 = loaded.topk_items([p], k=4, num_beams=10)[0]
    assert [i.id for i in r1] == [i.id for i in r2] and r1[0].title.endswith(r1[0].id[-1])
    g1 = system.generate(["hello world"], max_new_tokens=10)[0]
    g2 = loaded.generate(["hello world"], max_new_tokens=10)[0]
    assert g1.token_ids == g2.token_ids
    # saving over an existing directory replaces it; save/load are aliases
    system.save(d)
    assert NeoSystem.load(d).index.num_items == system.index.num_items
    assert not (tmp_path / "sys.old-neo").exists() and not (tmp_path / "sys.tmp-neo").exists()


def test_directory_loads_in_hugging_face_as_is(system, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = system.save_pretrained(tmp_path / "sys")
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
    assert (d / "neo" / "neo_system.json").is_file() and (d / "neo" / "index.neotrie").is_file()
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert len(tok) == len(system.tokenizer)
    text = "hello " + system.vocab.span_text(system.index.item_tokens([3])[1][0][:3])
    assert tok(text)["input_ids"] == system.tokenizer(text)["input_ids"]
    ids = torch.tensor([tok("hello world")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, system.model(ids).logits)
    # neo's processor finds its files from the model path (what vLLM is given)
    from neo.lm.system import find_system, load_system_parts

    parts = load_system_parts(d)
    assert parts.index.num_items == system.index.num_items and parts.vocab == system.vocab
    assert parts.eos_token_ids == [system.tokenizer.eos_token_id]
    assert find_system(d / "neo").root == d


def test_old_layout_still_loads(system, tmp_path):
    d = save_format1(system, tmp_path / "old")
    loaded = NeoSystem.from_pretrained(d)
    assert loaded.vocab == system.vocab and loaded.catalog.ids == system.catalog.ids
    for a, b in zip(loaded.model.parameters(), system.model.parameters()):
        assert torch.equal(a, b)
    from neo.lm.system import find_system, load_system_parts

    assert find_system(d / "model").root == d  # vLLM would be given the model/ folder
    assert load_system_parts(d / "model").eos_token_ids == [system.tokenizer.eos_token_id]
    # re-saving converts it to the new layout
    system.save_pretrained(d)
    assert (d / "neo" / "neo_system.json").is_file() and not (d / "model").exists()
    NeoSystem.from_pretrained(d)


def test_mismatched_parts_are_clear_errors(system, tmp_path):
    d = save_format1(system, tmp_path / "sys")  # format 1 has no file hashes: the semantic checks speak
    # a tokenizer saved without the SID tokens: vocab size mismatch
    bad = tmp_path / "bad_tok"
    shutil.copytree(d, bad)
    shutil.rmtree(bad / "tokenizer")
    make_tokenizer().save_pretrained(bad / "tokenizer")
    with pytest.raises(VocabMismatchError, match="tokenizer has 300 tokens but the SID vocabulary needs"):
        NeoSystem.load(bad)
    # an index of other SIDs: hash of the SIDs differs
    bad2 = tmp_path / "bad_index"
    shutil.copytree(d, bad2)
    cat, sids = make_catalog_and_sids(seed=5)
    toks = {t: system.vocab.layout.codes_to_tokens(t, sids.codes[t]) for t in sids.type_names}
    SidIndex.build(system.vocab.layout, toks, {t: sids.rows[t].astype(np.int32) for t in sids.type_names}).save(
        bad2 / "index.neotrie")
    with pytest.raises(VocabMismatchError, match="hash of the SIDs"):
        NeoSystem.load(bad2)
    # a vocabulary of another size
    bad3 = tmp_path / "bad_vocab"
    shutil.copytree(d, bad3)
    other = SidVocab.for_tokenizer(make_tokenizer(), {"movie": [4, 4, 3], "book": [3, 6]})
    other.save(bad3 / "vocab.json")
    with pytest.raises(VocabMismatchError, match="vocab size 322.*vocab size 321"):
        NeoSystem.load(bad3)
    with pytest.raises(FileNotFoundError, match="not a saved neo system"):
        NeoSystem.load(tmp_path)
    # format 2: a replaced tokenizer is caught by the recorded hashes, naming the file
    d2 = system.save_pretrained(tmp_path / "sys2")
    make_tokenizer().save_pretrained(d2)
    from neo.lm.system import SystemFormatError

    with pytest.raises(SystemFormatError, match="tokenizer"):
        NeoSystem.load(d2)


def test_refuses_to_replace_a_directory_that_is_not_a_system(system, tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved neo system"):
        system.save_pretrained(d)
    assert (d / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    system.save_pretrained(empty)
    NeoSystem.load(empty, verify=False)


def test_model_without_sid_rows_rejected(system):
    small = make_model("llama", 300)
    with pytest.raises(VocabMismatchError, match="model has 300 input"):
        NeoSystem(small, system.tokenizer, system.vocab, system.index, system.catalog)
    with pytest.raises(VocabMismatchError, match="tokenizer does not match"):
        NeoSystem(system.model, make_tokenizer(), system.vocab, system.index)
