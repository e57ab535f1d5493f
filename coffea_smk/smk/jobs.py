"""The steps that Snakemake jobs run: ``python -m coffea_smk job <step> ...``.

Each step writes its output atomically and its log to ``--log``. A failure
prints one clear message on stderr (Snakemake shows it) and the full story in
the log; nothing already written is touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coffea_smk.engine.preprocess import StaleRecordError

log = logging.getLogger("coffea_smk")


def _setup_logging(path: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(path, mode="w")]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers
    )


def _read_json(path: str) -> Any:
    with open(path) as handle:
        return json.load(handle)


def step_preprocess(a: argparse.Namespace) -> None:
    from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
    from coffea_smk.util.atomic import write_json

    identities = [FileIdentity(**d) for d in json.loads(a.files)]
    records, bad = preprocess_files(identities, a.cache, skip_bad_files=a.skip_bad_files)
    if bad:
        write_json(a.failures, {"bad_files": bad})
    write_json(a.out, {"records": records})


def step_plan(a: argparse.Namespace) -> None:
    from coffea_smk.engine.plan import PlanSettings, make_plan
    from coffea_smk.util.atomic import write_json

    spec = json.loads(a.spec)
    records = []
    for path in a.inputs:
        try:
            batch = _read_json(path)["records"]
        except (ValueError, KeyError, TypeError) as err:
            Path(path).unlink(missing_ok=True)
            raise RuntimeError(f"{path} is corrupted ({err}): removed it; run again to redo it") from None
        records.extend({**r, "batch_output": path} for r in batch)
    plan = make_plan(
        spec["dataset"], spec["slug"], spec["metadata"], records, PlanSettings(**spec["settings"])
    )
    plan["key"] = spec["key"]
    write_json(a.out, plan)
    log.info(
        "dataset %s: %d files, %d events, %d work units, %d bad files",
        spec["dataset"],
        len(records),
        plan["expected_events"],
        len(plan["units"]),
        len(plan["bad_files"]),
    )


def step_process(a: argparse.Namespace) -> None:
    from coffea_smk.engine.preprocess import StaleRecordError
    from coffea_smk.engine.process import ErrorPolicy, process_unit_to_file
    from coffea_smk.engine.reading import EventsOptions
    from coffea_smk.io.faults import causes
    from coffea_smk.spec.processor import load_processor

    policy = json.loads(a.policy)
    plan = _read_json(a.plan)
    processor = load_processor(a.processor, a.basedir)
    try:
        process_unit_to_file(
            plan,
            a.unit,
            processor,
            a.out,
            policy=ErrorPolicy(tuple(policy["continue_on"]), policy["retries"], policy["backoff"]),
            previous_path=a.inputs[0] if a.inputs else None,
            failures_path=a.failures,
            allow_pickle=a.allow_pickle,
            events=EventsOptions.from_json(a.events),
        )
    except Exception as err:
        stale = next((e for e in causes(err) if isinstance(e, StaleRecordError)), None)
        if stale is not None:
            _note_replaced(plan, stale)
        raise


def _note_replaced(plan: dict[str, Any], err: StaleRecordError) -> None:
    """A file was replaced behind the cache's back: drop its record and change its key for the next run."""
    from coffea_smk.engine.preprocess import note_replaced
    from coffea_smk.io.basketmap import map_path

    for f in plan["files"]:
        if f["key"] == err.key and f.get("record_path"):
            record = Path(f["record_path"])
            record.unlink(missing_ok=True)
            map_path(record).unlink(missing_ok=True)
            note_replaced(record.parents[2], err.key, err.uuid)  # <cache>/files/<kk>/<key>.json


def step_merge(a: argparse.Namespace) -> None:
    from coffea_smk.engine.reduce import merge_to_file

    merge_to_file(a.inputs, a.out, allow_pickle=a.allow_pickle)


def step_dataset(a: argparse.Namespace) -> None:
    from coffea_smk.engine.reduce import finish_dataset

    provenance = json.loads(a.provenance)
    finish_dataset(a.inputs, _read_json(a.plan), a.out, provenance, allow_pickle=a.allow_pickle)


def step_result(a: argparse.Namespace) -> None:
    from coffea_smk.engine.reduce import finish_global
    from coffea_smk.spec.processor import load_processor

    processor = load_processor(a.processor, a.basedir)
    provenance = json.loads(a.provenance)
    meta = finish_global(a.inputs, a.out, provenance, processor.postprocess, allow_pickle=a.allow_pickle)
    log.info(
        "global result: %d of %d events, complete=%s",
        meta["events"],
        meta["events_expected"],
        meta["complete"],
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m coffea_smk job")
    sub = parser.add_subparsers(dest="step", required=True)

    def add(name: str, *args: str, inputs: bool = False, processor: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--log")
        for arg in args:
            p.add_argument(f"--{arg}", required=True)
        if processor:
            p.add_argument("--processor", required=True)
            p.add_argument("--basedir")
        p.add_argument("--allow-pickle", action="store_true")
        if inputs:
            p.add_argument("inputs", nargs="*")
        return p

    add("preprocess", "files", "cache", "failures").add_argument("--skip-bad-files", action="store_true")
    add("plan", "spec", inputs=True)
    add("process", "plan", "unit", "policy", "failures", inputs=True, processor=True).add_argument("--events")
    add("merge", inputs=True, processor=True)
    add("dataset", "plan", "provenance", inputs=True, processor=True)
    add("result", "provenance", inputs=True, processor=True)
    a = parser.parse_args(argv)
    _setup_logging(a.log)
    step = globals()[f"step_{a.step}"]
    try:
        step(a)
    except Exception as err:
        log.error("%s failed:\n%s", a.step, "".join(traceback.format_exception(err)))
        print(f"coffea_smk {a.step} failed: {err}", file=sys.stderr)
        if a.log:
            print(f"(full log: {a.log})", file=sys.stderr)
        return 1
    return 0
