"""Disk use of an analysis's outputs, and ``coffea-smk clean``: freeing earlier variants' outputs.

Every output's path holds the key of what shaped it (:mod:`coffea_smk.smk.layout`), so each
variant of an analysis (another chunk size, processor version, fileset) leaves its files
behind. What the analysis *as configured now* uses is computed from its keys and its plans,
exactly as the workflow asks for them; everything else of a kind the layout knows, under a
key that is not current, belongs to an earlier variant. An earlier variant is identified by
its global result (``global/<key>.npz``): its meta names its per-dataset results, theirs
name their plans and processor, and a plan names its work units, merges, preprocessing
batches and records. Outputs that no finished variant names (an interrupted run, a retried
attempt's leftovers of another plan) are earlier too. Skims go with what they belong to
(:mod:`coffea_smk.smk.clean_skims`).

Never removed: what the current configuration uses (a re-run after ``clean`` has nothing to
do), the targets of the fixed names (``result.npz`` and the others, even when they still show
an earlier variant; the files a published skim fileset lists), Snakemake's run logs, the notes
of replaced files, what the storage said at earlier runs' starts (``cache/remote/``: a run
whose storage is down takes its files on them), and anything whose path the layout does not
know. Nothing is removed while a Snakemake run holds a lock here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coffea_smk.engine.meta import DatasetMeta, GlobalMeta
from coffea_smk.engine.records import Plan
from coffea_smk.results import ResultFileError, load_meta
from coffea_smk.smk import clean_skims
from coffea_smk.smk.layout import Layout
from coffea_smk.spec.config import ConfigError, parse_config
from coffea_smk.util.hashing import KEY_LENGTH

_KEY = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}")
ANY_TAG = "*"
"""A variant's processor tag when its dataset result does not let it be recomputed: its units
are then recognised under every tag (keeping more, never less)."""


class Use(str, Enum):
    """What an output is to the analysis."""

    CURRENT = "current"
    """The analysis as configured now uses it."""
    KEPT = "kept"
    """An earlier variant's, kept: one of the ``--keep`` most recent, or shown by a fixed name."""
    EARLIER = "earlier"
    """An earlier variant's: ``clean --yes`` removes it."""
    OTHER = "other"
    """Not a variant's output (run logs, links, notes, unknown files): never removed."""


Ref = tuple[str, ...]
"""What an output is, as ``(kind, dataset, [tag,] key)``: checked against the keys in use."""


@dataclass
class Keys:
    """The keys of one variant's outputs (or of the current analysis)."""

    refs: set[Ref] = field(default_factory=set)
    open_groups: set[tuple[str, str, str]] = field(default_factory=set)
    """``(kind, dataset, tag)`` whose every unit or merge is in use (a dataset not planned yet)."""

    def holds(self, ref: Ref) -> bool:
        if ref in self.refs:
            return True
        if ref[0] == "skim":
            return clean_skims.holds(self.refs, ref)
        if ref[0] in ("unit", "node"):
            kind, slug, tag, key = ref
            return (kind, slug, ANY_TAG, key) in self.refs or (kind, slug, tag) in self.open_groups
        return False


@dataclass(frozen=True)
class Entry:
    """One output (a file, or a folder of plots or a statistical model) and what it is."""

    path: Path
    kind: str
    """``preprocessing``, ``plans``, ``units``, ``merges``, ``results``, ``skims``, ``skim pieces``, ``logs``,
    ``cache`` or ``other``."""
    files: int
    size: int
    use: Use
    variant: str | None = None
    """The earlier variant (its global result's key) that made it, when one names it."""


@dataclass(frozen=True)
class Variant:
    """An earlier variant of the analysis, by its global result."""

    key: str
    mtime: float
    changes: str
    """How its configuration differs from the current one."""


@dataclass
class DiskUse:
    """Every output under the analysis's ``outdir``, classified."""

    outdir: Path
    entries: list[Entry]
    variants: list[Variant]
    """Earlier variants, the most recent first."""
    unplanned: list[str] = field(default_factory=list)
    """Datasets whose current plan is not made yet: their units and merges are all kept."""

    def total(self, *uses: Use, kinds: tuple[str, ...] | None = None) -> tuple[int, int]:
        """``(files, bytes)`` of the entries of these uses (and of these kinds, when given)."""
        chosen = [e for e in self.entries if e.use in uses and (kinds is None or e.kind in kinds)]
        return sum(e.files for e in chosen), sum(e.size for e in chosen)

    @property
    def removable(self) -> list[Entry]:
        return [e for e in self.entries if e.use is Use.EARLIER]


