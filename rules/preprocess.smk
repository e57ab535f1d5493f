# Preprocess: each input file is opened once; its record under <outdir>/cache
# is keyed by the file's identity and is never recomputed while the file is
# unchanged. A plan per dataset then cuts the files into chunks and work units.


rule preprocess:
    output:
        analysis.path("preprocess"),
    log:
        analysis.log("preprocess"),
    # Cheap and on the way to every plan: before any processing job, so that
    # all work units are known early and the cores stay full.
    priority: 10
    params:
        files=analysis.get_preprocess_files,
        cache=analysis.cache_dir,
        failures=analysis.layout.failure("preprocess"),
        skip="--skip-bad-files" if analysis.cfg.skip_bad_files else "",
        policy=analysis.get_policy,
        job=analysis.job("preprocess"),
    shell:
        "{params.job} --files {params.files:q} --cache {params.cache:q} {params.skip}"
        " --policy {params.policy} --failures {params.failures:q} --out {output:q} --log {log:q}"


checkpoint plan:
    input:
        analysis.get_plan_inputs,
    output:
        analysis.path("plan"),
    log:
        analysis.log("plan"),
    priority: 10
    localrule: True
    params:
        spec=analysis.get_plan_spec,
        job=analysis.job("plan"),
    shell:
        "{params.job} --spec {params.spec:q} --out {output:q} --log {log:q} {input:q}"
