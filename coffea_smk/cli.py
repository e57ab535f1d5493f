"""``coffea-smk``: run an analysis, run the demo, inspect results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from coffea_smk.smk.paths import snakefile
from coffea_smk.smk.runargs import config_args, resolve_profiles, runs_locally, with_progress_view

CONFIG_ERROR_EXIT = 2
"""Snakemake's exit code when the workflow stopped on a configuration error while it was parsed
(:data:`coffea_smk.smk.analysis.CONFIG_ERROR_EXIT`; not imported from there: it imports Snakemake)
or on a bad command line (argparse's)."""

USAGE = """coffea-smk init --fileset FILESET --processor MODULE:CLASS [--dir DIR] [--force]
       coffea-smk profile install NAME [--to DIR] [--force]   (NAME: local, uge, slurm, htcondor)
       coffea-smk run ANALYSIS.yaml [SNAKEMAKE ARGS ...]
       coffea-smk resume ANALYSIS.yaml [SNAKEMAKE ARGS ...]   (redo only failed and missing work)
       coffea-smk report ANALYSIS.yaml [SNAKEMAKE ARGS ...]   (run, then print the report's path)
       coffea-smk status ANALYSIS.yaml [--config KEY=VALUE ...]
       coffea-smk clean ANALYSIS.yaml [--yes] [--keep N] [--config KEY=VALUE ...]   (free old variants)
       coffea-smk demo [--dir DIR] [--scale X] [SNAKEMAKE ARGS ...]
       coffea-smk summary RESULT.npz
       coffea-smk metrics RESULT.npz | CONFIG.yaml [--config KEY=VALUE ...]
       coffea-smk schema"""


def snakemake_command(configfile: str, extra: list[str]) -> list[str]:
    """The Snakemake command line that ``coffea-smk run`` executes."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        snakefile(),
        "--configfile",
        str(Path(configfile).resolve()),
        *resolve_profiles(extra),
    ]


def _other_snakemake_here() -> bool:
    """Whether another Snakemake process runs in this directory (Linux /proc; False elsewhere)."""
    here = os.path.realpath(os.getcwd())
    me = os.getpid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            if pid in (me, os.getppid()):
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if any(b"snakemake" in part for part in cmdline[:3]) and os.path.realpath(entry / "cwd") == here:
                return True
        except (OSError, ValueError):
            continue
    return False


def _unlock_if_stale(configfile: str) -> None:
    """After a crash Snakemake leaves its lock behind: lift it when no other run is active here."""
    locks = Path(".snakemake") / "locks"
    if not locks.is_dir() or not any(locks.iterdir()) or not Path("/proc/self").exists():
        return
    if _other_snakemake_here():
        return
    print("coffea-smk: removing the lock left by an interrupted run in this directory", file=sys.stderr)
    subprocess.call(
        [*snakemake_command(configfile, ["--unlock"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _final_word(configfile: str, code: int, extra: list[str]) -> None:
    if any(a in extra for a in ("-n", "--dry-run", "--unlock", "--lint", "-h", "--help")):
        return
    if code == CONFIG_ERROR_EXIT:
        return  # the workflow printed the configuration error; no job ran, no log to point at
    if code != 0:
        print(
            f"coffea-smk: the workflow stopped with errors; `coffea-smk status {configfile}"
            f"{config_args(extra)}` lists "
            "failed jobs and their logs; run again to redo only what is missing",
            file=sys.stderr,
        )
        return
    # an incomplete result is reported by the workflow itself (Analysis.end_of_run)


@contextlib.contextmanager
def _job_server(enabled: bool, preload: list[str] | None = None) -> Iterator[dict[str, str]]:
    """Start the local fork server for the duration of a run (see coffea_smk.smk.jobserver);
    ``preload``: more modules for it to import once."""
    from coffea_smk.smk.jobserver import ENV, address  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    if not enabled or os.environ.get(ENV) == "off":
        yield {}
        return
    tmp = tempfile.mkdtemp(prefix="coffea-smk-")
    sock = os.path.join(tmp, "jobs.sock")
    server = subprocess.Popen([sys.executable, "-m", "coffea_smk", "jobserver", sock, *(preload or [])])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        yield {ENV: address(sock)} if os.path.exists(sock) else {}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


_IMPORTS_COFFEA = re.compile(rb"^\s*(from|import)\s+coffea(\.|\s)", re.MULTILINE)


def _preload_for(configfile: str) -> list[str]:
    """coffea's modules when the analysis's events are likely coffea's (a coffea schema, or a
    processor module that mentions coffea): its jobs then do not import coffea each (~1 s).
    Only a guess about what to import ahead: it never changes what a job does."""
    from coffea_smk.spec.processor import ProcessorError, module_origin  # noqa: PLC0415

    try:
        data = yaml.safe_load(Path(configfile).read_text()) or {}
        schema, spec = str(data.get("schema", "auto")), str(data["processor"])
        basedir = data.get("basedir") or str(Path(configfile).resolve().parent)
        if schema == "nanoaod":
            return []
        origin = module_origin(spec, basedir) if schema == "auto" else None
        if schema == "auto" and (origin is None or not _IMPORTS_COFFEA.search(origin.read_bytes())):
            return []
    except (OSError, yaml.YAMLError, KeyError, TypeError, ProcessorError):
        return []
    return ["coffea.processor", "coffea.nanoevents"]


def _unreadable(configfile: str) -> str | None:
    """Why ``configfile`` is no analysis config Snakemake can load (it would say less), or None."""
    path = Path(configfile)
    if not path.is_file():
        return f"analysis config {configfile} does not exist"
    try:
        with path.open() as stream:  # its name in the error's position
            data = yaml.safe_load(stream)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return f"{configfile} cannot be parsed: {err}"
    if not isinstance(data, dict):
        return f"{configfile}: an analysis config is a mapping of keys to values"
    return None


def cmd_run(configfile: str, extra: list[str]) -> int:
    problem = _unreadable(configfile)
    if problem:
        return _config_error(problem)
    if "--unlock" not in extra:
        _unlock_if_stale(configfile)
    cmd = snakemake_command(configfile, with_progress_view(extra))
    dry = any(a in extra for a in ("-n", "--dry-run", "--unlock", "--lint"))
    with _job_server(not dry and runs_locally(cmd), _preload_for(configfile)) as env:
        code = subprocess.call(cmd, env={**os.environ, **env})
    _final_word(configfile, code, extra)
    return code


def _config_error(err: Exception | str) -> int:
    """Print a configuration error as the message alone (as the workflow does); its exit code."""
    print("coffea-smk: configuration error:\n  " + str(err).replace("\n", "\n  "), file=sys.stderr)
    return CONFIG_ERROR_EXIT


def _layout(configfile: str, args: list[str], **options: Any) -> Any:
    """The analysis of ``configfile`` with the ``--config KEY=VALUE`` overrides among ``args``
    (Snakemake's syntax), as a run with the same arguments sees it (``options``: of
    :meth:`~coffea_smk.smk.layout.Layout.from_config`).

    Raises:
        ConfigError: The config (or an override) is invalid.
    """
    from coffea_smk.smk.layout import Layout  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.smk.overrides import read_config, split_overrides  # noqa: PLC0415  per command

    _, overrides = split_overrides(args)
    return Layout.from_config(read_config(configfile, overrides), configfile, **options)


def cmd_report(configfile: str, extra: list[str]) -> int:
    """Bring the analysis up to date (the report is one of its outputs) and say where the report is."""
    from coffea_smk.spec.config import ConfigError  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    code = cmd_run(configfile, extra)
    if code != 0 or any(a in extra for a in ("-n", "--dry-run")):
        return code
    try:
        report = Path(_layout(configfile, extra).outdir) / "report.html"
    except ConfigError as err:
        return _config_error(err)
    print(f"report: {report.absolute().as_uri()}")
    return 0


def cmd_status(configfile: str, rest: list[str]) -> int:
    """What is done, failed and pending, and the disk use of this and earlier variants."""
    from coffea_smk.smk.clean import disk_use, summary  # noqa: PLC0415  per command
    from coffea_smk.smk.status import report  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.spec.config import ConfigError  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    try:
        layout = _layout(configfile, rest, unknown_ok=True)  # whatever the storage does
        text, ok = report(layout)
        disk = summary(disk_use(layout))
    except ConfigError as err:
        return _config_error(err)
    print(text)
    print()
    print(disk)
    return 0 if ok else 1


def cmd_clean(rest: list[str]) -> int:
    """List (or with ``--yes`` remove) the outputs of earlier variants of the analysis."""
    from coffea_smk.smk.clean import Use, disk_use, human, listing, lock_holder, remove  # noqa: PLC0415  per command
    from coffea_smk.smk.overrides import split_overrides  # noqa: PLC0415  per command
    from coffea_smk.spec.config import ConfigError  # noqa: PLC0415  per command

    parser = argparse.ArgumentParser(
        prog="coffea-smk clean",
        description="List the outputs of earlier variants of the analysis (other settings, processor "
        "versions, filesets) that the analysis as configured now does not use; --yes removes them.",
        epilog="--config KEY=VALUE ...: the overrides the runs were given (Snakemake's syntax)",
    )
    parser.add_argument("configfile", help="the analysis config (analysis.yaml)")
    parser.add_argument("--yes", action="store_true", help="remove them (default: only list them)")
    parser.add_argument(
        "--keep", type=int, default=0, metavar="N", help="keep the N most recent earlier variants (default 0)"
    )
    try:
        args, _ = split_overrides(rest)
    except ConfigError as err:
        return _config_error(err)
    ns = parser.parse_args(args)
    if ns.keep < 0:
        parser.error("--keep takes a number >= 0")
    try:
        layout = _layout(ns.configfile, rest)
    except ConfigError as err:
        return _config_error(err)
    locked = lock_holder() if ns.yes else None
    if locked:
        print(f"coffea-smk clean: nothing removed: {locked}", file=sys.stderr)
        return 1
    usage = disk_use(layout, keep=ns.keep)
    print(listing(usage, ns.keep))
    files, size = usage.total(Use.EARLIER)
    if not files:
        return 0
    if not ns.yes:
        print(f"\n{human(size)} in {files} files would be removed: `coffea-smk clean {ns.configfile} --yes`")
        return 0
    files, size = remove(usage)
    print(f"\nremoved {files} files, {human(size)}")
    return 0


def cmd_demo(directory: str, scale: float, extra: list[str]) -> int:
    from coffea_smk.demo import prepare, summary  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    print(
        f"coffea-smk demo: writing NanoAOD-layout demo data under {Path(directory).resolve()} ...", flush=True
    )
    where = prepare(directory, scale)
    if "stat:" not in (where / "analysis.yaml").read_text():
        print("coffea-smk demo: no statistical model without pyhf: pip install 'coffea_smk[stat]'")
    cwd = os.getcwd()
    os.chdir(where)
    try:
        code = cmd_run("analysis.yaml", extra)
        if code == 0 and "-n" not in extra and "--dry-run" not in extra:
            print()
            print(summary(Path(_layout("analysis.yaml", extra).outdir) / "result.npz"))
    finally:
        os.chdir(cwd)
    return code


def cmd_summary(path: str) -> int:
    from coffea_smk.demo import summary  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    print(summary(path))
    return 0


def cmd_metrics(path: str, rest: list[str]) -> int:
    """The metrics of a result file; given the analysis' config (and ``--config`` overrides), of its
    global result, and where the wall time of the analysis's last run went (its timeline)."""
    from coffea_smk.engine.metrics import report  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.results import load_meta  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.smk.timeline import Timeline, breakdown, format_breakdown, latest  # noqa: PLC0415
    from coffea_smk.spec.config import ConfigError  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    timeline = None
    if path.endswith((".yaml", ".yml", ".json")):
        try:
            outdir = Path(_layout(path, rest).outdir)
        except ConfigError as err:
            return _config_error(err)
        path, timeline = str(outdir / "result.npz"), latest(outdir / "logs" / "snakemake")
        if not Path(path).exists():
            print(f"coffea-smk: no result yet at {path}: run `coffea-smk run` first", file=sys.stderr)
            return 1
    print(report(load_meta(path)))
    if timeline is not None:
        print(f"\nWhere the wall time of the last run went ({timeline}):")
        print(format_breakdown(breakdown(Timeline.read(timeline))))
    return 0


