"""neo's serving bookkeeping (neo.integrations.serving) without vLLM: request options, and a decode state that
follows a persistent batch through adds, removes, one-way moves and swaps exactly as vLLM's V1 model runner
reports them (a fake BatchUpdate). The real engine is exercised by .ci/vllm_integration.py."""
from dataclasses import dataclass, field
from enum import Enum, auto

import numpy as np
import pytest
import torch

from _tiny import COUNTS, SIZES, random_codes
from neo.core.index import DecodeState, SidIndex
from neo.core.layout import TokenLayout
from neo.integrations.serving import (RequestOptions, SlotDecoder, check_request_options, parse_request_options)

V_TEXT = 40
EOS = 2


class MoveDirectionality(Enum):  # the names vLLM uses
    UNIDIRECTIONAL = auto()
    SWAP = auto()


@dataclass
class Params:
    extra_args: dict | None = None


@dataclass
class BatchUpdate:
    batch_size: int
    removed: list = field(default_factory=list)
    added: list = field(default_factory=list)
    moved: list = field(default_factory=list)


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    lay = TokenLayout.contiguous(V_TEXT, SIZES)
    toks, rows, start = {}, {}, 0
    for t, n in COUNTS.items():
        toks[t] = lay.codes_to_tokens(t, random_codes(rng, n, SIZES[t]))
        rows[t] = np.arange(start, start + n, dtype=np.int32)
        start += n
    return SidIndex.build(lay, toks, rows)


# ------------------------------------------------------------------ options
def test_flat_and_nested_spellings_agree():
    flat = parse_request_options({"neo_format": "ids", "neo_types": "movie, book", "neo_exclude": "3,17,",
                                  "neo_allow": [1, 3, "5"], "neo_max_items": "2", "neo_exclude_emitted": "false",
                                  "other_key": {"nested": "belongs to someone else"}})
    nested = parse_request_options({"neo": {"format": "ids", "allowed_types": ["movie", "book"], "exclude": [3, 17],
                                            "allow": [1, 3, 5], "max_items": 2, "exclude_emitted": False}})
    assert flat == nested == RequestOptions("ids", ("movie", "book"), (3, 17), (1, 3, 5), 2, False)
    assert parse_request_options(None) is None and parse_request_options({"temperature_boost": 1}) is None
    assert parse_request_options({"neo_format": "mixed"}) == RequestOptions()
    assert parse_request_options({"neo_exclude": ""}).exclude == ()


@pytest.mark.parametrize("args, match", [
    ({"neo_format": "xml"}, "neo_format='xml': expected one of mixed, ids, text"),
    ({"neo_max_items": -1}, "neo_max_items=-1: expected a non-negative integer"),
    ({"neo_max_items": True}, "neo_max_items=True"),
    ({"neo_max_items": "many"}, "neo_max_items='many'"),
    ({"neo_exclude": "1,x"}, "neo_exclude='1,x': expected item rows as a comma-separated string"),
    ({"neo_exclude": [1, -2]}, "non-negative integers, got -2"),
    ({"neo_exclude": [1.5]}, "got 1.5"),
    ({"neo_allow": 3.0}, "neo_allow=3.0"),
    ({"neo_types": ""}, "non-empty names"),
    ({"neo_types": 7.5}, "item type names"),
    ({"neo_exclude_emitted": "maybe"}, "expected true or false"),
    ({"neo_colour": "red"}, "unknown neo option neo_colour; known: neo_format"),
    ({"neo": {"colour": 1}}, "unknown neo option neo.colour"),
    ({"neo": "ids"}, "expected a mapping of options"),
    ({"neo": {"format": "ids"}, "neo_max_items": 1}, "both nested .* and flat"),
])
def test_bad_options_name_the_option(args, match):
    with pytest.raises(ValueError, match=match):
        parse_request_options(args)


def test_options_checked_against_the_index(index):
    check_request_options(RequestOptions(types=("movie",), exclude=(0, 1), allow=(2, 3)), index)
    with pytest.raises(ValueError, match="unknown item type 'film'; this system has movie, book"):
        check_request_options(RequestOptions(types=("film",)), index)
    with pytest.raises(ValueError, match="item row 999 is not in the index"):
        check_request_options(RequestOptions(exclude=(999,)), index)


