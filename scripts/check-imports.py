#!/usr/bin/env python3
"""Checks the shape of crates' modules (docs/ARCHITECTURE.md, "Invariants").

For each crate named on the command line: its top-level modules (src/x.rs or src/x/) must form
no cycle through the paths they name: `crate::a::…`, `use crate::{a, b::{c, d}}`, `super::…`
chains that climb to the crate root, and names the crate root re-exports (`pub use a::X` in
lib.rs makes `crate::X` a use of `a`). A module may use its own children, the crate root
(lib.rs, main.rs) is no node, and test-only code (`#[cfg(test)] mod …`) does not count: a test
may use any fixture. With --features M,N: those modules must not name `Worker`.

Usage: scripts/check-imports.py CRATE_DIR [--features a,b] [CRATE_DIR ...]
Exits 1 and names each cycle (or feature naming `Worker`) it finds.
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
WORKER = re.compile(r"\bWorker\b")
CFG_TEST = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])")


def strip_code(text: str) -> str:
    """The code without comments, string and char literals (each literal becomes `""`)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not re.match(r"\w", text[i - 1 : i] or " "):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i : i + 4]):
            i = text.find("'", i + 2) + 1
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


def without_tests(code: str) -> tuple[str, list[str]]:
    """The code less its inline test modules, and the names of test-only module files."""
    test_files = []
    while m := CFG_TEST.search(code):
        if m.group(2) == ";":
            test_files.append(m.group(1))
            code = code[: m.start()] + code[m.end() :]
        else:
            end = matching_brace(code, m.end() - 1)
            code = code[: m.start()] + code[end + 1 :]
    return code, test_files


def group_heads(group: str) -> list[str]:
    """The first segment of every path in a `{…}` group, nested groups included."""
    heads, depth, start = [], 0, 0
    for i, c in enumerate(group + ","):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            part = group[start:i].strip()
            start = i + 1
            if part.startswith("{"):
                heads += group_heads(part[1:-1])
            elif part:
                heads.append(re.split(r"\s*::\s*|\s+as\s+", part)[0].strip())
    return heads


def head_or_group(code: str, m: re.Match, group: int) -> list[str]:
    """The name a path match ends on, or every head of the `{…}` group it opens."""
    if m.group(group) == "{":
        return group_heads(code[m.end() : matching_brace(code, m.end() - 1)])
    return [m.group(group)]


def named_from_root(code: str) -> set[str]:
    """The first segments of every path the code names from the crate root (`crate::`)."""
    names = set()
    for m in re.finditer(r"\bcrate\s*::\s*(\{|" + IDENT + ")", code):
        names.update(head_or_group(code, m, 1))
    return names


def climbs_to_root(code: str, depth: int) -> set[str]:
    """What `super::…` chains that reach the crate root name there (`depth`: the file's module
    depth below the root: 1 for src/a.rs and src/a/mod.rs, 2 for src/a/b.rs)."""
    names = set()
    for m in re.finditer(r"\b((?:super\s*::\s*)+)(\{|" + IDENT + ")", code):
        if m.group(1).count("super") == depth:
            names.update(head_or_group(code, m, 2))
    return names


def module_files(src: Path) -> dict[Path, tuple[str, int]]:
    """Each file of a top-level module, with that module and the file's depth, less test-only
    files (declared `#[cfg(test)] mod x;`)."""
    files = {}
    for file in sorted(src.rglob("*.rs")):
        rel = file.relative_to(src)
        if rel.parts[0] in ("lib.rs", "main.rs", "bin"):
            continue
        depth = len(rel.parts) - (1 if rel.name == "mod.rs" else 0)
        files[file] = (rel.parts[0].removesuffix(".rs"), depth)
    excluded = set()
    for file in [src / "lib.rs", src / "main.rs", *files]:
        if not file.exists():
            continue
        _, test_mods = without_tests(strip_code(file.read_text()))
        here = file.parent if file.name in ("mod.rs", "lib.rs", "main.rs") else file.with_suffix("")
        for name in test_mods:
            for candidate in (here / f"{name}.rs", here / name):
                excluded.add(candidate)
    return {
        f: m
        for f, m in files.items()
        if not any(f == x or x in f.parents for x in excluded)
    }


def root_reexports(src: Path, modules: set[str]) -> dict[str, str]:
    """Names lib.rs re-exports from a module: `pub use a::b::X;` maps `X` to `a`."""
    lib = src / "lib.rs"
    if not lib.exists():
        return {}
    code, _ = without_tests(strip_code(lib.read_text()))
    names = {}
    for m in re.finditer(r"\bpub\s+use\s+(?:crate\s*::\s*)?(" + IDENT + r")\s*::\s*([^;]*);", code):
        if m.group(1) not in modules:
            continue
        tail = m.group(2)
        for item in re.findall(IDENT + r"(?:\s+as\s+" + IDENT + r")?", tail.split("::")[-1]):
            names[item.split()[-1]] = m.group(1)
    return names


def graph(src: Path) -> tuple[dict[str, set[str]], dict[str, str]]:
    files = module_files(src)
    modules = {m for m, _ in files.values()}
    reexports = root_reexports(src, modules)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    code_of: dict[str, str] = {m: "" for m in modules}
    for file, (module, depth) in files.items():
        code, _ = without_tests(strip_code(file.read_text()))
        code_of[module] += code + "\n"
        named = named_from_root(code) | climbs_to_root(code, depth)
        used = {reexports.get(n, n) for n in named}
        edges[module] |= {u for u in used if u in modules and u != module}
    return edges, code_of


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
    edges, code_of = graph(crate / "src")
    problems = []
    for component in cycles(edges):
        detail = "; ".join(
            f"{m} -> {', '.join(sorted(edges[m] & set(component)))}" for m in component
        )
        problems.append(f"{crate}: modules in an import cycle: {detail}")
    for feature in features:
        if feature not in code_of:
            problems.append(f"{crate}: no module {feature}")
        elif WORKER.search(code_of[feature]):
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
