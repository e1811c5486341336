# S4: the corpus tokenised once, one pre-training run per (size, FFN layout), each evaluated with
# lm-evaluation-harness and the zsRE probe.


rule tokenize:
    input:
        unpack(tokens_inputs),
    output:
        directory(f"{RESULTS}/tokens/{{tokens}}"),
    log:
        f"{RESULTS}/logs/tokenize/{{tokens}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize/{{tokens}}.tsv"
    wildcard_constraints:
        tokens=one_of(PLAN.tokens),
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        tokenizer=lambda wc, input: input.get("tokenizer", "build"),
        vocab=lambda wc: PLAN.tokens[wc.tokens]["vocab_size"],
    shell:
        "python -m tuneatlas --threads {threads} tokenize --data {input.data:q}"
        " --tokenizer {params.tokenizer:q} --vocab-size {params.vocab} --out {output:q} 2> {log:q}"


ruleorder: pretrain > train


rule pretrain:
    input:
        unpack(lambda wc: member_inputs("pretrain", wc.run)),
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/model"),
        eval=f"{RESULTS}/runs/{{run}}/eval.parquet",
        metrics=f"{RESULTS}/runs/{{run}}/metrics.parquet",
        spec=f"{RESULTS}/runs/{{run}}/spec.yaml",
    log:
        f"{RESULTS}/logs/pretrain/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{run}}.tsv"
    wildcard_constraints:
        run=one_of(unbundled("pretrain", PRETRAIN_RUNS)),
    priority: training_priority
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=GPUS_PER_PRETRAIN,
        mem_mb=lambda wc, attempt: estimated("pretrain", "mem_mb", 32000, wc, attempt),
        runtime=lambda wc, attempt: estimated("pretrain", "runtime", 1440, wc, attempt),
    params:
        spec=lambda wc: as_json(run_of(wc).spec),
        run_dir=lambda wc: f"{RESULTS}/runs/{wc.run}",
        # several GPUs: one DDP process per GPU, each on its share of every global batch
        launcher=(
            f"torchrun --standalone --nproc_per_node {GPUS_PER_PRETRAIN}"
            if GPUS_PER_PRETRAIN > 1
            else "python"
        ),
    shell:
        "{params.launcher} -m tuneatlas --threads {threads} pretrain --spec {params.spec:q}"
        " --tokens {input.tokens:q} --out {params.run_dir:q} 2> {log:q}"


# The harness's datasets are fetched on the submit host (compute nodes often have no network);
# the lm_eval jobs read that cache offline.
localrules:
    fetch_harness_data,


rule fetch_harness_data:
    output:
        directory(HARNESS_CACHE),
    log:
        f"{RESULTS}/logs/fetch_harness_data.log",
    conda:
        "../../envs/tuneatlas.yaml"
    threads: 1
    params:
        tasks=" ".join(map(shlex.quote, HARNESS_TASKS)),
    shell:
        "python -m tuneatlas fetch-harness --tasks {params.tasks} --out {output:q} 2> {log:q}"


rule lm_eval:
    input:
        unpack(lambda wc: member_inputs("lm_eval", wc.run)),
        harness=harness_cache_of,
    output:
        f"{RESULTS}/lm_eval/{{run}}.parquet",
    log:
        f"{RESULTS}/logs/lm_eval/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lm_eval/{{run}}.tsv"
    wildcard_constraints:
        run=one_of(unbundled("lm_eval", PLAN.lm_evals)),
    conda:
        "../../envs/tuneatlas.yaml"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: estimated("lm_eval", "mem_mb", 16000, wc, attempt),
        runtime=lambda wc, attempt: estimated("lm_eval", "runtime", 240, wc, attempt),
    params:
        spec=lambda wc: as_json(PLAN.lm_evals[wc.run]),
        env=lambda wc: harness_env([wc.run]),
    shell:
        "{params.env} python -m tuneatlas --threads {threads} lm-eval --spec {params.spec:q}"
        " --model {input.model:q} --data {input.data:q} --out {output:q} 2> {log:q}"
