"""Result files: a zip of ``.npy`` arrays plus a JSON tree, loaded without running code.

A result file holds a processor output (``hist.Hist``, nested dicts, numbers,
strings, numpy arrays, sets, lists, tuples) and a ``meta`` record (events,
chunk ranges, provenance). Nothing in it is unpickled unless the user opted in
with ``allow_pickle``: a planted file on a shared disk cannot run code in a
merge job. Files are written atomically and validated on read (zip CRCs,
format tag), so a truncated or garbage file is reported, never merged.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import hist
import hist.serialization
import numpy as np

from coffea_smk.skim import SkimOutput, column_values, set_at, skims_in
from coffea_smk.util import containers
from coffea_smk.util.atomic import write_with

FORMAT = "coffea_smk.result"
VERSION = 1
_HEADER = "__coffea_smk__"


class IncompleteResultWarning(UserWarning):
    """A per-dataset or global result does not cover all the events it should."""


class ResultFileError(ValueError):
    """A result file is missing, truncated, corrupted or not a coffea_smk result."""


class PickledResultError(ResultFileError):
    """A result file holds objects stored with cloudpickle, and ``allow_pickle`` was not given."""


@dataclass
class Stored:
    """A result together with its bookkeeping record."""

    result: Any
    meta: dict[str, Any] = field(default_factory=dict)


def save(
    path: str | os.PathLike[str],
    result: Any,
    meta: dict[str, Any] | None = None,
    *,
    allow_pickle: bool = False,
) -> None:
    """Write ``result`` and ``meta`` to ``path`` atomically.

    Raises:
        TypeError: ``result`` holds a type with no safe encoding and
            ``allow_pickle`` is false; the message names where it sits.
    """
    encoder = _Encoder(allow_pickle)
    tree = encoder.encode(result, "result")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "pickled": encoder.pickled,
        "meta": meta or {},
        "result": tree,
    }
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    arrays = dict(encoder.arrays)
    arrays[_HEADER] = np.frombuffer(raw, dtype=np.uint8)
    write_with(path, lambda handle: np.savez_compressed(handle, **arrays))  # type: ignore[arg-type]  # numpy's stub types the first keyword as allow_pickle


def load(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Any:
    """Return the processor output stored in a coffea_smk result file.

    A skim made from coffea's ``column_accumulator`` comes back as one, holding the values of
    every event in file and entry order (read from the skim's files); other skims as
    :class:`~coffea_smk.skim.SkimOutput` (their files, rows and totals).

    Args:
        path: A partial, per-dataset or global result (``.npz``) of coffea_smk.
        allow_pickle: Also decode objects that were stored with cloudpickle.
            Loading them runs code from the file: only do it for files you trust.
    """
    stored = load_stored(path, allow_pickle=allow_pickle)
    meta = stored.meta
    if meta.get("complete") is False:
        warnings.warn(
            IncompleteResultWarning(
                f"{path} is INCOMPLETE: {meta.get('events')} of {meta.get('events_expected')} events "
                f"processed; failed chunks and unreadable files are listed by `coffea-smk status` "
                "and redone by running the workflow again"
            ),
            stacklevel=2,
        )
    result = stored.result
    for at, skim in skims_in(result).items():
        if skim.column:  # coffea's column_accumulator: the concatenated values, as coffea gives them
            if not at:
                return column_values(skim)
            set_at(result, at, column_values(skim))
    return result


def load_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return only the bookkeeping record of a result file (events, ranges, provenance)."""
    with _open_npz(path) as npz:
        return dict(_read_header(path, npz)["meta"])


def load_stored(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Stored:
    """Return result and meta of a result file, validating it on the way."""
    with _open_npz(path) as npz:
        header = _read_header(path, npz)
        if header["pickled"] and not allow_pickle:
            raise PickledResultError(
                f"{path}: holds objects stored with cloudpickle ({', '.join(header['pickled'])}); "
                "loading them runs code from the file. Pass allow_pickle=True "
                "(config: allow_pickle: true) only for files you trust."
            )
        try:
            result = _Decoder(npz).decode(header["result"], "result")
        except ImportError as err:
            # not a damaged file (a merge would remove it): a missing optional dependency
            raise ModuleNotFoundError(f"{path}: {err}", name=err.name) from None
        except (KeyError, ValueError, zipfile.BadZipFile, OSError) as err:
            raise ResultFileError(f"{path}: corrupted result file ({err}); delete it and re-run") from err
    return Stored(result, dict(header["meta"]))


def _open_npz(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ResultFileError(f"{p}: no such result file")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ResultFileError(
            f"{p}: not a readable result file ({type(err).__name__}: {err}); "
            "it may be truncated by a crash: delete it and re-run"
        ) from err


def _read_header(path: str | os.PathLike[str], npz: Any) -> dict[str, Any]:
    try:
        header = json.loads(npz[_HEADER].tobytes())
    except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise ResultFileError(
            f"{path}: not a valid coffea_smk result ({type(err).__name__}: {err}); delete it and re-run"
        ) from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ResultFileError(f"{path}: not a coffea_smk result file")
    if header.get("version") != VERSION:
        raise ResultFileError(
            f"{path}: result format version {header.get('version')} is not supported "
            f"(this coffea_smk reads version {VERSION})"
        )
    return header


class _Encoder:
    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.arrays: dict[str, np.ndarray] = {}
        self.pickled: list[str] = []

    def _ref(self, array: np.ndarray) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = array
        return key

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and type(obj) is int:
            return obj
        if type(obj) is float:
            return obj if math.isfinite(obj) else {"float": repr(obj)}
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject:
                return self._fallback(obj, where)
            return {"scalar": self._ref(np.asarray(obj))}
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                return self._fallback(obj, where)
            return {"array": self._ref(obj)}
        name = containers.container_name(obj)
        if name is not None:
            return self._encode_container(name, obj, where)
        if type(obj) is dict:  # a subclass of another type would come back a dict
            return {
                "dict": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in obj.items()]
            }
        if isinstance(obj, (list, tuple, set, frozenset)):
            kind = type(obj).__name__ if type(obj) in (list, tuple, set, frozenset) else None
            if kind is not None:
                items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
                return {kind: [self.encode(v, f"{where}[{i}]") for i, v in enumerate(items)]}
        if _is_hist(obj):
            return {"hist": self._encode_hist(obj)}
        if type(obj) is SkimOutput:
            return {"skim": [obj.record(), self._ref(obj.lumis)]}
        return self._fallback(obj, where)

    def _encode_hist(self, h: Any) -> dict[str, Any]:
        uhi = hist.serialization.to_uhi(h)
        uhi.pop("storage")
        uhi.pop("writer_info", None)
        return {
            "uhi": _jsonable(uhi),
            "storage": type(h.storage_type()).__name__,
            "view": self._ref(np.ascontiguousarray(h.view(flow=True))),
            "name": getattr(h, "name", None),
            "label": getattr(h, "label", None),
        }

    def _encode_container(self, name: str, obj: Any, where: str) -> Any:
        """``{"typed": [type name, default factory (see _encode_factory) or None, what it holds]}``."""
        default = None
        if name in containers.WITH_DEFAULT and obj.default_factory is not None:
            default = self._encode_factory(obj.default_factory, f"{where}.default_factory")
            if default is _UNSAFE:
                names = sorted({n.rpartition(".")[2] for n in containers.FACTORIES})
                return self._fallback(
                    obj,
                    where,
                    f"its default factory {obj.default_factory!r} is none of those that can be stored "
                    f"({', '.join(names)}; functools.partial of one; an accumulator's identity)",
                )
        return {"typed": [name, default, self.encode(containers.payload(obj), where)]}

    def _encode_factory(self, factory: Any, where: str) -> Any:
        """A default factory: a name from :data:`containers.FACTORIES`, ``{"partial": [factory,
        args, keywords]}``, ``{"identity": accumulator}`` (its ``identity`` method) or ``{"copy":
        histogram}`` (its ``copy`` method); :data:`_UNSAFE` when it is none of them."""
        name = containers.factory_name(factory)
        if name is not None:
            return name
        if type(factory) is functools.partial:
            func = self._encode_factory(factory.func, where)
            if func is _UNSAFE:
                return _UNSAFE
            args = [self._encode_argument(v, f"{where}.args[{i}]") for i, v in enumerate(factory.args)]
            keywords = [
                [k, self._encode_argument(v, f"{where}.keywords[{k!r}]")] for k, v in factory.keywords.items()
            ]
            if _UNSAFE in args or _UNSAFE in (v for _, v in keywords):
                return _UNSAFE
            return {"partial": [func, args, keywords]}
        owner: Any = getattr(factory, "__self__", None)
        if inspect.ismethod(factory) and not isinstance(owner, type):
            if containers.is_coffea(owner) and factory.__func__ is type(owner).identity:
                return {"identity": self.encode(owner, f"{where}.__self__")}
            if type(owner) is hist.Hist and factory.__func__ is hist.Hist.copy:
                return {"copy": self.encode(owner, f"{where}.__self__")}
        return _UNSAFE

    def _encode_argument(self, value: Any, where: str) -> Any:
        """An argument of a ``functools.partial`` factory: a factory itself (``{"factory": ...}``:
        ``partial(defaultdict_accumulator, int)``) or a value; :data:`_UNSAFE` for other callables."""
        if callable(value) and not _is_hist(value):
            factory = self._encode_factory(value, where)
            return factory if factory is _UNSAFE else {"factory": factory}
        return self.encode(value, where)

    def _fallback(self, obj: Any, where: str, why: str = "") -> Any:
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if not self.allow_pickle:
            raise TypeError(
                f"{where}: a {kind} has no safe stored form{': ' + why if why else ''}. Return hist.Hist, "
                "dicts, numbers, strings, numpy arrays, sets, lists, Counters or coffea's accumulators, "
                "or set allow_pickle: true in the config to store it with cloudpickle (loading then "
                "runs code from the file)."
            )
        self.pickled.append(kind)
        return {"pickle": self._ref(np.frombuffer(cloudpickle.dumps(obj), dtype=np.uint8))}


_UNSAFE = object()
"""What :meth:`_Encoder._encode_factory` returns for a factory with no safe stored form."""


class _NeedsModule(ImportError):
    """Loading needs an optional dependency (coffea, for coffea's accumulators)."""


class _Decoder:
    def __init__(self, npz: Any) -> None:
        self.npz = npz

    def decode(self, node: Any, where: str) -> Any:
        if not isinstance(node, dict):
            return node
        ((kind, value),) = node.items()
        if kind == "dict":
            out = {}
            for k, v in value:
                key = _hashable(self.decode(k, where))
                out[key] = self.decode(v, f"{where}[{key!r}]")
            return out
        if kind == "list":
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if kind == "tuple":
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(value))
        if kind == "set":
            return {_hashable(self.decode(v, where)) for v in value}
        if kind == "frozenset":
            return frozenset(_hashable(self.decode(v, where)) for v in value)
        if kind == "float":
            return float(value)
        if kind == "array":
            return self.npz[value]
        if kind == "scalar":
            return self.npz[value][()]
        if kind == "hist":
            return self._decode_hist(value)
        if kind == "skim":
            record, lumis = value
            return SkimOutput.from_record(record, self.npz[lumis])
        if kind == "typed":
            name, default, inner = value
            try:
                factory = self._decode_factory(default, f"{where}.default_factory")
                return containers.rebuild(name, factory, self.decode(inner, where))
            except _NeedsModule:
                raise
            except ImportError as err:
                raise _NeedsModule(f"{where}: {err}", name=err.name) from err
        if kind == "pickle":
            return cloudpickle.loads(self.npz[value].tobytes())
        raise ValueError(f"unknown node kind {kind!r}")

    def _decode_factory(self, spec: Any, where: str) -> Any:
        """The default factory stored by :meth:`_Encoder._encode_factory` (None: none)."""
        if spec is None:
            return None
        if isinstance(spec, str):
            return containers.resolve(spec, containers.FACTORIES)
        ((kind, value),) = spec.items()
        if kind == "partial":
            func, args, keywords = value
            return functools.partial(
                self._decode_factory(func, where),
                *(self._decode_argument(v, f"{where}.args[{i}]") for i, v in enumerate(args)),
                **{str(k): self._decode_argument(v, f"{where}.keywords[{k!r}]") for k, v in keywords},
            )
        if kind in ("identity", "copy"):
            owner = self.decode(value, f"{where}.__self__")
            if kind == "identity" and containers.is_coffea(owner):
                return owner.identity
            if kind == "copy" and type(owner) is hist.Hist:
                return owner.copy
        raise ValueError(f"{where}: unknown default factory {spec!r}")

    def _decode_argument(self, node: Any, where: str) -> Any:
        if isinstance(node, dict) and set(node) == {"factory"}:
            return self._decode_factory(node["factory"], where)
        return self.decode(node, where)

    def _decode_hist(self, spec: dict[str, Any]) -> Any:
        view = self.npz[spec["view"]]
        uhi = dict(spec["uhi"])
        uhi["storage"] = _empty_uhi_storage(spec["storage"], view.shape)
        uhi["uhi_schema"] = uhi.get("uhi_schema", 1)
        h = hist.serialization.from_uhi(uhi)
        if not isinstance(h, hist.Hist):
            h = hist.Hist(h)
        h.view(flow=True)[...] = view
        if spec.get("name") is not None:
            h.name = spec["name"]
        if spec.get("label") is not None:
            h.label = spec["label"]
        return h


_UHI_STORAGE = {
    "Double": ("double", ("values",)),
    "Int64": ("int", ("values",)),
    "AtomicInt64": ("int", ("values",)),
    "Unlimited": ("double", ("values",)),
    "Weight": ("weighted", ("values", "variances")),
    "Mean": ("mean", ("counts", "values", "variances")),
    "WeightedMean": ("weighted_mean", ("sum_of_weights", "sum_of_weights_squared", "values", "variances")),
}


def _empty_uhi_storage(kind: str, shape: tuple[int, ...]) -> dict[str, Any]:
    name, fields = _UHI_STORAGE[kind]
    dtype = np.int64 if name == "int" else np.float64
    return {"type": name, **{f: np.zeros(shape, dtype=dtype) for f in fields}}


def _is_hist(obj: Any) -> bool:
    return isinstance(obj, hist.Hist)


def _hashable(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    return obj