# ---- which keys each variant uses ---------------------------------------------------------------
def current_keys(layout: Layout) -> tuple[Keys, list[str]]:
    """The keys the analysis as configured now uses, and the datasets not planned yet."""
    keys = Keys()
    unplanned = []
    for slug in layout.datasets:
        keys.refs.update(("batch", slug, b) for b in layout.batches(slug))
        keys.refs.update(("record", i.key) for i in layout.identities[slug])
        dk = layout.keys[slug]
        keys.refs |= {("plan", slug, dk.plan), ("dataset", slug, dk.result), ("columns", slug, dk.tag)}
        try:
            plan = layout.read_plan(slug)
        except ConfigError:
            plan = None  # damaged: the dataset job plans again; keep what it may reuse
        if plan is None:
            unplanned.append(layout.datasets[slug].name)
            keys.open_groups |= {("unit", slug, dk.tag), ("node", slug, dk.tag)}
        else:
            _add_plan(keys, slug, dk.tag, plan)
    keys.refs.add(("global", layout.analysis_key))
    _add_post(keys, layout)
    return keys, unplanned


def _add_plan(keys: Keys, slug: str, tag: str, plan: Plan) -> None:
    keys.refs.update(("unit", slug, tag, u.id) for u in plan.units)
    keys.refs.update(("node", slug, tag, n) for n in plan.merge.nodes)
    for f in plan.files:
        if f.record_path:
            keys.refs.add(("record", Path(f.record_path).name.split(".")[0]))
        if f.batch_output:
            keys.refs.add(("batch", slug, Path(f.batch_output).name[:KEY_LENGTH]))


def _add_post(keys: Keys, layout: Layout) -> None:
    """Plots, statistical models and report of ``layout``'s configuration and result key."""
    if layout.plots_key is not None:
        keys.refs.add(("plots", layout.plots_key))
    keys.refs.update(("stat", k) for k in layout.stat_keys.values())
    keys.refs.add(("report", Path(layout.report).stem))


def _meta(path: Path) -> dict[str, Any] | None:
    try:
        return load_meta(path)
    except (OSError, ResultFileError, ValueError):
        return None


def variant_keys(layout: Layout, result: Path) -> tuple[Keys, dict[str, Any] | None]:
    """The keys an earlier global result was made from, read from it and what it names; and
    its configuration (None when its meta does not say)."""
    keys = Keys(refs={("global", result.stem)})
    raw = _meta(result)
    try:
        meta = GlobalMeta.model_validate(raw)
    except ValidationError:
        return keys, None
    for summary in meta.datasets.values():
        path = Path(summary.path)
        slug, key = path.parent.name, path.stem
        keys.refs.add(("dataset", slug, key))
        try:
            d = DatasetMeta.model_validate(_meta(Path(layout.outdir) / "datasets" / slug / f"{key}.npz"))
        except ValidationError:
            continue
        if d.plan_key is None:
            continue
        keys.refs.add(("plan", slug, d.plan_key))
        tag = clean_skims.tag_of(d, key) or ANY_TAG
        keys.refs.add(("columns", slug, tag))
        try:
            plan = Plan.read(Path(layout.outdir) / "plan" / slug / f"{d.plan_key}.json")
        except (OSError, ValidationError):
            continue
        _add_plan(keys, slug, tag, plan)
    if meta.config is not None:
        try:
            cfg = parse_config({**meta.config, "fileset": "-"}, str(result))
        except ConfigError:
            return keys, meta.config
        _add_post(keys, dataclasses.replace(layout, cfg=cfg, analysis_key=result.stem))
    return keys, meta.config