# ------------------------------------------------------------------ a simulated engine
class Request:
    def __init__(self, rid, opts, prompt, max_tokens, rng):
        self.rid, self.opts, self.prompt, self.max_tokens = rid, opts, prompt, max_tokens
        self.output: list[int] = []
        self.rng = rng
        # an independent single-row reference state fed the same tokens
        self.ref = None

    def extra_args(self, spelling):
        if self.opts is None:
            return None
        o = {k: v for k, v in self.opts.items()}
        if spelling == "nested":
            return {"neo": o}
        return {f"neo_{k}": (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in o.items()}


class FakeEngine:
    """A persistent batch managed like vLLM's InputBatch: a finished request's slot is refilled by a new one
    first, the rest condensed by one-way moves from the end, and occasionally two slots swap."""

    def __init__(self, index, max_slots, rng):
        self.index, self.max_slots, self.rng = index, max_slots, rng
        self.slots: list[Request | None] = []
        self.decoder = SlotDecoder(index, max_slots, [EOS])
        self.V = index.layout.vocab_size + 5  # a padded LM head: columns past the layout are masked too

    def step(self, waiting, finished, spellings):
        upd = BatchUpdate(0)
        holes = sorted(i for i, r in enumerate(self.slots) if r is not None and r.done)
        for i in holes:
            finished.append(self.slots[i])
            self.slots[i] = None
        free = sorted(holes)
        while waiting and (free or len(self.slots) < self.max_slots):
            req = waiting.pop(0)
            i = free.pop(0) if free else len(self.slots)
            if i == len(self.slots):
                self.slots.append(None)
            self.slots[i] = req
            upd.added.append((i, Params(req.extra_args(spellings[req.rid % 2])), list(req.prompt), req.output))
            if req.opts is not None:
                req.ref = DecodeState(self.index, 1, [EOS], [], 1)
                o = parse_request_options({"neo": req.opts})
                req.ref.set_row_options(0, **o.row_kwargs())
                _prime(req.ref, req.prompt, self.index.layout)
        upd.removed = sorted(free, reverse=True)
        # condense: move the last requests into the remaining holes
        for hole in sorted(free):
            last = len(self.slots) - 1
            while last > hole and self.slots[last] is None:
                last -= 1
            if last <= hole:
                break
            self.slots[hole], self.slots[last] = self.slots[last], None
            upd.moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
        while self.slots and self.slots[-1] is None:
            self.slots.pop()
        if len(self.slots) >= 2 and self.rng.random() < 0.3:  # vLLM reorders rows too
            a, b = self.rng.choice(len(self.slots), 2, replace=False)
            self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
            upd.moved.append((int(a), int(b), MoveDirectionality.SWAP))
        upd.batch_size = len(self.slots)
        self.decoder.update(upd if (upd.added or upd.removed or upd.moved) else None)
        if not self.slots:
            return
        logits = torch.randn(len(self.slots), self.V, generator=torch.Generator().manual_seed(int(self.rng.integers(1 << 30))))
        raw = logits.clone()
        self.decoder.sync(len(self.slots))
        self.decoder.mask(logits)
        for i, req in enumerate(self.slots):
            if req.opts is None:
                assert torch.equal(logits[i], raw[i]), "an unconstrained row was touched"
            else:
                _check_row_mask(logits[i], raw[i], req.ref, self.index.layout.vocab_size)
            tok = int(torch.argmax(logits[i])) if req.rid % 3 else int(
                torch.multinomial(torch.softmax(logits[i], 0), 1, generator=torch.Generator().manual_seed(i)))
            req.output.append(tok)
            if req.ref is not None:
                req.ref.advance(np.asarray([tok]))
            if tok == EOS or len(req.output) >= req.max_tokens:
                req.done = True


def _prime(state, prompt, layout):
    a = np.asarray(prompt)
    opens = np.flatnonzero(a == layout.open_id)
    if opens.size and not (np.flatnonzero(a == layout.close_id) > opens[-1]).any():
        for t in a[opens[-1]:]:
            state.advance(np.asarray([t]))


def _check_row_mask(masked, raw, ref, vocab):
    bm = np.zeros((1, (vocab + 31) // 32), np.int32)
    ref.fill_next_token_bitmask(bm)
    allowed = ((bm[0][np.arange(vocab) // 32] >> (np.arange(vocab) % 32)) & 1).astype(bool)
    want = raw.clone()
    want[:vocab][~torch.from_numpy(allowed)] = float("-inf")
    want[vocab:] = float("-inf")
    assert torch.equal(masked, want)


def random_opts(rng, n_items):
    if rng.random() < 0.25:
        return None
    o = {"format": str(rng.choice(["mixed", "ids", "text"]))}
    if rng.random() < 0.4:
        o["types"] = [str(rng.choice(list(COUNTS)))]
    if rng.random() < 0.4:
        o["exclude"] = sorted(int(x) for x in rng.choice(n_items, 5, replace=False))
    if rng.random() < 0.3:
        o["allow"] = sorted(int(x) for x in rng.choice(n_items, 8, replace=False))
    if rng.random() < 0.4:
        o["max_items"] = int(rng.integers(0, 3))
    if rng.random() < 0.2:
        o["exclude_emitted"] = False
    return o


@pytest.mark.parametrize("seed", [0, 1])
def test_follows_a_persistent_batch(index, seed):
    """Every constrained row is masked exactly like an independent state fed the same tokens; other rows
    are untouched; over many requests through 6 slots with adds, removes, moves and swaps."""
    rng = np.random.default_rng(seed)
    lay = index.layout
    waiting = []
    for rid in range(150):
        prompt = list(rng.integers(3, V_TEXT, size=int(rng.integers(1, 6))))
        o = random_opts(rng, index.num_items)
        if rng.random() < 0.3 and (o is None or o["format"] != "text"):
            prompt.append(lay.open_id)  # the answer starts inside a span
        waiting.append(Request(rid, o, prompt, int(rng.integers(1, 25)), rng))
    for r in waiting:
        r.done = False
    eng = FakeEngine(index, 6, rng)
    finished: list = []
    steps = 0
    while waiting or any(r is not None and not r.done for r in eng.slots) or any(
            r is not None for r in eng.slots):
        eng.step(waiting, finished, ("nested", "flat"))
        steps += 1
        assert steps < 5000
    assert len(finished) == 150
    s = eng.decoder.stats
    assert s["added"] == 150 and s["removed"] > 0 and s["moved"] > 0 and s["swapped"] > 0
    spans = sum(r.output.count(lay.close_id) for r in finished if r.opts is not None)
    assert spans > 20
    assert not eng.decoder.rejected


def test_prompt_ending_in_open_span_and_rejected_options(index):
    lay = index.layout
    dec = SlotDecoder(index, 4, [EOS])
    out0: list[int] = []
    dec.update(BatchUpdate(3, added=[(0, Params({"neo_format": "mixed"}), [5, 6, lay.open_id], out0),
                                     (1, Params({"neo_types": "film"}), [5], []),
                                     (2, Params({"neo_format": "xml"}), [5], [])]))
    assert dec.status(0) == "span"
    assert set(dec.rejected) == {1, 2} and "film" in dec.rejected[1] and "xml" in dec.rejected[2]
    logits = torch.zeros(3, lay.vocab_size)
    dec.mask(logits)
    for r in (1, 2):  # a rejected request can only end
        assert torch.isfinite(logits[r]).nonzero().flatten().tolist() == [EOS]
    first_level = set(torch.isfinite(logits[0]).nonzero().flatten().tolist())
    assert first_level and all(lay.classify(t) is not None and lay.classify(t)[1] == 0 for t in first_level)


def test_placeholder_tokens_and_dropped_tokens(index):
    lay = index.layout
    dec = SlotDecoder(index, 2, [EOS])
    out: list[int] = []
    dec.update(BatchUpdate(1, added=[(0, Params({"neo_format": "ids"}), [5], out)]))
    out.append(lay.open_id)
    dec.sync()
    assert dec.status(0) == "span"
    out.append(-1)  # async scheduling placeholder not yet replaced
    with pytest.raises(RuntimeError, match="placeholder .*--logits-processors neo.integrations.vllm"):
        dec.sync()
    out.pop()
    out.pop()  # the engine dropped a token (e.g. a failed KV load): the row replays from its prompt
    dec.sync()
    assert dec.status(0) == "text" and dec.consumed[0] == 0
    child = int(index.children(0, 0)[0])
    out += [lay.open_id, child]  # two tokens at once (a resumed request) are fed in order
    dec.sync()
    assert dec.status(0) == "span" and int(dec.state.depth[0]) == 1


def test_catch_up_from_fed_tokens(index):
    """The V2 model runner exposes the token fed this step (and committed history), not a list."""
    lay = index.layout
    dec = SlotDecoder(index, 3, [EOS])
    dec.add(2, parse_request_options({"neo_format": "ids"}), prompt_ids=[5, 6])
    dec.catch_up(2, 0, 6)  # prefill: no output yet
    assert dec.consumed[2] == 0
    dec.catch_up(2, 1, lay.open_id)
    child = int(index.children(0, 0)[0])
    history = [lay.open_id, child, -7]
    dec.catch_up(2, 3, int(index.children(0, 1)[0]) if len(index.children(0, 1)) else child,
                 older=lambda a, b: history[a:b])
    assert dec.consumed[2] == 3
    with pytest.raises(RuntimeError, match="only the newest is known"):
        dec.add(1, RequestOptions(), prompt_ids=[5])
        dec.catch_up(1, 2, 5)


def test_rows_on_other_positions(index):
    """Logits rows need not be slot numbers (V2 reorders rows every step): the masks follow the slots."""
    lay = index.layout
    dec = SlotDecoder(index, 4, [EOS])
    dec.add(3, parse_request_options({"neo_format": "ids", "neo_max_items": 0}))
    dec.add(1, parse_request_options({"neo_format": "text"}))
    logits = torch.zeros(2, lay.vocab_size)
    dec.mask(logits, rows=np.array([0, 1]), slots=np.array([3, 1]))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [EOS]
    assert torch.isfinite(logits[1]).sum() == lay.sid_token_begin


# ------------------------------------------------------------------ the vLLM classes themselves (need vLLM)
@pytest.fixture(scope="module")
def saved_system(tmp_path_factory):
    pytest.importorskip("vllm")
    from test_system import make_catalog_and_sids
    from _tiny import make_model, make_tokenizer
    from neo.lm.system import NeoSystem

    cat, sids = make_catalog_and_sids()
    tok = make_tokenizer()
    model = make_model("llama", len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id)
    s = NeoSystem.build(model, tok, cat, sids)
    return s, s.save_pretrained(tmp_path_factory.mktemp("vllm") / "system")


def _fake_config(model_dir, vocab, listed=()):
    from types import SimpleNamespace

    mc = SimpleNamespace(model=str(model_dir), logits_processors=list(listed), revision=None,
                         hf_config=SimpleNamespace(eos_token_id=2), get_vocab_size=lambda: vocab)
    return SimpleNamespace(model_config=mc, scheduler_config=SimpleNamespace(max_num_seqs=4), speculative_config=None)


def test_vllm_v2_interface_with_stand_ins(saved_system):
    """The V2 model runner path (the GPU default in vLLM 0.32) driven by stand-ins for its request state:
    rows are reordered every step, the prompt is read back in apply_staged_writes, tokens come from the
    fed input ids."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from neo.integrations.vllm import NeoLogitsProcessor

    system, d = saved_system
    lay = system.vocab.layout
    V = len(system.tokenizer)
    max_len = 64
    all_ids = torch.zeros(4, max_len, dtype=torch.int64)
    prompt_len = np.zeros(4, dtype=np.int64)
    rs = SimpleNamespace(max_num_reqs=4, prompt_len=SimpleNamespace(np=prompt_len),
                         all_token_ids=SimpleNamespace(gpu=all_ids))
    proc = NeoLogitsProcessor(_fake_config(d, V), rs)
    prompts = {2: [5, 6, lay.open_id], 0: [7, 8, 9]}
    for slot, p in prompts.items():
        all_ids[slot, :len(p)] = torch.tensor(p)
        prompt_len[slot] = len(p)
    assert proc.add_request(2, SimpleNamespace(extra_args={"neo_format": "ids", "neo_max_items": 2}))
    assert not proc.add_request(0, SimpleNamespace(extra_args=None))
    proc.apply_staged_writes()
    ref = DecodeState(system.index, 1, [2], [], 1)
    ref.set_row_options(0, format="ids", max_items=2)
    ref.advance(np.asarray([lay.open_id]))
    length = {s: len(p) for s, p in prompts.items()}
    rng = np.random.default_rng(0)
    for step in range(20):
        order = [2, 0] if step % 2 else [0, 2]
        logits = torch.randn(2, V, generator=torch.Generator().manual_seed(step))
        raw = logits.clone()
        ctx = SimpleNamespace(idx_mapping_np=np.asarray(order), input_ids=torch.tensor([int(all_ids[s, length[s] - 1]) for s in order]),
                              pos=torch.tensor([length[s] - 1 for s in order]))
        proc.apply(logits, ctx)
        for row, slot in enumerate(order):
            if slot == 0:
                assert torch.equal(logits[row], raw[row])
            else:
                _check_row_mask(logits[row], raw[row], ref, lay.vocab_size)
                tok = int(torch.argmax(logits[row]))
                ref.advance(np.asarray([tok]))
                all_ids[slot, length[slot]] = tok
                length[slot] += 1
        all_ids[0, length[0]] = int(rng.integers(3, 300))
        length[0] += 1
    assert proc.decoder.consumed[2] == 19  # the token sampled at the last step is not fed yet
    assert len(system.index.item_tokens(proc.decoder.emitted(2))[0]) >= 1


def test_vllm_plugin_stands_aside_when_listed_and_rejects_bad_params(saved_system):
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    import torch as _torch

    from neo.integrations.vllm import NeoLogitsProcessor, NeoLogitsProcessorPlugin

    system, d = saved_system
    V = len(system.tokenizer)
    listed = _fake_config(d, V, listed=["neo.integrations.vllm:NeoLogitsProcessor"])
    assert NeoLogitsProcessorPlugin(listed, _torch.device("cpu"), False)._inactive
    assert not NeoLogitsProcessor(listed, _torch.device("cpu"), False)._inactive
    assert not NeoLogitsProcessorPlugin(_fake_config(d, V), _torch.device("cpu"), False)._inactive
    with pytest.raises(ValueError, match="needs 321"):
        NeoLogitsProcessor(_fake_config(d, 300), _torch.device("cpu"), False)
    with pytest.raises(ValueError, match="neo_format='xml'"):
        NeoLogitsProcessor.validate_params(SimpleNamespace(extra_args={"neo_format": "xml"}, min_tokens=0,
                                                           structured_outputs=None))
    with pytest.raises(ValueError, match="min_tokens"):
        NeoLogitsProcessor.validate_params(SimpleNamespace(extra_args={"neo_format": "ids"}, min_tokens=3,
                                                           structured_outputs=None))
    # the engine in this process loaded the system: names and rows are checked at admission too
    with pytest.raises(ValueError, match="unknown item type 'film'"):
        NeoLogitsProcessor.validate_params(SimpleNamespace(extra_args={"neo_types": "film"}, min_tokens=0,
                                                           structured_outputs=None))
    # a model that is not a neo system: requests asking for neo end at once, others are untouched
    plain = d.parent / "plain"
    system.model.save_pretrained(plain)
    p = NeoLogitsProcessor(_fake_config(plain, V), _torch.device("cpu"), False)
    assert p.decoder is None
    upd = BatchUpdate(2, added=[(0, SimpleNamespace(extra_args={"neo_format": "ids"}), [5], []),
                                (1, SimpleNamespace(extra_args=None), [5], [])])
    p.update_state(upd)
    logits = torch.zeros(2, V)
    p.apply(logits)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [2] and torch.isfinite(logits[1]).all()


def test_vllm_frontend_finds_the_system_through_neo_system(saved_system, monkeypatch):
    """The OpenAI server validates requests in another process than the engine's: NEO_SYSTEM lets it check
    names and rows; without it only the spelling is checked there."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    import neo.integrations.vllm as neo_vllm

    _, d = saved_system
    params = SimpleNamespace(extra_args={"neo_types": "film"}, min_tokens=0, structured_outputs=None)
    monkeypatch.setattr(neo_vllm, "_SYSTEMS", {})
    monkeypatch.delenv("NEO_SYSTEM", raising=False)
    neo_vllm.NeoLogitsProcessor.validate_params(params)  # cannot see the catalog: accepted here
    monkeypatch.setenv("NEO_SYSTEM", str(d))
    with pytest.raises(ValueError, match="unknown item type 'film'"):
        neo_vllm.NeoLogitsProcessor.validate_params(params)
