"""Embedders: offline TF-IDF default, local HF encoder / causal LM, sentence-transformers, .npy.

Models are tiny, random-weight, built from configs; tokenizers are trained locally. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from neo.items.catalog import Catalog
from neo.items.embeddings import (
    HFEmbedder,
    PrecomputedEmbedder,
    SentenceTransformerEmbedder,
    TfidfSvdEmbedder,
    embed_catalog,
    get_embedder,
    save_embeddings,
)

TEXTS = [
    "space opera with starships and aliens",
    "aliens invade earth in a space battle",
    "starships battle aliens across the galaxy",
    "romantic comedy in paris about love",
    "love story and wedding comedy in paris",
    "a comedy about love and a wedding",
    "",
]


def _catalog(texts=TEXTS) -> Catalog:
    return Catalog.from_records([{"id": f"i{i}", "type": "movie", "title": t} for i, t in enumerate(texts)],
                                require_text=False)


# ---------------------------------------------------------------------------------------------- TF-IDF


def test_tfidf_shape_norm_determinism_and_similarity():
    a = TfidfSvdEmbedder(dim=8, seed=3).embed_texts(TEXTS)
    b = TfidfSvdEmbedder(dim=8, seed=3).embed_texts(TEXTS)
    assert a.shape == (7, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    norms = np.linalg.norm(a, axis=1)
    np.testing.assert_allclose(norms[:6], 1, atol=1e-5)
    assert norms[6] == 0  # empty text stays a zero vector, not NaN
    sim = a @ a.T
    # each space text is closer to another space text than to any romance text, and vice versa
    assert sim[0, 1:3].max() > sim[0, 3:6].max()
    assert sim[3, 4:6].max() > sim[3, 0:3].max()


def test_tfidf_tiny_corpus_pads_and_transform_reuses_space():
    e = TfidfSvdEmbedder(dim=64)
    x = e.embed_texts(["alpha beta", "beta gamma", "gamma delta"])
    assert x.shape == (3, 64) and np.all(x[:, 5:] == 0)
    y = e.transform(["alpha beta"])
    np.testing.assert_allclose(y[0], x[0], atol=1e-6)
    with pytest.raises(ValueError, match="no terms"):
        TfidfSvdEmbedder().embed_texts(["", " "])
    with pytest.raises(RuntimeError, match="before fit"):
        TfidfSvdEmbedder().transform(["x"])


def test_embed_catalog_default_is_tfidf():
    cat = _catalog()
    x = embed_catalog(cat, dim=4)
    assert x.shape == (len(cat), 4)
    np.testing.assert_array_equal(x, TfidfSvdEmbedder(dim=4).embed_catalog(cat))


# ---------------------------------------------------------------------------------------------- HF models


def _train_tokenizer(with_pad: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    kw = dict(unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", eos_token="[SEP]")
    if with_pad:
        kw["pad_token"] = "[PAD]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("tiny_bert")
    tok = _train_tokenizer(with_pad=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny_llama")
    tok = _train_tokenizer(with_pad=False)  # causal LMs often have no pad token
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("which", ["tiny_bert_dir", "tiny_llama_dir"])
def test_hf_embedder_mean_pool_batch_invariant(which, request):
    path = request.getfixturevalue(which)
    e1 = HFEmbedder(path, batch_size=1, device="cpu", progress=False)
    e4 = HFEmbedder(path, batch_size=4, device="cpu", progress=False)
    a, b = e1.embed_texts(TEXTS), e4.embed_texts(TEXTS)
    assert a.shape == (len(TEXTS), 16) and a.dtype == np.float32
    # padding is masked out of the mean, so batching must not change any vector
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert not np.allclose(a[0], a[3])  # different texts, different vectors
    # through the generic entry point, in catalog order
    c = embed_catalog(_catalog(), path, batch_size=3, device="cpu", progress=False)
    np.testing.assert_allclose(c, a, atol=1e-5)


def test_hf_embedder_refuses_non_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        HFEmbedder("some-org/some-model")
    with pytest.raises(ValueError, match="no config.json"):
        get_embedder(tmp_path)
    with pytest.raises(ValueError, match="unknown embedder spec"):
        get_embedder("some-org/some-model")


def test_sentence_transformers_from_path(tiny_bert_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the module classes
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    word = Transformer(str(tiny_bert_dir), max_seq_length=32)
    dim = (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)()
    st = SentenceTransformer(modules=[word, Pooling(dim, "mean")], device="cpu")
    st.save(str(tmp_path / "st"))
    e = get_embedder(tmp_path / "st", device="cpu", progress=False)
    assert isinstance(e, SentenceTransformerEmbedder) and e.dim == 16
    x = e.embed_catalog(_catalog())[:6]  # row 6 is the empty text: no tokens, a zero vector here
    assert x.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    # same tiny encoder, same mean pooling -> same vectors as HFEmbedder
    ref = HFEmbedder(tiny_bert_dir, device="cpu", progress=False).embed_texts(TEXTS[:6])
    np.testing.assert_allclose(x, ref, atol=1e-4)


# ---------------------------------------------------------------------------------------------- .npy


def test_precomputed_npy_shape_checked_and_aligned(tmp_path):
    cat = _catalog()
    x = np.random.default_rng(0).normal(size=(len(cat), 5)).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    np.testing.assert_array_equal(get_embedder(tmp_path / "e.npy").embed_catalog(cat), x)
    np.save(tmp_path / "short.npy", x[:-1])
    with pytest.raises(ValueError, match=r"have 6 rows but the catalog has 7 items"):
        PrecomputedEmbedder(tmp_path / "short.npy").embed_catalog(cat)
    np.save(tmp_path / "flat.npy", x[:, 0])
    with pytest.raises(ValueError, match="must be 2-D"):
        PrecomputedEmbedder(tmp_path / "flat.npy")
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        PrecomputedEmbedder(bad).embed_catalog(cat)
    with pytest.raises(FileNotFoundError):
        PrecomputedEmbedder(tmp_path / "missing.npy")
    # vectors stored in another order are aligned by id (sidecar written by save_embeddings)
    perm = np.arange(len(cat))[::-1]
    save_embeddings(tmp_path / "perm.npy", x[perm], ids=[cat.ids[i] for i in perm])
    np.testing.assert_array_equal(PrecomputedEmbedder(tmp_path / "perm.npy").embed_catalog(cat), x)
    with pytest.raises(ValueError, match="no vector for 1 catalog ids"):
        PrecomputedEmbedder(x[:-1], ids=cat.ids[:-1]).embed_catalog(cat)
