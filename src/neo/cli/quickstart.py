"""``neo quickstart``: a one-minute example of the constrained-decoding core.

A synthetic catalog of two item types, the index built and saved, and a batch of rows decoded with random
"model" logits under the constraints, every emitted span resolved back to a catalog item.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Sequence

__all__ = ["add_parser", "run"]

HELP = "a one-minute example of the constrained-decoding core on a synthetic catalog"


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo quickstart`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("quickstart", help=HELP, parents=list(parents), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000, help="movies in the synthetic catalog (default 100,000)")
    p.add_argument("--rows", type=int, default=12, help="rows decoded in one batch (default 12)")
    p.add_argument("--steps", type=int, default=64, help="decoding steps at most (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``neo quickstart``: build, save, reload and decode a synthetic catalog; 1 if a row ended in error."""
    import numpy as np
    import torch

    import neo

    rng = np.random.default_rng(args.seed)
    text_vocab = 32_000
    layout = neo.TokenLayout.contiguous(text_vocab, {"movie": [256, 256, 256], "tag": [64, 64]})
    n_movie, n_tag = args.items, max(1, args.items // 20)
    movie = np.unique(rng.integers(0, 256, size=(n_movie, 3)), axis=0)
    tag = np.unique(rng.integers(0, 64, size=(n_tag, 2)), axis=0)
    t0 = time.perf_counter()
    index = neo.SidIndex.build(layout, {"movie": layout.codes_to_tokens("movie", movie),
                                        "tag": layout.codes_to_tokens("tag", tag)})
    build_s = time.perf_counter() - t0
    print(f"built {index!r} in {build_s * 1e3:.1f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "catalog.neoidx")
        index.save(path)
        index = neo.SidIndex.load(path, layout)
        print(f"saved and reloaded: {os.path.getsize(path) / index.num_items:.1f} bytes per item on disk")

    eos, comma = 2, 11
    rows = args.rows
    state = neo.DecodeState(index, rows, eos_token_ids=[eos], separator_token_ids=[comma])
    formats = ["ids", "mixed", "text"]
    for r in range(rows):
        state.set_row_options(r, format=formats[r % 3], allowed_types=["movie"] if r % 2 else ["movie", "tag"],
                              max_items=3)
    bitmask = neo.allocate_token_bitmask(rows, layout.vocab_size)
    gen = torch.Generator().manual_seed(args.seed)
    out = [[] for _ in range(rows)]
    fill_s = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state.fill_next_token_bitmask(bitmask, incremental=True)
        fill_s += time.perf_counter() - t0
        logits = torch.randn(rows, layout.vocab_size, generator=gen)
        logits[:, layout.open_id] += 8.0  # a "model" keen to name items
        logits[:, eos] += 2.0
        neo.apply_token_bitmask_inplace(logits, bitmask)
        tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1).numpy()
        for r, item in enumerate(state.advance(tokens)):
            if item >= 0:
                out[r].append(int(item))
        if (state.status >= neo.RowStatus.DONE).all():
            break
    errors = state.errors()
    for r in range(min(rows, 6)):
        types, _ = index.item_tokens(np.asarray(out[r], dtype=np.int64)) if out[r] else (np.zeros(0, int), None)
        names = [layout.type_names[t] for t in types]
        print(f"row {r} ({formats[r % 3]}): items {out[r]} of types {names}; status "
              f"{neo.RowStatus.NAMES[state.status[r]]}")
    print(f"mask fill: {fill_s / args.steps / rows * 1e6:.2f} us per row per step; rows in error: {len(errors)}")
    return 1 if errors else 0
