#!/bin/bash
# Job status for Snakemake's cluster-generic executor on Grid Engine (SGE, UGE,
# OGS): prints exactly one of running|success|failed for the job id in $1.
#
# A job still known to qstat is running (or failed, if SGE put it in an error
# state). A job that left qstat is looked up in the accounting file with qacct:
# success only when SGE did not fail it (failed 0) and it exited with 0; a job
# killed by qdel, by h_rt or h_vmem shows up there as failed. Accounting is
# written a moment after a job ends: until then the job is reported running
# and Snakemake asks again at its next status check.
set -u
jid="${1%%.*}"
if out=$(qstat -j "$jid" 2>/dev/null); then
  if grep -q '^error reason' <<<"$out"; then echo failed; else echo running; fi
  exit 0
fi
if ! command -v qacct >/dev/null 2>&1; then
  # No accounting access: Snakemake still fails the job if its outputs are missing.
  echo success
  exit 0
fi
for _ in 1 2 3; do
  if out=$(qacct -j "$jid" 2>/dev/null); then
    failed=$(awk '$1 == "failed" {print $2}' <<<"$out" | tail -n 1)
    code=$(awk '$1 == "exit_status" {print $2}' <<<"$out" | tail -n 1)
    if [ "$failed" = 0 ] && [ "$code" = 0 ]; then echo success; else echo failed; fi
    exit 0
  fi
  sleep 1
done
echo running
