"""Shared benchmark harness: timing, machine facts, JSON output.

Every benchmark script in this folder times with :func:`time_fn`, records :func:`machine_info`, and
writes its rows with :func:`write_results` (JSON under ``benchmarks/results/``), so numbers from
different scripts are comparable and machine-readable. Benchmarks are never imported by the package.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_fn(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeat: int = 20,
    min_time_s: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Time ``fn()``; returns median / p10 / p99 / mean / min in microseconds and the sample count.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called after each call so asynchronous GPU work is
    inside the measured interval. At least ``repeat`` samples are taken, more until ``min_time_s``.
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < repeat or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) * 1e6)
    a = np.asarray(samples)
    return {
        "median_us": float(np.median(a)),
        "p10_us": float(np.percentile(a, 10)),
        "p99_us": float(np.percentile(a, 99)),
        "mean_us": float(a.mean()),
        "min_us": float(a.min()),
        "n": int(a.size),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - a benchmark must run outside a git checkout too
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Facts needed to reproduce a number: CPU, cores, memory, versions, GPU, commit, date."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "commit": _git_commit(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def write_results(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                  out_dir: str | Path | None = None) -> Path:
    """Write ``{"machine": ..., "rows": rows, **extra}`` to ``<out_dir>/<name>.json``; returns the path."""
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), "rows": rows, **(extra or {})}
    path.write_text(json.dumps(payload, indent=1))
    return path


def markdown_table(rows: list[dict[str, Any]], columns: list[str], floatfmt: str = ".3g") -> str:
    """Render rows as a GitHub markdown table with the given columns."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
