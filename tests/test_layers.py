"""The house: each layer imports only the layers below it, and no module imports itself back.

Every import statement counts, those inside functions included (a lazy import hides a
cycle from Python, not from this test).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "coffea_smk"

# From the top down: a module may import its own layer's modules and those of any layer below.
LAYERS = [
    ("cli", "demo", "__main__", "compute"),
    ("smk",),
    ("post",),
    ("engine",),
    ("events",),
    ("buffers",),
    ("io",),
    ("results", "skim"),
    ("spec",),
    ("util", "examples", "_version"),
]
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["coffea_smk", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _module_or_base(base: str, name: str) -> str:
    return f"{base}.{name}" if f"{base}.{name}" in MODULES else base


def _imports(name: str, path: Path) -> set[str]:
    """The coffea_smk modules that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base]).strip(".")
            targets = [_module_or_base(base, alias.name) for alias in node.names]
        else:
            continue
        for target in targets:
            module = target
            while module and module not in MODULES:  # an attribute of a module: the module
                module = module.rpartition(".")[0]
            if module.startswith("coffea_smk") and module != name:
                found.add(module)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package's __init__: lazy re-exports of public names only
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        rank = _layer(module)
        for target in targets:
            other = _layer(target)
            if rank is not None and other is not None and other < rank:
                wrong.append(f"{module} imports {target} (a layer above it)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the whole import graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # the package's __init__ re-exports lazily (module __getattr__): not an import cycle
    cycles = [c for c in cycles if c != ["coffea_smk"] and "coffea_smk" not in c]
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_is_too_long_to_read_in_one_sitting() -> None:
    lines = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
