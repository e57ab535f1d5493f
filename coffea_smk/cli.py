"""``coffea-smk``: run an analysis, run the demo, inspect results."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from coffea_smk.paths import profile_dir, snakefile

USAGE = """coffea-smk run ANALYSIS.yaml [SNAKEMAKE ARGS ...]
       coffea-smk demo [--dir DIR] [--scale X] [SNAKEMAKE ARGS ...]
       coffea-smk summary RESULT.npz
       coffea-smk metrics RESULT.npz
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


def cmd_run(configfile: str, extra: list[str]) -> int:
    if not Path(configfile).is_file():
        print(f"coffea-smk: analysis config {configfile} does not exist", file=sys.stderr)
        return 2
    cmd = snakemake_command(configfile, extra)
    return subprocess.call(cmd)


def cmd_demo(directory: str, scale: float, extra: list[str]) -> int:
    from coffea_smk.demo import prepare, summary

    print(
        f"coffea-smk demo: writing NanoAOD-layout demo data under {Path(directory).resolve()} ...", flush=True
    )
    where = prepare(directory, scale)
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
    from coffea_smk.demo import summary

    print(summary(path))
    return 0


def cmd_metrics(path: str) -> int:
    from coffea_smk.metrics import report
    from coffea_smk.storage import load_meta

    print(report(load_meta(path)))
    return 0


def cmd_schema() -> int:
    import json

    from coffea_smk.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        if not rest or rest[0].startswith("-"):
            print("usage: " + USAGE.splitlines()[0], file=sys.stderr)
            return 2
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
