"""Snakemake glue: the analysis as paths and ``get_*`` input functions for the rules.

This is the only engine-side module that imports Snakemake. The Snakefile
creates one :class:`Analysis` from ``config``; the rules call its ``get_*``
functions and paths. Parsing a workflow stats every local input file (it never
opens one), so an unchanged analysis has nothing to do and reads no ROOT file.
Parsing (``-n`` and ``--lint`` included) never writes or deletes a file: a
damaged output is removed by the job that reads it (:mod:`coffea_smk.engine.damaged`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
import threading
from dataclasses import fields
from typing import Any, NoReturn

from pydantic import ValidationError

from coffea_smk.engine.meta import GlobalMeta
from coffea_smk.engine.records import FileIdentity, MergeTree, Plan, PlanRequest
from coffea_smk.io.remote import DOWN_ENV
from coffea_smk.results import ResultFileError, load_meta
from coffea_smk.smk.layout import Layout
from coffea_smk.smk.names import WILDCARDS, Step, attempt_name, split_attempt
from coffea_smk.smk.outputs import Kind
from coffea_smk.smk.remote import STATS_ENV, describe_down
from coffea_smk.spec.config import ConfigError, line_of
from coffea_smk.spec.processor import ProcessorError
from coffea_smk.spec.processor_names import missing_attribute
from coffea_smk.spec.settings import ErrorPolicy, EventsOptions, PlanSettings
from coffea_smk.spec.stat import FILES, FIT, StatUnavailableError, require_pyhf
from coffea_smk.util.hashing import key_of

__all__ = ["CONFIG_ERROR_EXIT", "STATS_ENV", "WILDCARDS", "Analysis", "stop_on_config_error"]


_SCHEDULER = os.path.join("snakemake", "scheduling", "job_scheduler.py")
_IDENTITY = [f.name for f in fields(FileIdentity)]
"""A preprocessing job's files, as ``dataclasses.asdict`` gave them (scalars: no deep copy)."""


