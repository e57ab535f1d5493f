"""The analysis as files: which outputs exist or are due, and where each one lives.

Every output path derives from what shapes it (see :class:`DatasetKeys`):
preprocessing batches from their files' identities, plans from the dataset's
name, metadata, files and plan settings, partial results and merges from the
processor, the dataset's name and metadata and their chunks, per-dataset and
global results from all of these. A changed analysis therefore asks for
outputs that do not exist yet, and Snakemake makes them, whatever its records
in ``.snakemake/`` say. The fixed names users read, ``datasets/<dataset>.npz``
and ``result.npz``, are links to the current analysis's results, *published*
by a job whenever they point elsewhere (:meth:`Layout.publish`).

Shared by the Snakemake glue (:mod:`coffea_smk.smk.analysis`) and ``coffea-smk
status``; it never imports Snakemake, never opens a ROOT file (it only stats
inputs) and never writes while the workflow is parsed (only :meth:`Layout.publish`
writes, in the publish job).

Failed work is retried through *attempts* (:mod:`coffea_smk.smk.names`): a job
that ends with failures writes its output and a failure manifest
``failures/<dataset>/<group>/<name>.json``; the next run requests the job
again as ``<id>-a<k>``, which takes the previous attempt's output as input and
redoes only what failed. The merges above it get new names too, so Snakemake
redoes exactly the failed chunks and the merges they feed, and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coffea_smk._version import __version__
from coffea_smk.engine.damaged import describe
from coffea_smk.engine.meta import Provenance, TakenOnRecords
from coffea_smk.engine.preprocess import FileIdentity, replaced_files
from coffea_smk.engine.records import PLAN_VERSION, MergeTree, Plan
from coffea_smk.io.files import InputFileError, check_backends
from coffea_smk.io.remote import RemoteStat
from coffea_smk.smk.names import attempt_name, next_attempts
from coffea_smk.smk.outputs import ALIASES, FAILURES, LOGS, PATHS, SKIM_MANIFEST, Kind
from coffea_smk.smk.publish import links_to, skim_aliases
from coffea_smk.smk.remote import (
    RUN_RECORD,
    DownHost,
    RunRecord,
    StatTable,
    read_table,
    remember,
    remembered,
    stat_remote_files,
    table_content,
    take_on_records,
    touch,
)
from coffea_smk.spec.config import (
    AnalysisConfig,
    ConfigError,
    Dataset,
    load_fileset,
    parse_config,
    read_mapping,
)
from coffea_smk.spec.processor import ProcessorError, processor_tag
from coffea_smk.spec.settings import PlanSettings
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.spec.stat import dataset_problems
from coffea_smk.util.atomic import write_json
from coffea_smk.util.hashing import key_of


@dataclass(frozen=True)
class DatasetKeys:
    """The content keys of one dataset's outputs."""

    plan: str
    """The plan: dataset name and metadata, its files' identities, the plan settings."""
    tag: str
    """Partials and merges (beside each unit's own chunk key): processor, dataset name, metadata."""
    result: str
    """The per-dataset result: ``tag`` and ``plan`` together."""

    @classmethod
    def of(
        cls,
        d: Dataset,
        files: list[FileIdentity],
        settings: PlanSettings,
        processor: str,
        skims: SkimSettings,
    ) -> DatasetKeys:
        # a file's steps join the key; without any, the key is what it was before steps existed
        steps = [[f.path, f.steps] for f in d.files if f.steps is not None]
        plan = key_of(
            "plan", PLAN_VERSION, d.name, d.metadata, [f.key for f in files], settings.model_dump(), *steps
        )
        # the skim pieces are written by the process jobs, the skim files by the dataset job
        pieces = skims.model_dump(exclude={"target_size_mb"})
        tag = key_of("tag", processor, d.name, d.metadata, pieces)
        return cls(plan, tag, key_of("dataset", tag, plan, skims.target_size_mb))