def _changes(old: dict[str, Any] | None, now: dict[str, Any]) -> str:
    if old is None:
        return "configuration not recorded"
    diff = [
        f"{k}: {_short(old.get(k))} (now {_short(now.get(k))})"
        for k in sorted(set(old) | set(now))
        if k != "fileset" and old.get(k) != now.get(k)
    ]
    return "; ".join(diff) or "same settings (other input files, processor code or version)"


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---- what each file under outdir is ----------------------------------------------------------
_PATHS = {
    ("preprocess", 3): ("preprocessing", "batch"),
    ("plan", 3): ("plans", "plan"),
    ("partials", 4): ("units", "unit"),
    ("merges", 4): ("merges", "node"),
    ("merge", 4): ("merges", "node"),  # logs/merge/
    ("datasets", 3): ("results", "dataset"),
    ("dataset", 3): ("results", "dataset"),  # logs/dataset/
    ("global", 2): ("results", "global"),
    ("result", 2): ("results", "global"),  # logs/result/
    ("report", 2): ("results", "report"),
    ("plots", 2): ("results", "plots"),
    ("stat", 2): ("results", "stat"),
}
"""``(folder, depth)``: the kind of output (for the listing) and of key. The key is the file
name's first :data:`KEY_LENGTH` characters; the folders between hold the dataset and the tag."""


def _ref(parts: tuple[str, ...]) -> tuple[str, Ref | None]:
    """The kind (for the listing) and the key reference of an output, by its path under outdir."""
    top, n = parts[0], len(parts)
    key = _KEY.match(parts[-1])
    k = key.group(0) if key else ""
    if top == "logs" and n > 1:
        step, rest = parts[1], parts[1:]
        return ("logs", _ref(rest)[1] if step != "process" else _ref(("partials", *parts[2:]))[1])
    if not k:
        return "other", None
    skim = clean_skims.ref(parts, k)
    if skim is not None:
        return skim
    if top == "failures" and n == 4:
        return "logs", ("batch", parts[1], k) if parts[2] == "preprocess" else ("unit", parts[1], parts[2], k)
    if (top, n) in _PATHS:
        kind, ref = _PATHS[(top, n)]
        return kind, (ref, *parts[1:-1], k)
    if top == "cache" and n == 4 and parts[1] == "files":
        return "cache", ("record", parts[3].split(".")[0])
    if top == "cache" and n == 4 and parts[1] == "columns":
        return "cache", ("columns", parts[2], parts[3].split(".")[0])
    return "other", None


def _size(path: Path) -> tuple[int, int]:
    """``(files, bytes)`` of a file, or of every file in a folder."""
    if not path.is_dir() or path.is_symlink():
        return 1, path.lstat().st_size
    files = [p for p in path.rglob("*") if not p.is_dir()]
    return len(files), sum(p.lstat().st_size for p in files)


def _outputs(outdir: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Every file under outdir, and every folder of plots, of a statistical model or of skim
    files as one."""
    out: list[tuple[Path, tuple[str, ...]]] = []
    for root, dirs, files in os.walk(outdir):
        here = Path(root)
        rel = here.relative_to(outdir).parts
        if rel in (("plots",), ("stat",)) or clean_skims.skim_folders_in(rel):
            for d in list(dirs):
                out.append((here / d, (*rel, d)))
            dirs.clear()
        for name in files:
            out.append((here / name, (*rel, name)))
    return out


def disk_use(layout: Layout, keep: int = 0) -> DiskUse:
    """Every output of the analysis's ``outdir``: the current analysis's, earlier variants' (the
    ``keep`` most recent of them kept), and the rest."""
    outdir = Path(layout.outdir)
    current, unplanned = current_keys(layout)
    results = sorted(
        (p for p in (outdir / "global").glob("*.npz") if not current.holds(("global", p.stem))),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    now = layout.cfg.model_dump(mode="json", by_alias=True)
    chains, variants = [], []
    for path in results:
        keys, config = variant_keys(layout, path)
        chains.append(keys)
        variants.append(Variant(path.stem, path.stat().st_mtime, _changes(config, now)))
    outputs = _outputs(outdir) if outdir.is_dir() else []
    shown = {path.resolve() for path, _ in outputs if path.is_symlink()}  # what the fixed names show
    shown |= clean_skims.published_files(outdir)
    around = shown | {p for s in shown for p in s.parents}  # a folder holding a shown file is kept whole
    entries = []
    for path, parts in outputs:
        kind, ref = _ref(parts)
        files, size = _size(path)
        real = path.resolve()
        if path.is_symlink() or ref is None:
            use, variant = Use.OTHER, None
        elif current.holds(ref):
            use, variant = Use.CURRENT, None
        elif any(c.holds(ref) for c in chains[:keep]) or real in around or not shown.isdisjoint(real.parents):
            use, variant = Use.KEPT, None
        else:
            owner = next((v.key for v, c in zip(variants, chains, strict=True) if c.holds(ref)), None)
            use, variant = Use.EARLIER, owner
        entries.append(Entry(path, kind, files, size, use, variant))
    return DiskUse(outdir, entries, variants, unplanned)


# ---- removing, and saying what -----------------------------------------------------------------
def lock_holder(workdir: str | os.PathLike[str] = ".") -> str | None:
    """Why outputs must not be removed now (a Snakemake run holds a lock here), or None."""
    locks = Path(workdir) / ".snakemake" / "locks"
    held = sorted(p.name for p in locks.glob("*.lock")) if locks.is_dir() else []
    if not held:
        return None
    return (
        f"a Snakemake run holds a lock in {locks.resolve()} ({', '.join(held)}): wait for it to end; "
        "if no run is going (it was killed), `coffea-smk run ANALYSIS.yaml --unlock` lifts the lock"
    )


def remove(usage: DiskUse) -> tuple[int, int]:
    """Remove every earlier variant's output (and the folders left empty); ``(files, bytes)`` freed."""
    files = size = 0
    for e in usage.removable:
        try:
            if e.path.is_dir() and not e.path.is_symlink():
                shutil.rmtree(e.path)
            else:
                e.path.unlink()
        except FileNotFoundError:
            continue
        files, size = files + e.files, size + e.size
        parent = e.path.parent
        while parent != usage.outdir and usage.outdir in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
    return files, size


