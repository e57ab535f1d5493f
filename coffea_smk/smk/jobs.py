"""The steps that Snakemake jobs run: ``python -m coffea_smk job <step> ...``.

Each step writes its output atomically and its log to ``--log``. A failure
prints one clear message on stderr (Snakemake shows it) and the full story in
the log; nothing already written is touched, but for a damaged input, which
is removed so that the next run makes it again (:mod:`coffea_smk.engine.damaged`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from coffea_smk.engine.damaged import DamagedFileError, describe, discard
from coffea_smk.engine.meta import Provenance
from coffea_smk.engine.plan import make_plan
from coffea_smk.engine.preprocess import FileIdentity, StaleRecordError, note_replaced, preprocess_files
from coffea_smk.engine.records import (
    Batch,
    BatchFailures,
    Plan,
    PlanRequest,
    PreprocessedFile,
    UnusableFile,
)
from coffea_smk.engine.reduce import finish_dataset, finish_global, merge_to_file
from coffea_smk.engine.skim import Skims
from coffea_smk.io.basketmap import map_path
from coffea_smk.io.faults import causes
from coffea_smk.smk.names import Step, split_attempt
from coffea_smk.smk.publish import publish, skim_aliases
from coffea_smk.spec.processor import load_processor
from coffea_smk.spec.settings import ErrorPolicy, EventsOptions
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.spec.stat import FIT, StatModel
from coffea_smk.util.atomic import write_json

log = logging.getLogger("coffea_smk")


def _setup_logging(path: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(path, mode="w")]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers
    )


def _plan(path: str) -> Plan:
    """The plan a job reads; a damaged one is removed (the next run plans again)."""
    try:
        return Plan.read(path)
    except ValidationError as err:
        raise discard(path, f"{path} was corrupted ({describe(err)})", DamagedFileError) from None


def step_preprocess(a: argparse.Namespace) -> None:
    identities = [FileIdentity(**d) for d in json.loads(a.files)]
    policy = ErrorPolicy.from_json(a.policy) if a.policy else None
    records, bad = preprocess_files(identities, a.cache, skip_bad_files=a.skip_bad_files, policy=policy)
    if bad:
        write_json(a.failures, BatchFailures(bad_files=tuple(bad)).model_dump(mode="json"))
    write_json(a.out, Batch(records=tuple(records)).model_dump(mode="json"))


def step_plan(a: argparse.Namespace) -> None:
    request = PlanRequest.model_validate_json(a.spec)
    records: list[PreprocessedFile | UnusableFile] = []
    sources: list[str | None] = []
    for path in a.inputs:
        try:
            batch = Batch.model_validate_json(Path(path).read_bytes())
        except ValidationError as err:
            raise discard(path, f"{path} is corrupted ({describe(err)})", DamagedFileError) from None
        records.extend(batch.records)
        sources.extend([path] * len(batch.records))
    plan = make_plan(
        request.dataset,
        request.slug,
        request.metadata,
        records,
        request.settings,
        key=request.key,
        batch_outputs=sources,
        steps=request.steps,
    )
    write_json(a.out, plan.model_dump(mode="json"))
    log.info(
        "dataset %s: %d files, %d events, %d work units, %d bad files",
        request.dataset,
        len(records),
        plan.expected_events,
        len(plan.units),
        len(plan.bad_files),
    )


def step_process(a: argparse.Namespace) -> None:
    from coffea_smk.engine.process import process_unit_to_file  # noqa: PLC0415  only this step loads awkward, uproot
    from coffea_smk.engine.reading import ColumnHint  # noqa: PLC0415  with it

    plan = _plan(a.plan)
    # the column hint of the dataset's partials (<outdir>/partials/<dataset>/<tag>/<unit>.npz) is
    # <outdir>/cache/columns/<dataset>/<tag>.json; the analysis's other datasets' beside it
    out = Path(a.out).absolute()
    hint = None
    if len(out.parents) > 3 and out.parents[2].name == "partials":
        hints = out.parents[3] / "cache" / "columns"
        hint = ColumnHint(hints / out.parent.parent.name / f"{out.parent.name}.json", hints.glob("*/*.json"))
    unit_id, attempt = split_attempt(a.unit)
    processor = load_processor(a.processor, a.basedir)
    try:
        process_unit_to_file(
            plan,
            unit_id,
            processor,
            a.out,
            attempt=attempt,
            policy=ErrorPolicy.from_json(a.policy),
            previous_path=a.inputs[0] if a.inputs else None,
            failures_path=a.failures,
            allow_pickle=a.allow_pickle,
            events=EventsOptions.from_json(a.events),
            hint=hint,
            skim_settings=SkimSettings.from_json(a.skims),
        )
    except Exception as err:
        stale = next((e for e in causes(err) if isinstance(e, StaleRecordError)), None)
        if stale is not None:
            _note_replaced(plan, stale)
        raise


def _note_replaced(plan: Plan, err: StaleRecordError) -> None:
    """A file was replaced behind the cache's back: drop its record and change its key for the next run."""
    for f in plan.files:
        if f.key == err.key and f.record_path:
            record = Path(f.record_path)
            record.unlink(missing_ok=True)
            map_path(record).unlink(missing_ok=True)
            note_replaced(record.parents[2], err.key, err.uuid)  # <cache>/files/<kk>/<key>.json


def step_merge(a: argparse.Namespace) -> None:
    merge_to_file(a.inputs, a.out, allow_pickle=a.allow_pickle)