class ShellArg:
    """A shell argument that Snakemake does not record as a param.

    Snakemake re-runs a job when a recorded param changes, but only while its
    records in ``.snakemake/`` exist; values that are not plain Python types
    are not recorded. What shapes a result is in the output paths' keys
    instead (and so works without ``.snakemake/``); settings that shape no
    result (prefetch, error policy, where the analysis lives) are passed as
    ``ShellArg`` so that changing them does not redo finished work.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class Analysis:
    """The analysis described by a config, as Snakemake sees it."""

    def __init__(
        self, config: dict[str, Any], configfiles: list[Any], checkpoints: Any, workflow: Any = None
    ) -> None:
        """``workflow``: Snakemake's, to tell the process that starts the run from a job's
        (None: the former)."""
        if not config:
            stop_on_config_error(
                ConfigError(
                    "no analysis config: pass --configfile analysis.yaml "
                    "(or run `coffea-smk run analysis.yaml`)"
                ),
                None,
            )
        self.configfile = str(configfiles[-1]) if configfiles else "analysis.yaml"
        self.workflow = workflow
        self.in_job = workflow is not None and not workflow.is_main_process
        configfile = str(configfiles[-1]) if configfiles else None
        # a cluster job parses the workflow again: the remote files' identities come from the
        # table the starting process kept (its key in the environment), not from 10^4 stats
        known = os.environ.get(STATS_ENV) or None if self.in_job else None
        try:
            self.layout = Layout.from_config(config, configfile, stats_key=known)
            missing = missing_attribute(self.layout.cfg.processor, self.layout.basedir)
            if missing:
                raise ConfigError(missing, key="processor")
            if self.layout.cfg.stat:
                require_pyhf()
        except (ConfigError, StatUnavailableError) as err:
            stop_on_config_error(err, configfile)
        if not self.in_job:
            os.environ[STATS_ENV] = self.layout.stat_key
        os.environ.setdefault(STATS_ENV, "")  # the Snakefile's `envvars:` needs it defined
        self._storage_down()
        self.cfg = self.layout.cfg
        self._unpublished = self.layout.unpublished()
        self.checkpoints = checkpoints
        self.python = shlex.quote(sys.executable)
        self._plans: dict[str, tuple[float, Plan | None]] = {}
        self._names: dict[str, dict[str, str]] = {}

    def _storage_down(self) -> None:
        """Name the storage hosts the run's start found down to the jobs (their XRootD client
        gives up quickly: :data:`~coffea_smk.io.remote.DOWN_ENV`), and, in the process that
        starts the run, say in one line what was taken on its records."""
        down = self.layout.down
        if down:
            os.environ[DOWN_ENV] = " ".join(d.host for d in down)
        else:
            os.environ.pop(DOWN_ENV, None)
        if down and not self.in_job:
            print(
                f"coffea-smk: WARNING: storage unreachable: {describe_down(down)}; their size and "
                "modification time are those an earlier run's start found, and work that must read "
                f"them fails (`coffea-smk status {self.configfile}` shows it)",
                file=sys.stderr,
                flush=True,
            )

    # ---- paths ---------------------------------------------------------------
    def path(self, kind: Kind | str) -> str:
        """An output path pattern (``kind``: a :class:`~coffea_smk.smk.layout.Kind`)."""
        return self.layout.path(kind)

    def log(self, kind: Kind | str) -> str:
        return self.layout.log(kind)

    @property
    def cache_dir(self) -> str:
        return self.layout.cache_dir

    @property
    def result(self) -> str:
        return self.layout.result

    @property
    def plots(self) -> list[str]:
        """The plot folder of the analysis as configured now (none without a ``plots:`` section)."""
        return [] if self.layout.plots is None else [self.layout.plots]

    @property
    def report(self) -> str:
        return self.layout.report

    def get_plot_settings(self, wildcards: Any = None) -> ShellArg:
        """The ``plots:`` section and the luminosity, as ``--settings JSON`` (their values are in the key)."""
        settings = {
            "plots": self.cfg.plots.model_dump(mode="json") if self.cfg.plots else None,
            "lumi": self.cfg.lumi,
        }
        return ShellArg(shlex.quote(json.dumps(settings)))

    def stat_path(self, name: str) -> str:
        """The pattern of one file of a model's folder (``{key}``: the model's key)."""
        return f"{self.layout.path(Kind.STAT)}/{name}"

    @property
    def stat(self) -> list[str]:
        """Every file of every model of the ``stat:`` section, as configured now."""
        return [f"{self.layout.stat_folder(m)}/{name}" for m in self.layout.stat_keys for name in FILES]

    @property
    def stat_fits(self) -> list[str]:
        """The fit records the report shows."""
        return [f"{self.layout.stat_folder(m)}/{FIT}" for m in self.layout.stat_keys]

    def get_stat_settings(self, wildcards: Any) -> ShellArg:
        """The model of the job's key, its name and the luminosity, as ``--settings JSON``."""
        name = next(m for m, key in self.layout.stat_keys.items() if key == wildcards.key)
        assert self.cfg.stat is not None  # a stat job exists only with a stat: section
        settings = {"name": name, "model": self.cfg.stat[name].model_dump(mode="json"), "lumi": self.cfg.lumi}
        return ShellArg(shlex.quote(json.dumps(settings)))

    def get_stat_folder(self, wildcards: Any) -> str:
        return self.layout.path(Kind.STAT, key=wildcards.key)

    def job(self, step: Step | str) -> str:
        """The shell command prefix of a job step."""
        return f"{self.python} -m coffea_smk job {Step(step).value}"

    # ---- preprocessing -----------------------------------------------------------
    def get_preprocess_files(self, wildcards: Any) -> str:
        batch, _ = split_attempt(wildcards.batch)
        group = self.layout.batches(wildcards.dataset)[batch]
        # without an etag as before: Snakemake records this param and redoes the batch if it changes
        return json.dumps([{k: getattr(i, k) for k in _IDENTITY if k != "etag" or i.etag} for i in group])

    def get_plan_inputs(self, wildcards: Any) -> list[str]:
        slug = wildcards.dataset
        return [
            self.layout.path(Kind.PREPROCESS, dataset=slug, batch=b) for b in self.layout.batch_names(slug)
        ]

    def get_plan_spec(self, wildcards: Any) -> str:
        """What the plan job makes, as JSON (a :class:`~coffea_smk.engine.records.PlanRequest`)."""
        d = self.layout.datasets[wildcards.dataset]
        request = PlanRequest(
            dataset=d.name,
            slug=d.slug,
            key=wildcards.plan,
            metadata=d.metadata,
            settings=PlanSettings.from_config(self.cfg),
            steps={f.path: f.steps for f in d.files if f.steps is not None},
        )
        # json.dumps' spacing, as before: Snakemake records this param and redoes the plan if it changes
        # (no "steps" when no file has any: the param of every existing plan stays as it was)
        return json.dumps(request.model_dump(mode="json", exclude=None if request.steps else {"steps"}))

    def get_plan_path(self, wildcards: Any) -> ShellArg:
        """The current plan of the job's dataset (a param: the checkpoint is known to exist).

        Not recorded: a plan changes with every file added to its dataset, while a unit's result
        depends only on its own chunks, which its output path's key holds (a recorded path made
        Snakemake redo every unit of a re-planned dataset, "params have changed").
        """
        return ShellArg(shlex.quote(self.layout.plan_path(wildcards.dataset)))

    # ---- publishing ------------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        """What ``all`` asks for: the global result, and publishing it where a fixed name is out of date."""
        return [
            self.result,
            *self.plots,
            *self.stat,
            self.report,
            *([self.publish_marker] if self._unpublished else []),
        ]

    def get_remote_stats(self, wildcards: Any = None) -> list[str]:
        """No input: keeps what the storage said of the remote inputs for the jobs, and the run
        record (an input function of ``all``, so it runs when the run starts, never in a dry
        run or a job)."""
        dry = self.workflow is None or self.workflow.dryrun
        if not self.in_job and not dry:
            self.layout.save_stats()
        return []

    @property
    def publish_marker(self) -> str:
        """A temporary output that exists only while the fixed names are being switched.

        Its name holds the state found at parse time (the links and the marker
        folder, which every publication changes), so it never stands for an
        earlier publication.
        """
        folder = f"{self.layout.outdir}/.publish"
        found = [_lstat(p) for p in [folder, *self._unpublished]]  # each publication changes the folder
        return f"{folder}/{key_of('publish', self.layout.analysis_key, found)}.done"

    def get_publication(self, wildcards: Any = None) -> ShellArg:
        """What the publish job does: ``{"outdir", "key", "aliases": {fixed name: target}}``, as JSON."""
        spec = {
            "outdir": self.layout.outdir,
            "key": self.layout.analysis_key,
            "aliases": self.layout.aliases(),
        }
        return ShellArg(shlex.quote(json.dumps(spec)))

    def get_provenance(self, wildcards: Any = None) -> ShellArg:
        """What a per-dataset (or, without a dataset wildcard, the global) result records of its origin."""
        slug = getattr(wildcards, "dataset", None)
        return ShellArg(shlex.quote(self.layout.provenance(slug).model_dump_json()))

    # ---- processing and merging -------------------------------------------------
    def _plan(self, slug: str) -> Plan | None:
        """The dataset's plan once made; None if it is damaged.

        A damaged plan is left in place: the dataset job (which then has no
        inputs) reads it, removes it and asks for a re-run, which plans again.
        """
        path = self.checkpoints.plan.get(dataset=slug, plan=self.layout.keys[slug].plan).output[0]
        mtime = os.stat(path).st_mtime
        cached = self._plans.get(path)
        if cached is None or cached[0] != mtime:
            try:
                plan: Plan | None = Plan.read(path)
            except ValidationError:
                plan = None
            cached = (mtime, plan)
            self._plans[path] = cached
            self._names.pop(slug, None)
        return cached[1]

    def _name_map(self, slug: str) -> tuple[MergeTree, dict[str, str]]:
        plan = self._plan(slug)
        if plan is None:
            return MergeTree(nodes={}, top=()), {}
        if slug not in self._names:
            self._names[slug] = self.layout.node_names(plan.merge, self.layout.unit_attempts(slug))
        return plan.merge, self._names[slug]

    def _paths(self, slug: str, ids: tuple[str, ...], merge: MergeTree, names: dict[str, str]) -> list[str]:
        tag = self.layout.keys[slug].tag
        out = []
        for i in ids:
            if i in merge.nodes:
                out.append(self.layout.path(Kind.MERGE, dataset=slug, tag=tag, node=names[i]))
            else:
                out.append(self.layout.path(Kind.PARTIAL, dataset=slug, tag=tag, unit=names[i]))
        return out

    def get_process_inputs(self, wildcards: Any) -> list[str]:
        """The previous attempt of a work unit that had failed chunks, if this is a retry."""
        unit, attempt = split_attempt(wildcards.unit)
        if attempt == 0:
            return []
        previous = attempt_name(unit, attempt - 1)
        return [self.layout.path(Kind.PARTIAL, dataset=wildcards.dataset, tag=wildcards.tag, unit=previous)]

    def get_merge_inputs(self, wildcards: Any) -> list[str]:
        merge, names = self._name_map(wildcards.dataset)
        node = wildcards.node.split("-")[0]
        return self._paths(wildcards.dataset, merge.nodes.get(node, ()), merge, names)

    def get_dataset_inputs(self, wildcards: Any) -> list[str]:
        merge, names = self._name_map(wildcards.dataset)
        return self._paths(wildcards.dataset, merge.top, merge, names)

    def get_dataset_results(self, wildcards: Any = None) -> list[str]:
        return [self.layout.dataset_result(slug) for slug in self.layout.datasets]

    def get_events_options(self, wildcards: Any = None) -> ShellArg:
        """How process jobs build and read events (schema, prefetch), as ``--events JSON``."""
        return ShellArg(shlex.quote(EventsOptions.from_config(self.cfg).to_json()))

    def get_job_options(self, wildcards: Any = None) -> ShellArg:
        """Options every processing/merging job needs, shell-quoted.

        Not recorded by Snakemake: what of them shapes a result (the processor)
        is in the output paths' keys already, and moving the analysis directory
        must not redo finished work.
        """
        opts = ["--processor", self.cfg.processor, "--basedir", self.layout.basedir]
        return ShellArg(" ".join([*(shlex.quote(o) for o in opts), str(self.get_load_options())]).strip())

    def get_skim_options(self, wildcards: Any = None) -> ShellArg:
        """``--skims JSON`` (how skims are written) and ``--skim-dir`` (where the job's skim files go)."""
        opts = [
            "--skims",
            self.cfg.skims.to_json(),
            "--skim-dir",
            self.layout.skim_dir(getattr(wildcards, "dataset", None)),
        ]
        return ShellArg(" ".join(shlex.quote(o) for o in opts))

    def get_load_options(self, wildcards: Any = None) -> ShellArg:
        """``--allow-pickle`` for every job that loads results, when the config allows it."""
        return ShellArg("--allow-pickle" if self.cfg.allow_pickle else "")

    def get_policy(self, wildcards: Any = None) -> ShellArg:
        """The error policy of processing jobs, as ``--policy JSON`` (not recorded: it shapes no result)."""
        return ShellArg(shlex.quote(ErrorPolicy.from_config(self.cfg).to_json()))

    def end_of_run(self, success: bool) -> None:
        """Called by the Snakefile once the run is over (``onsuccess`` / ``onerror``).

        Warns when the result is incomplete (failed chunks, unreadable files),
        and cancels the re-check timers Snakemake's job scheduler leaves behind
        (:func:`_scheduler_timers`), which would hold the process up to a second at exit.
        """
        for timer in _scheduler_timers():
            timer.cancel()
        if not success:
            return
        try:
            meta = GlobalMeta.model_validate(load_meta(self.result))
        except (ResultFileError, ValidationError, OSError):
            return  # nothing to warn about: the run says what went wrong
        if not meta.complete:
            print(
                f"coffea-smk: WARNING: the result is INCOMPLETE ({meta.events} of "
                f"{meta.events_expected} events; {meta.failed_chunks} chunks failed, "
                f"{meta.bad_files} files unreadable). `coffea-smk status "
                f"{self.configfile}` lists them; run again to retry them.",
                file=sys.stderr,
            )


