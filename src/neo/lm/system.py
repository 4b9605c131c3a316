"""A trained neo system as one directory that Hugging Face and vLLM load as is.

Layout of a saved directory (format 2)::

    config.json, generation_config.json, model.safetensors    HF model (``save_pretrained``)
    tokenizer.json, tokenizer_config.json, ...                HF tokenizer, SID tokens installed
    neo/
        neo_system.json    manifest: versions, sizes, SHA-256 of the model/tokenizer/catalog/SID files
        vocab.json         SidVocab (token layout and strings)
        index.neotrie      SidIndex (versioned, checksummed binary)
        catalog/           neo Catalog (optional)
        sids/              neo SemanticIds (optional)

So ``AutoModelForCausalLM.from_pretrained(DIR)``, ``AutoTokenizer.from_pretrained(DIR)`` and
``vllm.LLM(DIR)`` work on the directory itself, and neo's vLLM logits processor finds ``DIR/neo``
from the model path (:func:`find_system`). Directories written by format 1 (``neo_system.json``,
``vocab.json`` and ``index.neotrie`` at the top, the model in ``model/``, the tokenizer in
``tokenizer/``) still load.

:meth:`NeoSystem.from_pretrained` checks that the parts agree -- the tokenizer maps every SID string
to its id, the model has a row for every id, the index was built for this layout, and the hash of
the SIDs in the index equals the manifest's -- and raises :class:`~neo.lm.vocab.VocabMismatchError`
naming the part that disagrees. A damaged file is reported as such: a truncated or corrupted index
raises :class:`~neo.core.index.IndexFormatError`, an unreadable JSON file or a file whose SHA-256
differs from the manifest's raises :class:`SystemFormatError` naming the file.

**Integrity of the weights.** Format 2 records the size and SHA-256 of every file of the model, the
tokenizer, the catalog and the SIDs at save time; loading verifies them (``verify=False`` skips the
hashing, which reads every byte of the weights, and keeps only the size check). Format-1
directories carry no hashes: their weights are not checked.

**Crash-safe saves.** :meth:`NeoSystem.save_pretrained` writes everything into ``DIR.tmp-neo``
(manifest last, files flushed to disk), moves an existing ``DIR`` to ``DIR.old-neo``, renames the new
directory to ``DIR`` and only then deletes ``DIR.old-neo``. An interruption at any point leaves a
loadable system: the old one at ``DIR``, the new one at ``DIR``, or -- between the two renames --
the old one at ``DIR.old-neo``, which :meth:`NeoSystem.from_pretrained` (and the next save) moves
back to ``DIR``. Two processes saving to the same directory at once are not supported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import NeoDataError
from ..core.index import IndexFormatError, SidIndex
from .adapt import check_model
from .prompts import PromptBuilder
from .vocab import SidVocab, VocabMismatchError

__all__ = ["NeoSystem", "SystemFormatError", "SystemLocation", "SystemParts", "find_system", "load_system_parts",
           "sids_hash"]

log = logging.getLogger(__name__)

SYSTEM_FORMAT_VERSION = 2
NEO_SUBDIR = "neo"  # neo's files inside a format-2 system directory
MANIFEST = "neo_system.json"
_OLD_SUFFIX = ".old-neo"
_TMP_SUFFIX = ".tmp-neo"
_HASH_CHUNK = 1 << 22


class SystemFormatError(NeoDataError):
    """A file of a saved system is unreadable, truncated, or differs from what the manifest recorded."""


def _read_json(path: Path, what: str) -> dict:
    """Parse a JSON file, naming it in the error if it is truncated or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SystemFormatError(f"{path} ({what}) is not UTF-8 text: {e}; the file is damaged") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemFormatError(
            f"{path} ({what}) is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; "
            f"{len(text)} characters): the file is truncated or damaged. Restore it or save the system again"
        ) from None
    if not isinstance(obj, dict):
        raise SystemFormatError(f"{path} ({what}) holds a JSON {type(obj).__name__}, expected an object")
    return obj


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_under(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Regular files below ``root`` (recursively, sorted), except the top-level names in ``skip``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        dirnames.sort()
        out += [Path(dirpath) / f for f in sorted(filenames)]
    return out


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory below ``root`` to disk (a rename is only durable after this)."""
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not fsync directories
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SystemLocation:
    """Where the parts of a saved system live.

    Attributes
    ----------
    root : Path
        The directory given to :meth:`NeoSystem.save_pretrained`.
    neo_dir : Path
        Directory holding the manifest, ``vocab.json``, ``index.neotrie``, ``catalog/``, ``sids/``.
    model_dir, tokenizer_dir : Path
        What ``from_pretrained`` of the model and tokenizer reads (``root`` in format 2).
    version : int
        Format version of the manifest.
    manifest : dict
    """

    root: Path
    neo_dir: Path
    model_dir: Path
    tokenizer_dir: Path
    version: int
    manifest: dict = field(repr=False)


def _restore_interrupted(d: Path) -> bool:
    """If a save was interrupted between its two renames, move ``d.old-neo`` back to ``d``.

    Returns True when it restored something."""
    old = d.with_name(d.name + _OLD_SUFFIX)
    if d.exists() or not old.is_dir():
        return False
    if not ((old / NEO_SUBDIR / MANIFEST).is_file() or (old / MANIFEST).is_file()):
        return False  # not a complete system: leave it for a person to look at
    os.replace(old, d)
    _fsync_dir(d.parent)
    log.warning("restored %s from %s (a save was interrupted)", d, old)
    return True


def find_system(path: str | os.PathLike) -> SystemLocation:
    """Locate a saved system from its directory, its ``neo/`` folder, or (format 1) its ``model/`` folder.

    A serving engine only knows the model path; this finds neo's files from it. If ``path`` is
    missing but ``path.old-neo`` holds a complete system (a save was interrupted), that copy is
    moved back first.

    Raises
    ------
    FileNotFoundError
        No saved neo system there.
    SystemFormatError
        The manifest is unreadable or of a newer format.
    """
    p = Path(path)
    _restore_interrupted(p)
    candidates = [
        (p / NEO_SUBDIR / MANIFEST, p),      # format 2, given the system directory
        (p / MANIFEST, p),                   # format 1 root, or format 2's neo/ folder itself
    ]
    if p.name == "model":
        candidates.append((p.parent / MANIFEST, p.parent))  # format 1, given its model/ folder
    for mf, root in candidates:
        if not mf.is_file():
            continue
        manifest = _read_json(mf, "neo system manifest")
        if manifest.get("format") != "neo.system":
            raise SystemFormatError(f"{mf}: not a neo system manifest (format {manifest.get('format')!r})")
        try:
            version = int(manifest.get("version", -1))
        except (TypeError, ValueError):
            version = -1
        if not 1 <= version <= SYSTEM_FORMAT_VERSION:
            raise SystemFormatError(f"{mf}: unsupported version {manifest.get('version')!r}; this neo reads "
                                    f"versions 1 to {SYSTEM_FORMAT_VERSION} (upgrade neo to read newer ones)")
        neo_dir = mf.parent
        if version == 1:
            return SystemLocation(neo_dir, neo_dir, neo_dir / "model", neo_dir / "tokenizer", 1, manifest)
        if neo_dir.name == NEO_SUBDIR and root == p and mf.parent == p:  # given the neo/ folder itself
            root = p.parent
        return SystemLocation(root, neo_dir, root, root, version, manifest)
    raise FileNotFoundError(f"{p} is not a saved neo system (no {NEO_SUBDIR}/{MANIFEST} or {MANIFEST})")


def _load_index(path: Path, layout: Any, mmap: bool) -> SidIndex:
    try:
        return SidIndex.load(path, layout, mmap=mmap)
    except IndexFormatError as e:
        # damaged file: keep the real cause (not a vocabulary mismatch)
        raise IndexFormatError(f"{path}: {e}") from None
    except ValueError as e:
        raise VocabMismatchError(f"{path.name} does not match vocab.json: {e}") from None


def _check_files(loc: SystemLocation, verify: bool) -> None:
    """Compare the files the manifest lists with the disk (size always; SHA-256 when ``verify``)."""
    files = loc.manifest.get("files")
    if not isinstance(files, dict):
        return  # format 1: nothing recorded
    for rel, rec in sorted(files.items()):
        f = loc.root / rel
        if not isinstance(rec, dict) or not isinstance(rec.get("size"), int) or not isinstance(rec.get("sha256"), str):
            raise SystemFormatError(f"{loc.neo_dir / MANIFEST}: the record of {rel} is damaged ({rec!r})")
        if not f.is_file():
            raise FileNotFoundError(f"saved neo system {loc.root} is missing {rel} (listed in its manifest)")
        size = f.stat().st_size
        if size != int(rec["size"]):
            raise SystemFormatError(f"{f} has {size} bytes, the manifest recorded {rec['size']}: the file is "
                                    "truncated or was replaced. Restore it or save the system again")
        if verify and _file_sha256(f) != rec["sha256"]:
            raise SystemFormatError(f"{f}: SHA-256 differs from the one recorded at save time (the file is damaged "
                                    "or was replaced). Restore it or save the system again")


@dataclass
class SystemParts:
    """What constrained decoding needs from a saved system, without the model: see :func:`load_system_parts`.

    Attributes
    ----------
    location : SystemLocation
    vocab : SidVocab
    index : SidIndex
    eos_token_ids : list of int
        Tokens that end an answer (the tokenizer's and the generation config's EOS).
    """

    location: SystemLocation
    vocab: SidVocab
    index: SidIndex
    eos_token_ids: list[int]


def _eos_from_configs(model_dir: Path) -> list[int]:
    """EOS ids from a model directory's config files (format 1 recorded none in its manifest)."""
    out: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        f = model_dir / name
        if f.is_file():
            v = _read_json(f, "model config").get("eos_token_id")
            if isinstance(v, int):
                out.add(v)
            elif isinstance(v, list):
                out.update(int(x) for x in v if isinstance(x, int))
    return sorted(out)


def load_system_parts(path: str | os.PathLike, *, mmap_index: bool = True) -> SystemParts:
    """Load only the vocabulary, index and EOS ids of a saved system (fast; no model, no tokenizer).

    ``path`` may be the system directory, its ``neo/`` folder or (format 1) its ``model/`` folder:
    what a serving engine was given as the model.

    Raises
    ------
    FileNotFoundError, SystemFormatError, IndexFormatError, VocabMismatchError
    """
    loc = find_system(path)
    for part in ("vocab.json", "index.neotrie"):
        if not (loc.neo_dir / part).is_file():
            raise FileNotFoundError(f"saved neo system {loc.root} is missing its {part}")
    vocab = _load_vocab(loc)
    index = _load_index(loc.neo_dir / "index.neotrie", vocab.layout, mmap_index)
    if sids_hash(index) != loc.manifest.get("sids_hash"):
        raise VocabMismatchError(f"{loc.neo_dir / 'index.neotrie'} holds different SIDs than the system was saved "
                                 "with (hash of the SIDs differs)")
    eos = loc.manifest.get("eos_token_ids")
    eos = [int(t) for t in eos] if isinstance(eos, list) else _eos_from_configs(loc.model_dir)
    return SystemParts(loc, vocab, index, eos)


def _load_vocab(loc: SystemLocation) -> SidVocab:
    f = loc.neo_dir / "vocab.json"
    try:
        vocab = SidVocab.from_dict(_read_json(f, "SID vocabulary"))
    except (KeyError, TypeError) as e:
        raise SystemFormatError(f"{f}: SID vocabulary is missing field {e}; the file is damaged") from None
    m = loc.manifest
    if vocab.fingerprint() != m.get("vocab_fingerprint") or vocab.vocab_size != m.get("vocab_size"):
        raise VocabMismatchError(
            f"vocab.json (vocab size {vocab.vocab_size}) is not the vocabulary this system was saved with "
            f"(vocab size {m.get('vocab_size')})"
        )
    return vocab


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
    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False,
                        **hub_kwargs: Any) -> Path:
        """Write the system to ``save_directory`` (format 2, see the module doc), replacing it safely.

        The HF model and tokenizer go to the top of the directory, neo's files to ``neo/``; an
        interruption at any point leaves the previous system (or the new one) loadable.

        Parameters
        ----------
        save_directory : path-like
            Created if missing. An existing directory must be a saved neo system (it is replaced) or
            empty: anything else is refused rather than deleted.
        push_to_hub : bool
            Then also upload it with :meth:`push_to_hub` (``hub_kwargs`` go there).

        Returns
        -------
        Path
            ``save_directory``.

        Raises
        ------
        FileExistsError
            ``save_directory`` holds files that are not a saved neo system.
        """
        d = Path(save_directory)
        _restore_interrupted(d)  # a previous save died between its renames: its old copy is the last good one
        if d.exists():
            if not d.is_dir():
                raise FileExistsError(f"{d} exists and is not a directory")
            if any(d.iterdir()):
                try:
                    find_system(d)
                except (FileNotFoundError, SystemFormatError):
                    raise FileExistsError(
                        f"{d} is not empty and is not a saved neo system; refusing to replace it. Save to a new "
                        "or empty directory"
                    ) from None
        tmp = d.with_name(d.name + _TMP_SUFFIX)
        old = d.with_name(d.name + _OLD_SUFFIX)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by an interrupted save: never the last good copy
        tmp.mkdir(parents=True)
        self._write(tmp)
        _fsync_tree(tmp)
        if d.exists():
            if old.exists():
                shutil.rmtree(old)  # stale: d itself is complete
            os.replace(d, old)
        os.replace(tmp, d)
        _fsync_dir(d.parent)
        if old.exists():
            shutil.rmtree(old)
        if push_to_hub:
            self.push_to_hub(**hub_kwargs, _folder=d)
        return d

    def _write(self, root: Path) -> None:
        """Write every part into the empty directory ``root``; the manifest last."""
        if self.catalog is not None and not hasattr(self.catalog, "save"):
            raise TypeError(f"catalog of type {type(self.catalog).__name__} cannot be saved; use a neo.Catalog")
        neo_dir = root / NEO_SUBDIR
        self.model.save_pretrained(root)
        self.tokenizer.save_pretrained(root)
        neo_dir.mkdir()
        self.vocab.save(neo_dir / "vocab.json")
        self.index.save(neo_dir / "index.neotrie")
        if self.catalog is not None:
            self.catalog.save(neo_dir / "catalog")
        if self.sids is not None:
            self.sids.save(neo_dir / "sids", save_catalog=False)
        eos: set[int] = set()
        for v in (getattr(self.tokenizer, "eos_token_id", None),
                  getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
                  getattr(getattr(self.model, "config", None), "eos_token_id", None)):
            if isinstance(v, (int, np.integer)):
                eos.add(int(v))
            elif isinstance(v, (list, tuple)):
                eos.update(int(x) for x in v)
        # the index and vocabulary check themselves (checksum, fingerprint); hash everything else
        own = {f"{NEO_SUBDIR}/vocab.json", f"{NEO_SUBDIR}/index.neotrie"}
        files = {}
        for f in _files_under(root):
            rel = f.relative_to(root).as_posix()
            if rel not in own:
                files[rel] = {"size": f.stat().st_size, "sha256": _file_sha256(f)}
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
            "eos_token_ids": sorted(eos),
            "files": files,
        }
        (neo_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))

    def save(self, directory: str | os.PathLike) -> Path:
        """Alias of :meth:`save_pretrained`."""
        return self.save_pretrained(directory)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload neo system", _folder: Path | None = None, **kwargs: Any) -> Any:
        """Upload the system directory to the Hugging Face Hub with ``huggingface_hub.upload_folder``.

        The repository then loads like any model (``from_pretrained(repo_id)``; neo's files sit in
        ``neo/``). Untested against a real hub here (the project's machines have no hub access).

        Parameters
        ----------
        repo_id : str
            ``"user/name"``; created if missing.
        private, token, commit_message
            As in ``huggingface_hub``; ``kwargs`` go to ``upload_folder``.
        """
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if _folder is not None:
            return api.upload_folder(repo_id=repo_id, folder_path=str(_folder), commit_message=commit_message, **kwargs)
        with tempfile.TemporaryDirectory() as td:
            folder = self.save_pretrained(Path(td) / "system")
            return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike, *, device: Any = None, dtype: Any = None,
                        mmap_index: bool = False, verify: bool = True, **hub_kwargs: Any) -> "NeoSystem":
        """Load a system saved by :meth:`save_pretrained` (or by neo's format 1), checking its parts.

        Parameters
        ----------
        pretrained_path : path-like or str
            The system directory (or its ``neo/`` folder). A string that is not a local path is taken
            as a Hub repository id and downloaded with ``huggingface_hub.snapshot_download``
            (``hub_kwargs`` go there; untested against a real hub here).
        device, dtype
            Passed to the model.
        mmap_index : bool
            Memory-map the index file instead of reading it.
        verify : bool
            Check the SHA-256 of every file recorded in the manifest (the weights included). False
            skips the hashing for speed and keeps the size check.

        Raises
        ------
        FileNotFoundError
            Not a saved system, or a part is missing.
        IndexFormatError
            ``index.neotrie`` is truncated, corrupted or of another format version.
        SystemFormatError
            A JSON file is unreadable, or a file's size or SHA-256 differs from the manifest's.
        VocabMismatchError
            Parts disagree: vocabulary size, tokenizer ids, model rows, index layout, hash of the SIDs.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(pretrained_path)
        if not path.exists() and not Path(str(path) + _OLD_SUFFIX).exists() and isinstance(pretrained_path, str) \
                and pretrained_path.count("/") == 1 and not pretrained_path.startswith((".", "/")):
            from huggingface_hub import snapshot_download

            try:
                path = Path(snapshot_download(pretrained_path, **hub_kwargs))
            except Exception as e:  # offline, unknown repository, no access...
                raise FileNotFoundError(f"{pretrained_path} is neither a local directory nor a Hub repository "
                                        f"that could be downloaded ({type(e).__name__}: {e})") from None
        parts = load_system_parts(path, mmap_index=mmap_index)
        loc, vocab, index = parts.location, parts.vocab, parts.index
        for what, p in (("model", loc.model_dir), ("tokenizer", loc.tokenizer_dir)):
            if not p.is_dir():
                raise FileNotFoundError(f"saved neo system {loc.root} is missing its {what} ({p})")
        _check_files(loc, verify)
        tokenizer = AutoTokenizer.from_pretrained(loc.tokenizer_dir)
        if len(tokenizer) < vocab.token_end:
            raise VocabMismatchError(
                f"tokenizer has {len(tokenizer)} tokens but the SID vocabulary needs ids up to {vocab.token_end - 1} "
                f"(vocab size {vocab.vocab_size}); the tokenizer was saved without the SID tokens"
            )
        kw: dict[str, Any] = {}
        if dtype is not None:
            kw["dtype"] = dtype
        model = AutoModelForCausalLM.from_pretrained(loc.model_dir, **kw)
        if device is not None:
            model = model.to(device)
        model.eval()
        manifest = loc.manifest
        catalog = sids = None
        if manifest.get("has_catalog"):
            from ..items.catalog import Catalog

            catalog = Catalog.load(loc.neo_dir / "catalog")
            fp = manifest.get("catalog_fingerprint")
            if fp is not None and catalog.fingerprint() != fp:
                raise VocabMismatchError("catalog/ is not the catalog this system was saved with (fingerprint differs)")
        if manifest.get("has_sids"):
            from ..items.sids import SemanticIds

            sids = SemanticIds.load(loc.neo_dir / "sids", catalog=catalog)
        return cls(model, tokenizer, vocab, index, catalog, sids)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: Any = None, dtype: Any = None,
             mmap_index: bool = False, verify: bool = True) -> "NeoSystem":
        """Alias of :meth:`from_pretrained` (local directories only)."""
        if not Path(directory).exists() and not Path(str(directory) + _OLD_SUFFIX).exists():
            raise FileNotFoundError(f"{directory} is not a saved neo system (no such directory)")
        return cls.from_pretrained(Path(directory), device=device, dtype=dtype, mmap_index=mmap_index, verify=verify)

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
