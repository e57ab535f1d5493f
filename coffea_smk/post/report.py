"""One self-contained HTML page for an analysis: plots, cutflows, completeness, metrics, config.

Everything is inside the file (images as data URIs, no script, no external style), so
it can be mailed, attached to a logbook or opened from a batch node's disk as is.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coffea_smk.post.manifest import MANIFEST, NOTES, Plot
from coffea_smk.skim import skim_name, skims_in
from coffea_smk.spec.stat import FILES as STAT_FILES

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.bad { color: #b00020; font-weight: bold; } .ok { color: #137333; font-weight: bold; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 380px; } figure img { width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .85em; }
"""


@dataclass(frozen=True)
class Failure:
    """A failed chunk or file, as the report lists it."""

    dataset: str
    file: str
    entries: str
    """The entry range(s), e.g. ``0-20``; "" for a file that could not be opened."""
    error: str


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: Iterable[list[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def cutflows(result: Any, datasets: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Tables of counts in the result: ``{name: {dataset: {step: count}}}``.

    A table is a dict under the result's top level whose keys are dataset names and
    whose values are flat dicts of numbers (the coffea habit: ``out["cutflow"][dataset]``).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not isinstance(result, dict):
        return out
    for name, value in result.items():
        if (
            isinstance(value, dict)
            and value
            and set(value) <= set(datasets)
            and all(
                isinstance(v, dict) and v and all(isinstance(n, (int, float)) for n in v.values())
                for v in value.values()
            )
        ):
            out[str(name)] = value
    return out


def _cutflow_html(tables: dict[str, dict[str, dict[str, Any]]]) -> str:
    parts = []
    for name, by_dataset in tables.items():
        steps = list(dict.fromkeys(step for flow in by_dataset.values() for step in flow))
        rows = [[d, *(_number(flow.get(s, "")) for s in steps)] for d, flow in by_dataset.items()]
        parts.append(f"<h3>{_e(name)}</h3>" + _table(["dataset", *steps], rows))
    return "".join(parts) or "<p>No table of counts per dataset in the result.</p>"


def _state(complete: bool) -> str:
    return '<span class="ok">complete</span>' if complete else '<span class="bad">INCOMPLETE</span>'


def _datasets_html(meta: dict[str, Any]) -> str:
    rows = []
    for name, d in meta.get("datasets", {}).items():
        state = (
            '<span class="ok">complete</span>' if d.get("complete") else '<span class="bad">INCOMPLETE</span>'
        )
        sumw = d.get("sumw")
        rows.append(
            [
                _e(name),
                _e(f"{d.get('events', 0):,}"),
                _e(f"{d.get('events_expected', 0):,}"),
                state,
                _e(d.get("files", "")),
                _e(d.get("failed_chunks", 0)),
                _e("data" if sumw is None else f"{sumw:.6g} ({d.get('sumw_source', '')})"),
            ]
        )
    header = ["dataset", "events", "expected", "state", "files", "failed chunks", "sum of gen. weights"]
    return _table(header, rows, raw=True)


def _metrics_html(meta: dict[str, Any]) -> str:
    rows = []
    for name, d in meta.get("datasets", {}).items():
        totals, rates = d.get("totals", {}), d.get("rates", {})
        rows.append(
            [
                name,
                f"{rates.get('events_per_s', 0):,.0f}",
                f"{totals.get('bytes_compressed', 0) / 1e6:.2f}",
                f"{totals.get('process_s', 0):.2f}",
                f"{totals.get('peak_rss_mb', 0):.0f}",
                int(totals.get("fallbacks", 0)),
                ", ".join(d.get("columns", [])),
            ]
        )
    header = ["dataset", "events/s", "MB read", "process s", "peak MB", "fallbacks", "columns"]
    return _table(header, rows)


def _plots_html(folder: Path | None) -> str:
    if folder is None or not (folder / MANIFEST).is_file():
        return "<p>No plots (add a <code>plots:</code> section to analysis.yaml).</p>"
    manifest = folder / MANIFEST
    notes = json.loads((folder / NOTES).read_text()) if (folder / NOTES).is_file() else []
    parts = [f'<p class="bad">{_e(n)}</p>' for n in notes]
    plots = [Plot(**{**p, "files": tuple(p["files"])}) for p in json.loads(manifest.read_text())]
    for name in dict.fromkeys(p.histogram for p in plots):
        figures = []
        for p in (q for q in plots if q.histogram == name):
            png = next((f for f in p.files if f.endswith(".png")), None)
            if png is None:
                continue
            data = base64.b64encode((folder / png).read_bytes()).decode()
            caption = " ".join(x for x in (p.dataset or "stacked", p.selection, p.yscale) if x)
            figures.append(
                f'<figure><img alt="{_e(name)} {_e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
        parts.append(f"<h3>{_e(name)}</h3><div class='plots'>{''.join(figures)}</div>")
    return "".join(parts)


def _limit(x: float | None) -> str:
    return "above the bound of mu" if x is None else f"{x:.4g}"


def _fit_row(m: dict[str, Any]) -> list[str]:
    fit, limit = m["bestfit"], m["upper_limit"]
    band = limit["expected_band"]
    lo, hi = fit["interval_68"]
    return [
        _e(m["model"]),
        _e(m["histogram"]),
        "Asimov (mu = 1)" if m["data"] == "asimov" else _e(", ".join(m["data"])),
        f"{fit['mu']:.4g} &plusmn; {fit['uncertainty']:.3g} [{lo:.4g}, {hi:.4g}]",
        _limit(limit["observed"]),
        f"{_limit(limit['expected'])} [{_limit(band['-1sigma'])}, {_limit(band['+1sigma'])}]",
    ]


def _stat_html(models: list[dict[str, Any]]) -> str:
    """The fit of each statistical model, its yields, and where its files are."""
    if not models:
        return "<p>No statistical models (add a <code>stat:</code> section to analysis.yaml).</p>"
    header = [
        "model",
        "histogram",
        "data",
        "best-fit mu ± unc. [68% interval]",
        "95% CL limit",
        "expected [±1 sigma]",
    ]
    parts = [_table(header, [_fit_row(m) for m in models], raw=True)]
    for m in models:
        links = " ".join(f'<a href="stat/{_e(m["model"])}/{f}">{f}</a>' for f in STAT_FILES)
        unc = [*m["normalisation"], *m["shapes"], *(["MC statistics"] if m["mc_stat"] else [])]
        rows = []
        for c in m["channels"]:
            samples = [f"{_e(n)}{'*' if n in c['signal'] else ''}: {v:.4g}" for n, v in c["samples"].items()]
            rows.append(
                [
                    c["name"],
                    c["bins"],
                    f"[{c['range'][0]:g}, {c['range'][1]:g}]",
                    f"{c['observed']:.6g}",
                    ", ".join(samples),
                ]
            )
        parts.append(
            f"<h3>{_e(m['model'])}</h3><p>Files (beside this report): {links}. Uncertainties: "
            f"{_e(', '.join(unc) or 'none')}. pyhf {_e(m['pyhf_version'])}, {_e(m['optimizer'])}; "
            f"uncertainty of mu: {_e(m['bestfit']['uncertainty_method'])}; limits: "
            f"{_e(m['upper_limit']['method'])}.</p>"
            + _table(["channel", "bins", "range", "observed", "expected (* signal, mu = 1)"], rows)
        )
    return "".join(parts)


def _skims_html(result: Any, meta: dict[str, Any]) -> str:
    skims = [(skim_name(at), s) for at, s in skims_in(result).items()]
    if not skims:
        return "<p>No skims.</p>"
    settings = (meta.get("config") or {}).get("skims") or {}
    how = f"{settings.get('format', 'parquet')}, {settings.get('compression', 'zstd')}"
    rows = [
        [
            name,
            len(s.files),
            f"{s.rows:,}",
            f"{s.events:,}",
            f"{100 * s.rows / s.events:.3g}%" if s.events else "-",
            f"{sum(f.bytes for f in s.files) / 1e6:.3g}",
            how,
            f"skims/{name}/fileset.json",
        ]
        for name, s in skims
    ]
    header = ["skim", "files", "events kept", "events processed", "kept", "MB", "format", "fileset"]
    return _table(header, rows)


def _failures_html(failures: list[Failure]) -> str:
    if not failures:
        return '<p class="ok">No failed chunks or files.</p>'
    rows = [[f.dataset, f.file, f.entries or "(whole file)", f.error] for f in failures]
    return _table(["dataset", "file", "entries", "error"], rows)


def render(
    meta: dict[str, Any],
    result: Any,
    plots: Path | None,
    failures: list[Failure],
    config_text: str,
    title: str,
    models: list[dict[str, Any]] | None = None,
) -> str:
    """The report's HTML (``models``: the fit record of each statistical model, ``fit.json``)."""
    complete = meta.get("complete", False)
    summary = (
        f"<p>{meta.get('events', 0):,} of {meta.get('events_expected', 0):,} expected events processed: "
        + _state(bool(complete))
        + f". Analysis key <code>{_e(meta.get('analysis_key', ''))}</code>, coffea_smk "
        f"{_e(meta.get('coffea_smk_version', ''))}.</p>"
    )
    for taken in meta.get("taken_on_records") or ():  # the storage did not answer when it was made
        summary += (
            f"<p>Storage <code>{_e(taken['host'])}</code> unreachable when this result was made: "
            f"{_e(taken['files'])} input files taken on their records ({_e(taken['error'])}).</p>"
        )
    sections = [
        ("Datasets", _datasets_html(meta)),
        ("Cutflows", _cutflow_html(cutflows(result, list(meta.get("datasets", {}))))),
        ("Plots", _plots_html(plots)),
        ("Statistical models", _stat_html(models or [])),
        ("Skims", _skims_html(result, meta)),
        ("Failed chunks and files", _failures_html(failures)),
        ("Metrics", _metrics_html(meta)),
        ("Configuration", f"<pre>{_e(config_text)}</pre>"),
    ]
    body = "".join(f"<h2>{_e(h)}</h2>{content}" for h, content in sections)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>{summary}{body}</body></html>\n"
    )
