"""Baselines evaluated in the same run as neo: popularity, SASRec, and lexical search.

* :class:`Popularity` -- scores every item by its training interaction count.
* :class:`SASRec` -- self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), trained
  here with **full softmax cross-entropy** over all items at every position (instead of the
  original one-negative BCE), which is what makes it the strong sequential baseline in recent
  generative-recommendation comparisons.
* :class:`BM25Search` and :class:`TfidfSearch` -- lexical retrieval over item text.

Every recommender exposes ``score(histories) -> (B, n_items)`` so
:func:`neo.evaluation.evaluate_scorer` ranks all of them the same way.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Popularity", "RandomScorer", "SASRec", "BM25Search", "TfidfSearch"]


class Popularity:
    """Most-popular baseline: an item's score is its number of training interactions."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, sequences: Sequence[np.ndarray], n_items: int) -> "Popularity":
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s)]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= n_items):
            raise ValueError(f"item index outside [0, {n_items}) in the training sequences")
        self.counts = np.bincount(flat, minlength=n_items).astype(np.float64)
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("Popularity.score called before fit")
        return np.broadcast_to(self.counts, (len(histories), self.counts.size))


class RandomScorer:
    """Uniformly random scores (the chance level: HR@K ~= K / n_candidates)."""

    def __init__(self, n_items: int, seed: int = 0):
        self.n_items = int(n_items)
        self.rng = np.random.default_rng(seed)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self.rng.random((len(histories), self.n_items))


# ============================================================================ SASRec


