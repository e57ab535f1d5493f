# Reduce: per dataset a tree of merges (fan-in `merge_fanin`) down to
# <outdir>/datasets/<dataset>.npz, then one global merge to <outdir>/result.npz
# where the processor's postprocess runs.


rule merge:
    input:
        analysis.get_merge_inputs,
    output:
        analysis.path("merge"),
    log:
        analysis.log("merge"),
    params:
        opts=analysis.get_job_options,
        job=analysis.job("merge"),
    shell:
        "{params.job} {params.opts} --out {output:q} --log {log:q} {input:q}"


rule dataset:
    input:
        analysis.get_dataset_inputs,
    output:
        analysis.path("dataset"),
    log:
        analysis.log("dataset"),
    params:
        plan=analysis.get_plan_path,
        opts=analysis.get_job_options,
        provenance=analysis.get_provenance,
        skims=analysis.get_skim_options,
        job=analysis.job("dataset"),
    shell:
        "{params.job} --plan {params.plan} --provenance {params.provenance} {params.opts} {params.skims}"
        " --out {output:q} --log {log:q} {input:q}"


rule result:
    input:
        analysis.get_dataset_results,
    output:
        analysis.path("result"),
    log:
        analysis.log("result"),
    params:
        opts=analysis.get_job_options,
        provenance=analysis.get_provenance,
        skims=analysis.get_skim_options,
        job=analysis.job("result"),
    shell:
        "{params.job} --provenance {params.provenance} {params.opts} {params.skims}"
        " --out {output:q} --log {log:q} {input:q}"


# The fixed names users read (result.npz, datasets/<dataset>.npz) are links to
# the results of the analysis as configured now; switched by this job only when
# one of them points elsewhere (see Analysis.targets).
rule publish:
    input:
        analysis.get_dataset_results,
        analysis.result,
        analysis.plots,
        analysis.stat,
        analysis.report,
    output:
        temp(analysis.publish_marker),
    log:
        analysis.log("publish"),
    localrule: True
    params:
        spec=analysis.get_publication,
        job=analysis.job("publish"),
    shell:
        "{params.job} --spec {params.spec} --out {output:q} --log {log:q}"
