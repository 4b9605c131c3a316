"""Build a neo system from a user's own catalog and interactions (what ``neo build`` runs).

:func:`build_system` goes catalog file + interactions file -> item embeddings -> semantic IDs ->
SID vocabulary -> an adapted model -> one saved system directory (:class:`~neo.lm.system.NeoSystem`),
and returns a quality report (items and types, collision rate, codebook use, unreachable items,
vocabulary size, model size, the time each step took) that :func:`format_build_report` prints.

The model is a local pre-trained Hugging Face causal LM (``model=PATH``; never downloaded) or, without
one, a byte-level BPE tokenizer and a small Llama trained here from scratch on catalog text (stage 0,
as ``neo demo`` does). The system is untrained on the tasks: ``neo train`` (or
:func:`neo.training.train.align` / :func:`~neo.training.train.instruct`) comes next.

Semantic IDs come from (``sids=``):

* ``"text"`` -- residual k-means over text embeddings of each item (``embedder``: ``"tfidf"``, the
  offline default, a ``.npy`` file or a local model directory);
* ``"cf"`` -- collaborative embeddings learnt from the interactions (items that co-occur in users'
  sequences get near codes; items without interactions are placed by their text);
* ``"hybrid"`` -- both, joined so that cosine similarity mixes them (``cf_weight``);
* ``"codes:PATH"`` -- codes the user already has (published SIDs, their own quantiser), read by
  :func:`neo.items.datasets.read_codes`; neo applies the collision policy itself. Types without
  codes in the file get SIDs from the text embedder.

The collaborative part learns from the interactions minus each user's last ``holdout`` items (the
leave-one-out targets of ``neo train`` and ``neo eval``), so the SIDs never encode a test target.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..core.errors import NeoDataError

__all__ = ["BuildConfig", "BuildError", "BuildResult", "SID_METHODS", "build_system", "format_build_report",
           "load_local_model", "parse_sids_spec", "training_part"]

BUILD_REPORT = "build_report.json"  # in the system's neo/ folder

#: what ``sids=`` accepts (``codes:PATH`` names a file of codes the user already has)
SID_METHODS = ("text", "cf", "hybrid", "codes")


class BuildError(NeoDataError):
    """An option of :func:`build_system` (or ``neo build``) cannot be used as given; says which and why."""


@dataclass
class BuildConfig:
    """Choices of a build.

    Attributes
    ----------
    sids : str
        How semantic IDs are made: ``"text"``, ``"cf"``, ``"hybrid"`` or ``"codes:PATH"`` (see the
        module docstring).
    embedder : str
        Text embedder: ``"tfidf"`` (offline TF-IDF + SVD), a ``.npy`` file of vectors in catalog
        order, or a local model directory (:func:`neo.items.embeddings.get_embedder`).
    cf_method, cf_dim, cf_weight
        Collaborative embeddings (``cf``, ``hybrid``): ``"cooc"`` (co-occurrence PPMI + SVD) or
        ``"mf"`` (implicit ALS), their dimension, and the collaborative share of a hybrid's cosine
        (:func:`neo.items.collaborative.sid_embeddings`).
    levels, codebook_size : int, optional
        SID shape per type (default: :func:`neo.items.sids.default_sid_config` for each type's size).
    balance : float, optional
        Balanced k-means (:func:`neo.items.sids.build_sids`): no cluster above ``balance`` times
        the mean size within its prefix; ``None``: standard k-means.
    collisions : {"extra_level", "popular"}
        What happens to items that share codes (see :func:`neo.items.sids.build_sids`).
    item_level : {"replace", "append"}, optional
        Give every item its own last SID level (:meth:`neo.items.sids.SemanticIds.with_item_level`):
        ``replace`` the last code with it, or ``append`` it; one SID token per item. ``None``: plain SIDs.
    model : str, optional
        A local Hugging Face causal LM directory; ``None`` trains a small one from scratch.
    vocab_size, hidden, layers, stage0_steps, batch_size, lr
        Tokenizer size and model shape of the from-scratch model, and its stage-0 schedule.
    init : {"mean", "semantic"}
        Initialisation of the new SID rows (:func:`neo.lm.adapt.adapt_model`).
    holdout : int
        Last items of each user left out of everything the build learns from the interactions
        (popularity, collaborative embeddings): 2 keeps the leave-one-out validation and test
        targets of ``neo train`` / ``neo eval`` unseen; 0 uses every interaction (a system for
        production rather than for evaluation).
    seed : int
    """

    sids: str = "text"
    embedder: str = "tfidf"
    cf_method: str = "cooc"
    cf_dim: int = 64
    cf_weight: float = 0.5
    levels: int | None = None
    codebook_size: int | None = None
    balance: float | None = None
    collisions: str = "extra_level"
    item_level: str | None = None
    model: str | None = None
    vocab_size: int = 4000
    hidden: int = 128
    layers: int = 4
    stage0_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    init: str = "mean"
    holdout: int = 2
    seed: int = 0


@dataclass
class BuildResult:
    """What :func:`build_system` made: the system, where it was saved, and the quality report."""

    system: Any
    output_dir: Path | None
    report: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """The report as printable text (:func:`format_build_report`)."""
        return format_build_report(self.report)


def parse_sids_spec(spec: str) -> tuple[str, str | None]:
    """``"text"`` -> ``("text", None)``; ``"codes:PATH"`` -> ``("codes", "PATH")``.

    Raises
    ------
    BuildError
        An unknown method, naming the ones there are.
    """
    s = str(spec).strip()
    kind, _, arg = s.partition(":")
    kind = kind.strip().lower()
    if kind == "codes" and "codes" in SID_METHODS:
        if not arg.strip():
            raise BuildError("--sids codes:PATH needs the path of the codes file after 'codes:'")
        return "codes", arg.strip()
    if kind in SID_METHODS and kind != "codes" and not arg:
        return kind, None
    shown = ", ".join("codes:PATH" if m == "codes" else m for m in SID_METHODS)
    raise BuildError(f"--sids {spec!r}: unknown SID method; use one of {shown}")


def load_local_model(path: str | os.PathLike) -> tuple[Any, Any]:
    """A local pre-trained causal LM and its tokenizer (never downloaded); a pad token is set to EOS
    when the tokenizer has none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(2, "not a local Hugging Face model directory (no config.json); neo never downloads "
                                   "models", str(p))
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def training_part(sequences: Any, holdout: int = 2) -> list[Any]:
    """Per-user sequences without their last ``holdout`` items (users with fewer than ``holdout + 1``
    items are kept whole, as :func:`neo.evaluation.protocols.leave_one_out` keeps them for training)."""
    if holdout <= 0:
        return list(sequences)
    return [s[:-holdout] if len(s) > holdout else s for s in sequences]


@contextlib.contextmanager
def _warnings_to(sink: list[str], say: Callable[[str], None]) -> Any:
    """Collect the warnings of a step (SID collisions, items without interactions) into the report and
    print each as one line, instead of Python's two-line warning format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        msg = str(w.message).strip()
        if "balance=" in msg or "codebook_size=" in msg:  # the fix is named as Python arguments
            msg += " [neo build: --balance, --levels, --codebook-size]"
        sink.append(msg)
        say(f"   warning: {msg}")


def _user_step(fn: Callable[[], Any], option: str) -> Any:
    """Run a step whose ``ValueError`` means an option or input does not fit: a one-line
    :class:`BuildError` naming the option (``--debug`` still shows the traceback)."""
    try:
        return fn()
    except NeoDataError:
        raise
    except ValueError as e:
        raise BuildError(f"{option}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _describe_embeddings(cfg: BuildConfig, kind: str) -> str:
    cf = f"collaborative ({cfg.cf_method}, dim {cfg.cf_dim}) from the interactions"
    if kind == "text":
        return f"text ({cfg.embedder})"
    if kind == "cf":
        return cf
    return f"hybrid: text ({cfg.embedder}) + {cf}, collaborative share {cfg.cf_weight}"


def _codes_by_type(catalog: Any, codes: Mapping[str, Sequence[int]], name: str) -> dict[str, Any]:
    """id -> codes as ``{type: int64[N_t, L_t]}`` in catalog row order, for the types the file covers.

    Raises
    ------
    BuildError
        Ids outside the catalog, a type covered in part, or codes of different lengths in a type.
    """
    import numpy as np

    unknown = [k for k in codes if k not in catalog]
    if unknown:
        raise BuildError(f"{name}: item {unknown[0]!r} has codes but is not in the catalog ({len(unknown)} such "
                         "id(s)); give codes for the catalog's items only")
    out: dict[str, Any] = {}
    for t in catalog.type_names:
        rows = catalog.rows_of_type(t)
        ids = [catalog.ids[int(r)] for r in rows]
        have = [i for i in ids if i in codes]
        if not have:
            continue  # this type gets SIDs from the text embedder
        if len(have) < len(ids):
            missing = [i for i in ids if i not in codes]
            raise BuildError(f"{name}: {len(missing)} item(s) of type {t!r} have no codes, e.g. {missing[:5]}; give "
                             "codes for every item of a type (a type with no codes at all gets SIDs from --embedder)")
        lengths = {len(codes[i]) for i in ids}
        if len(lengths) > 1:
            odd = next(i for i in ids if len(codes[i]) != len(codes[ids[0]]))
            raise BuildError(f"{name}: items of type {t!r} have codes of different lengths {sorted(lengths)} (e.g. "
                             f"{ids[0]!r} has {len(codes[ids[0]])}, {odd!r} has {len(codes[odd])}); every item of a "
                             "type needs one code per level")
        out[t] = np.asarray([codes[i] for i in ids], dtype=np.int64)
    return out


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything that is not a neo system, and a neo system unless asked to."""
    from ..lm.system import SystemFormatError, find_system

    if not out.exists():
        return
    if not out.is_dir():
        raise BuildError(f"--output {out} is a file; give a directory for the system")
    if not any(out.iterdir()):
        return
    try:
        find_system(out)
        is_system = True
    except (FileNotFoundError, SystemFormatError):
        is_system = False
    if not is_system:
        raise BuildError(f"--output {out} exists and holds files that are not a neo system; choose a new or empty "
                         "directory (nothing there was changed)")
    if not overwrite:
        raise BuildError(f"--output {out} already holds a neo system; pass --overwrite (overwrite=True) to replace it "
                         "(nothing was changed)")


def _sid_summary(sids: Any) -> dict[str, Any]:
    """Per type: SID shape, collision rate, codebook use per level, unreachable items."""
    rep = dict(getattr(sids, "report", None) or {})
    out: dict[str, Any] = {"collisions_policy": sids.collisions, "types": {}}
    for t in sids.type_names:
        tr = (rep.get("types") or {}).get(t, {})
        col = tr.get("collisions", {})
        levels = []
        for lv in tr.get("per_level", []):
            levels.append({"level": lv["level"], "codebook_size": lv["codebook_size"], "used": lv["used_codes"],
                           "use": round(float(lv["utilisation"]), 4), "perplexity": round(float(lv["perplexity"]), 2),
                           "disambiguation": bool(lv.get("disambiguation"))})
        out["types"][t] = {
            "items": int(sids.rows[t].size),
            "levels": sids.levels(t),
            "codebook_sizes": list(sids.codebook_sizes[t]),
            "extra_level": bool(sids.extra_level[t]),
            "collision_rate": round(float(col.get("collision_rate", 0.0)), 4),
            "items_in_collisions": int(col.get("items_in_collisions", 0)),
            "largest_collision_group": int(col.get("max_group_size", 1)),
            "unreachable": int((~sids.reachable[t]).sum()),
            "codebook_use": levels,
        }
    out["unreachable"] = int(sum(v["unreachable"] for v in out["types"].values()))
    return out


def build_system(catalog: Any, interactions: Any = None, output_dir: str | os.PathLike | None = None, *,
                 config: BuildConfig | None = None, catalog_options: Mapping[str, Any] | None = None,
                 interaction_options: Mapping[str, Any] | None = None, overwrite: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = print) -> BuildResult:
    """Catalog + interactions -> embeddings -> SIDs -> vocabulary -> adapted model -> saved system.

    Parameters
    ----------
    catalog : path-like or Catalog
        A catalog file in any supported format (:meth:`neo.Catalog.load` with ``catalog_options``:
        ``id_field``, ``type_field``, ``text_fields``, ``skip_invalid``, ``encoding``, ...) or a catalog.
    interactions : path-like or Interactions, optional
        An interactions file (:func:`neo.items.datasets.read_interactions` with
        ``interaction_options``: ``user_col``, ``item_col``, ``time_col``, ``unknown_items``, ...) or
        loaded interactions indexed by the catalog. They give items without a popularity one
        (their interaction count: it orders collision groups) and are reported; ``neo train`` and
        ``neo eval`` read the same file.
    output_dir : path-like, optional
        Where the system is saved (must be new, empty, or a neo system with ``overwrite=True``);
        ``None``: not saved. The report is also written to ``neo/build_report.json`` in it.
    config : BuildConfig
    progress : bool
        Progress bars while training the from-scratch model.
    log : callable, optional
        Receives one line per step (``None``: silent).

    Returns
    -------
    BuildResult
        ``system`` (a :class:`~neo.lm.system.NeoSystem`), ``output_dir`` and ``report``.

    Raises
    ------
    BuildError, CatalogError, DatasetError, DataFileError
        Bad options or files, before any expensive step where possible (one-line messages).
    """
    cfg = config or BuildConfig()
    say = log or (lambda _m: None)
    kind, codes_path = parse_sids_spec(cfg.sids)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        _check_output(out, overwrite)
    if cfg.model is not None and not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(2, "--model: not a local Hugging Face model directory (no config.json); neo never "
                                   "downloads models", str(cfg.model))
    if cfg.collisions not in ("extra_level", "popular"):
        raise BuildError(f"--collisions {cfg.collisions!r}: use extra_level or popular")
    if cfg.item_level not in (None, "replace", "append"):
        raise BuildError(f"--item-level {cfg.item_level!r}: use replace or append")
    if cfg.holdout < 0:
        raise BuildError(f"--holdout {cfg.holdout}: give 0 or more items per user")
    if kind in ("cf", "hybrid") and interactions is None:
        raise BuildError(f"--sids {kind} learns from interactions: add --interactions FILE, or use --sids text")
    if kind == "codes" and not Path(codes_path).exists():
        raise FileNotFoundError(2, "no such file (--sids codes:PATH)", str(codes_path))
    if not 0.0 <= cfg.cf_weight <= 1.0:
        raise BuildError(f"--cf-weight {cfg.cf_weight}: give a share in [0, 1]")
    if cfg.balance is not None and cfg.balance < 1.0:
        raise BuildError(f"--balance {cfg.balance}: give a number >= 1 (1.0: equal cluster sizes)")
    cat_encoding = dict(catalog_options or {}).get("encoding", "utf-8")

    import numpy as np
    import torch

    from ..items.catalog import Catalog
    from ..items.datasets import Interactions, infer_target_type, read_interactions
    from ..lm.system import NEO_SUBDIR, NeoSystem

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    steps = 6
    torch.manual_seed(cfg.seed)

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)
        say(f"   done in {timings[name]:.2f} s")

    # 1. read
    t0 = time.perf_counter()
    say(f"[1/{steps}] reading the catalog{' and interactions' if interactions is not None else ''}")
    # a catalog passed in is not modified: popularity is set on a shallow copy
    cat = copy.copy(catalog) if isinstance(catalog, Catalog) else Catalog.load(catalog, **dict(catalog_options or {}))
    counts = dict(zip(cat.type_names, (int(c) for c in cat.type_counts())))
    say(f"   catalog: {len(cat)} items, types {counts}, text fields {cat.text_fields}"
        + (f"; skipped {cat.load_report.n_skipped} invalid record(s)"
           if cat.load_report is not None and cat.load_report.n_skipped else ""))
    inter = None
    train_seqs: list[Any] | None = None
    inter_report: dict[str, Any] | None = None
    if interactions is not None:
        if isinstance(interactions, Interactions):
            inter = interactions
            if list(inter.item_ids) != list(cat.ids):
                raise BuildError("interactions must be indexed by the catalog (Interactions.reindex(catalog.ids))")
        else:
            inter = read_interactions(interactions, catalog=cat, **dict(interaction_options or {}))
        used = inter.item_counts()
        train_seqs = training_part(inter.sequences, holdout=cfg.holdout)
        if cat.popularity is None:
            # interaction counts order collision groups (saved as the catalog's popularity); held-out
            # targets do not count, so they cannot shape the SIDs that neo eval then tests
            cat.popularity = np.bincount(np.concatenate(train_seqs) if train_seqs else np.zeros(0, np.int64),
                                         minlength=len(cat)).astype(np.float64)
        unk = inter.info.get("unknown_items", {})
        inter_report = {
            "source": inter.info.get("source"), "format": inter.info.get("format"),
            "columns": {k: inter.info.get("columns", {}).get(k) for k in ("user", "item", "time")},
            "users": inter.n_users, "interactions": inter.n_interactions,
            "items_interacted": int((used > 0).sum()), "items_never_interacted": int((used == 0).sum()),
            "unknown_items_skipped": int(unk.get("rows_skipped", 0)), "target_type": infer_target_type(cat, inter),
            "held_out_per_user": cfg.holdout,
        }
        say(f"   interactions: {inter.n_users} users, {inter.n_interactions} events over "
            f"{inter_report['items_interacted']} items ({inter.info.get('format')}, columns "
            f"{inter_report['columns']})" + (f"; skipped {inter_report['unknown_items_skipped']} with unknown items"
                                             if inter_report["unknown_items_skipped"] else ""))
    lap("read", t0)

    # 2. embeddings (or the codes the user has)
    t0 = time.perf_counter()
    from ..items.collaborative import sid_embeddings
    from ..items.sids import SemanticIds, build_sids

    warned: list[str] = []
    emb: Any = None
    emb_info: dict[str, Any] = {"kind": kind}
    by_type: dict[str, Any] = {}
    with _warnings_to(warned, say):
        if kind == "codes":
            from ..items.datasets import read_codes

            say(f"[2/{steps}] reading the SID codes in {codes_path}")
            by_type = _codes_by_type(cat, read_codes(codes_path, encoding=cat_encoding), Path(codes_path).name)
            rest = [t for t in cat.type_names if t not in by_type]
            emb_info.update(file=str(codes_path), types_with_codes=list(by_type), types_from_embeddings=rest)
            say(f"   codes for {', '.join(f'{t} ({by_type[t].shape[0]} x {by_type[t].shape[1]})' for t in by_type)}"
                + (f"; {rest} from {cfg.embedder} embeddings" if rest else ""))
            if rest:
                emb = sid_embeddings(cat, None, kind="text", text=cfg.embedder, seed=cfg.seed)
        else:
            say(f"[2/{steps}] item embeddings: {_describe_embeddings(cfg, kind)}")
            emb, info = _user_step(lambda: sid_embeddings(
                cat, train_seqs if inter is not None else None, kind=kind, text=cfg.embedder, dim=cfg.cf_dim,
                method=cfg.cf_method, cf_weight=cfg.cf_weight, seed=cfg.seed, return_info=True), f"--sids {kind}")
            emb_info.update(info)
            say(f"   {emb.shape[0]} x {emb.shape[1]}; " + ", ".join(
                f"{t}: {v['source']}" + (f" ({v['n_cold']} items without interactions placed by text)"
                                         if v.get("n_cold") and v["source"] in ("cf", "hybrid") else "")
                for t, v in info["types"].items()))
    lap("embeddings", t0)

    # 3. SIDs
    t0 = time.perf_counter()
    balance = f", balanced k-means (balance {cfg.balance})" if cfg.balance else ""
    say(f"[3/{steps}] semantic IDs ({'your codes' if kind == 'codes' else 'residual k-means per type'}{balance}, "
        f"collisions: {cfg.collisions})")
    with _warnings_to(warned, say):
        if kind == "codes":
            # --levels/--codebook-size/--balance shape the SIDs of types the codes file does not cover
            opts = {k: v for k, v in (("levels", cfg.levels), ("codebook_size", cfg.codebook_size),
                                      ("balance", cfg.balance), ("seed", cfg.seed)) if v is not None}
            sids = _user_step(lambda: SemanticIds.from_codes(
                cat, by_type, codebook_size=cfg.codebook_size if emb is None else None, collisions=cfg.collisions,
                embeddings=emb, build_options=opts if emb is not None else None), f"--sids codes:{codes_path}")
        else:
            sids = _user_step(lambda: build_sids(cat, emb, levels=cfg.levels, codebook_size=cfg.codebook_size,
                                                 collisions=cfg.collisions, seed=cfg.seed, balance=cfg.balance),
                              "--levels/--codebook-size/--balance")
        if cfg.item_level is not None:
            sids = _user_step(lambda: sids.with_item_level(cfg.item_level), "--item-level")
    sid_summary = _sid_summary(sids)
    for t, s in sid_summary["types"].items():
        say(f"   {t}: {s['levels']} levels {'x'.join(map(str, s['codebook_sizes']))}, collision rate "
            f"{s['collision_rate']:.3f}, unreachable {s['unreachable']}")
    lap("sids", t0)

    # 4. model
    t0 = time.perf_counter()
    model_report: dict[str, Any]
    if cfg.model:
        say(f"[4/{steps}] loading the local model {cfg.model}")
        model, tok = load_local_model(cfg.model)
        model_report = {"source": str(cfg.model), "pretrained": True}
    else:
        from .train import stage0

        say(f"[4/{steps}] stage 0: a tokenizer and a small Llama (hidden {cfg.hidden}, {cfg.layers} layers) trained "
            f"here on the catalog text ({cfg.stage0_steps} steps)")
        model, tok, r0 = stage0(cat, vocab_size=cfg.vocab_size, hidden=cfg.hidden, layers=cfg.layers,
                                max_steps=cfg.stage0_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                progress=progress, logging_steps=max(1, min(10, cfg.stage0_steps)))
        model_report = {"source": "stage0 (trained here from scratch)", "pretrained": False,
                        "hidden": cfg.hidden, "layers": cfg.layers, "stage0_steps": r0.global_step,
                        "stage0_final_loss": r0.loss_history[-1]["loss"] if r0.loss_history else None,
                        "stage0_s_per_step": round(r0.runtime_s / max(1, r0.global_step), 4)}
    base_vocab = len(tok)
    lap("model", t0)

    # 5. vocabulary + adaptation + index
    t0 = time.perf_counter()
    say(f"[5/{steps}] SID vocabulary installed in the tokenizer, model resized ({cfg.init} init), index built")
    system = NeoSystem.build(model, tok, cat, sids, init=cfg.init)
    n_params = int(sum(p.numel() for p in system.model.parameters()))
    model_report.update(parameters=n_params, architecture=type(system.model).__name__)
    vocab_report = {"base_tokens": int(base_vocab), "sid_tokens": int(system.vocab.num_tokens),
                    "total": int(system.vocab.vocab_size), "tokenizer_size": len(system.tokenizer)}
    lap("adapt", t0)

    # 6. save
    t0 = time.perf_counter()
    if out is not None:
        say(f"[6/{steps}] saving the system to {out}")
        system.save(out)
    else:
        say(f"[6/{steps}] not saved (no output directory)")
    lap("save", t0)
    timings["total"] = round(time.perf_counter() - t_start, 3)

    report: dict[str, Any] = {
        "catalog": {"source": cat.load_report.source if cat.load_report is not None else None, "items": len(cat),
                    "types": counts, "text_fields": list(cat.text_fields),
                    "invalid_records_skipped": cat.load_report.n_skipped if cat.load_report is not None else 0},
        "interactions": inter_report,
        "sids": {"method": kind, "embedder": cfg.embedder, "embeddings": emb_info, **sid_summary},
        "warnings": warned,
        "vocabulary": vocab_report,
        "model": model_report,
        "indexed_items": int(system.index.num_items),
        "timings_s": timings,
        "config": asdict(cfg),
        "output_dir": str(out) if out is not None else None,
    }
    if out is not None:  # beside neo's other files; not part of the manifest, so loading ignores it
        (out / NEO_SUBDIR / BUILD_REPORT).write_text(json.dumps(report, indent=1, default=float))
    return BuildResult(system, out, report)


