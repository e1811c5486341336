# S1 dimension-subset search: one scan per fine-tuned run (the plan's `scans`), aggregated by
# the S1 table builders (tables.smk lists these files as inputs of S1.T2/TA1/T3/FA3/FL).
from tuneatlas.analysis.subsets.scan_files import SCAN_FILES


rule subsets:
    input:
        tensors=f"{RESULTS}/embeddings/{{run}}/embeddings.safetensors",
    output:
        multiext(f"{RESULTS}/subsets/{{run}}/", **{Path(f).stem: f for f in SCAN_FILES}),
    log:
        f"{RESULTS}/logs/subsets/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/subsets/{{run}}.tsv"
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        # the scan spec only; the device comes from $TUNEATLAS_DEVICE (shell prefix)
        scan=lambda wc: as_json(PLAN.scan_spec(wc.run)),
    shell:
        "python -m tuneatlas --threads {threads} subsets --embeddings {input.tensors:q}"
        " --params {params.scan:q} --out $(dirname {output.summary:q}) 2> {log:q}"
