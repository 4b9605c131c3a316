"""The top-K beam search as it was before it was vectorised (a per-row Python loop over prompts, beams
and candidates): the oracle that the vectorised CPU path must reproduce exactly (same items, same scores,
same tie order). Copied from commit 7e64065, src/neo/lm/generation.py; only imports adapted."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from neo.core.index import SidIndex
from neo.lm.generation import ItemRef, _eos_ids, _forward, _left_pad, _new_cache, _prepare
from neo.lm.processor import SidMasker
from neo.lm.prompts import Prompt, PromptBuilder, catalog_item
from neo.lm.vocab import SidVocab


@torch.no_grad()
def topk_items_loop(
    model: Any,
    tokenizer: Any,
    vocab: SidVocab,
    index: SidIndex,
    prompts: Sequence[Any] | Prompt | str,
    *,
    k: int = 10,
    num_beams: int = 30,
    catalog: Any = None,
    builder: PromptBuilder | None = None,
    allowed_types: Any = None,
    exclude: Any = None,
    allow: Any = None,
    eos_token_id: int | Sequence[int] | None = None,
    num_threads: int = 1,
) -> list[list[ItemRef]]:
    """The ``k`` most likely distinct items per prompt, by constrained beam search.

    Parameters
    ----------
    prompts
        As in :func:`generate`; ``[SID]`` is appended. :class:`Prompt` history is excluded when
        ``exclude_history`` (default), and its target types restrict the items.
    k : int
        Items returned per prompt (fewer if fewer items are allowed).
    num_beams : int
        Partial SIDs kept per prompt at each level (the reference system used 30); raised to ``k``
        when smaller. With at least as many beams as prefixes at every level the result is exact.

    Returns
    -------
    list (per prompt) of ItemRef sorted by ``score`` (sum of code log-probabilities) descending.
    """
    if k < 1 or num_beams < 1:
        raise ValueError(f"k and num_beams must be >= 1, got k={k}, num_beams={num_beams}")
    device = model.device
    overrides = dict(allowed_types=allowed_types, exclude=exclude, allow=allow)
    ids_list, opts = _prepare(prompts, tokenizer, vocab, index, catalog, builder, overrides, open_span=True)
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    # K distinct items need at least K beams before the last level: the width is raised to k
    R, W = len(ids_list), max(int(num_beams), int(k))
    lay = vocab.layout
    masker = SidMasker(index, R * W, eos, (), num_threads)
    for r, o in enumerate(opts):
        for b in range(W):
            masker.set_row_options(r * W + b, format="mixed", allowed_types=o.get("allowed_types"),
                                   exclude=o.get("exclude"), allow=o.get("allow"))
    masker.prime([ids for ids in ids_list for _ in range(W)])
    ids, mask = _left_pad(ids_list, pad, device)
    cache = _new_cache(model)
    logits = _forward(model, ids, mask, cache)  # (R, V): computed once per prompt
    logits = logits.repeat_interleave(W, 0)
    mask = mask.repeat_interleave(W, 0)
    cache.batch_repeat_interleave(W)
    # SID block columns and which of them end a SID
    c0, c1 = vocab.token_begin, vocab.token_end
    w0 = c0 // 32
    block_cols = torch.arange(c0, c1)
    is_last = torch.zeros(c1 - c0, dtype=torch.bool)
    for t in lay.types:
        s = t.band_starts[-1]
        is_last[s - c0:s - c0 + t.codebook_sizes[-1]] = True
    is_last = is_last.to(device)
    scores = torch.full((R, W), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start: no duplicates
    prefixes: list[list[list[int]]] = [[[] for _ in range(W)] for _ in range(R)]
    pool: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(R)]
    max_levels = max(t.levels for t in lay.types)
    bits = torch.arange(32, dtype=torch.int32)
    for _level in range(max_levels):
        masker.fill()
        words = masker.bitmask[:, w0:(c1 + 31) // 32]
        allowed = ((words.unsqueeze(-1) >> bits) & 1).bool().reshape(R * W, -1)[:, c0 - 32 * w0:c1 - 32 * w0]
        allowed = allowed.to(device)
        lse = torch.logsumexp(logits, -1, keepdim=True)
        lp = logits[:, c0:c1] - lse
        lp = lp.masked_fill(~allowed, float("-inf"))
        cand = (scores.reshape(-1, 1) + lp).reshape(R, W * (c1 - c0))
        last_mask = is_last.repeat(W)
        done_c = cand.masked_fill(~last_mask, float("-inf"))
        live_c = cand.masked_fill(last_mask, float("-inf"))
        # completions go to the pool (the best k per prompt are all we can ever need)
        nk = min(k, done_c.shape[1])
        dv, di = done_c.topk(nk, dim=1)
        nw = min(W, live_c.shape[1])
        lv, li = live_c.topk(nw, dim=1)
        dv, di, lv, li = dv.cpu(), di.cpu(), lv.cpu(), li.cpu()
        ncol = c1 - c0
        for r in range(R):
            for v, j in zip(dv[r].tolist(), di[r].tolist()):
                if v == float("-inf"):
                    break
                beam, col = divmod(j, ncol)
                pool[r].append((v, tuple(prefixes[r][beam] + [c0 + col])))
            pool[r].sort(key=lambda x: -x[0])
            del pool[r][k:]
        parents = np.zeros(R * W, dtype=np.int64)
        next_tok = np.full(R * W, vocab.open_id, dtype=np.int64)
        new_scores = torch.full((R, W), float("-inf"))
        new_prefixes: list[list[list[int]]] = [[[] for _ in range(W)] for _ in range(R)]
        any_live = False
        for r in range(R):
            kth = pool[r][k - 1][0] if len(pool[r]) >= k else float("-inf")
            slot = 0
            for v, j in zip(lv[r].tolist(), li[r].tolist()):
                if v == float("-inf") or v <= kth:
                    break  # cannot beat the k-th best completed item: scores only decrease
                beam, col = divmod(j, ncol)
                parents[r * W + slot] = r * W + beam
                next_tok[r * W + slot] = c0 + col
                new_scores[r, slot] = v
                new_prefixes[r][slot] = prefixes[r][beam] + [c0 + col]
                slot += 1
            for s in range(slot, W):  # dead slots copy beam 0 and stay at -inf
                parents[r * W + s] = r * W
            any_live |= slot > 0
        if not any_live:
            break
        masker.reorder(parents)
        live_rows = np.flatnonzero(new_scores.reshape(-1).numpy() > float("-inf"))
        masker.advance(next_tok[live_rows], live_rows)
        scores = new_scores.to(device)
        prefixes = new_prefixes
        cache.reorder_cache(torch.as_tensor(parents, device=device))
        mask = torch.cat([mask[torch.as_tensor(parents, device=device)],
                          torch.ones((R * W, 1), dtype=mask.dtype, device=device)], 1)
        logits = _forward(model, torch.as_tensor(next_tok, device=device).unsqueeze(1), mask, cache)
    results = []
    for r in range(R):
        items = []
        for v, toks in pool[r]:
            row = int(index.lookup(np.asarray([toks], dtype=np.int32))[0])
            iid, typ, title = catalog_item(catalog, row)
            cls = lay.classify(toks[0])
            items.append(ItemRef(row, iid, typ or (lay.types[cls[0]].name if cls else None), title, toks, float(v)))
        results.append(items)
    return results
