"""The steps of an analysis as plain Python (no Snakemake): preprocess, plan, process, accumulate,
reduce, with the records they exchange and the metrics they keep."""
