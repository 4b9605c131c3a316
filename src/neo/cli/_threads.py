"""``--threads`` for the commands that train: how many torch CPU threads to use."""

from __future__ import annotations

import os
import time

THREADS_HELP = ("torch CPU threads (default auto: the cores other processes leave idle, measured over 0.2 s, at "
                "least 1 and at most 4; the demo trains 1.6-1.9x faster on two idle cores than on one, and threads "
                "that compete with other jobs slow it several-fold; 0: torch's default)")


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where it does not exist."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.2) -> float:
    """How many cores other processes keep busy now: /proc/stat sampled ``interval`` s apart (Linux), else the
    1-minute load average (which lags by a minute: a job that just ended still counts)."""
    a = _cpu_times()
    if a is not None:
        time.sleep(interval)
        b = _cpu_times()
        if b is not None and b[1] > a[1]:
            return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def auto_threads(max_threads: int = 4) -> int:
    """Cores not busy with other work: ``usable cores - round(busy cores)``, clipped to ``[1, max_threads]``.

    Measured on a 2-core machine (``benchmarks/results/rec.md``): with both cores idle, two threads train the
    demo's model 1.6-1.9x faster than one (tokens/s); on a loaded machine extra threads oversubscribe the
    cores (an earlier demo run with 2 threads at load 3-5 slowed stage 0 eight-fold), so the choice looks at
    the load first.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(max_threads, cores - int(round(busy_cores()))))


def set_threads(threads: int | None) -> int:
    """Apply ``--threads`` (``None``: :func:`auto_threads`; 0: leave torch's default) and return the count in use."""
    import torch

    if threads is None:
        threads = auto_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
