"""S4's evaluation of a pre-trained causal LM: the real lm-evaluation-harness and a zsRE probe.

Harness tasks come by name: hub tasks at paper scale (wikitext, lambada_openai, hellaswag, ...),
and at toy scale three local tasks (version 1.0) that `toy_tasks` writes from the synthetic
pre-training corpus, so that the harness's own code computes every metric offline:

- ``toy_wikitext``: rolling log-likelihood over the held-out documents (the last documents of
  the corpus, which `tuneatlas.data.tokens.pack` keeps out of training): word perplexity;
- ``toy_lambada``: each held-out document without its last word (before the final " ."), that
  word as the target: last-word accuracy (greedy) and perplexity;
- ``toy_hellaswag``: a statement's prefix with 4 endings (the true object and 3 objects of
  other facts of the same relation): accuracy and length-normalised accuracy.

The zsRE probe (`zsre_probe`): for each (question, answer) fact, the question, then the answer
token by token with the gold prefix appended; the per-example token-match rate is the share of
answer tokens the model's greedy next token gets right; the score is its mean over facts.

Each harness score is stored with what a reader needs to cite it (CITATION_COLUMNS): its
standard error, the harness's metric key, the task version, the n-shot and the harness version.

`PRIMARY` names the score of each task that relative improvements use; perplexities are
lower-is-better (RI flips their sign). A task whose baseline scores 0 (a model that learned
none of its facts) has no RI: NaN, left out of the mean.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.data.synthetic import RELATIONS

log = logging.getLogger(__name__)

# task -> (metric, higher is better): the paper's (seed 003: 「2 択形式の Winogrande と PIQA
# (チャンスレート 50%), 4 択形式の HellaSwag, ARC, OBQA (チャンスレート 25%) では正解率 (Accuracy)
# を用いる. LAMBADA と Wikitext では正解率に加えて ... Perplexity も測定する」): accuracy for
# the multiple-choice tasks (not acc_norm) and LAMBADA (accuracy first, perplexity "in
# addition"); the harness's Wikitext has no accuracy, so its headline word perplexity. Hub task
# names use the harness's metric names; studies.s4.metrics overrides any of them.
PRIMARY: dict[str, tuple[str, bool]] = {
    "wikitext": ("word_perplexity", False),
    "toy_wikitext": ("word_perplexity", False),
    "lambada_openai": ("acc", True),
    "toy_lambada": ("acc", True),
    "hellaswag": ("acc", True),
    "toy_hellaswag": ("acc", True),
    "arc_easy": ("acc", True),
    "arc_challenge": ("acc", True),
    "winogrande": ("acc", True),
    "piqa": ("acc", True),
    "openbookqa": ("acc", True),
    "zsre": ("token_match", True),
}
# the chance accuracy of each multiple-choice task (the paper's: 50% for 2 options, 25% for 4):
# a baseline below it is dropped when studies.s4.drop_below_chance is on (paper footnote 8)
CHANCE: dict[str, float] = {
    "hellaswag": 0.25,
    "toy_hellaswag": 0.25,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "openbookqa": 0.25,
    "winogrande": 0.5,
    "piqa": 0.5,
}
ACCURACY_METRICS = ("acc", "acc_norm")


def primary(task: str, metrics: dict[str, str] | None = None) -> tuple[str, bool]:
    """(metric, higher is better) of `task`: `metrics[task]` if given, else PRIMARY's (accuracy
    for a task PRIMARY does not know); perplexities and bits per byte are lower-is-better."""
    chosen = (metrics or {}).get(task)
    if chosen is None:
        return PRIMARY.get(task, ("acc", True))
    return chosen, not ("perplexity" in chosen or chosen == "bits_per_byte")


TOY_TASKS = ("toy_wikitext", "toy_lambada", "toy_hellaswag")
EVAL_COLUMNS = ["model", "task", "metric", "value", "higher_is_better"]
# what the harness's README asks anyone who reports its numbers to give, per (task, metric):
# the standard error, the metric's key as the harness reports it (`acc,none`: metric, filter),
# the task's version, the number of few-shot examples and the harness's own version
CITATION_COLUMNS = ["stderr", "harness_metric", "task_version", "n_shot", "harness_version"]
# resamples of the bootstrapped standard errors (perplexity); means (acc, acc_norm) have a
# closed form, and the harness gives none for word perplexity or bits per byte (NaN here)
STDERR_BOOTSTRAP_ITERS = 1000

_YAML = {
    "toy_wikitext": """task: toy_wikitext
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata: {{version: 1.0}}
""",
    "toy_lambada": """task: toy_lambada
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata: {{version: 1.0}}
""",
    "toy_hellaswag": """task: toy_hellaswag
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata: {{version: 1.0}}
""",
}


def _statements(facts: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(relation, statement without its object, object) for each fact, with the first template
    whose object ends the sentence."""
    out = []
    for f in facts.itertuples():
        template = next(t for t in RELATIONS[f.relation].say if t.endswith("{o} ."))
        context = template[: template.index("{o}")].rstrip().format(s=f.subject)
        out.append((f.relation, context, str(f.answer)))
    return out


