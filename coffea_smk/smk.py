"""Snakemake glue: the analysis as paths and ``get_*`` input functions for the rules.

This is the only engine-side module that imports Snakemake. The Snakefile
creates one :class:`Analysis` from ``config``; the rules call its ``get_*``
functions and paths. Parsing a workflow stats every local input file (it never
opens one), so an unchanged analysis has nothing to do and reads no ROOT file.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from coffea_smk._hashing import key_of
from coffea_smk.config import ConfigError, Dataset, load_fileset, parse_config
from coffea_smk.plan import PlanSettings
from coffea_smk.preprocess import FileIdentity, InputFileError
from coffea_smk.processor import processor_tag

WILDCARDS = {
    "dataset": r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    "batch": r"[0-9a-f]{16}",
    "tag": r"[0-9a-f]{16}",
    "unit": r"[0-9a-f]{16}",
    "node": r"[0-9a-f]{16}",
}


class ShellArg:
    """A shell argument that Snakemake does not record as a param.

    Snakemake re-runs a job when a recorded param changes; values that are not
    plain Python types are not recorded. Reading settings (prefetch) do not
    change results, so changing them must not redo finished work; the schema,
    which does, is part of every result's path already.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class Analysis:
    """The analysis described by a config, as Snakemake sees it."""

    def __init__(self, config: dict[str, Any], configfiles: list[Any], checkpoints: Any) -> None:
        from snakemake.exceptions import WorkflowError

        if not config:
            raise WorkflowError(
                "no analysis config: pass --configfile analysis.yaml (or run `coffea-smk run analysis.yaml`)"
            )
        where = str(configfiles[-1]) if configfiles else "analysis config"
        try:
            self.cfg = parse_config(dict(config), where)
            base = self.cfg.basedir or (
                str(Path(configfiles[-1]).resolve().parent) if configfiles else os.getcwd()
            )
            self.basedir = str(Path(base).resolve())
            self.datasets: dict[str, Dataset] = {
                d.slug: d for d in load_fileset(self.cfg.fileset, Path(self.basedir), self.cfg.treename)
            }
            self.identities = {
                slug: [FileIdentity.of(f, d.name) for f in d.files] for slug, d in self.datasets.items()
            }
        except (ConfigError, InputFileError) as err:
            raise WorkflowError(str(err)) from None
        self.checkpoints = checkpoints
        self.outdir = self.cfg.outdir.rstrip("/") or "."
        self.cache_dir = f"{self.outdir}/cache"
        self.tag = processor_tag(self.cfg.processor, self.basedir, self.cfg.version, self.cfg.schema_)
        self.python = shlex.quote(sys.executable)
        n = self.cfg.files_per_preprocess_job
        self.batches: dict[str, dict[str, list[FileIdentity]]] = {}
        for slug, ids in self.identities.items():
            groups = [ids[i : i + n] for i in range(0, len(ids), n)]
            self.batches[slug] = {key_of("batch", [g.key for g in group]): group for group in groups}
        self._plans: dict[str, tuple[float, dict[str, Any]]] = {}

    # ---- paths (patterns use Snakemake wildcards) --------------------------------
    def path(self, kind: str) -> str:
        o = self.outdir
        return {
            "preprocess": f"{o}/preprocess/{{dataset}}/{{batch}}.json",
            "plan": f"{o}/plan/{{dataset}}.json",
            "partial": f"{o}/partials/{{dataset}}/{{tag}}/{{unit}}.npz",
            "merge": f"{o}/merges/{{dataset}}/{{tag}}/{{node}}.npz",
            "dataset": f"{o}/datasets/{{dataset}}.npz",
            "result": f"{o}/result.npz",
        }[kind]

    def log(self, kind: str) -> str:
        o = self.outdir
        return {
            "preprocess": f"{o}/logs/preprocess/{{dataset}}/{{batch}}.log",
            "plan": f"{o}/logs/plan/{{dataset}}.log",
            "partial": f"{o}/logs/process/{{dataset}}/{{tag}}/{{unit}}.log",
            "merge": f"{o}/logs/merge/{{dataset}}/{{tag}}/{{node}}.log",
            "dataset": f"{o}/logs/dataset/{{dataset}}.log",
            "result": f"{o}/logs/result.log",
        }[kind]

    def job(self, step: str) -> str:
        """The shell command prefix of a job step."""
        return f"{self.python} -m coffea_smk job {step}"

    @property
    def result(self) -> str:
        return self.path("result")

    # ---- input functions and params ----------------------------------------------
    def get_preprocess_files(self, wildcards: Any) -> str:
        group = self.batches[wildcards.dataset][wildcards.batch]
        return json.dumps([asdict(i) for i in group])

    def get_plan_inputs(self, wildcards: Any) -> list[str]:
        pattern = self.path("preprocess")
        return [pattern.format(dataset=wildcards.dataset, batch=b) for b in self.batches[wildcards.dataset]]

    def get_plan_spec(self, wildcards: Any) -> str:
        d = self.datasets[wildcards.dataset]
        settings = PlanSettings(
            self.cfg.chunksize, self.cfg.events_per_job, self.cfg.merge_fanin, self.cfg.align_chunks
        )
        return json.dumps(
            {"dataset": d.name, "slug": d.slug, "metadata": d.metadata, "settings": asdict(settings)}
        )

    def _plan(self, slug: str) -> dict[str, Any]:
        path = self.checkpoints.plan.get(dataset=slug).output[0]
        mtime = os.stat(path).st_mtime
        cached = self._plans.get(path)
        if cached is None or cached[0] != mtime:
            with open(path) as handle:
                cached = (mtime, json.load(handle))
            self._plans[path] = cached
        return cached[1]

    def _node_paths(self, slug: str, ids: list[str], nodes: dict[str, list[str]]) -> list[str]:
        out = []
        for i in ids:
            pattern = self.path("merge" if i in nodes else "partial")
            out.append(pattern.format(dataset=slug, tag=self.tag, unit=i, node=i))
        return out

    def get_merge_inputs(self, wildcards: Any) -> list[str]:
        merge = self._plan(wildcards.dataset)["merge"]
        return self._node_paths(wildcards.dataset, merge["nodes"][wildcards.node], merge["nodes"])

    def get_dataset_inputs(self, wildcards: Any) -> list[str]:
        merge = self._plan(wildcards.dataset)["merge"]
        return self._node_paths(wildcards.dataset, merge["top"], merge["nodes"])

    def get_dataset_results(self, wildcards: Any = None) -> list[str]:
        return [self.path("dataset").format(dataset=slug) for slug in self.datasets]

    def get_events_options(self, wildcards: Any = None) -> ShellArg:
        """How process jobs build and read events (schema, prefetch), as ``--events JSON``."""
        from coffea_smk.reading import EventsOptions

        c = self.cfg
        options = EventsOptions(c.schema_, c.prefetch, c.prefetch_threads, c.prefetch_max_mb)
        return ShellArg(shlex.quote(options.to_json()))

    def get_job_options(self, wildcards: Any = None) -> str:
        """Options every processing/merging job needs, shell-quoted."""
        opts = ["--processor", self.cfg.processor, "--basedir", self.basedir]
        if self.cfg.allow_pickle:
            opts.append("--allow-pickle")
        return " ".join(shlex.quote(o) for o in opts)
