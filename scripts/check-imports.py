#!/usr/bin/env python3
"""Checks the shape of crates' modules (docs/ARCHITECTURE.md, "Invariants").

For each crate named on the command line: its top-level modules (src/x.rs or src/x/) must form
no cycle through `crate::` paths; a module may use its own children, and the crate root (lib.rs,
main.rs) is no node. With --features M,N: those modules must not name `Worker`.

Usage: scripts/check-imports.py CRATE_DIR [--features a,b] [CRATE_DIR ...]
Exits 1 and names each cycle (or feature naming `Worker`) it finds.
"""

import re
import sys
from pathlib import Path

CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` names several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)
WORKER = re.compile(r"\bWorker\b")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def top_module(src: Path, file: Path) -> str | None:
    rel = file.relative_to(src)
    if rel.parts[0] in ("lib.rs", "main.rs", "bin"):
        return None
    return rel.parts[0].removesuffix(".rs")


def modules(src: Path) -> dict[str, str]:
    """Each top-level module's whole source (its file and its children's)."""
    code: dict[str, str] = {}
    for file in sorted(src.rglob("*.rs")):
        name = top_module(src, file)
        if name is not None:
            code[name] = code.get(name, "") + strip_comments(file.read_text()) + "\n"
    return code


def graph(code: dict[str, str]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in code}
    for name, text in code.items():
        used = set(CRATE_PATH.findall(text))
        for group in CRATE_GROUP.findall(text):
            used.update(part.strip().split("::")[0] for part in group.split(","))
        edges[name] = {m for m in used if m in code and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def check(crate: Path, features: list[str]) -> list[str]:
    src = crate / "src"
    code = modules(src)
    edges = graph(code)
    problems = []
    for component in cycles(edges):
        detail = "; ".join(
            f"{m} -> {', '.join(sorted(edges[m] & set(component)))}" for m in component
        )
        problems.append(f"{crate}: modules in an import cycle: {detail}")
    for feature in features:
        if feature not in code:
            problems.append(f"{crate}: no module {feature}")
        elif WORKER.search(code[feature]):
            problems.append(f"{crate}: feature module {feature} names `Worker`")
    return problems


def main(argv: list[str]) -> int:
    problems = []
    checked = []
    i = 0
    while i < len(argv):
        crate = Path(argv[i])
        features: list[str] = []
        i += 1
        if i + 1 < len(argv) and argv[i] == "--features":
            features = [m for m in argv[i + 1].split(",") if m]
            i += 2
        problems += check(crate, features)
        checked.append(str(crate))
    if not checked:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"check-imports: no import cycle in {', '.join(checked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
