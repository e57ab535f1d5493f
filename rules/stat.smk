# Statistical models (the `stat:` section): per model, a pyhf workspace, a CMS
# Combine datacard with its shapes file and a first fit. A model's folder key
# holds the result's key, the model's name and settings and lumi, so a model is
# redone only when its histogram's result or its settings change.
# <outdir>/stat/<model> is a published link to the model's current folder.


rule stat:
    input:
        analysis.result,
        analysis.get_dataset_results,
    output:
        workspace=analysis.stat_path("workspace.json"),
        datacard=analysis.stat_path("datacard.txt"),
        shapes=analysis.stat_path("shapes.root"),
        fit=analysis.stat_path("fit.json"),
    log:
        analysis.log("stat"),
    params:
        settings=analysis.get_stat_settings,
        folder=analysis.get_stat_folder,
        job=analysis.job("stat"),
        opts=analysis.get_load_options,
    shell:
        "{params.job} {params.opts} --settings {params.settings} --out {params.folder:q} --log {log:q} {input:q}"
