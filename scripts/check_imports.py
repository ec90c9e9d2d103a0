#!/usr/bin/env python3
"""The import layering of Tidegate's packages, checked from the source (no import is run).

    python scripts/check_imports.py [ROOT]     # exit 1 and one line per violation, else exit 0

Rules (the pipeline reads top to bottom; data and calls flow down, never back up):
  * packages: tests > testbed > control > dataplane: a package imports only those after it;
  * inside a package, its LAYERS, top first: a module imports only from its own layer or lower
    ones; modules of one layer (`rpc | observe | fleet | ...`) may import each other;
  * every subpackage and module directly inside a layered package is in one of its layers (a new
    one must be placed: add it to LAYERS below);
  * no import cycles between modules, lazy (inside a function) and TYPE_CHECKING imports
    included: a cycle broken by a lazy import is still a cycle.

Every `import` and `from ... import` statement counts, wherever it stands in the file.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("tests", "testbed", "control", "dataplane")  # top first
# Layers inside a package, top first; each layer is a set of its direct children (subpackages
# or modules) that may import each other.
LAYERS: dict[str, list[set[str]]] = {
    "control": [
        {"cli"},                          # the `tidegate` command (a client; also starts the daemon)
        {"daemon", "sd_notify", "daemon_lock"},  # the daemon process: wires everything below together
        # the sources and readers of changes: the gRPC API; events, metrics, traces; fleet mode
        # (etcd); iptables/nftables import; the daemon's config (the CLI and fleet mode read it too)
        {"rpc", "observe", "fleet", "migrate", "daemon_config"},
        {"apply"},                        # controller, reconciler, state store, routing
        {"policy"},                       # models, edits and diffs, intent
        {"errors"},                       # error kinds shared by all of the above
    ],
}
# Cycles that exist today and are being removed elsewhere: tolerated while exactly these
# modules form a cycle, reported as stale once they no longer do (then delete the entry).
KNOWN_CYCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the nearest first-party module or package)
    path: Path
    line: int


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every first-party module (a package by its __init__.py)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _nearest(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imports(root: Path) -> Iterator[Import]:
    """Every first-party import of every first-party module."""
    known = modules(root)
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                         for alias in node.names]
            else:
                continue
            targets = {_nearest(name, known) for name in names}
            for target in sorted(t for t in targets if t is not None and t != module):
                yield Import(module, target, path, node.lineno)


def _layer(package: str, module: str) -> int | None:
    """Index of the layer of `module` in `package` (None: not inside it, or the package itself)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != package:
        return None
    for index, layer in enumerate(LAYERS[package]):
        if parts[1] in layer:
            return index
    return -1


def _layers_text(package: str) -> str:
    return " > ".join(" | ".join(sorted(layer)) for layer in LAYERS[package])


def layering(edges: list[Import], root: Path) -> list[str]:
    problems = []
    for e in edges:
        where = f"{e.path.relative_to(root)}:{e.line}: {e.source} imports {e.target}"
        src, dst = e.source.split(".")[0], e.target.split(".")[0]
        if PACKAGES.index(dst) < PACKAGES.index(src):
            problems.append(f"{where}: {src} may not import {dst} (packages, top first: "
                            f"{' > '.join(PACKAGES)})")
            continue
        if src != dst or src not in LAYERS:
            continue
        mine, theirs = _layer(src, e.source), _layer(src, e.target)
        if mine is None or theirs is None or mine < 0 or theirs < 0:
            continue  # unplaced modules are reported once each, below
        if theirs < mine:
            problems.append(f"{where}: {e.source.split('.')[1]} may not import {e.target.split('.')[1]} "
                            f"({src}'s layers, top first: {_layers_text(src)})")
    return problems


def unplaced(root: Path) -> list[str]:
    problems = []
    for package in LAYERS:
        children = {p.stem if p.suffix == ".py" else p.name for p in (root / package).iterdir()
                    if (p.suffix == ".py" and p.stem != "__init__")
                    or (p.is_dir() and any(p.rglob("*.py")))}  # packages, namespace ones too
        for child in sorted(children - set().union(*LAYERS[package])):
            problems.append(f"{package}/{child}: {package}.{child} is in none of {package}'s layers "
                            f"({_layers_text(package)}): add it to LAYERS in scripts/check_imports.py")
    return problems


def cycles(edges: list[Import]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def check(root: Path, known_cycles: list[frozenset[str]] = KNOWN_CYCLES) -> list[str]:
    """Every violation under `root`, one line each; empty when the layering holds."""
    edges = list(imports(root))
    problems = layering(edges, root) + unplaced(root)
    found = cycles(edges)
    for component in found:
        if component not in known_cycles:
            chain = [e for e in edges if e.source in component and e.target in component]
            lines = ", ".join(f"{e.source} -> {e.target} ({e.path.relative_to(root)}:{e.line})"
                              for e in sorted(chain, key=lambda e: (e.source, e.target)))
            problems.append(f"import cycle between {', '.join(sorted(component))}: {lines}")
    for component in known_cycles:
        if component not in found:
            problems.append(f"KNOWN_CYCLES in scripts/check_imports.py lists {', '.join(sorted(component))}, "
                            "which no longer form a cycle: delete the entry")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} import layering problems (rules: scripts/check_imports.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
