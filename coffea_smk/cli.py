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

import yaml

from coffea_smk.smk.paths import profile_dir, snakefile

CONFIG_ERROR_EXIT = 2
"""Snakemake's exit code when the workflow stopped on a configuration error while it was parsed
(:data:`coffea_smk.smk.analysis.CONFIG_ERROR_EXIT`; not imported from there: it imports Snakemake)
or on a bad command line (argparse's)."""

USAGE = """coffea-smk init --fileset FILESET --processor MODULE:CLASS [--dir DIR] [--force]
       coffea-smk profile install NAME [--to DIR] [--force]   (NAME: local, uge, slurm, htcondor)
       coffea-smk run ANALYSIS.yaml [SNAKEMAKE ARGS ...]
       coffea-smk resume ANALYSIS.yaml [SNAKEMAKE ARGS ...]   (redo only failed and missing work)
       coffea-smk report ANALYSIS.yaml [SNAKEMAKE ARGS ...]   (run, then print the report's path)
       coffea-smk status ANALYSIS.yaml
       coffea-smk demo [--dir DIR] [--scale X] [SNAKEMAKE ARGS ...]
       coffea-smk summary RESULT.npz
       coffea-smk metrics RESULT.npz | CONFIG.yaml
       coffea-smk schema"""


def _resolve_profiles(args: list[str]) -> list[str]:
    """Map ``--profile NAME`` to a shipped profile when NAME is not a directory; default to ``local``."""
    out = list(args)
    has_profile = False
    for i, arg in enumerate(out):
        value = None
        if arg == "--profile" and i + 1 < len(out):
            value, index = out[i + 1], i + 1
        elif arg.startswith("--profile="):
            value, index = arg.split("=", 1)[1], i
        if value is None:
            continue
        has_profile = True
        shipped = profile_dir(value)
        if not Path(value).is_dir() and shipped is not None:
            out[index] = str(shipped) if arg == "--profile" else f"--profile={shipped}"
    if not has_profile and "--executor" not in out and not any(a.startswith("--executor=") for a in out):
        local = profile_dir("local")
        if local is not None:
            out = ["--profile", str(local), *out]
    return out


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
        *_resolve_profiles(extra),
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
            f"coffea-smk: the workflow stopped with errors; `coffea-smk status {configfile}` lists "
            "failed jobs and their logs; run again to redo only what is missing",
            file=sys.stderr,
        )
        return
    # an incomplete result is reported by the workflow itself (Analysis.end_of_run)


def _runs_locally(args: list[str]) -> bool:
    """Whether the resolved Snakemake arguments run jobs on this machine."""
    for i, arg in enumerate(args):
        value = None
        if arg in ("--executor", "-e") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--executor="):
            value = arg.split("=", 1)[1]
        if value is not None and value not in ("local", "dryrun", "touch"):
            return False
        if arg == "--profile" and i + 1 < len(args):
            for name in ("config.v8+.yaml", "config.yaml"):
                path = Path(args[i + 1]) / name
                if path.is_file():
                    settings = yaml.safe_load(path.read_text()) or {}
                    if settings.get("executor", "local") not in ("local", "dryrun", "touch"):
                        return False
                    break
    return True


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


# Snakemake options after which `coffea-smk run` prints Snakemake's own log (as before the view):
# more detail asked for, or a command that runs no jobs and prints something else.
_RAW_LOG = {
    "--verbose", "--printshellcmds", "-p", "--debug", "--debug-dag", "--logger",
    "-n", "--dry-run", "--dryrun", "--unlock", "--lint", "--touch", "-t", "--summary", "-S",
    "--detailed-summary", "-D", "--dag", "--rulegraph", "--filegraph", "--d3dag", "--report",
    "--archive", "--cleanup-metadata", "--cm", "--cleanup-shadow", "--containerize", "--export-cwl",
    "--print-compilation", "--list-rules", "--list", "-l", "--list-target-rules", "--lt",
    "--list-changes", "--lc", "--list-input-changes", "--li", "--list-params-changes", "--lp",
    "--list-code-changes", "--list-untracked", "--lu", "--version", "-v", "--help", "-h",
}  # fmt: skip


def with_progress_view(args: list[str]) -> list[str]:
    """Select the progress view (Snakemake logger plugin ``coffea-smk``) unless ``args`` ask otherwise.

    ``COFFEA_SMK_PROGRESS=off`` in the environment keeps Snakemake's own log as well.
    """
    if os.environ.get("COFFEA_SMK_PROGRESS", "").lower() in ("off", "0", "no", "false"):
        return args
    for a in args:
        short = a[1:] if a[:1] == "-" and a[1:2] != "-" and a[1:].isalpha() else ""
        if a.split("=", 1)[0] in _RAW_LOG or any(f"-{c}" in _RAW_LOG for c in short):
            return args
    return ["--logger=coffea-smk", *args]


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


def cmd_run(configfile: str, extra: list[str]) -> int:
    if not Path(configfile).is_file():
        print(f"coffea-smk: analysis config {configfile} does not exist", file=sys.stderr)
        return 2
    if "--unlock" not in extra:
        _unlock_if_stale(configfile)
    cmd = snakemake_command(configfile, with_progress_view(extra))
    dry = any(a in extra for a in ("-n", "--dry-run", "--unlock", "--lint"))
    with _job_server(not dry and _runs_locally(cmd), _preload_for(configfile)) as env:
        code = subprocess.call(cmd, env={**os.environ, **env})
    _final_word(configfile, code, extra)
    return code


def cmd_report(configfile: str, extra: list[str]) -> int:
    """Bring the analysis up to date (the report is one of its outputs) and say where the report is."""
    code = cmd_run(configfile, extra)
    if code != 0 or any(a in extra for a in ("-n", "--dry-run")):
        return code
    from coffea_smk.smk.layout import Layout  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    report = Path(Layout.from_file(configfile).outdir) / "report.html"
    print(f"report: {report.absolute().as_uri()}")
    return 0


def cmd_status(configfile: str) -> int:
    from coffea_smk.smk.layout import Layout  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.smk.status import report  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.spec.config import ConfigError  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    try:
        text, ok = report(Layout.from_file(configfile, unknown_ok=True))  # whatever the storage does
    except ConfigError as err:
        print(f"coffea-smk: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0 if ok else 1


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
            print(summary(where / "results" / "result.npz"))
    finally:
        os.chdir(cwd)
    return code


def cmd_summary(path: str) -> int:
    from coffea_smk.demo import summary  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    print(summary(path))
    return 0


def cmd_metrics(path: str) -> int:
    """The metrics of a result file; given the analysis' config, of its global result."""
    from coffea_smk.engine.metrics import report  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s
    from coffea_smk.results import load_meta  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

    if path.endswith((".yaml", ".yml", ".json")):
        from coffea_smk.smk.layout import Layout  # noqa: PLC0415  per command: `coffea-smk run` starts in 0.1 s

        path = str(Path(Layout.from_file(path).outdir) / "result.npz")
        if not Path(path).exists():
            print(f"coffea-smk: no result yet at {path}: run `coffea-smk run` first", file=sys.stderr)
            return 1
    print(report(load_meta(path)))
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
    if command == "profile":
        return cmd_profile(rest)
    if command in ("run", "resume", "status", "report"):
        if not rest or rest[0].startswith("-"):
            print("usage: " + USAGE, file=sys.stderr)
            return 2
        if command == "status":
            return cmd_status(rest[0])
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
        return cmd_metrics(rest[0])
    if command == "schema":
        return cmd_schema()
    print(USAGE, file=sys.stderr)
    return 2