def _last_word(document: str) -> dict[str, str]:
    words = document.split()
    if words[-1] == ".":
        words = words[:-1]
    return {"context": " ".join(words[:-1]), "target": words[-1]}


def toy_tasks(documents: list[str], facts: pd.DataFrame, out_dir: Path, seed: int = 0) -> Path:
    """Write the three toy harness tasks (JSONL data + YAML) into `out_dir`; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    statements = _statements(facts)
    by_relation: dict[str, list[str]] = {}
    for rel, _, obj in statements:
        by_relation.setdefault(rel, []).append(obj)
    rows = {
        "toy_wikitext": [{"text": d} for d in documents],
        "toy_lambada": [_last_word(d) for d in documents if len(d.split()) > 2],
        "toy_hellaswag": [],
    }
    for rel, context, obj in statements:
        others = sorted(set(by_relation[rel]) - {obj})
        if len(others) < 3:
            continue
        endings = [obj, *rng.choice(others, 3, replace=False).tolist()]
        order = rng.permutation(4)
        rows["toy_hellaswag"].append(
            {
                "context": context,
                "endings": [" " + endings[i] for i in order],
                "label": int(np.flatnonzero(order == 0)[0]),
            }
        )
    for task, items in rows.items():
        if not items:
            raise ValueError(f"{task}: no examples from this corpus (too few facts)")
        data = out_dir / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in items))
        (out_dir / f"{task}.yaml").write_text(_YAML[task].format(data=json.dumps(str(data))))
    return out_dir


def harness_cache_env(cache_dir: Path) -> dict[str, str]:
    """The environment that points the datasets and hub caches at `cache_dir`: the same for the
    fetch on the submit host (`fetch_harness_tasks`) and the offline `lm_eval` jobs."""
    cache = Path(cache_dir).resolve()
    return {"HF_DATASETS_CACHE": str(cache / "datasets"), "HF_HUB_CACHE": str(cache / "hub")}


def fetch_harness_tasks(tasks: list[str], cache_dir: Path) -> None:
    """Download the datasets of lm-evaluation-harness `tasks` into `cache_dir` (the local rule
    fetch_harness_data, on the submit host), so that `lm_eval` jobs on compute nodes build the
    same tasks offline (HF_DATASETS_OFFLINE=1). Call in a fresh process: the cache variables
    are read when `datasets` is first imported."""
    import os

    unknown = [t for t in tasks if t in TOY_TASKS]
    if unknown:
        raise ValueError(f"{unknown}: toy tasks are written from the corpus, not fetched")
    os.environ.update(harness_cache_env(cache_dir))
    from lm_eval.tasks import TaskManager, get_task_dict

    built = get_task_dict(list(tasks), TaskManager())
    (Path(cache_dir) / "tasks.json").write_text(json.dumps(sorted(built), indent=1) + "\n")


def run_harness(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    include_path: Path | None,
    device: str,
    batch_size: int,
    max_length: int,
) -> list[dict[str, Any]]:
    """The rows of `harness_rows` from lm-evaluation-harness's `simple_evaluate` on `model`."""
    import os

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=str(include_path) if include_path else None,
        include_defaults=any(t not in TOY_TASKS for t in tasks),  # skips 6-11 s of indexing
    )
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
    )
    # one chunk of resamples: a process pool would only fork the process that holds the model
    os.environ.setdefault("DISABLE_MULTIPROC", "1")
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=STDERR_BOOTSTRAP_ITERS,
    )
    return harness_rows(output)


