"""The benchmark processor written as coffea users write it: a ``ProcessorABC`` subclass
(coffea_smk then gives it coffea's NanoEvents)."""

from __future__ import annotations

from coffea.processor import ProcessorABC
from dimuon_ht import DimuonHT


class DimuonHTCoffea(DimuonHT, ProcessorABC):  # type: ignore[misc]
    pass
