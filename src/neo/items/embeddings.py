"""Pluggable item-text embedders; none of them touches the network.

The SID builder needs one vector per catalog item. Where those vectors come from is pluggable:

* :class:`TfidfSvdEmbedder` — the offline default: TF-IDF over the item text followed by truncated
  SVD (scikit-learn). Needs no model weights, deterministic for a seed, fine for demos and tests.
* :class:`HFEmbedder` — any local Hugging Face encoder or causal LM directory: mean-pooled last
  hidden states, batched, with a progress bar, on GPU when one is available.
* :class:`SentenceTransformerEmbedder` — a local sentence-transformers model directory (needs the
  optional ``sentence-transformers`` package).
* :class:`PrecomputedEmbedder` — vectors from a ``.npy`` file, shape-checked against the catalog.

:func:`get_embedder` picks one from a spec (``"tfidf"``, a ``.npy`` path or a model directory) and
:func:`embed_catalog` runs it over a catalog.
"""

from __future__ import annotations

import json
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog

__all__ = [
    "Embedder",
    "TfidfSvdEmbedder",
    "HFEmbedder",
    "SentenceTransformerEmbedder",
    "PrecomputedEmbedder",
    "get_embedder",
    "embed_catalog",
    "default_device",
    "save_embeddings",
]


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class Embedder(ABC):
    """Maps item text to vectors. Subclasses implement :meth:`embed_texts`.

    :meth:`embed_catalog` embeds every catalog item (its text fields joined, see
    :meth:`neo.Catalog.texts`) and returns ``float32[N, D]`` in catalog row order.
    """

    #: Output dimension once known (some embedders only know it after loading or fitting).
    dim: int | None = None

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Parameters
        ----------
        texts : sequence of str
            ``N`` texts.

        Returns
        -------
        np.ndarray
            ``float32[N, D]``.
        """

    def embed_catalog(self, catalog: "Catalog", *, fields: Sequence[str] | None = None, sep: str = ". ") -> np.ndarray:
        """Embed every item of ``catalog`` (text ``fields`` joined with ``sep``); ``float32[N, D]``."""
        out = self.embed_texts(catalog.texts(fields=fields, sep=sep))
        return _check_matrix(out, len(catalog), type(self).__name__)


def _check_matrix(x: Any, n: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"{what}: expected embeddings of shape ({n}, D) for {n} items, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: embeddings must be floating point, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{what}: embedding of row {bad} contains NaN or inf")
    return x


# ---------------------------------------------------------------------------------------------- TF-IDF


class TfidfSvdEmbedder(Embedder):
    """Offline default: TF-IDF over item text, then truncated SVD, then L2 normalisation.

    Parameters
    ----------
    dim : int
        Output dimension. When the text has fewer usable SVD components (tiny catalogs), the
        remaining columns are zero so the output is always ``float32[N, dim]``.
    seed : int
        Seed of the randomized SVD; same texts + same seed -> same vectors.
    max_features : int
        Vocabulary cap of the TF-IDF vectoriser.
    ngram_range : tuple of int
        Word n-gram range.
    min_df : int or float
        Minimum document frequency of a term.
    analyzer : str
        ``"word"``, ``"char"`` or ``"char_wb"`` (char n-grams help with short titles and typos).
    sublinear_tf : bool
        Use ``1 + log(tf)``.

    Notes
    -----
    :meth:`embed_texts` fits on the texts it is given the first time (so it embeds a whole catalog
    consistently); call :meth:`fit` first to embed new texts in an existing space.
    """

    def __init__(
        self,
        dim: int = 128,
        *,
        seed: int = 0,
        max_features: int = 200_000,
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int | float = 1,
        analyzer: str = "word",
        sublinear_tf: bool = True,
    ):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self.max_features = max_features
        self.ngram_range = tuple(ngram_range)
        self.min_df = min_df
        self.analyzer = analyzer
        self.sublinear_tf = sublinear_tf
        self._vectorizer = None
        self._svd = None

    @property
    def fitted(self) -> bool:
        return self._vectorizer is not None

    def fit(self, texts: Sequence[str]) -> "TfidfSvdEmbedder":
        """Fit TF-IDF and SVD on ``texts`` (``N`` strings)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = list(texts)
        if not texts:
            raise ValueError("cannot fit TF-IDF on zero texts")
        vec = TfidfVectorizer(max_features=self.max_features, ngram_range=self.ngram_range, min_df=self.min_df,
                              analyzer=self.analyzer, sublinear_tf=self.sublinear_tf, dtype=np.float32)
        try:
            tf = vec.fit_transform(texts)
        except ValueError as e:  # sklearn: "empty vocabulary; perhaps the documents only contain stop words"
            raise ValueError(f"TF-IDF found no terms in the item text ({e}); is the catalog text empty?") from None
        # TruncatedSVD needs n_components < n_features; tiny catalogs get fewer components, zero-padded.
        k = max(1, min(self.dim, tf.shape[1] - 1, tf.shape[0] - 1))
        svd = None
        if tf.shape[1] > 1 and tf.shape[0] > 1:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=self.seed)
            svd.fit(tf)
        self._vectorizer, self._svd = vec, svd
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Embed with the fitted space; ``float32[N, dim]``, rows L2-normalised (all-zero rows stay zero)."""
        if not self.fitted:
            raise RuntimeError("TfidfSvdEmbedder.transform before fit; call fit() or embed_texts()")
        tf = self._vectorizer.transform(list(texts))
        z = self._svd.transform(tf) if self._svd is not None else tf.toarray()[:, : self.dim]
        z = np.asarray(z, dtype=np.float32)
        # The sign of each SVD component is arbitrary; fix it (largest |loading| positive) so results
        # do not depend on solver internals.
        if self._svd is not None:
            comp = self._svd.components_
            signs = np.sign(comp[np.arange(comp.shape[0]), np.abs(comp).argmax(axis=1)]).astype(np.float32)
            z = z * np.where(signs == 0, 1, signs)
        out = np.zeros((z.shape[0], self.dim), dtype=np.float32)
        out[:, : z.shape[1]] = z[:, : self.dim]
        return _l2_normalize(out).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not self.fitted:
            self.fit(texts)
        return self.transform(texts)


# ---------------------------------------------------------------------------------------------- HF


def _require_local_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"{what}: {str(path)!r} is not a local directory; neo only loads models from local paths "
            "and never downloads from the Hugging Face Hub"
        )
    return p


class HFEmbedder(Embedder):
    """Mean-pooled last hidden states of a local Hugging Face encoder or causal LM.

    Parameters
    ----------
    path : path-like
        Local directory with ``config.json``, weights and a tokenizer (loaded with
        ``local_files_only=True``: nothing is downloaded). Causal-LM checkpoints
        (``*ForCausalLM``) load their base model, so the LM head is not used.
    batch_size : int
        Texts per forward pass. Texts are sorted by length so batches pad little.
    max_length : int
        Truncation length in tokens.
    device : str, optional
        ``"cuda"``, ``"cpu"``, ...; default: GPU when available.
    dtype : torch.dtype, optional
        Compute dtype; default ``bfloat16`` on CUDA, ``float32`` on CPU. Output is always float32.
    layer : int
        Which hidden state to pool (``-1`` = last).
    normalize : bool
        L2-normalise the pooled vectors.
    progress : bool
        Show a tqdm progress bar.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        device: str | None = None,
        dtype: Any = None,
        layer: int = -1,
        normalize: bool = True,
        progress: bool = True,
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = _require_local_dir(path, "HFEmbedder")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size}, {max_length}")
        self.batch_size, self.max_length, self.layer = int(batch_size), int(max_length), int(layer)
        self.normalize, self.progress = normalize, progress
        self.device = torch.device(device or default_device())
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=dtype).to(self.device).eval()
        self.dim = int(getattr(self.model.config, "hidden_size", 0)) or None
        # Causal LMs often ship without a pad token; padding positions are masked out of the mean anyway.
        self._pad_id = self.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0

    def _encode(self, texts: list[str]) -> dict:
        import torch

        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
        enc = [ids if ids else [self._pad_id] for ids in enc]  # an empty text still gets one position
        width = max(len(ids) for ids in enc)
        input_ids = torch.full((len(enc), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, ids in enumerate(enc):  # right padding: positions stay 0..len-1 for causal models
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        out = np.zeros((len(texts), self.dim or 0), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bar = tqdm(total=len(texts), desc="embedding", unit="item", disable=not self.progress)
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                idx = order[s : s + self.batch_size]
                batch = self._encode([texts[i] for i in idx])
                res = self.model(**batch, output_hidden_states=self.layer != -1)
                h = res.last_hidden_state if self.layer == -1 else res.hidden_states[self.layer]
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                pooled = ((h * m).sum(1) / m.sum(1).clamp_min(1)).float()
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                if out.shape[1] != pooled.shape[1]:
                    out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
                    self.dim = int(pooled.shape[1])
                out[idx] = pooled.cpu().numpy()
                bar.update(len(idx))
        bar.close()
        return out


class SentenceTransformerEmbedder(Embedder):
    """A local sentence-transformers model directory (needs ``pip install sentence-transformers``).

    Parameters
    ----------
    path : path-like
        Local model directory (nothing is downloaded).
    batch_size : int
        Texts per batch.
    device : str, optional
        Default: GPU when available.
    normalize : bool
        L2-normalise the embeddings.
    progress : bool
        Show a progress bar.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 64, device: str | None = None,
                 normalize: bool = True, progress: bool = True):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "SentenceTransformerEmbedder needs the optional package sentence-transformers "
                "(pip install sentence-transformers); or use HFEmbedder on the same directory"
            ) from e
        self.path = _require_local_dir(path, "SentenceTransformerEmbedder")
        self.batch_size, self.normalize, self.progress = int(batch_size), normalize, progress
        self.model = SentenceTransformer(str(self.path), device=device or default_device(), local_files_only=True)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = get_dim()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        x = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=self.progress,
                              convert_to_numpy=True, normalize_embeddings=self.normalize)
        return np.asarray(x, dtype=np.float32).reshape(len(texts), -1)


class PrecomputedEmbedder(Embedder):
    """Vectors from a ``.npy`` file (or an array), one row per catalog item.

    Parameters
    ----------
    source : path-like or np.ndarray
        ``.npy`` file (memory-mapped) or an array of shape ``(N, D)``.
    ids : sequence of str, optional
        Item id of each vector row. When given, rows are reordered to catalog order and every
        catalog id must be present; without it, row ``i`` belongs to catalog row ``i``. For a file,
        a sidecar ``<file>.ids.json`` (written by :func:`save_embeddings`) is read when present.
    """

    def __init__(self, source: str | os.PathLike | np.ndarray, *, ids: Sequence[str] | None = None):
        if isinstance(source, np.ndarray):
            self.path = None
            arr = source
        else:
            self.path = Path(source)
            if not self.path.exists():
                raise FileNotFoundError(f"embeddings file does not exist: {self.path}")
            try:
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{self.path}: not a numeric .npy array ({e})") from None
        if arr.ndim != 2:
            raise ValueError(f"precomputed embeddings must be 2-D (N, D), got shape {arr.shape}")
        self.array = arr
        if ids is None and self.path is not None and (side := Path(str(self.path) + ".ids.json")).exists():
            ids = json.loads(side.read_text())
        self.ids = None if ids is None else [str(i) for i in ids]
        if self.ids is not None and len(self.ids) != arr.shape[0]:
            raise ValueError(f"{len(self.ids)} ids for {arr.shape[0]} embedding rows")
        self.dim = int(arr.shape[1])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise TypeError("PrecomputedEmbedder holds vectors per catalog item; use embed_catalog(catalog)")

    def embed_catalog(self, catalog: "Catalog", *, fields: Sequence[str] | None = None, sep: str = ". ") -> np.ndarray:
        what = f"precomputed embeddings {self.path or 'array'}"
        if self.ids is None:
            if self.array.shape[0] != len(catalog):
                raise ValueError(f"{what} have {self.array.shape[0]} rows but the catalog has {len(catalog)} items "
                                 "(pass ids= to align vectors by item id)")
            return _check_matrix(self.array, len(catalog), what)
        pos = {i: r for r, i in enumerate(self.ids)}
        missing = [i for i in catalog.ids if i not in pos]
        if missing:
            raise ValueError(f"{what}: no vector for {len(missing)} catalog ids, e.g. {missing[:5]}")
        order = np.fromiter((pos[i] for i in catalog.ids), dtype=np.int64, count=len(catalog))
        return _check_matrix(np.asarray(self.array[order]), len(catalog), what)


def get_embedder(spec: "str | os.PathLike | Embedder | np.ndarray" = "tfidf", **kwargs: Any) -> Embedder:
    """Build an embedder from a spec.

    Parameters
    ----------
    spec : str, path-like, Embedder or np.ndarray
        ``"tfidf"`` (offline default); a ``.npy`` file or an array (precomputed); a directory holding
        a sentence-transformers model (``modules.json``), used through sentence-transformers when
        installed and otherwise through :class:`HFEmbedder`; any other model directory
        (:class:`HFEmbedder`); or an :class:`Embedder`, returned as is.
    **kwargs
        Passed to the embedder's constructor.
    """
    if isinstance(spec, Embedder):
        return spec
    if isinstance(spec, np.ndarray):
        return PrecomputedEmbedder(spec, **kwargs)
    s = str(spec)
    if s.lower() in ("tfidf", "tfidf-svd", "offline"):
        return TfidfSvdEmbedder(**kwargs)
    p = Path(s)
    if p.suffix.lower() == ".npy":
        return PrecomputedEmbedder(p, **kwargs)
    if p.is_dir():
        if (p / "modules.json").exists():
            try:
                import sentence_transformers  # noqa: F401

                return SentenceTransformerEmbedder(p, **kwargs)
            except ImportError:
                warnings.warn(f"{p} is a sentence-transformers model but that package is not installed; "
                              "using HFEmbedder (mean pooling) instead", stacklevel=2)
        if (p / "config.json").exists():
            return HFEmbedder(p, **kwargs)
        raise ValueError(f"{p} is a directory but holds no config.json (not a Hugging Face model directory)")
    raise ValueError(f"unknown embedder spec {s!r}: use 'tfidf', a .npy file, or a local model directory "
                     "(models are never downloaded)")


def embed_catalog(catalog: "Catalog", embedder: "str | os.PathLike | Embedder | np.ndarray" = "tfidf", *,
                  fields: Sequence[str] | None = None, sep: str = ". ", **kwargs: Any) -> np.ndarray:
    """Embed every catalog item; returns ``float32[N, D]`` in row order.

    Parameters
    ----------
    catalog : Catalog
        Items to embed.
    embedder : spec or Embedder
        See :func:`get_embedder`.
    fields : sequence of str, optional
        Text fields to embed (default: all), joined with ``sep``.
    **kwargs
        Passed to :func:`get_embedder`.
    """
    return get_embedder(embedder, **kwargs).embed_catalog(catalog, fields=fields, sep=sep)


def save_embeddings(path: str | os.PathLike, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> Path:
    """Write ``float32[N, D]`` to ``path`` (``.npy``) and, when given, the ids to ``<path>.ids.json``."""
    p = Path(path)
    np.save(p, np.asarray(embeddings, dtype=np.float32))
    if ids is not None:
        Path(str(p) + ".ids.json").write_text(json.dumps(list(ids)))
    return p
