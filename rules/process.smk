# Process: one job per work unit (consecutive chunks of as few files as
# possible). The partial result's path holds the unit's content key and the
# processor's fingerprint, so it is redone only when either changes. A retry
# of a unit with failed chunks (<unit>-a<k>) takes the previous attempt as
# input and processes only the chunks that failed.


rule process:
    input:
        analysis.get_process_inputs,
    output:
        analysis.path("partial"),
    log:
        analysis.log("partial"),
    params:
        plan=analysis.get_plan_path,
        opts=analysis.get_job_options,
        policy=analysis.get_policy,
        failures=analysis.layout.failure("partial"),
        events=analysis.get_events_options,
        skims=analysis.get_skim_options,
        job=analysis.job("process"),
    shell:
        "{params.job} --plan {params.plan} --unit {wildcards.unit} {params.opts} --policy {params.policy}"
        " --events {params.events} {params.skims} --failures {params.failures:q} --out {output:q} --log {log:q} {input:q}"
