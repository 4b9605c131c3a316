"""adapt_model: resize any HF causal LM (tied / untied), mean and semantic initialisation."""
import numpy as np
import pytest
import torch

from _tiny import make_model, make_tokenizer
from neo.lm.adapt import adapt_model, check_model, embeddings_tied
from neo.lm.vocab import SidVocab, VocabMismatchError


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", True), ("qwen2", False),
                                       ("gpt2", None)])
def test_resize_and_mean_init(arch, tied):
    tok = make_tokenizer()
    model = make_model(arch, len(tok), tied=tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    v = SidVocab.for_tokenizer(tok, {"movie": [8, 8], "book": [4]})
    v.install(tok)
    info = adapt_model(model, v)
    assert info["new_rows"] == v.vocab_size and info["tied"] == embeddings_tied(model)
    assert embeddings_tied(model) == (tied is not False)
    w_in = model.get_input_embeddings().weight.detach()
    w_out = model.get_output_embeddings().weight.detach()
    assert w_in.shape[0] == v.vocab_size and w_out.shape[0] == v.vocab_size
    assert torch.equal(w_in[: len(old_in)], old_in)  # existing rows untouched
    assert torch.equal(w_out[: len(old_out)], old_out)
    new = w_in[v.token_begin:v.token_end]
    mean = old_in.mean(0)
    assert torch.allclose(new.mean(0), mean, atol=0.05 * old_in.std().item())
    assert (new - mean).abs().max() < 0.1 * old_in.std() * 5  # small noise around the mean
    assert not torch.equal(new[0], new[1])  # rows differ (symmetry broken)
    if tied is False:
        assert torch.allclose(w_out[v.token_begin:v.token_end].mean(0), old_out.mean(0), atol=0.05 * old_out.std().item())
    check_model(model, v)
    ids = torch.tensor([[1, 5, v.open_id, v.token_begin + 2, v.close_id]])
    assert model(ids).logits.shape == (1, 5, v.vocab_size)


def test_mean_init_keeps_text_distribution():
    tok = make_tokenizer()
    model = make_model("llama", len(tok))
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    before = torch.log_softmax(model(ids).logits, -1)
    v = SidVocab.for_tokenizer(tok, {"movie": [16, 16]})
    v.install(tok)
    adapt_model(model, v)
    after = torch.log_softmax(model(ids).logits, -1)
    # text tokens keep their relative probabilities; the new tokens take only modest mass
    kl = (before.exp() * (before - torch.log_softmax(after[..., : before.shape[-1]], -1))).sum(-1)
    assert kl.max() < 1e-5
    assert after[..., v.token_begin:].exp().sum(-1).max() < 0.5


def test_semantic_init_groups_by_code():
    tok = make_tokenizer()
    model = make_model("llama", len(tok))
    v = SidVocab.for_tokenizer(tok, {"movie": [2, 3]})
    v.install(tok)
    texts = ["space opera with robots", "space robots", "romantic comedy in paris", "comedy paris"]
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 2]])
    toks = v.layout.codes_to_tokens("movie", codes)
    emb = model.get_input_embeddings().weight.detach().clone()
    adapt_model(model, v, init="semantic", tokenizer=tok, sid_tokens={"movie": toks}, texts={"movie": texts})
    w = model.get_input_embeddings().weight.detach()

    def vec(t):
        return emb[torch.tensor(tok(t, add_special_tokens=False)["input_ids"])].mean(0)

    assert torch.allclose(w[v.code_token_id("movie", 0, 0)], (vec(texts[0]) + vec(texts[1])) / 2, atol=1e-5)
    assert torch.allclose(w[v.code_token_id("movie", 1, 2)], vec(texts[3]), atol=1e-5)
    # a code no item uses falls back to (noisy) mean; untied head gets its own semantic rows
    assert model.get_output_embeddings().weight.shape[0] == v.vocab_size


def test_bad_inputs():
    tok = make_tokenizer()
    model = make_model("llama", len(tok))
    v = SidVocab.for_tokenizer(tok, {"movie": [4]})
    with pytest.raises(ValueError, match="unknown init"):
        adapt_model(model, v, init="random")
    with pytest.raises(ValueError, match="needs tokenizer"):
        adapt_model(model, v, init="semantic")
    with pytest.raises(VocabMismatchError, match="needs"):
        check_model(model, v)
    small = make_model("llama", 100)
    with pytest.raises(VocabMismatchError, match="larger tokenizer"):
        adapt_model(small, v)
