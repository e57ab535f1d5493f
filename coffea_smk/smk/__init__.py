"""Snakemake glue: output paths, the Analysis object the Snakefile uses, the job entry points,
the local job server and ``coffea-smk status``.

Kept empty on purpose: a job command imports :mod:`coffea_smk.smk.jobs` and must not pay for the
rest of this package.
"""
