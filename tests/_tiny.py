"""Tiny, download-free fixtures for the generation tests: a locally trained tokenizer, tiny random
causal LMs (Llama / Qwen2 / GPT-2 configs), and a small two-type catalog with random SIDs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# tiny models: one thread is fastest and keeps a shared 2-core machine usable
torch.set_num_threads(1)

CORPUS = [
    "recommend a movie for this user", "the user watched these movies and liked them",
    "search for a book about space travel", "describe the user in a few words",
    "explain why this item fits the user", "here are some good items, separated by commas",
    "a funny film about a dog and a cat", "a long novel about the sea and a whale",
    "space opera with robots", "romantic comedy in paris", "history of the roman empire",
    "answer: item list", "the quick brown fox jumps over the lazy dog", "hello world, how are you?",
] * 4


def make_tokenizer(kind: str = "bpe", vocab_size: int = 300):
    """A PreTrainedTokenizerFast trained on CORPUS (BPE byte-level or WordLevel)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordLevelTrainer(special_tokens=specials, show_progress=False)
    else:
        raise ValueError(kind)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_model(arch: str, vocab_size: int, *, hidden: int = 32, layers: int = 2, tied: bool | None = None,
               seed: int = 0, eos_token_id: int = 2, pad_token_id: int = 0, bos_token_id: int = 1):
    """A tiny random causal LM of the given family."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    ids = dict(eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=bool(tied), **ids)
        m = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=True if tied is None else tied, **ids)
        m = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **ids)
        m = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    m.generation_config.pad_token_id = pad_token_id
    m.generation_config.eos_token_id = eos_token_id
    m.generation_config.bos_token_id = bos_token_id
    return m.eval()


@dataclass
class TinyCatalog:
    """Minimal catalog: what neo's generation needs (id / type / title by row, row by id)."""

    ids: list
    type_names: list
    item_types: np.ndarray
    titles: list

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item_id: str) -> int:
        try:
            return self.ids.index(item_id)
        except ValueError:
            raise KeyError(f"item id {item_id!r} is not in the catalog") from None

    def id(self, row: int) -> str:
        return self.ids[row]

    def type_of(self, row: int) -> str:
        return self.type_names[int(self.item_types[row])]

    def title(self, row: int) -> str:
        return self.titles[row]


def random_codes(rng: np.random.Generator, n: int, sizes) -> np.ndarray:
    """n distinct code tuples (n <= prod(sizes))."""
    total = int(np.prod(sizes))
    flat = rng.choice(total, size=n, replace=False)
    return np.stack(np.unravel_index(flat, sizes), 1).astype(np.int32)


SIZES = {"movie": [4, 4, 3], "book": [3, 5]}
COUNTS = {"movie": 20, "book": 12}


def make_world(arch: str = "llama", *, seed: int = 0, tied: bool | None = None, hidden: int = 32,
               sizes=None, counts=None, tokenizer_kind: str = "bpe"):
    """Tokenizer + vocab installed + adapted model + index + catalog (rows: movies then books)."""
    from neo.core.index import SidIndex
    from neo.lm.adapt import adapt_model
    from neo.lm.vocab import SidVocab

    sizes = sizes or SIZES
    counts = counts or COUNTS
    rng = np.random.default_rng(seed)
    tok = make_tokenizer(tokenizer_kind)
    vocab = SidVocab.for_tokenizer(tok, sizes)
    vocab.install(tok)
    model = make_model(arch, vocab.token_begin, hidden=hidden, tied=tied, seed=seed,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    adapt_model(model, vocab, seed=seed)
    # make SID tokens likely enough that random models actually emit spans in mixed mode
    with torch.no_grad():
        emb_out = model.get_output_embeddings().weight
        emb_out[vocab.token_begin:vocab.token_end] += 0.5 * emb_out[:vocab.token_begin].std() * torch.randn(
            vocab.num_tokens, emb_out.shape[1], generator=torch.Generator().manual_seed(seed))
    ids, types, titles, toks, rows = [], [], [], {}, {}
    start = 0
    for ti, (t, n) in enumerate(counts.items()):
        codes = random_codes(rng, n, sizes[t])
        toks[t] = vocab.layout.codes_to_tokens(t, codes)
        rows[t] = np.arange(start, start + n, dtype=np.int32)
        for i in range(n):
            ids.append(f"{t}{i}")
            types.append(ti)
            titles.append(f"{t.title()} number {i}")
        start += n
    catalog = TinyCatalog(ids, list(counts), np.asarray(types, dtype=np.int32), titles)
    index = SidIndex.build(vocab.layout, toks, rows)
    return dict(tokenizer=tok, vocab=vocab, model=model, index=index, catalog=catalog, sid_tokens=toks, rows=rows)
