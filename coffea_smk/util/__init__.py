"""Small helpers with no knowledge of ROOT, events or Snakemake: atomic writes, content keys, entry ranges."""