def step_dataset(a: argparse.Namespace) -> None:
    provenance = Provenance.model_validate_json(a.provenance)
    skims = Skims(SkimSettings.from_json(a.skims), a.skim_dir)
    finish_dataset(a.inputs, _plan(a.plan), a.out, provenance, allow_pickle=a.allow_pickle, skims=skims)


def step_result(a: argparse.Namespace) -> None:
    processor = load_processor(a.processor, a.basedir)
    provenance = Provenance.model_validate_json(a.provenance)
    skims = Skims(SkimSettings.from_json(a.skims), a.skim_dir)
    meta = finish_global(
        a.inputs, a.out, provenance, processor.postprocess, allow_pickle=a.allow_pickle, skims=skims
    )
    log.info("global result: %d of %d events, complete=%s", meta.events, meta.events_expected, meta.complete)


def step_plots(a: argparse.Namespace) -> None:
    from coffea_smk.post.make import make_plots  # noqa: PLC0415  matplotlib: only the plot jobs pay for it
    from coffea_smk.spec.plots import PlotSettings  # noqa: PLC0415  with it

    settings = json.loads(a.settings)
    global_path, *dataset_paths = a.inputs
    notes = make_plots(
        global_path,
        dataset_paths,
        PlotSettings.model_validate(settings["plots"]),
        settings["lumi"],
        a.out,
        allow_pickle=a.allow_pickle,
    )
    for note in notes:
        log.warning("%s", note)


def step_report(a: argparse.Namespace) -> None:
    from coffea_smk.post.make import make_report  # noqa: PLC0415  matplotlib: only the report job pays for it

    global_path, *rest = a.inputs
    fits = [p for p in rest if p.endswith(f"/{FIT}")]
    plots = next((p for p in rest if not p.endswith(".npz") and p not in fits), None)
    make_report(
        global_path, [p for p in rest if p.endswith(".npz")], plots, a.out, fits, allow_pickle=a.allow_pickle
    )
    log.info("report written: %s", a.out)


def step_publish(a: argparse.Namespace) -> None:
    """Switch the fixed names (result.npz, datasets/<d>.npz, report.html, ...) to this analysis's
    outputs, then write the marker (a temporary output named after the state found at parse time)."""
    spec = json.loads(a.spec)
    # the skims' manifests are written by the global result's job, after the workflow was parsed
    aliases = {**spec["aliases"], **skim_aliases(spec["outdir"], spec["key"])}
    for line in publish(spec["outdir"], aliases):
        log.info("%s", line)
    folder = Path(a.out).parent
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.done"):
        old.unlink(missing_ok=True)
    Path(a.out).write_text(spec["key"] + "\n")


def step_stat(a: argparse.Namespace) -> None:
    from coffea_smk.post.stat import make_stat  # noqa: PLC0415  uproot, hist, pyhf: only the stat jobs pay for them

    settings = json.loads(a.settings)
    global_path, *dataset_paths = a.inputs
    model = StatModel.model_validate(settings["model"])
    record = make_stat(
        global_path,
        dataset_paths,
        settings["name"],
        model,
        settings["lumi"],
        a.out,
        allow_pickle=a.allow_pickle,
    )
    fit, limit = record["bestfit"], record["upper_limit"]
    log.info(
        "stat.%s: mu = %.4g +- %.4g, 95%% CL upper limit %s observed, %s expected (%s data)",
        settings["name"],
        fit["mu"],
        fit["uncertainty"],
        limit["observed"],
        limit["expected"],
        record["data"],
    )


STEPS = {
    Step.PREPROCESS: step_preprocess,
    Step.PLAN: step_plan,
    Step.PROCESS: step_process,
    Step.MERGE: step_merge,
    Step.DATASET: step_dataset,
    Step.RESULT: step_result,
    Step.PLOTS: step_plots,
    Step.REPORT: step_report,
    Step.PUBLISH: step_publish,
    Step.STAT: step_stat,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m coffea_smk job")
    sub = parser.add_subparsers(dest="step", required=True)

    def add(name: Step, *args: str, inputs: bool = False, processor: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name.value)
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
        if name in (Step.PROCESS, Step.DATASET, Step.RESULT):
            p.add_argument("--skims")  # SkimSettings as JSON (the defaults without)
            p.add_argument("--skim-dir")  # where the step's skim files go: a template with {name}
        return p

    pre = add(Step.PREPROCESS, "files", "cache", "failures")
    pre.add_argument("--skip-bad-files", action="store_true")
    pre.add_argument("--policy")  # retries of opens after transient I/O errors (none without)
    add(Step.PLAN, "spec", inputs=True)
    add(Step.PROCESS, "plan", "unit", "policy", "failures", inputs=True, processor=True).add_argument(
        "--events"
    )
    add(Step.MERGE, inputs=True, processor=True)
    add(Step.DATASET, "plan", "provenance", inputs=True, processor=True)
    add(Step.RESULT, "provenance", inputs=True, processor=True)
    add(Step.PLOTS, "settings", inputs=True)
    add(Step.REPORT, inputs=True)
    add(Step.PUBLISH, "spec", inputs=True)
    add(Step.STAT, "settings", inputs=True)
    a = parser.parse_args(argv)
    _setup_logging(a.log)
    step = STEPS[Step(a.step)]
    try:
        step(a)
    except Exception as err:
        log.error("%s failed:\n%s", a.step, "".join(traceback.format_exception(err)))
        print(f"coffea_smk {a.step} failed: {err}", file=sys.stderr)
        if a.log:
            print(f"(full log: {a.log})", file=sys.stderr)
        return 1
    return 0
