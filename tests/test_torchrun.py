"""``neo train`` runs unchanged under ``torchrun``: two CPU processes (gloo) with half the batch each follow the
same loss curve as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

#: per-step losses of the two runs agree this closely (float32 sums in a different order across ranks)
RTOL, ATOL = 2e-4, 2e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tiny_system(tmp_path_factory):
    from neo.lm.system import NeoSystem
    from test_tasks import events, world_catalog

    w, cat = world_catalog()
    d = tmp_path_factory.mktemp("torchrun")
    NeoSystem(w["model"], w["tokenizer"], w["vocab"], w["index"], cat).save(d / "system")
    rows = [(u, it, t) for u, evs in events(cat, n_users=16, n=10, seed=3).items() for it, t in evs]
    (d / "events.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return d


def _train(d, out: str, batch: int, launcher: list[str]) -> dict:
    cmd = launcher + ["-m", "neo.cli", "train", "instruct", "--system", str(d / "system"), "--interactions",
                      str(d / "events.csv"), "--user-col", "user", "--item-col", "item", "--time-col", "timestamp",
                      "--item-id", "{}", "--output", str(d / out), "--max-steps", "6", "--batch-size", str(batch),
                      "--lr", "3e-3", "--logging-steps", "1", "--valid-users", "0", "--window", "4",
                      "--no-progress", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((d / out / "train_log.json").read_text())


def test_torchrun_two_processes_match_one_process(tiny_system):
    d = tiny_system
    one = _train(d, "one", 8, [sys.executable])
    two = _train(d, "two", 4, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                "--master_addr=127.0.0.1", f"--master_port={_free_port()}"])
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["global_step"] == two["global_step"] == 6
    l1 = np.array([h["loss"] for h in one["loss_history"]])
    l2 = np.array([h["loss"] for h in two["loss_history"]])
    assert len(l1) == len(l2) == 6
    np.testing.assert_allclose(l2, l1, rtol=RTOL, atol=ATOL)
    assert l1[-1] < l1[0]  # it trained
    # both processes together read the same tokens as the single process
    assert two["tokens"] == one["tokens"] and two["loss_tokens"] == one["loss_tokens"]
    from neo.lm.system import NeoSystem

    NeoSystem.load(d / "two" / "system")  # rank 0 saved a complete system
