"""``neo bench`` output: the markdown tables and the PNG plot of a :func:`~neo.bench.harness.run_bench` document."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any



# ---------------------------------------------------------------------------------------------- output
def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return format(v, spec)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(doc: dict[str, Any]) -> str:
    """Markdown tables: per-provider results, peers' largest catalog, e2e, budgets."""
    cols = [("provider", "provider"), ("items", "items"), ("rows", "rows"), ("status", "status"),
            ("build_s", "build/compile s"), ("memory_bytes_per_item", "B/item"), ("agree", "agree"),
            ("step_median_us", "step median us"), ("step_p99_us", "step p99 us"),
            ("row_median_us", "row median us"), ("row_p99_us", "row p99 us"), ("neo_speedup", "neo speedup")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(doc["results"], key=lambda r: (r["items"], r["rows"], r["provider"])):
        cells = []
        for k, _ in cols:
            v = r[k]
            if k == "neo_speedup" and v is not None:
                cells.append(f"{v:.1f}x")
            elif k == "status" and v != "ok":
                cells.append(f"{v}: {r['note']}"[:90])
            else:
                cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    steps: dict[str, str] = {}
    for r in doc["results"]:
        if r["extra"].get("step"):
            steps.setdefault(r["provider"], r["extra"]["step"])
    if steps:
        out += ["\n".join(["| provider | timed step (all rows) |", "|---|---|"]
                          + [f"| {p} | {w} |" for p, w in sorted(steps.items())]), ""]
    peer_lines = ["| peer | version | largest catalog within limit | limit s | stopped by |", "|---|---|---|---|---|"]
    for p, info in doc["peers"].items():
        peer_lines.append(f"| {p} | {info['version'] or '-'} | {_fmt(info['largest_items_ok'])} | "
                          f"{info['limit_s']:.0f} | {info['failure'] or '-'} |")
    out += ["\n".join(peer_lines), ""]
    e = doc["e2e"]
    if e:
        el = [f"e2e generate: {e['items']:,} items, batch {e['batch']}, {e['new_tokens']} new tokens, "
              f"{e['model']['arch']} ({e['model']['params_m']} M params); neo and prefix_allowed_tokens_fn outputs "
              f"identical: {_fmt(e['outputs_agree'])}", "",
              "| mode | tokens/s | wall s | vs unconstrained (wall) | processor us/step | share of a step |",
              "|---|---|---|---|---|---|"]
        for r in e["runs"]:
            el.append(f"| {r['mode']} | {r['tokens_per_s']:.0f} | {r['wall_s_median']:.3f} | "
                      f"{r['overhead_vs_unconstrained_pct']:+.1f}% | {_fmt(r['mask_us_per_step'])} | "
                      + (f"{r['mask_share_of_unconstrained_step_pct']:.2f}% |"
                         if r["mask_share_of_unconstrained_step_pct"] is not None else "- |"))
        ratio = e["mask_overhead_ratio"]
        el.append("")
        el.append(f"processor time per step, prefix_allowed_tokens_fn / neo: {ratio:.0f}x" if ratio is not None
                  else "neo's processor time was not recorded")
        out += ["\n".join(el), ""]
    bl = ["| budget (DESIGN.md 5) | target | measured | met |", "|---|---|---|---|"]
    for b in doc["budgets"]:
        met = "-" if b["met"] is None else ("met" if b["met"] else "not met")
        bl.append(f"| {b['what']} | {b['budget']} | {b['measured'] or '-'} | {met} |")
    out.append("\n".join(bl))
    return "\n".join(out)


def write_plot(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: per-step median time vs catalog size, one line per provider (largest rows value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(doc["config"]["rows"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    provs = sorted({r["provider"] for r in doc["results"]})
    for p in provs:
        pts = sorted((r["items"], r["step_median_us"]) for r in doc["results"]
                     if r["provider"] == p and r["rows"] == rows and r["status"] == "ok")
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        fails = [r for r in doc["results"] if r["provider"] == p and r["status"] in ("timeout", "failed")]
        for f in fails:
            ax.axvline(f["items"], ls=":", lw=0.8, color=ax.lines[-1].get_color() if pts else "gray")
            ax.annotate(f"{p} {f['status']}", (f["items"], ax.get_ylim()[0] if pts else 1), rotation=90,
                        fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog items")
    ax.set_ylabel(f"mask time per step, {rows} rows (us, median)")
    m = doc["machine"]
    ax.set_title(f"neo bench: {m.get('cpu') or m['platform']}, {m['threads']} thread(s), commit {m['commit']}",
                 fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
