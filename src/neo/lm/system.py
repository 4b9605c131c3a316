"""A trained neo system as one directory: model + tokenizer + catalog + SIDs + vocabulary + index.

Layout of a saved directory::

    neo_system.json      manifest: versions, sizes and hashes that tie the parts together
    model/               HF save_pretrained (config, weights)
    tokenizer/           HF save_pretrained (with the SID tokens installed)
    vocab.json           SidVocab (token layout and strings)
    index.neotrie        SidIndex (checksummed binary)
    catalog/             neo Catalog (optional)
    sids/                neo SemanticIds (optional)

:meth:`NeoSystem.load` checks that the parts agree -- the tokenizer maps every SID string to its id,
the model has a row for every id, the index was built for this layout, and the hash of the SIDs in
the index equals the manifest's (and, when saved, the SIDs files') -- and raises
:class:`~neo.lm.vocab.VocabMismatchError` naming the part that disagrees. Saving writes into a
temporary directory and renames it over the target, so a failed save never corrupts an existing one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.index import SidIndex
from .adapt import check_model
from .prompts import PromptBuilder
from .vocab import SidVocab, VocabMismatchError

__all__ = ["NeoSystem", "sids_hash"]

SYSTEM_FORMAT_VERSION = 1


def sids_hash(index: SidIndex) -> str:
    """SHA-256 of the SIDs held by an index (its flat per-type trie arrays: codes and leaf items).

    Two indexes hash equal exactly when they map the same SIDs to the same item rows."""
    h = hashlib.sha256()
    for t in range(index.num_types):
        arrs = index.arrays(t)
        for name in sorted(arrs):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arrs[name]).tobytes())
    return h.hexdigest()


class NeoSystem:
    """Model, tokenizer, vocabulary, index and (optionally) catalog and SIDs, used together.

    Parameters
    ----------
    model : PreTrainedModel
        Adapted to ``vocab`` (:func:`neo.adapt_model`).
    tokenizer : PreTrainedTokenizerBase
        With ``vocab`` installed.
    vocab : SidVocab
    index : SidIndex
    catalog : neo.Catalog, optional
    sids : neo.SemanticIds, optional

    Raises
    ------
    VocabMismatchError
        If the parts disagree (see :meth:`check`).
    """

    def __init__(self, model: Any, tokenizer: Any, vocab: SidVocab, index: SidIndex, catalog: Any = None,
                 sids: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.index = index
        self.catalog = catalog
        self.sids = sids
        self.check()

    # ------------------------------------------------------------------ consistency
    def check(self) -> None:
        """Raise :class:`VocabMismatchError` naming the part that disagrees with the vocabulary."""
        try:
            self.vocab.check_tokenizer(self.tokenizer)
        except VocabMismatchError as e:
            raise VocabMismatchError(f"tokenizer does not match the SID vocabulary: {e}") from None
        check_model(self.model, self.vocab)
        if self.index.layout.to_dict()["types"] != self.vocab.layout.to_dict()["types"] or \
                self.index.layout.vocab_size != self.vocab.layout.vocab_size:
            raise VocabMismatchError(f"index was built for {self.index.layout!r}, the vocabulary is {self.vocab.layout!r}")
        if self.catalog is not None and self.index.num_items > len(self.catalog):
            raise VocabMismatchError(f"index has {self.index.num_items} items, the catalog only {len(self.catalog)}")
        if self.sids is not None:
            mine = sids_hash(self._index_from_sids())
            if mine != sids_hash(self.index):
                raise VocabMismatchError("the SIDs do not match the index (hash of the SIDs differs); rebuild the index")

    def _index_from_sids(self) -> SidIndex:
        toks, rows = {}, {}
        for t in self.sids.type_names:
            codes, r = self.sids.reachable_codes(t)
            toks[t] = self.vocab.layout.codes_to_tokens(t, codes)
            rows[t] = np.asarray(r, dtype=np.int32)
        return SidIndex.build(self.vocab.layout, toks, rows)

    @classmethod
    def build(cls, model: Any, tokenizer: Any, catalog: Any, sids: Any, *, init: str = "mean",
              pad_to_multiple_of: int = 1, **adapt_kwargs: Any) -> "NeoSystem":
        """Install a vocabulary for ``sids`` into ``tokenizer``, adapt ``model`` and build the index.

        ``init="semantic"`` uses the catalog text of each item (see :func:`neo.adapt_model`).
        """
        from .adapt import adapt_model

        vocab = SidVocab.from_sids(tokenizer, sids, pad_to_multiple_of=pad_to_multiple_of)
        vocab.install(tokenizer)
        toks, rows = {}, {}
        for t in sids.type_names:
            codes, r = sids.reachable_codes(t)
            toks[t] = vocab.layout.codes_to_tokens(t, codes)
            rows[t] = np.asarray(r, dtype=np.int32)
        if init == "semantic":
            texts = {t: catalog.texts(rows[t]) for t in sids.type_names}
            adapt_model(model, vocab, init=init, tokenizer=tokenizer, sid_tokens=toks, texts=texts, **adapt_kwargs)
        else:
            adapt_model(model, vocab, init=init, **adapt_kwargs)
        index = SidIndex.build(vocab.layout, toks, rows)
        return cls(model, tokenizer, vocab, index, catalog, sids)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the system to ``directory`` (replaced atomically if it exists)."""
        d = Path(directory)
        tmp = d.with_name(d.name + ".tmp-neo")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "model")
        self.tokenizer.save_pretrained(tmp / "tokenizer")
        self.vocab.save(tmp / "vocab.json")
        self.index.save(tmp / "index.neotrie")
        if self.catalog is not None:
            if not hasattr(self.catalog, "save"):
                raise TypeError(f"catalog of type {type(self.catalog).__name__} cannot be saved; use a neo.Catalog")
            self.catalog.save(tmp / "catalog")
        if self.sids is not None:
            self.sids.save(tmp / "sids", save_catalog=False)
        manifest = {
            "format": "neo.system",
            "version": SYSTEM_FORMAT_VERSION,
            "vocab_fingerprint": self.vocab.fingerprint(),
            "vocab_size": self.vocab.vocab_size,
            "tokenizer_size": len(self.tokenizer),
            "model_rows": int(self.model.get_input_embeddings().weight.shape[0]),
            "num_items": self.index.num_items,
            "sids_hash": sids_hash(self.index),
            "catalog_fingerprint": self.catalog.fingerprint() if self.catalog is not None and hasattr(self.catalog, "fingerprint") else None,
            "has_catalog": self.catalog is not None,
            "has_sids": self.sids is not None,
        }
        (tmp / "neo_system.json").write_text(json.dumps(manifest, indent=1))
        old = d.with_name(d.name + ".old-neo")
        if d.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(d, old)
        os.replace(tmp, d)
        if old.exists():
            shutil.rmtree(old)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: Any = None, dtype: Any = None,
             mmap_index: bool = False) -> "NeoSystem":
        """Load a directory written by :meth:`save`, checking that its parts agree.

        Raises
        ------
        FileNotFoundError
            Not a saved system, or a part is missing.
        VocabMismatchError
            Parts disagree: vocabulary size, tokenizer ids, model rows, index layout, hash of the SIDs.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        d = Path(directory)
        mf = d / "neo_system.json"
        if not mf.exists():
            raise FileNotFoundError(f"{d} is not a saved neo system (no neo_system.json)")
        manifest = json.loads(mf.read_text())
        if manifest.get("format") != "neo.system" or int(manifest.get("version", -1)) > SYSTEM_FORMAT_VERSION:
            raise ValueError(f"{mf}: unsupported format {manifest.get('format')!r} version {manifest.get('version')!r}")
        for part in ("model", "tokenizer", "vocab.json", "index.neotrie"):
            if not (d / part).exists():
                raise FileNotFoundError(f"saved neo system {d} is missing its {part}")
        vocab = SidVocab.load(d / "vocab.json")
        if vocab.fingerprint() != manifest["vocab_fingerprint"] or vocab.vocab_size != manifest["vocab_size"]:
            raise VocabMismatchError(
                f"vocab.json (vocab size {vocab.vocab_size}) is not the vocabulary this system was saved with "
                f"(vocab size {manifest['vocab_size']})"
            )
        tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer")
        if len(tokenizer) < vocab.token_end:
            raise VocabMismatchError(
                f"tokenizer has {len(tokenizer)} tokens but the SID vocabulary needs ids up to {vocab.token_end - 1} "
                f"(vocab size {vocab.vocab_size}); the tokenizer was saved without the SID tokens"
            )
        kw: dict[str, Any] = {}
        if dtype is not None:
            kw["dtype"] = dtype
        model = AutoModelForCausalLM.from_pretrained(d / "model", **kw)
        if device is not None:
            model = model.to(device)
        model.eval()
        try:
            index = SidIndex.load(d / "index.neotrie", vocab.layout, mmap=mmap_index)
        except ValueError as e:
            raise VocabMismatchError(f"index.neotrie does not match vocab.json: {e}") from None
        if sids_hash(index) != manifest["sids_hash"]:
            raise VocabMismatchError("index.neotrie holds different SIDs than the system was saved with (hash of the SIDs differs)")
        catalog = sids = None
        if manifest.get("has_catalog"):
            from ..items.catalog import Catalog

            catalog = Catalog.load(d / "catalog")
            fp = manifest.get("catalog_fingerprint")
            if fp is not None and catalog.fingerprint() != fp:
                raise VocabMismatchError("catalog/ is not the catalog this system was saved with (fingerprint differs)")
        if manifest.get("has_sids"):
            from ..items.sids import SemanticIds

            sids = SemanticIds.load(d / "sids", catalog=catalog)
        return cls(model, tokenizer, vocab, index, catalog, sids)

    # ------------------------------------------------------------------ use
    def prompt_builder(self, seed: int | None = None) -> PromptBuilder:
        return PromptBuilder(self.tokenizer, self.vocab, self.index, self.catalog, seed=seed)

    def generate(self, prompts: Any, **kwargs: Any):
        """:func:`neo.generate` with this system's parts."""
        from .generation import generate

        return generate(self.model, self.tokenizer, self.vocab, self.index, prompts, catalog=self.catalog, **kwargs)

    def topk_items(self, prompts: Any, **kwargs: Any):
        from .generation import topk_items

        return topk_items(self.model, self.tokenizer, self.vocab, self.index, prompts, catalog=self.catalog, **kwargs)

    def recommend(self, history: Sequence[Any], **kwargs: Any):
        from .generation import recommend

        return recommend(self.model, self.tokenizer, self.vocab, self.index, history, catalog=self.catalog, **kwargs)

    def search(self, query: str, **kwargs: Any):
        from .generation import search

        return search(self.model, self.tokenizer, self.vocab, self.index, query, catalog=self.catalog, **kwargs)

    def describe_user(self, history: Sequence[Any], **kwargs: Any):
        from .generation import describe_user

        return describe_user(self.model, self.tokenizer, self.vocab, self.index, history, catalog=self.catalog, **kwargs)

    def logits_processor(self, **kwargs: Any):
        """A :class:`~neo.lm.processor.SidLogitsProcessor` for ``self.model.generate``."""
        from .processor import SidLogitsProcessor

        kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        return SidLogitsProcessor(self.index, **kwargs)

    def __repr__(self) -> str:
        return (f"NeoSystem({type(self.model).__name__}, {self.vocab!r}, items={self.index.num_items}, "
                f"catalog={'yes' if self.catalog is not None else 'no'})")