@dataclass
class Layout:
    """An analysis config resolved into datasets, file identities, keys, job names and paths."""

    cfg: AnalysisConfig
    basedir: str
    configfile: str | None
    datasets: dict[str, Dataset]
    identities: dict[str, list[FileIdentity]]
    processor_key: str
    """Processor source, spec, ``version``, schema and coffea_smk's major version."""
    keys: dict[str, DatasetKeys]
    analysis_key: str
    """The global result's key: every dataset's key and the processor (whose postprocess runs there)."""
    remote: dict[str, RemoteStat] = dataclasses.field(default_factory=dict)
    """What the storage said of each remote input file (``remote_identity: stat``), or, for the
    files of a host that did not answer, what it said when an earlier run started (see :attr:`down`)."""
    down: tuple[DownHost, ...] = ()
    """The storage hosts that did not answer when the workflow started, and their files taken on
    their records (:mod:`coffea_smk.smk.remote`)."""
    started: str = ""
    """When the layout was made (local time, ISO 8601): the run's start, for its run record."""

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        configfile: str | None,
        stats_key: str | None = None,
        *,
        unknown_ok: bool = False,
    ) -> Layout:
        """Validate ``config`` and stat the inputs (remote ones all at once, see :func:`stat_remote`).

        Args:
            stats_key: The key of a table :meth:`save_stats` wrote (the process that started
                the workflow): its remote files are not asked again (a cluster job's parse).
            unknown_ok: A file on a storage host that does not answer, and that no earlier
                run stat-ed, is identified by URL and tree rather than an error
                (``coffea-smk status``: it answers whatever the storage does).

        Raises:
            ConfigError: Invalid config or fileset, or (without ``skip_bad_files``)
                an input file that does not exist or whose storage cannot say.
        """
        cfg = parse_config(dict(config), configfile or "analysis config")
        base = cfg.basedir or (str(Path(configfile).resolve().parent) if configfile else os.getcwd())
        basedir = str(Path(base).resolve())
        datasets = {d.slug: d for d in load_fileset(cfg.fileset, Path(basedir), cfg.treename)}
        problems = dataset_problems(cfg.stat or {}, {d.name: d.metadata for d in datasets.values()})
        if problems:
            raise ConfigError("\n".join(problems))
        check_backends(f.path for d in datasets.values() for f in d.files)
        identities: dict[str, list[FileIdentity]] = {}
        replaced = replaced_files(f"{cfg.outdir.rstrip('/') or '.'}/cache")
        cache = Path(f"{cfg.outdir.rstrip('/') or '.'}/cache")
        # a job's parse: what the run's start found (the hosts down too), not asked again; the
        # progress view: what this process found at the start
        table = read_table(cache / "remote" / f"{stats_key}.json") if stats_key else remembered()
        if table is not None:
            answers = stat_remote_files(cfg, datasets.values(), table.stats, known_down=table.down)
            down = tuple(table.down.values())
        else:
            answers = stat_remote_files(cfg, datasets.values(), {})
            skip = cfg.skip_bad_files or unknown_ok
            down = take_on_records(answers, cache / "remote", datasets.values(), skip=skip)
        remote = answers.stats
        try:
            for slug, d in datasets.items():
                identities[slug] = [
                    _with_replacements(
                        FileIdentity.of(f, d.name, missing_ok=cfg.skip_bad_files, remote=remote.get(f.path)),
                        replaced,
                    )
                    for f in d.files
                ]
        except InputFileError as err:
            raise ConfigError(f"{err} (or set skip_bad_files: true to skip such files)") from None
        try:
            tag = processor_tag(cfg.processor, basedir, cfg.version, cfg.schema_)
        except ProcessorError as err:
            raise ConfigError(str(err)) from None
        settings = PlanSettings.from_config(cfg)
        keys = {
            slug: DatasetKeys.of(d, identities[slug], settings, tag, cfg.skims)
            for slug, d in datasets.items()
        }
        analysis_key = key_of("analysis", tag, sorted((s, k.result) for s, k in keys.items()))
        stats = {url: answer for url, answer in remote.items() if isinstance(answer, RemoteStat)}
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        layout = cls(
            cfg, basedir, configfile, datasets, identities, tag, keys, analysis_key, stats, down, started
        )
        if table is None and (stats or down):
            remember(layout.stat_key, StatTable(stats, {d.host: d for d in down}))
        return layout

    @property
    def stat_key(self) -> str:
        """The key of :attr:`remote` and :attr:`down` (empty without remote files stat-ed)."""
        if not self.remote and not self.down:
            return ""
        if not self.down:  # as before: a table of all hosts' answers keeps its key
            return key_of("remote", sorted(self.remote.items()))
        return key_of("remote", sorted(self.remote.items()), [dataclasses.asdict(d) for d in self.down])

    def stat_table(self, key: str | None = None) -> Path:
        """Where :meth:`save_stats` keeps what the storage said, by its key."""
        return Path(self.cache_dir) / "remote" / f"{key if key is not None else self.stat_key}.json"

    def save_stats(self) -> None:
        """Keep :attr:`remote` and :attr:`down` in the cache (once per content) for the jobs' own
        parse of the workflow, and what was assumed in the run record (:meth:`run_record`)."""
        if not self.remote and not self.down:
            return
        path = self.stat_table()
        if path.exists():
            touch(path)  # the newest table holds the last answers (recorded_stats)
        else:
            write_json(path, table_content(self.remote, self.down))
        RunRecord(self.started, self.analysis_key, self.down).write(self.run_record_path)

    @property
    def run_record_path(self) -> Path:
        """What the last run's start assumed about the storage (:class:`~coffea_smk.smk.remote.RunRecord`)."""
        return Path(self.cache_dir) / "remote" / RUN_RECORD

    def run_record(self) -> RunRecord | None:
        """The last run's record (None: no run started with remote files stat-ed yet)."""
        return RunRecord.read(self.run_record_path)

    def taken_on_records(self, slug: str | None = None) -> tuple[TakenOnRecords, ...]:
        """The files of a dataset (or of all) taken on their records, by host."""
        mine = None if slug is None else {f.path for f in self.datasets[slug].files}
        out = []
        for d in self.down:
            urls = tuple(u for u in d.recorded if mine is None or u in mine)
            if urls:
                listed = urls if slug is not None else ()  # the global result: counts only
                out.append(TakenOnRecords(host=d.host, error=d.error, files=len(urls), urls=listed))
        return tuple(out)

    @classmethod
    def from_file(cls, configfile: str, *, unknown_ok: bool = False) -> Layout:
        path = Path(configfile)
        if not path.is_file():
            raise ConfigError(f"analysis config {configfile} does not exist")
        data = read_mapping(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{configfile}: an analysis config is a mapping of keys to values")
        return cls.from_config(data, str(path), unknown_ok=unknown_ok)

    @property
    def outdir(self) -> str:
        return self.cfg.outdir.rstrip("/") or "."

    @property
    def cache_dir(self) -> str:
        return f"{self.outdir}/cache"

    def path(self, kind: Kind | str, **wildcards: str) -> str:
        """An output path; left as a pattern for the wildcards not given."""
        return _fill(f"{self.outdir}/{PATHS[Kind(kind)]}", wildcards)

    def log(self, kind: Kind | str, **wildcards: str) -> str:
        """The log of the job that makes an output."""
        return _fill(f"{self.outdir}/{LOGS[Kind(kind)]}", wildcards)

    def failure(self, kind: Kind | str, **wildcards: str) -> str:
        """The failure manifest of a job that can fail in part (preprocessing, processing)."""
        return _fill(f"{self.outdir}/{FAILURES[Kind(kind)]}", wildcards)

    # ---- preprocessing batches -------------------------------------------------
    def batches(self, slug: str) -> dict[str, list[FileIdentity]]:
        """Batches of files preprocessed by one job, by content key."""
        return self._batches[slug]

    @functools.cached_property
    def _batches(self) -> dict[str, dict[str, list[FileIdentity]]]:
        """Every dataset's batches, keyed once: each preprocessing job asks for its own batch, and
        keying all files per job made the DAG quadratic in the number of files."""
        n = self.cfg.files_per_preprocess_job
        out = {}
        for slug, ids in self.identities.items():
            groups = [ids[i : i + n] for i in range(0, len(ids), n)]
            out[slug] = {key_of("batch", [g.key for g in group]): group for group in groups}
        return out

    def batch_names(self, slug: str) -> list[str]:
        tried = next_attempts(Path(self.failure(Kind.PREPROCESS, dataset=slug, batch="x")).parent)
        return [attempt_name(b, tried.get(b, 0)) for b in self.batches(slug)]

    # ---- attempts ------------------------------------------------------------
    def unit_attempts(self, slug: str) -> dict[str, int]:
        failure = self.failure(Kind.PARTIAL, dataset=slug, tag=self.keys[slug].tag, unit="x")
        return next_attempts(Path(failure).parent)

    def node_names(self, merge: MergeTree, unit_attempts: dict[str, int]) -> dict[str, str]:
        """Names of merge nodes and units: a node is renamed when a unit below it has a new attempt."""
        nodes = merge.nodes
        names: dict[str, str] = {}

        def name(ident: str) -> str:
            if ident in names:
                return names[ident]
            if ident not in nodes:
                names[ident] = attempt_name(ident, unit_attempts.get(ident, 0))
            else:
                children = [name(c) for c in nodes[ident]]
                changed = [c for c in children if "-" in c]
                names[ident] = ident if not changed else f"{ident}-{key_of(children)[:8]}"
            return names[ident]

        for top in merge.top:
            name(top)
        return names

    # ---- results and the links that publish them ----------------------------------
    def skim_dir(self, slug: str | None) -> str:
        """Where a dataset's compacted skim files go, or (``slug`` None) the analysis's skim
        manifests: a template with ``{name}``, the skim's name, keyed like the result it belongs to."""
        if slug is None:
            return f"{self.outdir}/{_fill(SKIM_MANIFEST, {'key': self.analysis_key})}"
        return f"{self.outdir}/skims/{{name}}/{slug}/{self.keys[slug].result}"

    def plan_path(self, slug: str) -> str:
        return self.path(Kind.PLAN, dataset=slug, plan=self.keys[slug].plan)

    def dataset_result(self, slug: str) -> str:
        return self.path(Kind.DATASET, dataset=slug, key=self.keys[slug].result)

    @property
    def result(self) -> str:
        return self.path(Kind.RESULT, key=self.analysis_key)

    @property
    def plots_key(self) -> str | None:
        """The key of the plots: the result's and the plot settings (None: no plots configured)."""
        if self.cfg.plots is None:
            return None
        return key_of("plots", self.analysis_key, self.cfg.plots.model_dump(mode="json"), self.cfg.lumi)

    @property
    def plots(self) -> str | None:
        key = self.plots_key
        return None if key is None else self.path(Kind.PLOTS, key=key)

    @functools.cached_property
    def stat_keys(self) -> dict[str, str]:
        """``{model: key}``: each model's key holds the result's, its settings and the luminosity."""
        return {
            name: key_of("stat", self.analysis_key, name, m.model_dump(mode="json"), self.cfg.lumi)
            for name, m in (self.cfg.stat or {}).items()
        }

    def stat_folder(self, model: str) -> str:
        return self.path(Kind.STAT, key=self.stat_keys[model])

    @property
    def report(self) -> str:
        key = key_of("report", self.analysis_key, self.plots_key, *self.stat_keys.values())
        return self.path(Kind.REPORT, key=key)

    def aliases(self) -> dict[str, str]:
        """``{fixed name: the current analysis's output}`` for the global and every per-dataset
        result, the plots (if configured) and the report."""
        out = {_fill(f"{self.outdir}/{ALIASES[Kind.RESULT]}", {}): self.result}
        out[f"{self.outdir}/{ALIASES[Kind.REPORT]}"] = self.report
        if self.plots is not None:
            out[f"{self.outdir}/{ALIASES[Kind.PLOTS]}"] = self.plots
        for model in self.stat_keys:
            out[_fill(f"{self.outdir}/{ALIASES[Kind.STAT]}", {"model": model})] = self.stat_folder(model)
        for slug in self.datasets:
            out[_fill(f"{self.outdir}/{ALIASES[Kind.DATASET]}", {"dataset": slug})] = self.dataset_result(
                slug
            )
        return {**out, **skim_aliases(self.outdir, self.analysis_key)}

    def unpublished(self) -> list[str]:
        """Fixed names that do not lead to the current analysis's results (read-only: stats and readlinks)."""
        return [alias for alias, target in self.aliases().items() if not links_to(alias, target)]

    def provenance(self, slug: str | None = None) -> Provenance:
        """What a per-dataset (``slug``) or the global result records about its origin."""
        return Provenance(
            analysis_key=self.analysis_key if slug is None else self.keys[slug].result,
            processor_key=self.processor_key,
            coffea_smk_version=__version__,
            configfile=str(Path(self.configfile).resolve()) if self.configfile else None,
            config=self._config_record,
            plan_key=None if slug is None else self.keys[slug].plan,
            taken_on_records=self.taken_on_records(slug),
        )

    @functools.cached_property
    def _config_record(self) -> dict[str, Any]:
        """The config as results record it (an inline fileset as ``"(inline)"``), dumped once
        rather than by every dataset job's parameters."""
        config = self.cfg.model_dump(mode="json", by_alias=True)
        if isinstance(self.cfg.fileset, dict):
            config["fileset"] = "(inline)"
        return config

    def read_plan(self, slug: str) -> Plan | None:
        """The current plan of a dataset, if it was made (read only: a damaged one raises).

        Raises:
            ConfigError: The plan is damaged.
        """
        path = self.plan_path(slug)
        try:
            return Plan.read(path)
        except FileNotFoundError:
            return None
        except ValidationError as err:
            raise ConfigError(f"{path} is corrupted ({describe(err)}); delete it and re-run") from None


def _fill(pattern: str, wildcards: dict[str, str]) -> str:
    for name, value in wildcards.items():
        pattern = pattern.replace("{" + name + "}", value)
    return pattern


def _with_replacements(identity: FileIdentity, replaced: dict[str, str]) -> FileIdentity:
    """The identity of a file after the replacements jobs noted for it (each one changes its key)."""
    for _ in range(len(replaced)):
        if identity.key not in replaced:
            break
        identity = dataclasses.replace(identity, replaced=replaced[identity.key])
    return identity
