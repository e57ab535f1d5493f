"""The only layer that knows ROOT: opening files (local, ``root://``, ``http(s)://``), the fast
TTree metadata reader, basket maps, the basket reader and its fallbacks to uproot, and the
classification of storage faults."""
