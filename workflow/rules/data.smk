# Datasets -> results/data/<dataset>/, base models -> results/models/<model>/
#
# Only three rules reach the hub, and they run on the submit host (`localrules`: compute nodes
# often have no network): fetch_hub_data downloads a hub dataset's splits as they are into
# results/hub/<dataset>/ (batch by batch, a stream up to its max_rows), fetch_model copies
# a hub model into results/models/<model>/, and fetch_harness_data (pretrain.smk) caches the
# harness tasks' datasets. Every other job reads those local copies.


localrules:
    fetch_hub_data,
    fetch_model,


rule prepare_data:
    input:
        sources=dataset_sources,  # local files of a `file` source: an edit re-prepares it
        hub=hub_copy_of,
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data/{{dataset}}.tsv"
    # the config's datasets; S5's member datasets come from rule cluster_data
    wildcard_constraints:
        dataset=one_of(config["datasets"]),
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda wc: as_json(PLAN.datasets[wc.dataset]),
        spec_hash=lambda wc: stable_hash(PLAN.datasets[wc.dataset]),
        # a task declared in the config: a changed declaration re-prepares the data
        declared_task=lambda wc: as_json(
            config["tasks"].get(PLAN.datasets[wc.dataset]["task"])
        ),
        seed=config["seed"],
        hub_copy=hub_copy_arg,
    shell:
        "python -m tuneatlas prepare --name {wildcards.dataset:q} --spec {params.spec:q} --seed {params.seed}"
        " --spec-hash {params.spec_hash} {params.hub_copy} --out {output:q} 2> {log:q}"


rule fetch_hub_data:
    output:
        directory(f"{RESULTS}/hub/{{dataset}}"),
    log:
        f"{RESULTS}/logs/fetch_hub_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_hub_data/{{dataset}}.tsv"
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        spec=hub_fetch_spec_of,
    shell:
        "python -m tuneatlas fetch-hub --name {wildcards.dataset:q} --spec {params.spec:q} --out {output:q} 2> {log:q}"


rule build_model:
    input:
        model_dirs_needed,
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{RESULTS}/logs/build_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_model/{{model}}.tsv"
    wildcard_constraints:
        model=models_from("build", "local"),
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
        " --data-root {params.data_root:q} --out {output:q} 2> {log:q}"


rule fetch_model:
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{RESULTS}/logs/fetch_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_model/{{model}}.tsv"
    wildcard_constraints:
        model=models_from("hub"),
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: as_json(PLAN.models[wc.model]),
    shell:
        "python -m tuneatlas build-model --spec {params.spec:q} --out {output:q} 2> {log:q}"
