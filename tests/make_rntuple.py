"""Write the RNTuple test files with ROOT (run by ``tests/rntuple_files.py`` in a subprocess).

    python tests/make_rntuple.py SPECS.json OUTDIR

ROOT is imported here only, never in the pytest process (it installs signal handlers and
takes a second to load). Each spec (``rntuple_files.Spec``, as JSON) names a source TTree:
one of the real NanoAOD samples, or a replica of one (``benchmarks/replicate.py``, written
once per replica with uproot as the TTree twin), and is written as

- ``converted``: ROOT's ``RNTupleImporter`` on the TTree (the ``Runs`` tree too, where the
  source has one): NanoAOD's TTree names (``nMuon``, ``Muon_pt``) plus ``_collectionN``;
- ``native``: CMSSW's ``NanoAODRNTupleOutputModule`` layout, written through ROOT's
  ``RNTupleModel`` / ``RNTupleWriter`` by a small C++ function (``_NATIVE``) compiled by
  ROOT's interpreter: the same field kinds CMSSW makes (``RNTupleCollection``,
  ``TableOutputFields``, ``TriggerOutputFields``): a collection ``Muon`` is an untyped
  ``std::vector`` of an untyped record (``RRecordField`` ``_0``, members ``pt``, ``eta``, ...;
  no ``nMuon``), a named one-row table (``MET``, ``PV``) an untyped record ``MET`` with
  members ``pt``, ``phi``, triggers and flags (``HLT_*``, ``Flag_*``, ``L1_*``) and unnamed
  columns (``run``, ``event``, ``genWeight``) top-level scalars, an unnamed jagged column
  (``LHEPdfWeight``) a top-level ``std::vector``.

with the spec's compression and cluster sizes. Writes ``OUTDIR/manifest.json`` last: every
file with what ROOT's reader says of it (entries, clusters, cluster groups, fields).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TRIGGERS = ("HLT_", "Flag_", "L1_")
"""Trigger and filter bits: top-level ``bool`` fields in CMSSW's RNTuple output."""

