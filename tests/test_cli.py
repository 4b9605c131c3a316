"""The ``neo`` command: parses before importing anything heavy, every option documented, usage errors show the
command's own usage, the user's input errors print one line and exit 2 (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

import pytest

from neo.cli.main import COMMANDS, build_parser

HEAVY = ("torch", "transformers", "numpy", "triton", "sklearn", "pandas")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neo.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_help_imports_nothing_heavy():
    code = textwrap.dedent(f"""
        import sys, contextlib, io
        from neo.cli.main import main, COMMANDS
        for argv in [["--help"]] + [[c, "--help"] for c in COMMANDS]:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0, (argv, e.code)
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_import_neo_is_lazy_and_names_resolve():
    code = "import sys, neo; assert 'torch' not in sys.modules; neo.SidIndex; assert 'torch' not in sys.modules; " \
           "neo.NeoSystem; neo.train.align; neo.evaluation.leave_one_out; neo.tasks.TaskBuilder; " \
           "neo.datasets.load_movielens; neo.baselines.SASRec; print(len(neo.__all__))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_every_public_name_resolves():
    import neo

    missing = [n for n in neo.__all__ if not hasattr(neo, n)]
    assert not missing, missing


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return parser.commands  # type: ignore[attr-defined]


def test_every_option_has_help_and_the_commands_prog():
    parser = build_parser()
    assert set(_subparsers(parser)) == set(COMMANDS)
    for name, sub in _subparsers(parser).items():
        assert sub.prog == f"neo {name}", sub.prog
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"neo {name}: {action.option_strings or action.dest} has no help"


#: the least each command needs to get past its required arguments
REQUIRED = {"train": ["align", "--system", "s", "--output", "o"], "build": ["--catalog", "c", "--output", "o"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unknown_option_shows_the_commands_usage(command):
    r = _run(command, *REQUIRED.get(command, []), "--bogus-option")
    assert r.returncode == 2
    assert f"usage: neo {command}" in r.stderr and "unrecognized arguments: --bogus-option" in r.stderr, r.stderr


def test_train_help_names_neo_train():
    r = _run("train", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: neo train"), r.stdout[:200]
    assert "python -m neo.train" not in r.stdout


@pytest.mark.parametrize("option,value,says", [("--pack-length", "0", "must be a whole number >= 1"),
                                                ("--average-decay", "1.5", "between 0 and 1"),
                                                ("--sid-smoothing", "x", "between 0 and 1")])
def test_train_refuses_bad_numbers_at_parse_time(option, value, says):
    r = _run("train", *REQUIRED["train"], option, value)
    assert r.returncode == 2 and f"argument {option}: " in r.stderr and says in r.stderr, r.stderr


def test_data_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "ratings.csv"
    bad.write_text("a,b\n1,2\n")
    r = _run("eval", "--data", str(bad), "--baselines", "popularity")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("neo eval: error: ") and "ratings.csv" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "nope.csv"
    r = _run("eval", "--data", str(missing))
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(missing) in r.stderr, r.stderr
    r = _run("eval", "--debug", "--data", str(missing))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_train_without_interactions_is_one_line_and_exit_2(tmp_path):
    r = _run("train", "--system", str(tmp_path), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == "neo train: error: neo train all needs --interactions (the user-item events to train on)"


def test_auto_threads_follows_the_load(monkeypatch):
    from neo.cli import _threads

    busy = {"now": 0.1}
    monkeypatch.setattr(_threads, "busy_cores", lambda interval=0.2: busy["now"])
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _threads.auto_threads() == 2                     # idle 2-core machine: both cores
    busy["now"] = 1.2
    assert _threads.auto_threads() == 1                     # one core busy
    busy["now"] = 7.0
    assert _threads.auto_threads() == 1                     # overloaded: never below one
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    busy["now"] = 0.0
    assert _threads.auto_threads() == 4                     # capped: the demo's models do not scale further


def test_busy_cores_sees_a_spinning_process():
    import multiprocessing as mp

    from neo.cli._threads import busy_cores

    if not os.path.exists("/proc/stat"):
        pytest.skip("reads /proc/stat (Linux)")
    stop = mp.Event()
    p = mp.Process(target=_spin, args=(stop,))
    p.start()
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 0.6                       # one process spinning = about one busy core
    finally:
        stop.set()
        p.join(5)


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def test_set_threads_applies_an_explicit_count():
    import torch

    from neo.cli._threads import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(0) == 1                          # 0 leaves the current setting alone
    finally:
        torch.set_num_threads(before)