def harness_rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, metric) of `simple_evaluate`'s output: task, metric, value and the
    CITATION_COLUMNS (a stderr the harness leaves "N/A" becomes NaN)."""
    version = output.get("lm_eval_version")
    rows = []
    for task, metrics in output["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue  # the alias, and the stderr entries (read with their metric)
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else np.nan,
                    "harness_metric": key,
                    "task_version": str(output["versions"].get(task)),
                    "n_shot": int(output["n-shot"].get(task, 0)),
                    "harness_version": version,
                }
            )
    return rows


def zsre_probe(model: Any, tokenizer: Any, facts: pd.DataFrame, device: str) -> float:
    """Mean over facts of the share of answer tokens predicted greedily with the gold prefix."""
    import torch

    rates = []
    model.eval()
    with torch.no_grad():
        for f in facts.itertuples():
            question = tokenizer(str(f.question), add_special_tokens=False)["input_ids"]
            answer = tokenizer(" " + str(f.answer), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([question + answer], device=device)
            logits = model(input_ids=ids).logits[0]
            # the prediction of answer token k sits at the position before it
            guess = logits[len(question) - 1 : len(question) + len(answer) - 1].argmax(-1)
            rates.append(float((guess.cpu() == torch.tensor(answer)).float().mean()))
    return float(np.mean(rates)) if rates else float("nan")


def evaluate_run(
    spec: dict[str, Any],
    model_dir: Path,
    data_dir: Path,
    out: Path,
    device: str | None = None,
    batch_size: int = 32,
    config_hash: str = "unknown",
) -> pd.DataFrame:
    """The `lm_eval` rule: the harness tasks of `spec["tasks"]` and the zsRE probe on the
    corpus's facts for the pre-trained model in `model_dir`, written to `out` (EVAL_COLUMNS)."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tuneatlas.models.llama_ffn  # noqa: F401  registers the FFN-layout model
    from tuneatlas.data.tokens import held_out
    from tuneatlas.engine.device import resolve_device
    from tuneatlas.io import provenance, write_parquet

    dev = str(resolve_device(device))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    facts_file = Path(data_dir) / "facts.parquet"
    facts = pd.read_parquet(facts_file) if facts_file.exists() else pd.DataFrame()
    tasks = list(spec["tasks"])
    with tempfile.TemporaryDirectory() as tmp:
        include = None
        if any(t in TOY_TASKS for t in tasks):
            texts = pd.read_parquet(Path(data_dir) / "train.parquet", columns=["text"])["text"]
            documents = texts.tolist()[-held_out(len(texts)) :]
            include = toy_tasks(documents, facts, Path(tmp))
        scores = run_harness(
            model, tokenizer, tasks, include, dev, batch_size, int(spec["max_length"])
        )
    rows = [
        {"model": spec["run"], "higher_is_better": _higher_is_better(row["metric"]), **row}
        for row in scores
    ]
    if len(facts):
        # tuneatlas's own probe, not a harness task: no harness version, task version or stderr
        rows.append(
            {"model": spec["run"], "task": "zsre",
             "metric": "token_match", "value": zsre_probe(model, tokenizer, facts, dev),
             "higher_is_better": True, "n_shot": 0}
        )  # fmt: skip
    df = pd.DataFrame(rows, columns=EVAL_COLUMNS + CITATION_COLUMNS)
    write_parquet(df, out, provenance(config_hash, tasks=tasks))
    return df


def _higher_is_better(metric: str) -> bool:
    return not ("perplexity" in metric or metric in ("bits_per_byte",))