def cmd_schema() -> int:
    from coffea_smk.spec.config import json_schema  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_init(rest: list[str]) -> int:
    from coffea_smk.smk.scaffold import init  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.spec.config import ConfigError  # noqa: PLC0415  per command

    parser = argparse.ArgumentParser(prog="coffea-smk init", description="Write an analysis directory.")
    parser.add_argument(
        "--fileset", required=True, help="JSON/YAML fileset (coffea's shape, or preprocess output)"
    )
    parser.add_argument("--processor", required=True, help="module:Class (or module:function)")
    parser.add_argument("--dir", default=".", help="the analysis directory (default: here)")
    parser.add_argument(
        "--force", action="store_true", help="overwrite files (an earlier init's) that hold other contents"
    )
    ns = parser.parse_args(rest)
    try:
        made = init(ns.fileset, ns.processor, ns.dir, force=ns.force)
    except ConfigError as err:
        print(f"coffea-smk init: {err}", file=sys.stderr)
        return 2
    for path in made.written:
        print(f"wrote {path}")
    for path in made.kept:
        print(f"kept {path} (unchanged)")
    for note in made.notes:
        print(f"note: {note}")
    where = "" if made.directory == Path.cwd().resolve() else f"cd {made.directory} && "
    print("\nrun it here, on this machine:\n  " + where + "coffea-smk run analysis.yaml")
    print("or with plain Snakemake (after `coffea-smk profile install uge`, or slurm, htcondor):")
    print("  " + where + "snakemake --profile uge")
    return 0


