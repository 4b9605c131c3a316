"""Saved systems: damaged files name themselves, and an interrupted save never loses the last good system.

The kill tests run a save in a subprocess, stop it with SIGKILL at chosen points (the child pauses
there and says so; nothing in neo knows about the test), and load what is left.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_system import make_catalog_and_sids
from _tiny import make_model, make_tokenizer
from neo.core.index import IndexFormatError
from neo.lm.system import NeoSystem, SystemFormatError, find_system
from neo.lm.vocab import VocabMismatchError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cat, sids = make_catalog_and_sids()
    tok = make_tokenizer()
    model = make_model("llama", len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id)
    system = NeoSystem.build(model, tok, cat, sids)
    return system.save_pretrained(tmp_path_factory.mktemp("sys") / "system")


def copy(saved, tmp_path, name="s"):
    d = tmp_path / name
    shutil.copytree(saved, d)
    return d


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "truncate_header", "flip_header", "flip_body", "empty"])
def test_damaged_index_is_an_index_format_error(saved, tmp_path, damage):
    d = copy(saved, tmp_path)
    f = d / "neo" / "index.neotrie"
    n = f.stat().st_size
    {"truncate": lambda: truncate(f), "truncate_header": lambda: truncate(f, 8 / n),
     "flip_header": lambda: flip_bit(f, 5), "flip_body": lambda: flip_bit(f, n - 40),
     "empty": lambda: f.write_bytes(b"")}[damage]()
    with pytest.raises(IndexFormatError, match="index.neotrie") as e:
        NeoSystem.from_pretrained(d)
    assert not isinstance(e.value, VocabMismatchError)


@pytest.mark.parametrize("name", ["vocab.json", "neo_system.json"])
def test_truncated_json_names_the_file(saved, tmp_path, name):
    d = copy(saved, tmp_path)
    truncate(d / "neo" / name)
    with pytest.raises(SystemFormatError, match=f"{name}.*not valid JSON.*truncated"):
        NeoSystem.from_pretrained(d)
    (d / "neo" / name).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SystemFormatError, match=name):
        NeoSystem.from_pretrained(d)


def test_weights_are_checked(saved, tmp_path):
    d = copy(saved, tmp_path)
    weights = d / "model.safetensors"
    flip_bit(weights, weights.stat().st_size - 100)  # inside the tensor data: safetensors itself cannot tell
    with pytest.raises(SystemFormatError, match="model.safetensors: SHA-256 differs"):
        NeoSystem.from_pretrained(d)
    NeoSystem.from_pretrained(d, verify=False)  # the opt-out skips the hashing (and so misses a flipped bit)
    truncate(weights, 0.9)
    with pytest.raises(SystemFormatError, match="model.safetensors has .* bytes"):
        NeoSystem.from_pretrained(d, verify=False)  # the size check stays
    d2 = copy(saved, tmp_path, "s2")
    (d2 / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        NeoSystem.from_pretrained(d2)


def test_catalog_files_are_checked(saved, tmp_path):
    d = copy(saved, tmp_path)
    items = d / "neo" / "catalog" / "items.jsonl"
    items.write_text(items.read_text().replace("title 1", "title X", 1))
    with pytest.raises(SystemFormatError, match="items.jsonl: SHA-256 differs"):
        NeoSystem.from_pretrained(d)


def test_newer_format_is_refused_clearly(saved, tmp_path):
    d = copy(saved, tmp_path)
    mf = d / "neo" / "neo_system.json"
    m = json.loads(mf.read_text())
    m["version"] = 99
    mf.write_text(json.dumps(m))
    with pytest.raises(SystemFormatError, match="unsupported version 99"):
        NeoSystem.from_pretrained(d)


def test_load_restores_an_interrupted_save(saved, tmp_path):
    d = copy(saved, tmp_path)
    old = tmp_path / "s.old-neo"
    os.replace(d, old)  # as if killed between the two renames
    loaded = NeoSystem.from_pretrained(d)
    assert d.is_dir() and not old.exists() and loaded.index.num_items > 0
    # an incomplete .old-neo (no manifest) is left alone, and the error says the system is missing
    shutil.rmtree(d)
    old.mkdir()
    with pytest.raises(FileNotFoundError):
        NeoSystem.from_pretrained(d)
    assert old.exists()


CHILD = textwrap.dedent(r"""
    import os, shutil, sys, time
    import torch
    from neo.core.index import SidIndex
    from neo.lm.system import NeoSystem
    import neo.lm.system as system_mod

    target, point = sys.argv[1], sys.argv[2]
    s = NeoSystem.from_pretrained(target)
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(1.0)  # the new system differs from the old one in its weights

    def pause():
        print("PAUSED", flush=True)
        time.sleep(600)

    real_replace, real_rmtree, real_index_save = os.replace, shutil.rmtree, SidIndex.save
    calls = {"replace": 0}

    def index_save(self, path):  # midway through writing the new copy
        real_index_save(self, path)
        if point == "writing":
            pause()

    def replace(a, b):  # the save's own renames: DIR -> DIR.old-neo, then DIR.tmp-neo -> DIR
        first, second = str(b).endswith(".old-neo"), str(a).endswith(".tmp-neo")
        calls["replace"] += first or second
        if point == "before_first_rename" and first:
            pause()
        real_replace(a, b)
        if point == "between_renames" and first:
            pause()
        if point == "after_second_rename" and second:
            pause()

    def rmtree(p, *a, **k):
        if point == "deleting_old" and str(p).endswith(".old-neo") and calls["replace"] == 2:
            victims = sorted(x for x in os.listdir(p) if x != "neo")
            os.remove(os.path.join(p, victims[0]))  # half-deleted
            pause()
        real_rmtree(p, *a, **k)

    SidIndex.save = index_save
    system_mod.os.replace = replace
    system_mod.shutil.rmtree = rmtree
    s.save_pretrained(target)
    print("DONE", flush=True)
""")

# point -> which system must load afterwards
POINTS = {"writing": "old", "before_first_rename": "old", "between_renames": "old",
          "after_second_rename": "new", "deleting_old": "new"}


def test_killed_save_leaves_a_loadable_system(saved, tmp_path):
    ref = NeoSystem.from_pretrained(saved)
    w0 = next(ref.model.parameters()).detach().clone()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    procs = {}
    try:
        for point in POINTS:  # all children at once: each spends most of its time importing
            d = copy(saved, tmp_path, f"sys_{point}")
            procs[point] = (d, subprocess.Popen([sys.executable, str(script), str(d), point], stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True, env=env))
        for point, (d, proc) in procs.items():
            line = proc.stdout.readline()
            assert line.strip() == "PAUSED", (point, line, proc.stderr.read() if proc.poll() is not None else "")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for point, (d, _) in procs.items():
        loaded = NeoSystem.from_pretrained(d)  # restores d.old-neo when d is missing
        w = next(loaded.model.parameters())
        assert torch.equal(w, w0 if POINTS[point] == "old" else w0 + 1), point
        assert find_system(d).root == d
        # the next save cleans up whatever the killed one left behind
        loaded.save_pretrained(d)
        assert not Path(str(d) + ".old-neo").exists() and not Path(str(d) + ".tmp-neo").exists()
        assert torch.equal(next(NeoSystem.from_pretrained(d).model.parameters()), w)