CONFIG_ERROR_EXIT = 2
"""The exit code of a run that a configuration error stopped before any job (``coffea-smk run``
says no more then: no job ran, no log to read)."""


def stop_on_config_error(err: ConfigError | StatUnavailableError, configfile: str | None) -> NoReturn:
    """Print a configuration error as the message alone and exit with :data:`CONFIG_ERROR_EXIT`.

    Snakemake would print the exception with the Snakefile's traceback lines: a configuration
    error is no failure of the workflow's code. A ``SystemExit`` raised while the Snakefile is
    parsed ends Snakemake with its code and prints nothing more. When the error is about one
    key of the config file (``ConfigError.key``, or the processor), its line is named.
    """
    message = str(err)
    key = getattr(err, "key", None) or ("processor" if isinstance(err.__context__, ProcessorError) else None)
    if key and configfile and not message.startswith(configfile):
        line = line_of(configfile, [key])
        where = f"{configfile}, line {line}" if line is not None else configfile
        message = f"{where}: {message}" if f"'{key}'" in message else f"{where}: key '{key}': {message}"
    print(f"coffea-smk: configuration error:\n{textwrap.indent(message, '  ')}", file=sys.stderr, flush=True)
    raise SystemExit(CONFIG_ERROR_EXIT)


def _scheduler_timers() -> list[threading.Timer]:
    """The pending re-evaluation timers of Snakemake's job scheduler, and no other timer.

    Snakemake starts them to wake its scheduler after a rate-limit pause; at the
    end of the run nothing waits for them. Any other timer of the process (a
    plugin's, the user's) is left alone.
    """
    out = []
    for thread in threading.enumerate():
        code = getattr(getattr(thread, "function", None), "__code__", None)
        if isinstance(thread, threading.Timer) and code is not None and code.co_filename.endswith(_SCHEDULER):
            out.append(thread)
    return out


def _lstat(path: str) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]
