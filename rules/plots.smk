# Plots and the report. The plot folder's key holds the result's key and the
# `plots:` settings (and lumi), so plots are redone only when one of them
# changes; the report's key holds the result's and the plots' keys.
# <outdir>/plots/latest and <outdir>/report.html are published links.


rule plots:
    input:
        analysis.result,
        analysis.get_dataset_results,
    output:
        directory(analysis.path("plots")),
    log:
        analysis.log("plots"),
    params:
        settings=analysis.get_plot_settings,
        job=analysis.job("plots"),
        opts=analysis.get_load_options,
    shell:
        "{params.job} {params.opts} --settings {params.settings} --out {output:q} --log {log:q} {input:q}"


rule report:
    input:
        analysis.result,
        analysis.get_dataset_results,
        analysis.plots,
        analysis.stat_fits,
    output:
        analysis.path("report"),
    log:
        analysis.log("report"),
    localrule: True
    params:
        job=analysis.job("report"),
        opts=analysis.get_load_options,
    shell:
        "{params.job} {params.opts} --out {output:q} --log {log:q} {input:q}"