class _SASRecNet(nn.Module):
    def __init__(self, n_items: int, hidden: int, layers: int, heads: int, max_len: int, dropout: float):
        super().__init__()
        # index 0 is padding; item i is embedding i + 1
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=hidden * 4 if hidden < 128 else hidden * 2,
                                           dropout=dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.max_len = max_len
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) right-aligned padded item ids (+1) -> (B, T, hidden)."""
        T = seq.shape[1]
        pos = torch.arange(T, device=seq.device)
        h = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(pos)
        h = self.drop(h)
        causal = torch.triu(torch.ones((T, T), dtype=torch.bool, device=seq.device), 1)  # True = masked
        h = self.encoder(h, mask=causal, src_key_padding_mask=seq == 0, is_causal=True)
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_emb.weight[1:].T  # (…, n_items): tied input/output item embeddings


class SASRec:
    """SASRec trained with full cross-entropy over all items.

    Parameters
    ----------
    n_items : int
    hidden, layers, heads : int
        Transformer size (defaults suit MovieLens-small on a CPU in about a minute).
    max_len : int
        Longest history the model reads (the evaluation protocol caps histories at 20).
    dropout : float
    seed : int
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    """

    def __init__(self, n_items: int, *, hidden: int = 64, layers: int = 2, heads: int = 2, max_len: int = 20,
                 dropout: float = 0.2, seed: int = 0, device: str | None = None):
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        torch.manual_seed(seed)
        self.n_items = int(n_items)
        self.max_len = int(max_len)
        self.seed = seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = _SASRecNet(self.n_items, hidden, layers, heads, self.max_len, dropout).to(self.device)
        self.history: list[dict[str, float]] = []

    def _windows(self, sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Cut every sequence into windows of ``max_len + 1`` (stride ``max_len``, the last one
        ending at the sequence end) -> right-aligned inputs and next-item labels (0 = ignore)."""
        L = self.max_len
        xs, ys = [], []
        for s in sequences:
            s = np.asarray(s, dtype=np.int64) + 1
            if s.size < 2:
                continue
            ends = list(range(s.size, 1, -L))
            for e in ends:
                w = s[max(0, e - L - 1):e]
                x = np.zeros(L, dtype=np.int64)
                y = np.zeros(L, dtype=np.int64)
                x[L - (w.size - 1):] = w[:-1]
                y[L - (w.size - 1):] = w[1:]
                xs.append(x)
                ys.append(y)
        if not xs:
            raise ValueError("no training sequence has 2 or more items")
        return np.stack(xs), np.stack(ys)

    def fit(self, sequences: Sequence[np.ndarray], *, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
            weight_decay: float = 0.0, valid: Any = None, valid_every: int = 5, patience: int = 3,
            progress: bool = False, time_budget_s: float | None = None) -> "SASRec":
        """Train with full softmax cross-entropy at every position.

        Parameters
        ----------
        sequences : list of np.ndarray
            Training item sequences (item indices, oldest first).
        valid : EvalCases, optional
            Validation cases: every ``valid_every`` epochs NDCG@10 is measured and the best weights
            are kept; training stops after ``patience`` checks without improvement.
        time_budget_s : float, optional
            Stop after this much training time (checked per epoch).
        """
        from .runners import evaluate_scorer

        x_all, y_all = self._windows(sequences)
        rng = np.random.default_rng(self.seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state, bad = -1.0, None, 0
        t0 = time.perf_counter()
        it = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="SASRec", unit="epoch", leave=False)
        for ep in it:
            self.net.train()
            perm = rng.permutation(len(x_all))
            tot, nb = 0.0, 0
            for s in range(0, len(perm), batch_size):
                idx = perm[s:s + batch_size]
                x = torch.as_tensor(x_all[idx], device=self.device)
                y = torch.as_tensor(y_all[idx], device=self.device)
                h = self.net(x)
                sel = y > 0
                loss = nn.functional.cross_entropy(self.net.logits(h[sel]), y[sel] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item()
                nb += 1
            rec: dict[str, float] = {"epoch": ep + 1, "loss": tot / max(1, nb)}
            stop = time_budget_s is not None and time.perf_counter() - t0 > time_budget_s
            if valid is not None and ((ep + 1) % valid_every == 0 or ep + 1 == epochs or stop):
                m = evaluate_scorer(self.score, valid, ks=(10,))
                rec["valid_ndcg@10"] = m["ndcg@10"]
                if m["ndcg@10"] > best:
                    best, bad = m["ndcg@10"], 0
                    best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
                else:
                    bad += 1
            self.history.append(rec)
            if progress and hasattr(it, "set_postfix"):
                it.set_postfix({k: round(v, 4) for k, v in rec.items() if k != "epoch"})
            if stop or (valid is not None and bad >= patience):
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Next-item scores ``(B, n_items)`` after each history (the last ``max_len`` items)."""
        self.net.eval()
        L = self.max_len
        x = np.zeros((len(histories), L), dtype=np.int64)
        for i, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)[-L:] + 1
            if h.size:
                x[i, L - h.size:] = h
        # a fully padded row would make attention NaN: an empty history reads item 0 instead (a
        # cold-start guess, rare in practice since the protocols only evaluate users with history)
        x[(x == 0).all(1), -1] = 1
        xt = torch.as_tensor(x, device=self.device)
        h = self.net(xt)[:, -1]
        return self.net.logits(h).float().cpu().numpy()


# ============================================================================ lexical search


class BM25Search:
    """Okapi BM25 over item text (word unigrams, lower-cased).

    Parameters
    ----------
    texts : sequence of str
        One text per item (index = item index).
    k1, b : float
        BM25 parameters.
    candidates : np.ndarray, optional
        Item indices that may be returned (e.g. the movies of a two-type catalog).
    """

    def __init__(self, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75,
                 candidates: np.ndarray | None = None):
        from sklearn.feature_extraction.text import CountVectorizer

        self.vec = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b")
        tf = self.vec.fit_transform(list(texts)).tocsc().astype(np.float64)
        n = tf.shape[0]
        dl = np.asarray(tf.sum(1)).ravel()
        avg = dl.mean() if n else 0.0
        df = np.diff(tf.indptr)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        # precompute the BM25 weight of every (item, term): queries then cost one sparse product
        tf = tf.tocoo()
        denom = tf.data + k1 * (1 - b + b * dl[tf.row] / max(avg, 1e-9))
        w = self.idf[tf.col] * tf.data * (k1 + 1) / denom
        from scipy.sparse import csr_matrix

        self.weights = csr_matrix((w, (tf.row, tf.col)), shape=tf.shape)
        self.n_items = n
        self.candidates = None if candidates is None else np.asarray(candidates, dtype=np.int64)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        q = self.vec.transform(list(queries))
        q.data[:] = 1.0  # a repeated query word counts once
        s = np.asarray((q @ self.weights.T).todense(), dtype=np.float64)
        if self.candidates is not None:
            mask = np.ones(self.n_items, dtype=bool)
            mask[self.candidates] = False
            s[:, mask] = -np.inf
        return s

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[int]]:
        """Top-``k`` items per query (items with zero score come after matches, by index)."""
        s = self.score(queries)
        k = min(k, s.shape[1])
        idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return [[int(i) for i in row if np.isfinite(s[r, i])] for r, row in enumerate(idx)]


class TfidfSearch(BM25Search):
    """Cosine similarity of TF-IDF vectors (word unigrams and bigrams, sublinear tf)."""

    def __init__(self, texts: Sequence[str], *, candidates: np.ndarray | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vec = TfidfVectorizer(lowercase=True, sublinear_tf=True, ngram_range=(1, 2),
                                   token_pattern=r"(?u)\b\w+\b")
        self.weights = self.vec.fit_transform(list(texts)).tocsr()
        self.n_items = self.weights.shape[0]
        self.candidates = None if candidates is None else np.asarray(candidates, dtype=np.int64)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        q = self.vec.transform(list(queries))
        s = np.asarray((q @ self.weights.T).todense(), dtype=np.float64)
        if self.candidates is not None:
            mask = np.ones(self.n_items, dtype=bool)
            mask[self.candidates] = False
            s[:, mask] = -np.inf
        return s
