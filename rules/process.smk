# Process: one job per work unit (consecutive chunks of as few files as
# possible). The partial result's path holds the unit's content key and the
# processor's fingerprint, so it is redone only when either changes.


rule process:
    output:
        analysis.path("partial"),
    log:
        analysis.log("partial"),
    params:
        plan=analysis.path("plan"),
        opts=analysis.get_job_options,
        events=analysis.get_events_options,
        job=analysis.job("process"),
    shell:
        "{params.job} --plan {params.plan:q} --unit {wildcards.unit} {params.opts} --events {params.events} "
        "--out {output:q} --log {log:q}"