_NATIVE = r"""
#include <ROOT/RField.hxx>
#include <ROOT/RFieldBase.hxx>
#include <ROOT/RField/RFieldRecord.hxx>
#include <ROOT/RField/RFieldSequenceContainer.hxx>
#include <ROOT/RNTupleModel.hxx>
#include <ROOT/RNTupleWriteOptions.hxx>
#include <ROOT/RNTupleWriter.hxx>
#include <TFile.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace coffea_smk_tests {

// kind 0: a scalar; 1: an untyped vector of scalars; 2: an untyped record; 3: an untyped
// vector of untyped records (CMSSW's RNTupleCollection). Members are the columns of a field.
struct NativeField {
   int kind = 0;
   std::string name;
   const std::int64_t *offsets = nullptr;
   std::vector<const char *> data;
   std::vector<std::size_t> width;
   std::vector<std::size_t> offset;
   std::size_t itemSize = 0;
   std::vector<char> buffer;  // a value (kinds 0, 2) or the std::vector an untyped vector field reads (1, 3)
};

std::uint64_t WriteNative(const std::string &path, const std::string &ntuple, bool update, int compression,
                          std::size_t zippedCluster, std::size_t unzippedCluster, std::size_t pageSize,
                          int clustersPerGroup, std::uint64_t entries, const std::vector<int> &kinds,
                          const std::vector<std::string> &names, const std::vector<std::uint64_t> &offsets,
                          const std::vector<int> &memberOf, const std::vector<std::string> &memberNames,
                          const std::vector<std::string> &memberTypes,
                          const std::vector<std::uint64_t> &memberData, const std::vector<int> &memberWidth)
{
   auto model = ROOT::RNTupleModel::CreateBare();
   std::vector<NativeField> fields(kinds.size());
   std::vector<std::vector<std::unique_ptr<ROOT::RFieldBase>>> members(kinds.size());
   std::vector<std::string> scalarType(kinds.size());
   for (std::size_t i = 0; i < kinds.size(); ++i) {
      fields[i].kind = kinds[i];
      fields[i].name = names[i];
      fields[i].offsets = reinterpret_cast<const std::int64_t *>(offsets[i]);
   }
   for (std::size_t m = 0; m < memberOf.size(); ++m) {
      auto &f = fields[memberOf[m]];
      f.data.push_back(reinterpret_cast<const char *>(memberData[m]));
      f.width.push_back(memberWidth[m]);
      if (f.kind < 2) {
         scalarType[memberOf[m]] = memberTypes[m];
      } else {
         members[memberOf[m]].push_back(ROOT::RFieldBase::Create(memberNames[m], memberTypes[m]).Unwrap());
      }
   }
   for (std::size_t i = 0; i < fields.size(); ++i) {
      auto &f = fields[i];
      std::unique_ptr<ROOT::RFieldBase> field;
      if (f.kind < 2) {
         auto item = ROOT::RFieldBase::Create(f.kind == 0 ? f.name : "_0", scalarType[i]).Unwrap();
         f.itemSize = item->GetValueSize();
         f.offset = {0};
         field = f.kind == 0 ? std::move(item) : ROOT::RVectorField::CreateUntyped(f.name, std::move(item));
      } else {
         auto recordName = f.kind == 2 ? f.name : "_0";
         auto record = std::make_unique<ROOT::RRecordField>(recordName, std::move(members[i]));
         f.itemSize = record->GetValueSize();
         f.offset = record->GetOffsets();
         if (f.kind == 2)
            field = std::move(record);
         else
            field = ROOT::RVectorField::CreateUntyped(f.name, std::move(record));
      }
      if (f.offset.size() != f.width.size())
         throw std::runtime_error("member count mismatch in " + f.name);
      if (f.kind == 0 || f.kind == 2)
         f.buffer.resize(f.itemSize);
      model->AddField(std::move(field));
   }

   ROOT::RNTupleWriteOptions options;
   options.SetCompression(compression);
   options.SetMaxUnzippedPageSize(pageSize);
   options.SetApproxZippedClusterSize(zippedCluster);
   options.SetMaxUnzippedClusterSize(unzippedCluster);
   std::unique_ptr<TFile> file(TFile::Open(path.c_str(), update ? "UPDATE" : "RECREATE"));
   auto writer = ROOT::RNTupleWriter::Append(std::move(model), ntuple, *file, options);
   auto entry = writer->CreateEntry();
   for (auto &f : fields) {
      if (f.kind == 0 || f.kind == 2)
         entry->BindRawPtr<void>(f.name, f.buffer.data());
      else
         entry->BindRawPtr<void>(f.name, &f.buffer);
   }

   std::uint64_t clusters = 0, lastFlushed = 0;
   for (std::uint64_t i = 0; i < entries; ++i) {
      for (auto &f : fields) {
         std::uint64_t first = i, n = 1;
         if (f.kind == 1 || f.kind == 3) {
            first = f.offsets[i];
            n = f.offsets[i + 1] - first;
            f.buffer.resize(n * f.itemSize);
         }
         for (std::uint64_t j = 0; j < n; ++j)
            for (std::size_t m = 0; m < f.data.size(); ++m)
               std::memcpy(f.buffer.data() + j * f.itemSize + f.offset[m],
                           f.data[m] + (first + j) * f.width[m], f.width[m]);
      }
      writer->Fill(*entry);
      if (writer->GetLastFlushed() != lastFlushed) {
         lastFlushed = writer->GetLastFlushed();
         if (clustersPerGroup > 0 && ++clusters % clustersPerGroup == 0)
            writer->CommitCluster(true);
      }
   }
   writer.reset();
   file->Close();
   return entries;
}

}  // namespace coffea_smk_tests
"""

_CPP_TYPES = {
    "bool": "bool",
    "int8": "std::int8_t",
    "uint8": "std::uint8_t",
    "int16": "std::int16_t",
    "uint16": "std::uint16_t",
    "int32": "std::int32_t",
    "uint32": "std::uint32_t",
    "int64": "std::int64_t",
    "uint64": "std::uint64_t",
    "float32": "float",
    "float64": "double",
}

SCALAR, VECTOR, RECORD, COLLECTION = 0, 1, 2, 3
_STRUCTURES = ("kPlain", "kCollection", "kRecord", "kVariant", "kStreamer")


def _root() -> Any:
    warnings.filterwarnings("ignore", category=UserWarning, module="ROOT")  # "in alpha stage"
    import ROOT

    ROOT.gROOT.SetBatch(True)
    return ROOT


