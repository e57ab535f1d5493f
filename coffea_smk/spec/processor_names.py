"""Whether the processor's module defines the named attribute, read from its source.

The workflow never imports the user's module while it is parsed (an import can take
seconds and runs the user's code); a misspelt class name would otherwise only show in
the first processing job, after preprocessing. The module's source tells, without
running it, which names its top level binds.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

from coffea_smk.spec.processor import module_origin

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _cannot_tell(tree: ast.Module) -> bool:
    """Whether names may be bound in ways the source does not show: a star import, a
    ``global`` statement, ``globals()`` or ``vars()``, a module ``__getattr__``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
        if isinstance(node, ast.Global):
            return True
        call = node.func if isinstance(node, ast.Call) else None
        if isinstance(call, ast.Name) and call.id in ("globals", "vars"):
            return True
    return any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)


def _bound_names(tree: ast.Module) -> set[str]:
    """The names the module's top level binds (definitions, imports, assignments, in any block)."""
    names: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue  # their bodies bind no module names
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        todo.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, _SCOPES))
    return names


def missing_attribute(spec: str, basedir: str | None) -> str | None:
    """Why ``spec`` (``module:attribute``) names nothing in its module, or None (it does, or
    the source cannot tell, or the module is no source file).

    Raises:
        ProcessorError: The module cannot be found.
    """
    module, _, attribute = spec.partition(":")
    origin = module_origin(spec, basedir)
    if origin is None or origin.suffix != ".py":
        return None
    try:
        tree = ast.parse(Path(origin).read_bytes(), str(origin))
    except (OSError, SyntaxError, ValueError):
        return None  # the job's import says what is wrong with it
    first = attribute.split(".")[0]
    names = _bound_names(tree)
    submodule = origin.name == "__init__.py" and any(
        (origin.parent / name).exists() for name in (f"{first}.py", first)
    )
    if first in names or submodule or _cannot_tell(tree):
        return None
    close = difflib.get_close_matches(first, sorted(n for n in names if not n.startswith("_")), n=1)
    hint = f" (did you mean '{module}:{close[0]}'?)" if close else ""
    return (
        f"processor {spec!r}: module {module!r} ({origin}) defines no {first!r}{hint}; "
        "check the 'processor' key of the config (\"module:attribute\")"
    )
