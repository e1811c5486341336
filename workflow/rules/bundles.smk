# Bundles (config `bundles`, tuneatlas.bundles): many short fine-tunes, Fisher trials, toy
# pre-training runs or their evaluations of one study as one GPU job, one process; each
# member's outputs are then moved into place by a local job of its own, so every rule
# downstream reads the paths an unbundled run writes.


localrules:
    adopt_train,
    adopt_train_with_predictions,
    adopt_fisher,
    adopt_pretrain,
    adopt_lm_eval,


rule bundle:
    input:
        bundle_inputs,
    output:
        f"{RESULTS}/bundles/{{bundle}}/done.json",
    log:
        f"{RESULTS}/logs/bundle/{{bundle}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bundle/{{bundle}}.tsv"
    wildcard_constraints:
        bundle=one_of(PLAN.bundles),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=bundle_resource("mem_mb"),
        runtime=bundle_resource("runtime"),
    params:
        members=bundle_members_arg,
        env=bundle_env,
    shell:
        "{params.env} python -m tuneatlas --threads {threads} bundle --name {wildcards.bundle}"
        " {params.members} --out {output:q} 2> {log:q}"


rule adopt_train:
    input:
        bundle_done("train"),
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/model"),
        captures=directory(f"{RESULTS}/runs/{{run}}/captures"),
        eval=f"{RESULTS}/runs/{{run}}/eval.parquet",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.parquet",
        spec=f"{RESULTS}/runs/{{run}}/spec.yaml",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    wildcard_constraints:
        run=one_of(set(bundled("train")) - set(PREDICTED_RUNS)),
    conda:
        "../../envs/tuneatlas.yaml"
    params:
        # the member's command holds its spec: a changed spec re-runs the member
        bundle=lambda wc: PLAN.bundle_of("train", wc.run),
        member=lambda wc: bundle_member(PLAN.bundle_of("train", wc.run), wc.run),
    # a shell job, not `run:`: snakemake runs a `run:` block in a new snakemake process that
    # re-plans the whole config (~11 s a member in the demo); the move itself takes ~1 s
    shell:
        "python -m tuneatlas adopt --bundle {params.bundle} --member {params.member:q}"


use rule adopt_train as adopt_train_with_predictions with:
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/model"),
        captures=directory(f"{RESULTS}/runs/{{run}}/captures"),
        eval=f"{RESULTS}/runs/{{run}}/eval.parquet",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.parquet",
        spec=f"{RESULTS}/runs/{{run}}/spec.yaml",
        predictions=f"{RESULTS}/runs/{{run}}/predictions.parquet",
    wildcard_constraints:
        run=one_of(set(bundled("train")) & set(PREDICTED_RUNS)),


rule adopt_fisher:
    input:
        bundle_done("fisher"),
    output:
        f"{RESULTS}/fisher/{{fisher}}.parquet",
    log:
        f"{RESULTS}/logs/fisher/{{fisher}}.log",
    wildcard_constraints:
        fisher=one_of(bundled("fisher")),
    conda:
        "../../envs/tuneatlas.yaml"
    params:
        bundle=lambda wc: PLAN.bundle_of("fisher", wc.fisher),
        member=lambda wc: bundle_member(PLAN.bundle_of("fisher", wc.fisher), wc.fisher),
    shell:
        "python -m tuneatlas adopt --bundle {params.bundle} --member {params.member:q}"


rule adopt_pretrain:
    input:
        bundle_done("pretrain"),
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/model"),
        eval=f"{RESULTS}/runs/{{run}}/eval.parquet",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.parquet",
        spec=f"{RESULTS}/runs/{{run}}/spec.yaml",
    log:
        f"{RESULTS}/logs/pretrain/{{run}}.log",
    wildcard_constraints:
        run=one_of(bundled("pretrain")),
    conda:
        "../../envs/tuneatlas.yaml"
    params:
        bundle=lambda wc: PLAN.bundle_of("pretrain", wc.run),
        member=lambda wc: bundle_member(PLAN.bundle_of("pretrain", wc.run), wc.run),
    shell:
        "python -m tuneatlas adopt --bundle {params.bundle} --member {params.member:q}"


rule adopt_lm_eval:
    input:
        bundle_done("lm_eval"),
    output:
        f"{RESULTS}/lm_eval/{{run}}.parquet",
    log:
        f"{RESULTS}/logs/lm_eval/{{run}}.log",
    wildcard_constraints:
        run=one_of(bundled("lm_eval")),
    conda:
        "../../envs/tuneatlas.yaml"
    params:
        bundle=lambda wc: PLAN.bundle_of("lm_eval", wc.run),
        member=lambda wc: bundle_member(PLAN.bundle_of("lm_eval", wc.run), wc.run),
    shell:
        "python -m tuneatlas adopt --bundle {params.bundle} --member {params.member:q}"