def format_build_report(report: Mapping[str, Any]) -> str:
    """The quality report of a build as a few readable lines."""
    c, s, v, m, t = report["catalog"], report["sids"], report["vocabulary"], report["model"], report["timings_s"]
    lines = ["Build report",
             f"  items: {c['items']} ({', '.join(f'{k} {n}' for k, n in c['types'].items())}); text fields "
             f"{c['text_fields']}" + (f"; {c['invalid_records_skipped']} invalid records skipped"
                                      if c.get("invalid_records_skipped") else "")]
    it = report.get("interactions")
    if it:
        lines.append(f"  interactions: {it['users']} users, {it['interactions']} events, "
                     f"{it['items_interacted']} items interacted ({it['items_never_interacted']} never); "
                     f"{it['unknown_items_skipped']} rows with unknown items skipped; target type {it['target_type']}")
    src = {"text": f"text embeddings ({s['embedder']})", "cf": "collaborative embeddings",
           "hybrid": f"hybrid text ({s['embedder']}) + collaborative embeddings",
           "codes": f"codes from {s.get('embeddings', {}).get('file')}"}.get(s["method"], s["method"])
    lines.append(f"  SIDs from {src}; collisions: {s['collisions_policy']}:")
    for name, ty in s["types"].items():
        use = ", ".join(f"L{lv['level']} {lv['used']}/{lv['codebook_size']}"
                        + (" (disambiguation)" if lv["disambiguation"] else "") for lv in ty["codebook_use"])
        lines.append(f"    {name}: {ty['items']} items, {ty['levels']} levels "
                     f"({'x'.join(map(str, ty['codebook_sizes']))}), collision rate {ty['collision_rate']:.3f} "
                     f"({ty['items_in_collisions']} items share base codes, largest group "
                     f"{ty['largest_collision_group']}), unreachable {ty['unreachable']}; codebook use: {use}")
    lines.append(f"  unreachable items: {s['unreachable']}; indexed items: {report['indexed_items']}")
    lines.append(f"  vocabulary: {v['total']} ids ({v['base_tokens']} text + {v['sid_tokens']} SID tokens)")
    extra = (f", stage 0: {m['stage0_steps']} steps at {m['stage0_s_per_step']:.3f} s/step, final loss "
             f"{m['stage0_final_loss']:.3f}" if not m.get("pretrained") and m.get("stage0_final_loss") is not None
             else "")
    lines.append(f"  model: {m['architecture']}, {m['parameters'] / 1e6:.2f}M parameters ({m['source']}){extra}")
    lines.append("  time per step (s): " + ", ".join(f"{k} {val:.2f}" for k, val in t.items()))
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w.splitlines()[0]}")
    if report.get("output_dir"):
        lines.append(f"  saved to {report['output_dir']}")
    return "\n".join(lines)
