# Every artifact of the catalogue: results/tables/<slug>.parquet and its figure(s).


rule table:
    input:
        table_inputs,
    output:
        f"{RESULTS}/tables/{{slug}}.parquet",
    log:
        f"{RESULTS}/logs/table/{{slug}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/table/{{slug}}.tsv"
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    # params are the target spec alone (DESIGN principle 8); the global config hash reaches the
    # table's metadata as information through $TUNEATLAS_CONFIG_HASH (shell prefix)
    params:
        spec=table_spec,
        artifact=lambda wc: target_of(wc).artifact.id,
        results=lambda wc, output: Path(output[0]).parents[1],
    shell:
        "python -m tuneatlas table {params.artifact:q} --spec {params.spec:q}"
        " --results {params.results:q} --out {output:q} 2> {log:q}"


rule figure:
    input:
        f"{RESULTS}/tables/{{study}}_{{name}}.parquet",
    output:
        report(
            f"{RESULTS}/figures/{{study}}_{{name}}.png",
            caption="../report/figure.rst",
            **report_entry("figure"),
        ),
    log:
        f"{RESULTS}/logs/figure/{{study}}_{{name}}.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        artifact=lambda wc: artifact_of(wc).id,
        title=lambda wc: artifact_of(wc).title,
        paper=paper_reported,
    shell:
        "python -m tuneatlas plot {params.artifact:q} --table {input:q} --out {output:q} 2> {log:q}"


# S3.F4 is an animation: a GIF beside the PNG of its final frame. The report cannot play a GIF
# (it offers a download), so it shows the animated PNG of rule animation_view instead.
ruleorder: animation > figure


rule animation:
    input:
        f"{RESULTS}/tables/s3_f4.parquet",
    output:
        png=report(
            f"{RESULTS}/figures/s3_f4.png",
            caption="../report/animation.rst",
            **report_entry("final frame", "S3.F4"),
        ),
        gif=f"{RESULTS}/figures/s3_f4.gif",
    log:
        f"{RESULTS}/logs/figure/s3_f4.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m tuneatlas plot S3.F4 --table {input:q} --out {output.png:q} {output.gif:q} 2> {log:q}"


# What the report shows of a table: an HTML page of its first rows, under the artifact's entry.
rule table_view:
    input:
        f"{RESULTS}/tables/{{slug}}.parquet",
    output:
        report(
            f"{RESULTS}/tables/html/{{slug}}.html",
            caption="../report/table.rst",
            **report_entry("table"),
        ),
    log:
        f"{RESULTS}/logs/table_view/{{slug}}.log",
    wildcard_constraints:
        slug=catalogue_slugs(),
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        artifact=lambda wc: artifact_of(wc).id,
        title=lambda wc: artifact_of(wc).title,
        paper=paper_reported,
    shell:
        "python -m tuneatlas report-view --input {input:q} --out {output:q} 2> {log:q}"


rule animation_view:
    input:
        f"{RESULTS}/figures/s3_f4.gif",
    output:
        report(
            f"{RESULTS}/figures/animated/s3_f4.png",
            caption="../report/animation.rst",
            **report_entry("animation", "S3.F4"),
        ),
    log:
        f"{RESULTS}/logs/figure/s3_f4_animated.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tuneatlas report-view --input {input:q} --out {output:q} 2> {log:q}"
