# S2: per-layer empirical-Fisher spectra of a base model before fine-tuning, one job per
# (model, trial): a fresh head and a training mini-batch drawn with the trial's seed.


rule fisher:
    input:
        unpack(lambda wc: member_inputs("fisher", wc.fisher)),
    output:
        f"{RESULTS}/fisher/{{fisher}}.parquet",
    log:
        f"{RESULTS}/logs/fisher/{{fisher}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fisher/{{fisher}}.tsv"
    wildcard_constraints:
        fisher=one_of(unbundled("fisher", PLAN.fishers)),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: estimated("fisher", "mem_mb", 16000, wc, attempt),
        runtime=lambda wc, attempt: estimated("fisher", "runtime", 30, wc, attempt),
    params:
        spec=lambda wc: as_json(fisher_of(wc)),
    shell:
        "python -m tuneatlas --threads {threads} fisher --spec {params.spec:q} --data {input.data:q}"
        " --model {input.model:q} --out {output:q} 2> {log:q}"
