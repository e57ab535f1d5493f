"""A fileset's ``steps`` (coffea's entry ranges per file): only those entries are processed,
chunked as a whole file would be, keyed, and checked against the file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from conftest import Workflow, assert_same_result

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor


def _direct(ranges: list[tuple[str, int, int]]) -> Any:
    """DimuonProcessor on coffea's NanoEvents of each range, summed."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    out = []
    for path, start, stop in ranges:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            events = NanoEventsFactory.from_root(
                {path: "Events"},
                entry_start=start,
                entry_stop=stop,
                schemaclass=NanoAODSchema,
                mode="virtual",
                metadata={"dataset": "DY", "filename": path, "entrystart": start, "entrystop": stop},
            ).events()
        out.append(DimuonProcessor().process(events))
    return DimuonProcessor().postprocess(coffea_smk.accumulate(out))


def test_steps_process_only_their_entries_and_a_change_reprocesses(workflow: Workflow, nanoaod: Path) -> None:
    dy, tt = str(nanoaod / "nano_dy.root"), str(nanoaod / "nano_tt_v15.root")
    config = {"processor": "coffea_smk.examples.dimuon:DimuonProcessor", "chunksize": 4, "events_per_job": 12}
    steps = [[0, 10], [25, 40]]
    workflow.write(config, {"DY": {"files": {dy: {"object_path": "Events", "steps": steps}, tt: "Events"}}})
    workflow.run()
    result = workflow.root / "results" / "result.npz"
    meta = coffea_smk.load_meta(result)
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 25 + 200
    assert_same_result(coffea_smk.load(result), _direct([(dy, 0, 10), (dy, 25, 40), (tt, 0, 200)]))

    steps = [[0, 10], [30, 40]]  # another range: another key, the new numbers
    workflow.write(config, {"DY": {"files": {dy: {"object_path": "Events", "steps": steps}, tt: "Events"}}})
    workflow.run()
    meta = coffea_smk.load_meta(result)
    assert meta["complete"] and meta["events"] == 20 + 200
    assert_same_result(coffea_smk.load(result), _direct([(dy, 0, 10), (dy, 30, 40), (tt, 0, 200)]))


def test_a_step_beyond_the_file_or_out_of_order_is_an_error_naming_it(
    workflow: Workflow, nanoaod: Path
) -> None:
    dy = str(nanoaod / "nano_dy.root")
    config = {"processor": "coffea_smk.examples.dimuon:DimuonProcessor", "chunksize": 4}
    workflow.write(config, {"DY": {"files": {dy: {"steps": [[20, 10]]}}}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and f"file {dy}: step [20, 10] is not a range of entries" in proc.stderr

    workflow.write(config, {"DY": {"files": {dy: {"steps": [[0, 30], [20, 35]]}}}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and "overlaps or precedes the step before it" in proc.stderr

    workflow.write(config, {"DY": {"files": {dy: {"steps": [[0, 10], [30, 50]]}}}})
    proc = workflow.run(check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "asks for entries [30, 50) of tree 'Events', which has 40 entries" in out
    assert not (workflow.root / "results" / "result.npz").exists()
