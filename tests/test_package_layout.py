"""The package follows its data flow: no lower layer imports a higher one, kernels/ never imports neo,
only csrc/bindings/ includes pybind11, and the docs name only files that exist in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "neo"

#: layer of each subpackage: a module may import its own layer or lower ones, never a higher one
LAYERS = {
    "core": 0,
    "items": 1,
    "lm": 2,
    "training": 3, "evaluation": 3, "scoring": 3, "bench": 3, "integrations": 3,
    "cli": 4,
}
#: top-level modules of neo that are not layers: the compiled core, bundled data, the lazy package face
NEUTRAL = {"_core", "data", "kernels", "__init__"}


def _subpackage(module: str) -> str | None:
    """``neo.lm.processor`` -> ``lm``; ``None`` outside neo."""
    parts = module.split(".")
    if parts[0] != "neo":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module imported anywhere in ``path`` (function-level imports too), absolute."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from .. import x: x may be a module
                    out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
                    continue
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.parent != SRC or p.name != "__init__.py")


def test_every_module_belongs_to_a_layer():
    for p in _modules():
        top = p.relative_to(SRC).parts[0].removesuffix(".py")
        assert top in LAYERS or top in NEUTRAL, f"{p.relative_to(ROOT)}: not in a layer of {sorted(LAYERS)}"


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for p in _modules():
        src = p.relative_to(SRC).parts[0].removesuffix(".py")
        if src not in LAYERS:
            continue
        for line, mod in _imports(p):
            dst = _subpackage(mod)
            if dst in LAYERS and LAYERS[dst] > LAYERS[src]:
                bad.append(f"{p.relative_to(ROOT)}:{line} ({src}) imports {mod} ({dst})")
            if dst == "__init__" and mod == "neo" and src != "cli":  # the face imports every layer
                bad.append(f"{p.relative_to(ROOT)}:{line} imports the package face `neo`")
    assert not bad, "\n".join(bad)


def test_peer_layers_have_no_import_cycles():
    edges: dict[str, set[str]] = {k: set() for k in LAYERS}
    for p in _modules():
        src = p.relative_to(SRC).parts[0].removesuffix(".py")
        if src in LAYERS:
            for _, mod in _imports(p):
                dst = _subpackage(mod)
                if dst in LAYERS and dst != src:
                    edges[src].add(dst)
    cycles = [(a, b) for a in edges for b in edges[a] if a in edges[b]]
    assert not cycles, f"subpackages importing each other: {cycles}"


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    # the checker itself must be able to fail: a core module importing lm is reported
    fake = SRC / "core" / "_layering_probe.py"
    try:
        fake.write_text("def f():\n    from ..lm.processor import SidLogitsProcessor\n")
        with pytest.raises(AssertionError, match="_layering_probe.py:2 \\(core\\) imports neo.lm.processor"):
            test_no_lower_layer_imports_a_higher_one()
    finally:
        fake.unlink()


def test_kernels_never_import_neo():
    bad = []
    for p in sorted((ROOT / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{p.name}:{node.lineno} {n}" for n in names if n == "neo" or n.startswith("neo.")]
    assert not bad, bad


def test_only_the_bindings_include_pybind11():
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*")
           if p.suffix in {".h", ".hpp", ".cc", ".cpp"} and "pybind11" in p.read_text()
           and "bindings" not in p.relative_to(ROOT / "csrc").parts]
    assert not bad, bad


def test_docs_name_only_files_that_exist():
    """Every ``*.md`` named in the docs, docstrings and help texts is a file of this repository."""
    existing = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and "build" not in p.parts}
    texts = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "DESIGN.md", *(ROOT / "csrc").rglob("*.md"),
             *SRC.rglob("*.py"), *(ROOT / "kernels").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
             *(ROOT / "benchmarks").rglob("*.md")]
    missing = set()
    for t in texts:
        for name in re.findall(r"[A-Za-z0-9_.\-/]+\.md\b", t.read_text()):
            if Path(name).name not in existing:
                missing.add(f"{t.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)
