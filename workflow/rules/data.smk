# Datasets -> results/data/<dataset>/, base models -> results/models/<model>/


rule prepare_data:
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data/{{dataset}}.tsv"
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda wc: as_json(PLAN.datasets[wc.dataset]),
        spec_hash=lambda wc: stable_hash(PLAN.datasets[wc.dataset]),
        seed=config["seed"],
    shell:
        "python -m tuneatlas prepare --name {wildcards.dataset} --spec {params.spec:q} --seed {params.seed}"
        " --config-hash {params.spec_hash} --out {output} 2> {log}"


rule build_model:
    input:
        model_dirs_needed,
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{RESULTS}/logs/build_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_model/{{model}}.tsv"
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: as_json(PLAN.models[wc.model]),
        seed=config["seed"],
        data_root=f"{RESULTS}/data",
    shell:
        "python -m tuneatlas --threads {threads} build-model --spec {params.spec:q} --seed {params.seed}"
        " --data-root {params.data_root} --out {output} 2> {log}"
