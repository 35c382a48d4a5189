"""The package's shape, read from the source: one direction of imports, no cycles, no torch
where the runtime lives (DESIGN.md's data flow). Lazy imports inside functions count too: a
back-edge taken only at run time is still a back-edge a reader has to hold in mind."""

from __future__ import annotations

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Top-level folder -> subpackage (pyproject's package-dir).
FOLDERS = {
    "medsam_edge": "core",
    "engines": "engines",
    "runtime": "runtime",
    "export": "export",
    "calibration": "calibration",
    "serving": "serving",
    "viewer": "viewer",
    "bench": "bench",
}
# Who may import whom. `core` is medsam_edge/ itself (contract, manifest, errors, ...).
ALLOWED = {
    "core": {"core"},
    "engines": {"core", "engines"},
    "runtime": {"core", "engines", "runtime"},
    "serving": {"core", "engines", "serving"},
    "viewer": {"core", "engines", "runtime", "viewer"},
    "export": {"core", "engines", "runtime", "export"},
    "calibration": {"core", "engines", "runtime", "export", "calibration"},
    "bench": set(FOLDERS.values()),
}
# The command line wires every subcommand and `info` reports what each backend finds; both
# sit in core but only import the layers above lazily, inside the command that runs.
CORE_COMMANDS = {"medsam_edge.cli", "medsam_edge.info", "medsam_edge.docs_flags"}
# Layers that must run where torch is not installed (the runtime install).
TORCH_FREE = {"core", "engines", "runtime", "serving", "viewer"}
TORCH_PROBES = {"medsam_edge.info"}  # reports torch's version where it happens to be installed


def _modules() -> dict[str, tuple[str, pathlib.Path]]:
    mods = {}
    for folder, layer in FOLDERS.items():
        pkg = "medsam_edge" if folder == "medsam_edge" else f"medsam_edge.{folder}"
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = (layer, f)
    return mods


def _imports(path: pathlib.Path, name: str) -> set[str]:
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph() -> tuple[dict, dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    inner: dict[str, set[str]] = collections.defaultdict(set)
    outer: dict[str, set[str]] = collections.defaultdict(set)
    for name, (_, path) in mods.items():
        for imp in _imports(path, name):
            if imp in mods and imp != name:
                inner[name].add(imp)
            else:
                outer[name].add(imp.split(".")[0])
    return mods, inner, outer


def test_the_graph_is_read():
    mods, inner, _ = _graph()
    # A parser that found nothing would pass every rule below.
    assert "medsam_edge.runtime.predictor" in mods and "medsam_edge.engines.base" in mods
    assert inner["medsam_edge.runtime.predictor"], "predictor imports nothing from the package?"


def test_no_import_cycles():
    mods, inner, _ = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in inner.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_go_one_way():
    mods, inner, _ = _graph()
    bad = [
        f"{a} -> {b}"
        for a, targets in inner.items()
        for b in targets
        if a not in CORE_COMMANDS and mods[b][0] not in ALLOWED[mods[a][0]]
    ]
    assert not bad, "imports against the layering (DESIGN.md):\n" + "\n".join(sorted(bad))


def test_the_runtime_never_imports_torch():
    mods, _, outer = _graph()
    bad = [m for m, (layer, _) in mods.items()
           if layer in TORCH_FREE and m not in TORCH_PROBES and "torch" in outer.get(m, ())]
    assert not bad, f"torch imported where the runtime lives: {sorted(bad)}"
