"""The kinds of output of the workflow and where each lives under ``outdir`` (patterns)."""

from __future__ import annotations

from enum import Enum

__all__ = ["ALIASES", "FAILURES", "LOGS", "PATHS", "SKIM_MANIFEST", "Kind"]


class Kind(str, Enum):
    """The kinds of output, from a preprocessing batch to the global result."""

    PREPROCESS = "preprocess"
    PLAN = "plan"
    PARTIAL = "partial"
    MERGE = "merge"
    DATASET = "dataset"
    RESULT = "result"
    PLOTS = "plots"
    REPORT = "report"
    STAT = "stat"
    PUBLISH = "publish"
    """The job that points the fixed names at the current results (a log, no path of its own)."""


PATHS = {
    Kind.PREPROCESS: "preprocess/{dataset}/{batch}.json",
    Kind.PLAN: "plan/{dataset}/{plan}.json",
    Kind.PARTIAL: "partials/{dataset}/{tag}/{unit}.npz",
    Kind.MERGE: "merges/{dataset}/{tag}/{node}.npz",
    Kind.DATASET: "datasets/{dataset}/{key}.npz",
    Kind.RESULT: "global/{key}.npz",
    Kind.PLOTS: "plots/{key}",
    Kind.REPORT: "report/{key}.html",
    Kind.STAT: "stat/{key}",
}
SKIM_MANIFEST = "skims/{name}/manifests/{key}"
"""The folder of skim ``name``'s manifest (``fileset.json``, ``lineage.json``, ``lumi.json``) that
the global result with that key writes: the fileset of a next analysis."""
ALIASES = {
    Kind.DATASET: "datasets/{dataset}.npz",
    Kind.RESULT: "result.npz",
    Kind.PLOTS: "plots/latest",
    Kind.REPORT: "report.html",
    Kind.STAT: "stat/{model}",
}
LOGS = {
    Kind.PREPROCESS: "logs/preprocess/{dataset}/{batch}.log",
    Kind.PLAN: "logs/plan/{dataset}/{plan}.log",
    Kind.PARTIAL: "logs/process/{dataset}/{tag}/{unit}.log",
    Kind.MERGE: "logs/merge/{dataset}/{tag}/{node}.log",
    Kind.DATASET: "logs/dataset/{dataset}/{key}.log",
    Kind.RESULT: "logs/result/{key}.log",
    Kind.PLOTS: "logs/plots/{key}.log",
    Kind.REPORT: "logs/report/{key}.log",
    Kind.STAT: "logs/stat/{key}.log",
    Kind.PUBLISH: "logs/publish.log",
}
FAILURES = {
    Kind.PREPROCESS: "failures/{dataset}/preprocess/{batch}.json",
    Kind.PARTIAL: "failures/{dataset}/{tag}/{unit}.json",
}