def cmd_profile(rest: list[str]) -> int:
    from coffea_smk.smk.profiles import SHIPPED, ProfileError, install  # noqa: PLC0415  per command

    parser = argparse.ArgumentParser(prog="coffea-smk profile", description="Install a shipped profile.")
    parser.add_argument("action", choices=["install"])
    parser.add_argument("name", choices=SHIPPED)
    parser.add_argument("--to", help="the profile directory to write (default: ~/.config/snakemake/NAME)")
    parser.add_argument("--force", action="store_true", help="overwrite a copy that was edited")
    ns = parser.parse_args(rest)
    try:
        done = install(ns.name, ns.to, force=ns.force)
    except ProfileError as err:
        print(f"coffea-smk profile: {err}", file=sys.stderr)
        return 2
    state = "installed" if done.changed else "already installed (identical)"
    print(f"profile {done.name} {state}: {done.path}")
    print(f"use it in an analysis directory: snakemake --profile {done.name}")
    print(f"what a site usually edits in {done.path / 'config.v8+.yaml'}:")
    for line in done.edits:
        print(f"  - {line}")
    if done.missing_plugin:
        print(f"its executor plugin is not installed: {done.missing_plugin}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "init":
        return cmd_init(rest)
    if command == "clean":
        return cmd_clean(rest)
    if command == "profile":
        return cmd_profile(rest)
    if command in ("run", "resume", "status", "report"):
        if not rest or rest[0].startswith("-"):
            print("usage: " + USAGE, file=sys.stderr)
            return 2
        if command == "status":
            return cmd_status(rest[0], rest[1:])
        if command == "report":
            return cmd_report(rest[0], rest[1:])
        return cmd_run(rest[0], rest[1:])
    if command == "demo":
        parser = argparse.ArgumentParser(prog="coffea-smk demo")
        parser.add_argument("--dir", default="demo", help="where to write the demo (default: ./demo)")
        parser.add_argument("--scale", type=float, default=1.0, help="scale the number of generated events")
        ns, extra = parser.parse_known_args(rest)
        return cmd_demo(ns.dir, ns.scale, extra)
    if command == "summary" and rest:
        return cmd_summary(rest[0])
    if command == "metrics" and rest:
        return cmd_metrics(rest[0], rest[1:])
    if command == "schema":
        return cmd_schema()
    print(USAGE, file=sys.stderr)
    return 2