def _options(ROOT: Any, spec: dict[str, Any]) -> Any:
    opts = ROOT.RNTupleWriteOptions()
    opts.SetCompression(spec["compression"])
    opts.SetMaxUnzippedPageSize(spec["page_size"])
    opts.SetApproxZippedClusterSize(spec["zipped_cluster_size"])
    opts.SetMaxUnzippedClusterSize(spec["unzipped_cluster_size"])
    return opts


def _has_tree(path: Path, name: str) -> bool:
    import uproot

    with uproot.open(path) as f:
        return name in f.keys(cycle=False)


def convert(ROOT: Any, spec: dict[str, Any], twin: Path, out: Path) -> None:
    """ROOT's RNTupleImporter on the twin's ``Events`` (and ``Runs``) into ``out``."""
    for tree in ("Events", "Runs"):
        if tree == "Runs" and not _has_tree(twin, "Runs"):
            continue
        importer = ROOT.Experimental.RNTupleImporter.Create(str(twin), tree, str(out))
        importer.SetWriteOptions(_options(ROOT, spec))
        importer.SetIsQuiet(True)
        importer.Import()


def _native_fields(tree: Any) -> list[tuple[int, str, Any, list[tuple[str, np.ndarray]]]]:
    """The TTree's branches as CMSSW's RNTuple fields: (kind, name, offsets, [(member, values)]).

    A jagged ``X_y`` is member ``y`` of collection ``X`` where the tree has a counter ``nX``
    (its size, as CMSSW's vector is); any other jagged branch is a vector of its own.
    """
    import awkward as ak
    import uproot

    keys = set(tree.keys(recursive=False))
    counters = {b.count_branch.name for b in tree.values() if b.count_branch is not None}
    sizes: dict[str, np.ndarray] = {}
    fields: dict[str, tuple[int, str, Any, list[tuple[str, np.ndarray]]]] = {}
    for name, branch in tree.items(recursive=False):
        interp = branch.interpretation
        prefix, _, member = name.partition("_")
        if name in counters or (name[:1] == "n" and any(k.startswith(f"{name[1:]}_") for k in keys)):
            continue  # a collection's size is its vector's
        if isinstance(interp, uproot.AsDtype) and interp.to_dtype.shape == ():
            values = branch.array(library="np")
            kind, field = (SCALAR, name) if not member or name.startswith(TRIGGERS) else (RECORD, prefix)
            offsets = None
        elif isinstance(interp, uproot.AsJagged) and isinstance(interp.content, uproot.AsDtype):
            jagged = branch.array(library="ak")
            values = ak.to_numpy(ak.flatten(jagged))
            counts = ak.to_numpy(ak.num(jagged)).astype(np.int64)
            if member and f"n{prefix}" in keys:
                kind, field = COLLECTION, prefix
                if prefix not in sizes:
                    sizes[prefix] = tree[f"n{prefix}"].array(library="np").astype(np.int64)
                if not np.array_equal(counts, sizes[prefix]):
                    raise ValueError(f"{name} has other sizes than n{prefix}")
            else:
                kind, field = VECTOR, name
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        else:
            print(f"  (not written: {name}, {interp})", flush=True)
            continue
        values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))
        if kind in (SCALAR, VECTOR):
            member = ""
        entry = fields.setdefault(field, (kind, field, offsets, []))
        if entry[0] != kind:
            raise ValueError(f"{name}: field {field} is already of kind {entry[0]}, not {kind}")
        entry[3].append((member, values))
    return list(fields.values())


