"""From a result's histograms to a binned statistical model: channels, samples, yields, uncertainties.

The model is plain records (:class:`Model`); writers turn it into a pyhf workspace
(:mod:`coffea_smk.post.workspace`) and a CMS Combine datacard with its shapes
(:mod:`coffea_smk.post.datacard`). Simulation is scaled by xsec x lumi / sum of
generator weights (:mod:`coffea_smk.post.normalise`): yields and shape variations by
the scale, variances by its square. Data is the sum of the data datasets, unscaled;
with none, the Asimov data set: the sum of the expected samples at mu = 1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import hist
import numpy as np

from coffea_smk.post.hists import Hist, per_dataset
from coffea_smk.post.normalise import Sample
from coffea_smk.spec.stat import StatModel

POI = "mu"
"""The parameter of interest: the signal strength, a factor on every signal sample."""
Arrays = tuple[np.ndarray, np.ndarray | None]
"""Bin values and variances (None when the storage does not know them) of the observable."""
Cut = tuple[np.ndarray, str, dict[str, dict[str, Arrays]]]
"""A dataset's histogram cut by the model: edges, label, ``{channel: {syst value: arrays}}``."""


class StatError(ValueError):
    """A statistical model cannot be built as configured; the message names it and what to fix."""


@dataclass(frozen=True, eq=False)
class ShapeVariation:
    """A shape uncertainty of one sample: its yields one standard deviation up and down."""

    name: str
    up: np.ndarray
    down: np.ndarray


@dataclass(frozen=True, eq=False)
class ModelSample:
    """A signal or background process in one channel."""

    name: str
    signal: bool
    datasets: tuple[str, ...]
    yields: np.ndarray
    """Normalised expected events per bin (signal at mu = 1)."""
    variances: np.ndarray
    """Their statistical variances (the histograms' variances times the scale squared)."""
    norms: dict[str, float] = field(default_factory=dict)
    """Normalisation uncertainties: name -> kappa (log-normal, +-(kappa - 1) at one sigma)."""
    shapes: tuple[ShapeVariation, ...] = ()


@dataclass(frozen=True, eq=False)
class Channel:
    """One channel (a bin of the datacard): the observable's bins, the samples, the data."""

    name: str
    edges: np.ndarray
    label: str
    samples: tuple[ModelSample, ...]
    observed: np.ndarray

    def background(self) -> np.ndarray:
        return sum((s.yields for s in self.samples if not s.signal), np.zeros(len(self.edges) - 1))


@dataclass(frozen=True, eq=False)
class Model:
    """A statistical model of the ``stat:`` section, ready to be written."""

    name: str
    histogram: str
    channels: tuple[Channel, ...]
    data: tuple[str, ...]
    """The data datasets; empty: the observations are the Asimov data set (mu = 1)."""
    mc_stat: bool
    mu_bounds: tuple[float, float]
    lumi: float | None

    @property
    def asimov(self) -> bool:
        return not self.data

    @property
    def shape_names(self) -> list[str]:
        return list(dict.fromkeys(v.name for c in self.channels for s in c.samples for v in s.shapes))

    @property
    def norm_names(self) -> list[str]:
        return list(dict.fromkeys(n for c in self.channels for s in c.samples for n in s.norms))


