"""Finding the user's processor from ``"module:attribute"`` and fingerprinting it."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coffea_smk._version import __version__
from coffea_smk.util.hashing import key_of


class ProcessorError(RuntimeError):
    """The processor cannot be imported, or is not a processor."""


@dataclass
class Processor:
    """The two calls coffea_smk makes on a user's processor."""

    spec: str
    process: Callable[[Any], Any]
    postprocess: Callable[[Any], Any] | None
    wants_coffea_events: bool = False


@contextlib.contextmanager
def _on_path(basedir: str | None) -> Iterator[None]:
    if not basedir:
        yield
        return
    sys.path.insert(0, basedir)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(basedir)


def load_processor(spec: str, basedir: str | None = None) -> Processor:
    """Import ``module:attribute`` (from ``basedir`` first) and wrap it.

    The attribute may be a class (instantiated without arguments), an object
    with ``process(events)`` and optionally ``postprocess(accumulator)``, or a
    plain callable ``f(events)``.

    Raises:
        ProcessorError: Import fails, the attribute is missing, or it is not a processor.
    """
    module_name, _, attr = spec.partition(":")
    with _on_path(basedir):
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            tb = "".join(traceback.format_exception(err))
            where = f" (looked in {basedir} and the Python path)" if basedir else ""
            raise ProcessorError(f"cannot import processor module {module_name!r}{where}:\n{tb}") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ProcessorError(f"processor {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as err:
            raise ProcessorError(
                f"processor {spec!r}: the class cannot be created without arguments: {err}"
            ) from err
    process = getattr(obj, "process", None)
    if callable(process):
        post = getattr(obj, "postprocess", None)
        return Processor(spec, process, post if callable(post) else None, _is_coffea_processor(obj))
    if callable(obj):
        return Processor(spec, obj, None)
    raise ProcessorError(
        f"processor {spec!r} is a {type(obj).__name__}: it needs a process(events) method or must be callable"
    )


def _is_coffea_processor(obj: Any) -> bool:
    return any(c.__module__.startswith("coffea.processor") for c in type(obj).__mro__[1:])


def module_origin(spec: str, basedir: str | None) -> Path | None:
    """The source file of the processor's module, located without importing it (None: not a file).

    Raises:
        ProcessorError: The module cannot be found.
    """
    module_name = spec.partition(":")[0]
    with _on_path(basedir):
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError) as err:
            raise ProcessorError(f"processor {spec!r}: cannot locate module {module_name!r}: {err}") from err
    if found is None:
        where = f"{basedir} and " if basedir else ""
        raise ProcessorError(
            f"processor {spec!r}: no module {module_name!r} in {where}the Python path; "
            "check the 'processor' key of the config (\"module:attribute\")"
        )
    return Path(found.origin) if found.origin and Path(found.origin).is_file() else None


def processor_tag(spec: str, basedir: str | None, version: str, schema: str) -> str:
    """A key that changes when the processor's source file, the version tag or the schema changes.

    The module is located without being imported; only its own source file is
    hashed (edit ``version`` in the config to re-run after changing a helper).
    """
    origin = module_origin(spec, basedir)
    digest = hashlib.sha256(origin.read_bytes()).hexdigest() if origin is not None else "unknown"
    return key_of("processor", spec, digest, version, schema, __version__.split(".")[0])
