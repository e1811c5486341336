# S5: cluster a dataset and derive the member datasets (the members' per-example logits come
# from rule train_with_predictions, finetune.smk).
#   results/clusters/<id>/        centres, assignments + distances of every split, embedder
#   results/data/<task>-<member>/ a member's training rows (the clusters it sees), other splits


rule cluster:
    input:
        data=lambda wc: f"{RESULTS}/data/{clustering_of(wc)['dataset']}",
        embedder=lambda wc: (
            [f"{RESULTS}/models/{clustering_of(wc)['embedder']}"]
            if clustering_of(wc)["embedder"]
            else []
        ),
    output:
        directory(f"{RESULTS}/clusters/{{clustering}}"),
    log:
        f"{RESULTS}/logs/cluster/{{clustering}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cluster/{{clustering}}.tsv"
    wildcard_constraints:
        clustering=one_of(PLAN.clusterings),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: estimated("cluster", "mem_mb", 16000, wc, attempt),
        runtime=lambda wc, attempt: estimated("cluster", "runtime", 60, wc, attempt),
    params:
        spec=lambda wc: as_json(clustering_of(wc)),
        embedder=lambda wc, input: (
            " ".join(f"--embedder {shlex.quote(e)}" for e in input.embedder)
        ),
    shell:
        "python -m tuneatlas --threads {threads} cluster --spec {params.spec:q} --data {input.data:q}"
        " {params.embedder} --out {output:q} 2> {log:q}"


rule cluster_data:
    input:
        data=lambda wc: f"{RESULTS}/data/{member_dataset_of(wc)['base']}",
        clusters=lambda wc: f"{RESULTS}/clusters/{member_dataset_of(wc)['clustering']}",
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{RESULTS}/logs/cluster_data/{{dataset}}.log",
    wildcard_constraints:
        dataset=datasets_from("clusters"),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        keep=lambda wc: " ".join(member_dataset_of(wc)["clusters"]),
    shell:
        "python -m tuneatlas cluster-data --data {input.data:q} --clusters {input.clusters:q}"
        " --keep {params.keep} --out {output:q} 2> {log:q}"