def _safe(text: str) -> str:
    """A channel name Combine and ROOT directories accept."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "ch"
    return out if out[0].isalpha() else f"ch_{out}"


def _is_category(ax: object) -> bool:
    return isinstance(ax, (hist.axis.StrCategory, hist.axis.IntCategory))


class _Reader:
    """Cuts one dataset's histogram into ``{channel: {syst value: arrays}}`` as the model says."""

    def __init__(self, name: str, s: StatModel) -> None:
        self.name = name
        self.s = s
        self.nominal = ""
        """The key of the nominal arrays: the syst axis's nominal value, or "" without that axis."""

    def fail(self, text: str) -> StatError:
        return StatError(f"stat.{self.name}: {text}")

    def check_axes(self, h: Hist) -> None:
        names = list(h.axes.name)
        s = self.s
        for setting, axes in (("channels", [s.channels] if s.channels else []), ("select", s.select)):
            for a in axes:
                if a not in names or not _is_category(h.axes[a]):
                    raise self.fail(
                        f"{setting}: histogram {s.histogram!r} has no categorical axis {a!r} "
                        f"(its axes: {', '.join(names)})"
                    )
        for a in s.sum:
            if a not in names:
                raise self.fail(
                    f"sum: histogram {s.histogram!r} has no axis {a!r} (its axes: {', '.join(names)})"
                )
        for a, v in s.select.items():
            if v not in list(h.axes[a]):
                raise self.fail(f"select: axis {a!r} has no value {v!r} (its values: {_values(h, a)})")
        handled = {s.channels, *s.select, *s.sum, s.syst_axis}
        loose = [a for a in names if _is_category(h.axes[a]) and a not in handled]
        if loose:
            a = loose[0]
            raise self.fail(
                f"histogram {s.histogram!r} has the categorical axis {a!r} ({_values(h, a)}): name it "
                f"in stat.{self.name}.channels (a channel per value), select (one value) or sum"
            )
        rest = [a for a in names if not _is_category(h.axes[a]) and a not in s.sum]
        if len(rest) != 1:
            raise self.fail(
                f"histogram {s.histogram!r} has {len(rest)} axes that are not categorical "
                f"({', '.join(rest) or 'none'}): a model needs exactly one observable; add the others to sum"
            )
        if s.shapes and s.syst_axis not in names:
            raise self.fail(
                f"shapes: histogram {s.histogram!r} has no axis {s.syst_axis!r} to take "
                f"{', '.join(s.shapes)} from (set syst_axis, or remove shapes)"
            )

    def shape_names(self, h: Hist) -> list[str]:
        """The shape uncertainties on the histogram's syst axis, checked for complete Up/Down pairs."""
        s = self.s
        if s.syst_axis not in h.axes.name:
            return []
        self.nominal = s.nominal
        values = [str(v) for v in h.axes[s.syst_axis]]
        if s.nominal not in values:
            raise self.fail(
                f"axis {s.syst_axis!r} has no nominal value {s.nominal!r} (its values: "
                f"{', '.join(values)}): set stat.{self.name}.nominal"
            )
        ups = {v[:-2] for v in values if v.endswith("Up")}
        downs = {v[:-4] for v in values if v.endswith("Down")}
        for name in sorted(ups ^ downs):
            have, lack = (f"{name}Up", f"{name}Down") if name in ups else (f"{name}Down", f"{name}Up")
            raise self.fail(
                f"axis {s.syst_axis!r} has {have!r} but no {lack!r}: fill both variations of a shape "
                f"uncertainty, or leave {name!r} out of stat.{self.name}.shapes"
            )
        if s.shapes is None:
            return sorted(ups)
        missing = [n for n in s.shapes if n not in ups]
        if missing:
            raise self.fail(
                f"shapes: {', '.join(missing)} not on axis {s.syst_axis!r} as <name>Up/<name>Down "
                f"(the pairs there: {', '.join(sorted(ups)) or 'none'})"
            )
        return list(s.shapes)

    def cut(self, h: Hist) -> Cut:
        """The observable's edges and label, and ``{channel: {syst value or "": arrays}}``."""
        s = self.s
        h = h[{a: hist.loc(v) for a, v in s.select.items()}] if s.select else h
        h = h[dict.fromkeys(s.sum, sum)] if s.sum else h
        channels = [(_safe(self.name), h)]
        if s.channels:
            channels = [(_safe(str(v)), h[{s.channels: hist.loc(v)}]) for v in h.axes[s.channels]]
        out: dict[str, dict[str, Arrays]] = {}
        edges, label = np.array([]), ""
        for cname, ch in channels:
            variants = {"": ch}
            if s.syst_axis in ch.axes.name:
                variants = {str(v): ch[{s.syst_axis: hist.loc(v)}] for v in ch.axes[s.syst_axis]}
            for value, one in variants.items():
                axis = one.axes[0]
                edges, label = np.asarray(axis.edges, dtype=float), str(axis.label or axis.name)
                var = one.variances(flow=False)
                out.setdefault(cname, {})[value] = (
                    np.asarray(one.values(flow=False), dtype=float),
                    None if var is None else np.asarray(var, dtype=float),
                )
        return edges, label, out

    def bins(self, edges: np.ndarray) -> tuple[np.ndarray, slice]:
        """The model's edges (range, then rebin) and the slice of the histogram's bins they cover."""
        s = self.s
        lo, hi = 0, len(edges) - 1
        if s.range is not None:
            tol = 1e-9 * (edges[-1] - edges[0])  # an edge computed as 69.99999 is the edge 70
            inside = np.nonzero((edges[1:] > s.range[0] + tol) & (edges[:-1] < s.range[1] - tol))[0]
            if not inside.size:
                raise self.fail(f"range {list(s.range)} holds no bin of [{edges[0]:g}, {edges[-1]:g}]")
            lo, hi = int(inside[0]), int(inside[-1]) + 1
        if (hi - lo) % s.rebin:
            raise self.fail(
                f"rebin {s.rebin} does not divide the {hi - lo} bins"
                f"{' in range' if s.range else ''}: choose a divisor, or adjust range"
            )
        return edges[lo : hi + 1 : s.rebin], slice(lo, hi)

    def arrays(self, cut: dict[str, Cut], d: str, cname: str) -> dict[str, Arrays]:
        """Dataset ``d``'s arrays in channel ``cname``, by syst value; the nominal ones are there."""
        arrays = cut[d][2].get(cname, {})
        if self.nominal not in arrays:
            what = f"channel {cname!r}" + (f" with {self.nominal!r}" if self.nominal else "")
            raise self.fail(
                f"dataset {d!r}: histogram {self.s.histogram!r} has no {what} "
                "(every dataset's histogram needs the same categories)"
            )
        return arrays

    def merge(self, a: np.ndarray, window: slice) -> np.ndarray:
        out: np.ndarray = a[window].reshape(-1, self.s.rebin).sum(axis=1)
        return out

    def zeros(self, window: slice) -> np.ndarray:
        return np.zeros((window.stop - window.start) // self.s.rebin)


def _values(h: Hist, axis: str) -> str:
    return ", ".join(str(v) for v in h.axes[axis]) or "none"


def build(
    name: str,
    s: StatModel,
    found: dict[str, Hist],
    own: dict[str, object],
    normalised: dict[str, Sample],
    data: list[str],
    lumi: float | None,
) -> Model:
    """Build model ``name`` from the result's histograms.

    Args:
        name: The model's name in ``stat:``.
        s: Its settings.
        found: The global result's histograms (and those only in datasets' own results), by path.
        own: Each dataset's own result, for histograms without a ``dataset`` axis.
        normalised: The model's datasets with their normalisation (data among them, scale 1).
        data: The data datasets (empty: Asimov).
        lumi: The luminosity the simulation is normalised to (pb^-1), for the record.

    Raises:
        StatError: The histogram, an axis or a variation is missing, a sample has negative
            yields, a bin has no background, or data has weights; the message says what to fix.
    """
    r = _Reader(name, s)
    if s.histogram not in found:
        raise r.fail(
            f"histogram {s.histogram!r} is not in the result (its histograms: "
            f"{', '.join(sorted(found)) or 'none'}): fix stat.{name}.histogram"
        )
    roles = {**s.signal_samples, **s.background_samples}
    datasets = [d for ds in roles.values() for d in ds] + data
    by_dataset = per_dataset(s.histogram, found[s.histogram], datasets, own)
    if not by_dataset:
        raise r.fail(f"histogram {s.histogram!r} holds none of the datasets {', '.join(datasets)}")
    template = next(iter(by_dataset.values()))
    r.check_axes(template)
    shapes = r.shape_names(template)
    cut = {d: r.cut(by_dataset.get(d, template.copy().reset())) for d in datasets}
    edges, label, _ = cut[datasets[0]]
    model_edges, window = r.bins(edges)
    channels = []
    for cname in cut[datasets[0]][2]:
        samples = []
        for sname, members in roles.items():
            samples.append(
                _sample(r, sname, sname in s.signal_samples, members, cname, cut, normalised, shapes, window)
            )
        observed = _observed(r, cname, data, cut, window, samples)
        channels.append(Channel(cname, model_edges, label, tuple(samples), observed))
    for c in channels:
        _check(r, c)
    if not any(x.signal and x.yields.sum() > 0 for c in channels for x in c.samples):
        raise r.fail(
            f"the signal ({', '.join(s.signal_samples)}) has no expected events in {s.histogram!r}: "
            f"check stat.{name}.signal and stat.{name}.range"
        )
    bounds = s.mu_bounds or (0.0, _mu_high(channels))
    return Model(name, s.histogram, tuple(channels), tuple(data), s.mc_stat, bounds, lumi)


def _sample(
    r: _Reader,
    sname: str,
    signal: bool,
    members: list[str],
    cname: str,
    cut: dict[str, Cut],
    normalised: dict[str, Sample],
    shapes: list[str],
    window: slice,
) -> ModelSample:
    s = r.s
    yields, variances = r.zeros(window), r.zeros(window)
    ups = {n: r.zeros(window) for n in shapes}
    downs = {n: r.zeros(window) for n in shapes}
    for d in members:
        scale = normalised[d].scale
        arrays = r.arrays(cut, d, cname)
        values, var = arrays[r.nominal]
        if var is None and s.mc_stat:
            raise r.fail(
                f"dataset {d!r}: histogram {s.histogram!r} does not know its variances (a Double storage "
                "filled with weights): fill it with hist's .Weight() storage, or set mc_stat: false"
            )
        yields = yields + r.merge(values, window) * scale
        variances = variances + r.merge(values if var is None else var, window) * scale**2
        for n in shapes:
            ups[n] = ups[n] + r.merge(arrays.get(f"{n}Up", arrays[r.nominal])[0], window) * scale
            downs[n] = downs[n] + r.merge(arrays.get(f"{n}Down", arrays[r.nominal])[0], window) * scale
    variations = tuple(
        ShapeVariation(n, ups[n], downs[n])
        for n in shapes
        if not (np.array_equal(ups[n], yields) and np.array_equal(downs[n], yields))
    )
    norms = {}
    for n, kappa in s.normalisation.items():
        if isinstance(kappa, dict):
            if sname in kappa:
                norms[n] = float(kappa[sname])
        else:
            norms[n] = float(kappa)
    return ModelSample(sname, signal, tuple(members), yields, variances, norms, variations)


def _observed(
    r: _Reader,
    cname: str,
    data: list[str],
    cut: dict[str, Cut],
    window: slice,
    samples: list[ModelSample],
) -> np.ndarray:
    total = r.zeros(window)
    if not data:
        for x in samples:
            total = total + x.yields
        return total
    for d in data:
        values, var = r.arrays(cut, d, cname)[r.nominal]
        weighted = not np.array_equal(values, np.round(values)) or (
            var is not None and not np.array_equal(var, values)
        )
        if weighted:
            raise r.fail(
                f"data dataset {d!r} has weighted entries in {r.s.histogram!r} (non-integer counts, or "
                "variances that differ from the counts): fill data without weights, or leave it out of "
                f"stat.{r.name}.data (no data: an Asimov data set)"
            )
        total = total + r.merge(values, window)
    return total


def _edges_text(c: Channel, bins: np.ndarray) -> str:
    shown = ", ".join(f"[{c.edges[i]:g}, {c.edges[i + 1]:g})" for i in bins[:5])
    return shown + (f" and {len(bins) - 5} more" if len(bins) > 5 else "")


def _check(r: _Reader, c: Channel) -> None:
    fix = f"merge bins with stat.{r.name}.rebin or narrow stat.{r.name}.range"
    for x in c.samples:
        bad = np.nonzero(x.yields < 0)[0]
        if bad.size:
            raise r.fail(
                f"sample {x.name!r} has negative expected yields in channel {c.name!r}, bins "
                f"{_edges_text(c, bad)} (negative weights): {fix}"
            )
    bad = np.nonzero(c.background() <= 0)[0]
    if bad.size:
        raise r.fail(f"no expected background in channel {c.name!r}, bins {_edges_text(c, bad)}: {fix}")


def _mu_high(channels: list[Channel]) -> float:
    """An upper bound of the signal strength well above the expected limit: at least 10, a round number."""
    signal = sum(float(x.yields.sum()) for c in channels for x in c.samples if x.signal)
    background = sum(float(c.background().sum()) for c in channels)
    if signal <= 0:
        return 10.0
    rough = 5 * (2 * math.sqrt(background) + 3) / signal
    return max(10.0, float(10 ** math.ceil(math.log10(rough))))
