"""Lepton+jets replicas of the real NanoAOD samples, for the AGC ttbar test (tests/test_agc.py).

The real ttbar sample (``nano_tt_v15.root``, 200 events) has plenty of jets and b-tags but
hardly an isolated lepton (it is mostly hadronic), the Drell-Yan sample the opposite (the
DoubleMuon one has two muons where it has any). A replica event mixes two real events:
everything of a ttbar event but its electrons and muons, which come from a Drell-Yan event
(every pair of events is in the pool ``benchmarks/replicate.py`` then draws from, with its
jitter of the low mantissa bits). Cross-references that would point into the other event
(``*Idx*`` of the leptons, the jets' ``muonIdx``/``electronIdx``) are set to -1. The jets
get the ``Jet_jetId`` that NanoAOD up to v14 stored (bit 1 tight, bit 2 tight lepton veto),
computed from their energy fractions: v15 dropped the branch. Each file has its own run
number (its seed), since ``replicate.py`` numbers the events of every file from 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
LEPTONS = ("Electron", "Muon")


def _import(folder: Path, module: str) -> Any:
    import importlib

    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


def _minus_one(values: Any) -> Any:
    import awkward as ak

    flat = ak.to_numpy(ak.flatten(values))
    return ak.unflatten(np.full_like(flat, -1), ak.num(values))


def _jet_id(jets: dict[str, Any]) -> Any:
    import awkward as ak

    agc = _import(_HERE / "processors", "agc_ttbar")
    zipped = ak.zip(jets)
    tight = agc.tight_from_fractions(zipped)
    veto = agc.tight_lepton_veto_from_fractions(zipped)
    bits = ak.values_astype(tight, np.uint8) * np.uint8(2) + ak.values_astype(veto, np.uint8) * np.uint8(4)
    return ak.values_astype(bits, np.uint8)


def lepton_plus_jets(files: list[tuple[Path, int, int]], basket: int = 5000) -> list[Path]:
    """Write each ``(path, events, seed)`` of ``files`` that does not exist yet: mixed events,
    the jets of TT and the leptons of DY, in baskets of ``basket`` events."""
    missing = [f for f in files if not f[0].exists()]
    if missing:
        n, flat, groups = _pool()
        replicate = _import(_HERE.parent / "benchmarks", "replicate")
        for out, events, seed in missing:
            # each file its own run: (run, luminosityBlock, event) names one event across the replicas
            flat["run"] = np.full(n, seed, dtype=flat["run"].dtype)
            replicate.write_events(out, n, flat, groups, events, seed, basket)
    return [f[0] for f in files]


def _pool() -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """Every pair (ttbar event, lepton event), as columns."""
    replicate = _import(_HERE.parent / "benchmarks", "replicate")
    samples = replicate.SAMPLES
    n_jets, flat, groups = replicate._source(samples / replicate.SOURCES["TT"], extra=100)
    n_leps, _, lepton_groups = replicate._source(samples / replicate.SOURCES["DY"], extra=0)
    jets_of = np.repeat(np.arange(n_jets), n_leps)
    leptons_of = np.tile(np.arange(n_leps), n_jets)

    groups = dict(groups)
    groups["Jet"] = {**groups["Jet"], "jetId": _jet_id(groups["Jet"])}
    pool_flat = {name: values[jets_of] for name, values in flat.items()}
    pool_groups: dict[str, dict[str, Any]] = {}
    for coll, fields in groups.items():
        if coll in LEPTONS:
            continue
        taken = {name: values[jets_of] for name, values in fields.items()}
        if coll == "Jet":
            for name in [n for n in taken if n.startswith(("muonIdx", "electronIdx"))]:
                taken[name] = _minus_one(taken[name])
        pool_groups[coll] = taken
    for coll in LEPTONS:
        taken = {name: values[leptons_of] for name, values in lepton_groups[coll].items()}
        for name in [n for n in taken if "Idx" in n]:
            taken[name] = _minus_one(taken[name])
        pool_groups[coll] = taken
    return len(jets_of), pool_flat, pool_groups
