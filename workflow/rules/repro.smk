# REPRO (tuneatlas.studies.repro): our numbers beside the papers' published values and the
# papers' claims checked, from the artifact tables of every configured study.
rule repro_tables:
    input:
        repro_inputs,
    output:
        repro=REPRO_TABLES[0],
        findings=REPRO_TABLES[1],
    log:
        f"{RESULTS}/logs/repro/tables.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=as_json(PLAN.repro),
        results=lambda wc, output: Path(output.repro).parents[1],
    shell:
        "python -m tuneatlas repro tables --spec {params.spec:q} --results {params.results}"
        " --out {output.repro:q} {output.findings:q} 2> {log:q}"


rule repro_figures:
    input:
        repro=REPRO_TABLES[0],
        findings=REPRO_TABLES[1],
    output:
        repro=report(
            REPRO_FIGURES[0],
            caption="../report/repro.rst",
            category=SUMMARY_CATEGORY,
            subcategory="Paper vs ours",
            labels={"artifact": "REPRO", "view": "figure"},
        ),
        findings=report(
            REPRO_FIGURES[1],
            caption="../report/findings.rst",
            category=SUMMARY_CATEGORY,
            subcategory="Findings",
            labels={"artifact": "findings", "view": "figure"},
        ),
    log:
        f"{RESULTS}/logs/repro/figures.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m tuneatlas repro figures --table {input.repro:q} {input.findings:q}"
        " --out {output.repro:q} {output.findings:q} 2> {log:q}"


# The reproduction summary's tables as HTML pages of the report, beside its figures.
rule summary_views:
    input:
        repro=REPRO_TABLES[0],
        findings=REPRO_TABLES[1],
    output:
        repro=report(
            f"{RESULTS}/tables/html/repro.html",
            caption="../report/repro.rst",
            category=SUMMARY_CATEGORY,
            subcategory="Paper vs ours",
            labels={"artifact": "REPRO", "view": "table"},
        ),
        findings=report(
            f"{RESULTS}/tables/html/findings.html",
            caption="../report/findings.rst",
            category=SUMMARY_CATEGORY,
            subcategory="Findings",
            labels={"artifact": "findings", "view": "table"},
        ),
    log:
        f"{RESULTS}/logs/table_view/summary.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "(python -m tuneatlas report-view --input {input.repro:q} --out {output.repro:q}"
        " && python -m tuneatlas report-view --input {input.findings:q}"
        " --out {output.findings:q}) 2> {log:q}"