def human(size: float) -> str:
    """Bytes as ``12.3 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _amount(files: int, size: int) -> str:
    return f"{human(size)} in {files} file{'s' if files != 1 else ''}"


def summary(usage: DiskUse) -> str:
    """Disk use in one line per use, for ``coffea-smk status``."""
    lines = [f"disk use of {usage.outdir}:"]
    now, before = (Use.CURRENT,), (Use.EARLIER, Use.KEPT)
    skims = [usage.total(*uses, kinds=clean_skims.KINDS) for uses in (now, before)]
    lines.append(f"  current analysis:  {_amount(*usage.total(*now))}" + _share(skims[0], " (skims {})"))
    n = len(usage.variants)
    lines.append(
        f"  earlier variants:  {_amount(*usage.total(*before))} ({n} finished variant{'s' if n != 1 else ''}"
        + (", and outputs of no finished one" if any(e.variant is None for e in usage.removable) else "")
        + _share(skims[1], "; skims {}")
        + ")"
    )
    lines.append(f"  other:             {_amount(*usage.total(Use.OTHER))} (run logs, links, notes)")
    return "\n".join(lines)


def _share(amount: tuple[int, int], text: str) -> str:
    return text.format(_amount(*amount)) if amount[0] else ""


def listing(usage: DiskUse, keep: int) -> str:
    """What ``clean`` would remove: by earlier variant and by kind, with sizes."""
    removable = usage.removable
    if not removable:
        kept = usage.total(Use.KEPT)[0]
        also = f", or an earlier variant's that is kept ({kept} files)" if kept else ""
        return f"nothing to remove in {usage.outdir}: every output is the current analysis's{also}"
    by_variant: dict[str | None, list[Entry]] = {}
    for e in removable:
        by_variant.setdefault(e.variant, []).append(e)
    lines = [f"earlier variants' outputs in {usage.outdir} (the most recent first):"]
    for i, v in enumerate(usage.variants):
        mine = by_variant.get(v.key, [])
        state = (
            "kept (--keep)" if i < keep else _amount(sum(e.files for e in mine), sum(e.size for e in mine))
        )
        lines.append(f"  {v.key}  {_time(v.mtime)}  {state}")
        lines.append(f"      {v.changes}")
    orphans = by_variant.get(None, [])
    if orphans:
        files, size = sum(e.files for e in orphans), sum(e.size for e in orphans)
        lines.append(f"  of no finished variant (interrupted runs, other plans): {_amount(files, size)}")
    kinds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for e in removable:
        kinds[e.kind] += e.files
        sizes[e.kind] += e.size
    lines.append("by kind: " + ", ".join(f"{k} {_amount(kinds[k], sizes[k])}" for k in sorted(kinds)))
    if usage.unplanned:
        lines.append(
            f"kept: every work unit and merge of {', '.join(usage.unplanned)} under the current "
            "processor (not planned yet: run the analysis, then clean again to free the others)"
        )
    return "\n".join(lines)


def _time(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime))