def write_native(ROOT: Any, spec: dict[str, Any], twin: Path, out: Path) -> None:
    """The twin's ``Events`` (and ``Runs``) in CMSSW's RNTuple layout, written by ``_NATIVE``."""
    import uproot

    if not hasattr(ROOT, "coffea_smk_tests"):
        ROOT.gInterpreter.Declare(_NATIVE)
    std = ROOT.std
    for i, tree_name in enumerate(("Events", "Runs")):
        if tree_name == "Runs" and not _has_tree(twin, "Runs"):
            continue
        with uproot.open(twin) as f:
            tree = f[tree_name]
            entries = tree.num_entries
            fields = _native_fields(tree)
        kinds: list[int] = []
        names: list[str] = []
        offsets: list[int] = []
        member_of: list[int] = []
        member_names: list[str] = []
        member_types: list[str] = []
        member_data: list[int] = []
        member_width: list[int] = []
        keep: list[np.ndarray] = []  # the arrays whose addresses C++ reads
        for j, (kind, name, offs, members) in enumerate(fields):
            kinds.append(kind)
            names.append(name)
            if offs is not None:
                keep.append(offs)
            offsets.append(offs.ctypes.data if offs is not None else 0)
            for member, column in members:
                # an empty column still needs a valid address
                values = column if column.size else np.zeros(1, dtype=column.dtype)
                keep.append(values)
                member_of.append(j)
                member_names.append(member)
                member_types.append(_CPP_TYPES[values.dtype.name])
                member_data.append(values.ctypes.data)
                member_width.append(values.dtype.itemsize)
        ROOT.coffea_smk_tests.WriteNative(
            str(out),
            tree_name,
            i > 0,
            spec["compression"],
            spec["zipped_cluster_size"],
            spec["unzipped_cluster_size"],
            spec["page_size"],
            spec["clusters_per_group"],
            entries,
            std.vector["int"](kinds),
            std.vector["std::string"](names),
            std.vector["std::uint64_t"](offsets),
            std.vector["int"](member_of),
            std.vector["std::string"](member_names),
            std.vector["std::string"](member_types),
            std.vector["std::uint64_t"](member_data),
            std.vector["int"](member_width),
        )
        del keep


def twin_for(spec: dict[str, Any], nanoaod: Path, outdir: Path) -> Path:
    """The TTree with the spec's events: a real sample, or its replica (written once, with uproot)."""
    if not spec["events"]:
        return nanoaod / str(spec["source"])
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import replicate

    out = outdir / f"twin_{Path(spec['source']).stem}_{spec['events']}_{spec['seed']}.root"
    if not out.exists():
        columns = replicate._source(nanoaod / spec["source"], extra=spec["extra_branches"])
        replicate.write_events(out, *columns, spec["events"], spec["seed"], spec["basket"])
    return out


def describe(ROOT: Any, path: Path) -> dict[str, Any]:
    """What ROOT's reader says of the ``Events`` RNTuple in ``path``."""
    reader = ROOT.RNTupleReader.Open("Events", str(path))
    desc = reader.GetDescriptor()
    top = desc.GetFieldZeroId()
    structure = {int(getattr(ROOT.ROOT.ENTupleStructure, k)): k[1:].lower() for k in _STRUCTURES}
    fields = list(desc.GetFieldIterable(top))
    return {
        "entries": int(reader.GetNEntries()),
        "clusters": int(desc.GetNClusters()),
        "cluster_groups": int(desc.GetNClusterGroups()),
        "fields": {
            str(f.GetFieldName()): str(f.GetTypeName()) or structure[int(f.GetStructure())] for f in fields
        },
    }


def main() -> None:
    specs = json.loads(Path(sys.argv[1]).read_text())
    outdir = Path(sys.argv[2])
    nanoaod = Path(sys.argv[3])
    outdir.mkdir(parents=True, exist_ok=True)
    ROOT = _root()
    manifest = []
    for spec in specs:
        t0 = time.perf_counter()
        twin = twin_for(spec, nanoaod, outdir)
        out = outdir / f"{spec['name']}.root"
        tmp = out.with_name(out.name + ".tmp")
        tmp.unlink(missing_ok=True)
        (convert if spec["layout"] == "converted" else write_native)(ROOT, spec, twin, tmp)
        os.replace(tmp, out)
        info = describe(ROOT, out)
        seconds = time.perf_counter() - t0
        manifest.append(
            {
                "name": spec["name"],
                "path": out.name,
                "twin": twin.name if twin.parent == outdir else str(twin),
                "bytes": out.stat().st_size,
                "seconds": round(seconds, 2),
                **info,
            }
        )
        print(
            f"  {spec['name']}: {info['entries']} entries, {info['clusters']} clusters "
            f"({info['cluster_groups']} groups), {out.stat().st_size / 1e6:.2f} MB in {seconds:.1f} s",
            flush=True,
        )
    tmp = outdir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, outdir / "manifest.json")


if __name__ == "__main__":
    main()
