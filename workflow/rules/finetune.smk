# Fine-tuning runs (one training engine for every study) and embedding extraction.


rule train:
    input:
        unpack(lambda wc: member_inputs("train", wc.run)),
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/model"),
        captures=directory(f"{RESULTS}/runs/{{run}}/captures"),
        eval=f"{RESULTS}/runs/{{run}}/eval.parquet",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.parquet",
        spec=f"{RESULTS}/runs/{{run}}/spec.yaml",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    wildcard_constraints:
        # the fine-tune runs only: a pre-training run's outputs match too (rule pretrain)
        run=one_of(unbundled("train", FINETUNE_RUNS)),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: estimated("train", "mem_mb", 16000, wc, attempt),
        runtime=lambda wc, attempt: estimated("train", "runtime", 240, wc, attempt),
    params:
        spec=lambda wc: as_json(run_of(wc).spec),
        init=init_arg,
        run_dir=lambda wc: f"{RESULTS}/runs/{wc.run}",
        predictions=predictions_arg,
    shell:
        "python -m tuneatlas --threads {threads} train --spec {params.spec:q} --data {input.data:q}"
        " --model {input.model:q} {params.init} --out {params.run_dir:q} {params.predictions}"
        " 2> {log:q}"


# Runs an ensemble reads (S5's members) also write their per-example logits on valid/test.
ruleorder: train_with_predictions > train


use rule train as train_with_predictions with:
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/model"),
        captures=directory(f"{RESULTS}/runs/{{run}}/captures"),
        eval=f"{RESULTS}/runs/{{run}}/eval.parquet",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.parquet",
        spec=f"{RESULTS}/runs/{{run}}/spec.yaml",
        predictions=f"{RESULTS}/runs/{{run}}/predictions.parquet",
    wildcard_constraints:
        run=one_of(unbundled("train", PREDICTED_RUNS)),


rule embed:
    input:
        model=f"{RESULTS}/runs/{{run}}/model",
        data=lambda wc: f"{RESULTS}/data/{run_of(wc).spec['dataset']}",
    output:
        tensors=f"{RESULTS}/embeddings/{{run}}/embeddings.safetensors",
        index=f"{RESULTS}/embeddings/{{run}}/index.parquet",
    log:
        f"{RESULTS}/logs/embed/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{run}}.tsv"
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: estimated("embed", "mem_mb", 16000, wc, attempt),
        runtime=lambda wc, attempt: estimated("embed", "runtime", 60, wc, attempt),
    params:
        batch_size=lambda wc: run_of(wc).spec["eval_batch_size"],
        out_dir=lambda wc: f"{RESULTS}/embeddings/{wc.run}",
        # the config's grant (plan._grant_trust), never the run directory's JSON
        trust=lambda wc: (
            "--trust-remote-code" if run_of(wc).spec.get("trust_remote_code") else ""
        ),
    shell:
        "python -m tuneatlas --threads {threads} embed --model {input.model:q} --data {input.data:q}"
        " --batch-size {params.batch_size} --out {params.out_dir:q} {params.trust} 2> {log:q}"


# S2: SimCSE continued training of a base model -> a new base model results/models/<id>/
# (its checkpoint, metrics and held-out scores under results/runs/<id>/).
rule simcse:
    input:
        data=lambda wc: f"{RESULTS}/data/{PLAN.models[wc.model]['corpus']}",
        model=lambda wc: f"{RESULTS}/models/{PLAN.models[wc.model]['base']}",
        stsb=lambda wc: simcse_stsb(wc.model),
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{RESULTS}/logs/simcse/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simcse/{{model}}.tsv"
    wildcard_constraints:
        model=models_from("simcse"),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: estimated("simcse", "mem_mb", 16000, wc, attempt),
        runtime=lambda wc, attempt: estimated("simcse", "runtime", 240, wc, attempt),
    params:
        spec=lambda wc: as_json(PLAN.runs[wc.model].spec),
        run_dir=lambda wc: f"{RESULTS}/runs/{wc.model}",
        stsb=lambda wc: " ".join(
            f"--stsb {shlex.quote(d)}" for d in simcse_stsb(wc.model)
        ),
    shell:
        "python -m tuneatlas --threads {threads} simcse --spec {params.spec:q} --data {input.data:q}"
        " --model {input.model:q} --out {output:q} --run-dir {params.run_dir:q} {params.stsb}"
        " 2> {log:q}"
