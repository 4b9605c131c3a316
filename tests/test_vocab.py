"""SidVocab: strings, ids, installation into locally trained tokenizers, persistence."""
import numpy as np
import pytest

from _tiny import make_tokenizer
from neo.lm.vocab import SidVocab, VocabMismatchError


@pytest.mark.parametrize("kind", ["bpe", "wordlevel"])
def test_install_ids_match_layout_and_tokenize(kind):
    tok = make_tokenizer(kind)
    n = len(tok)
    v = SidVocab.for_tokenizer(tok, {"movie": [4, 3], "book": [5]})
    assert v.token_begin == n and v.open_id == n and v.close_id == n + 1
    v.install(tok)
    assert len(tok) == v.token_end
    assert tok.convert_tokens_to_ids(v.token_strings()) == list(range(v.token_begin, v.token_end))
    # a span written as text tokenizes back to exactly the span ids
    sid = [v.code_token_id("movie", 0, 2), v.code_token_id("movie", 1, 1)]
    ids = tok(v.span_text(sid), add_special_tokens=False)["input_ids"]
    assert ids == v.span_ids(sid)
    assert v.install(tok) is tok and len(tok) == v.token_end  # idempotent


def test_bands_contiguous_and_disjoint():
    tok = make_tokenizer()
    v = SidVocab.for_tokenizer(tok, {"a": [3, 2], "b": [4]}, pad_to_multiple_of=64)
    assert v.vocab_size % 64 == 0 and v.vocab_size >= v.token_end
    seen = set()
    for t in v.layout.types:
        for lvl, (s, k) in enumerate(zip(t.band_starts, t.codebook_sizes)):
            band = set(range(s, s + k))
            assert not band & seen
            seen |= band
            assert v.layout.classify(s) == (v.layout.type_index(t.name), lvl)
    assert v.code_token("b", 0, 3) == "<sid_b_0_3>"
    with pytest.raises(ValueError, match="code 4 outside"):
        v.code_token("b", 0, 4)


def test_wrong_tokenizer_is_clear_error():
    tok = make_tokenizer()
    v = SidVocab.for_tokenizer(tok, {"movie": [4]})
    tok.add_tokens(["<extra>"])
    with pytest.raises(VocabMismatchError, match="tokenizer has .* tokens but this SID vocabulary starts"):
        v.install(tok)


def test_clashing_string_rejected():
    tok = make_tokenizer()
    tok.add_tokens(["[SID]"])
    v = SidVocab.for_tokenizer(tok, {"movie": [2]})
    tok2 = make_tokenizer()
    tok2.add_tokens(["[SID]"])
    # sizes equal, but the delimiter string already exists
    with pytest.raises(VocabMismatchError, match="already exist"):
        v.install(tok2)


def test_save_load_roundtrip(tmp_path):
    tok = make_tokenizer()
    v = SidVocab.for_tokenizer(tok, {"movie": [4, 4], "book": [3]})
    v.save(tmp_path)
    w = SidVocab.load(tmp_path)
    assert w == v and w.fingerprint() == v.fingerprint()
    assert np.array_equal(w.is_sid_token([0, v.open_id, v.token_end]), [False, True, False])
