"""S4's evaluation: the offline toy tasks, the real lm-evaluation-harness on a tiny FFN-layout
model (its perplexity checked against a direct computation), the zsRE probe against a direct
computation, and S4's tables (relative improvements against hand-computed values)."""

from __future__ import annotations

import importlib.metadata
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tuneatlas.analysis.lmeval import (
    EVAL_COLUMNS,
    TOY_TASKS,
    primary,
    run_harness,
    toy_tasks,
    zsre_probe,
)
from tuneatlas.data import synthetic
from tuneatlas.data.tokens import train_bpe
from tuneatlas.io import write_parquet
from tuneatlas.models.llama_ffn import FFNLlamaConfig, FFNLlamaForCausalLM
from tuneatlas.studies import s4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    docs, facts = synthetic.pretrain_corpus(120, seed=0)
    texts = docs["text"].tolist()
    tok = train_bpe(texts, 300, root / "tok")
    torch.manual_seed(0)
    cfg = FFNLlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_widths=[0, 128],
        max_position_embeddings=512,
    )
    model = FFNLlamaForCausalLM(cfg).eval()
    tasks = toy_tasks(texts[-10:], facts, root / "tasks")
    return {
        "root": root,
        "texts": texts,
        "facts": facts,
        "tok": tok,
        "model": model,
        "tasks": tasks,
    }


def test_toy_tasks_hold_the_documents_and_facts(world):
    rows = {
        t: [json.loads(line) for line in (world["tasks"] / f"{t}.jsonl").read_text().splitlines()]
        for t in TOY_TASKS
    }
    assert [r["text"] for r in rows["toy_wikitext"]] == world["texts"][-10:]
    first = rows["toy_lambada"][0]
    assert f"{first['context']} {first['target']} ." == world["texts"][-10]
    facts = list(zip(world["facts"]["subject"], world["facts"]["answer"], strict=True))
    assert len(rows["toy_hellaswag"]) == len(facts)
    for item in rows["toy_hellaswag"]:
        assert len(item["endings"]) == len(set(item["endings"])) == 4
        truth = item["endings"][item["label"]].strip()  # the object of the context's own fact
        assert any(s in item["context"] and a == truth for s, a in facts)


def test_the_harness_runs_offline_and_its_perplexity_is_the_models(world):
    rows = run_harness(world["model"], world["tok"], list(TOY_TASKS), world["tasks"], "cpu", 8, 512)
    scores: dict[str, dict[str, float]] = {}
    for row in rows:
        scores.setdefault(row["task"], {})[row["metric"]] = row["value"]
    assert set(scores) == set(TOY_TASKS)
    # what a reader cites with each score: the harness's version, metric key, task version,
    # n-shot and stderr (closed form for means, bootstrap for perplexity, none for word ppl)
    cite = {(r["task"], r["metric"]): r for r in rows}
    assert {r["harness_version"] for r in rows} == {importlib.metadata.version("lm_eval")}
    assert cite["toy_hellaswag", "acc"]["harness_metric"] == "acc,none"
    assert all(r["n_shot"] == 0 and r["task_version"] == "1.0" for r in rows)
    acc = cite["toy_hellaswag", "acc"]["value"]
    n = len((world["tasks"] / "toy_hellaswag.jsonl").read_text().splitlines())
    assert cite["toy_hellaswag", "acc"]["stderr"] == pytest.approx(
        math.sqrt(acc * (1 - acc) / (n - 1))
    )
    assert cite["toy_lambada", "perplexity"]["stderr"] > 0
    assert math.isnan(cite["toy_wikitext", "word_perplexity"]["stderr"])
    assert 0 <= scores["toy_hellaswag"]["acc_norm"] <= 1 and 0 <= scores["toy_lambada"]["acc"] <= 1
    # word perplexity = exp(-sum log p(doc) / words), each document scored from its start (the
    # harness prefixes the end-of-text token; the documents fit in one window here)
    tok, model = world["tok"], world["model"]
    total, words = 0.0, 0
    with torch.no_grad():
        for doc in world["texts"][-10:]:
            ids = [tok.eos_token_id, *tok(doc, add_special_tokens=False)["input_ids"]]
            assert len(ids) <= 512
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
            total += float(logp.gather(1, torch.tensor(ids[1:]).view(-1, 1)).sum())
            words += len(doc.split())
    assert scores["toy_wikitext"]["word_perplexity"] == pytest.approx(
        math.exp(-total / words), rel=1e-4
    )


def test_zsre_probe_is_the_greedy_token_match_rate_with_the_gold_prefix(world):
    facts = world["facts"].head(5)
    tok, model = world["tok"], world["model"]
    rates = []
    for f in facts.itertuples():
        q = tok(f.question, add_special_tokens=False)["input_ids"]
        a = tok(" " + f.answer, add_special_tokens=False)["input_ids"]
        hits = []
        for k in range(len(a)):  # one token at a time, the gold prefix appended
            with torch.no_grad():
                nxt = model(torch.tensor([q + a[:k]])).logits[0, -1].argmax()
            hits.append(int(nxt) == a[k])
        rates.append(np.mean(hits))
    assert zsre_probe(model, tok, facts, "cpu") == pytest.approx(np.mean(rates))


def _write_eval(results, run, values):
    rows = [
        {
            "model": run,
            "task": t,
            "metric": m,
            "value": v,
            "higher_is_better": m != "word_perplexity",
        }
        for (t, m), v in values.items()
    ]
    write_parquet(pd.DataFrame(rows, columns=EVAL_COLUMNS), results / "lm_eval" / f"{run}.parquet")


def test_relative_improvements_flip_the_sign_of_perplexity(tmp_path):
    scores = {  # variant -> (word perplexity, acc)
        "baseline": (100.0, 0.40),
        "first_50": (80.0, 0.44),
        "final_50": (120.0, 0.30),
    }
    runs = {}
    for variant, (ppl, acc) in scores.items():
        run = f"s4-tiny-{variant}"
        position, _, ratio = variant.partition("_")
        runs[run] = {
            "size": "tiny",
            "variant": variant,
            "position": position if ratio else None,
            "ratio": int(ratio or 100),
            "params": 1000,
            "rel_diff": 0.0,
        }
        values = {("toy_wikitext", "word_perplexity"): ppl, ("toy_hellaswag", "acc"): acc}
        _write_eval(tmp_path, run, values)
    spec = {"params": {"runs": runs, "tasks": ["toy_wikitext", "toy_hellaswag"]}}
    f3 = s4.table_f3(spec, tmp_path).set_index(["variant", "task"])["ri"]
    assert f3["first_50", "toy_wikitext"] == pytest.approx(20.0)  # lower perplexity: better
    assert f3["final_50", "toy_wikitext"] == pytest.approx(-20.0)
    assert f3["first_50", "toy_hellaswag"] == pytest.approx(10.0)
    assert f3["final_50", "toy_hellaswag"] == pytest.approx(-25.0)
    assert f3["baseline", "toy_hellaswag"] == 0.0
    t1 = s4.table_t1(spec, tmp_path)
    assert t1["variant"].tolist() == ["first_50", "final_50"] and t1["rank"].tolist() == [1, 2]
    assert t1["mean_ri"].tolist() == pytest.approx([15.0, -22.5])
    t2 = s4.table_t2(spec, tmp_path)
    assert len(t2) == 6 and set(t2["size"]) == {"tiny"}
    for plot, table in (
        (s4.plot_f3, s4.table_f3),
        (s4.plot_t1, s4.table_t1),
        (s4.plot_t2, s4.table_t2),
    ):
        out = tmp_path / f"{plot.__name__}.png"
        plot(table(spec, tmp_path), [out])
        assert out.stat().st_size > 5000


def test_a_missing_metric_names_the_file_and_what_it_holds(tmp_path):
    _write_eval(tmp_path, "s4-x-baseline", {("toy_wikitext", "bits_per_byte"): 1.0})
    runs = {"s4-x-baseline": {"size": "x", "variant": "baseline", "position": None, "ratio": 100,
                              "params": 1, "rel_diff": 0.0}}  # fmt: skip
    with pytest.raises(ValueError, match="s4-x-baseline.parquet has no word_perplexity"):
        s4.table_f3({"params": {"runs": runs, "tasks": ["toy_wikitext"]}}, tmp_path)


def _runs(tmp_path, size, table):
    """Write lm_eval files of one size: {variant: {(task, metric): value}}; the runs' info."""
    runs = {}
    for variant, values in table.items():
        run = f"s4-{size}-{variant}"
        position, _, ratio = variant.partition("_")
        runs[run] = {"size": size, "variant": variant, "position": position if ratio else None,
                     "ratio": int(ratio or 100), "params": 1, "rel_diff": 0.0}  # fmt: skip
        _write_eval(tmp_path, run, values)
    return runs


def test_a_task_below_chance_is_dropped_per_size_and_named(tmp_path):
    # size a: hellaswag's baseline (0.20) is below its 4-way chance (0.25): dropped from a's mean;
    # size b: 0.30 is above it: kept. Accuracy (the paper's), not acc_norm, decides.
    def evals(base_acc, var_acc):
        return {
            "baseline": {("wikitext", "word_perplexity"): 50.0, ("hellaswag", "acc"): base_acc,
                         ("hellaswag", "acc_norm"): 0.5},
            "final_90": {("wikitext", "word_perplexity"): 40.0, ("hellaswag", "acc"): var_acc,
                         ("hellaswag", "acc_norm"): 0.5},
        }  # fmt: skip

    runs = {**_runs(tmp_path, "a", evals(0.20, 0.24)), **_runs(tmp_path, "b", evals(0.30, 0.33))}
    params = {"runs": runs, "tasks": ["wikitext", "hellaswag"], "drop_below_chance": True}
    t1 = s4.table_t1({"params": params}, tmp_path).set_index("size")
    assert t1.loc["a", "mean_ri"] == pytest.approx(20.0)  # wikitext alone: (50 - 40) / 50
    assert t1.loc["b", "mean_ri"] == pytest.approx((20.0 + 10.0) / 2)
    assert (t1.loc["a", "tasks"], t1.loc["a", "dropped"]) == ("wikitext", "hellaswag")
    assert (t1.loc["b", "tasks"], t1.loc["b", "dropped"]) == ("wikitext,hellaswag", "")
    assert s4.table_t1({"params": params}, tmp_path).attrs["dropped_tasks"] == {
        "a": {"hellaswag": "baseline acc 0.2000 < chance 0.25"}
    }
    # off: every task counts; the figure of the dropped set still draws
    kept = s4.table_t1({"params": {**params, "drop_below_chance": False}}, tmp_path)
    assert kept.set_index("size").loc["a", "mean_ri"] == pytest.approx((20.0 + 20.0) / 2)
    f3 = s4.table_f3({"params": params}, tmp_path)
    assert f3.loc[f3["size"] == "a", "dropped"].tolist() == [False, True, False, True]
    s4.plot_f3(f3, [tmp_path / "f3.png"])
    s4.plot_t2(s4.table_t2({"params": params}, tmp_path), [tmp_path / "t2.png"])


def test_per_size_task_sets_and_a_metric_from_config(tmp_path):
    runs = _runs(tmp_path, "big", {
        "baseline": {("hellaswag", "acc"): 0.40, ("hellaswag", "acc_norm"): 0.50,
                     ("piqa", "acc"): 0.60},
        "final_90": {("hellaswag", "acc"): 0.44, ("hellaswag", "acc_norm"): 0.45,
                     ("piqa", "acc"): 0.66},
    })  # fmt: skip
    spec = {"params": {"runs": runs, "tasks": ["hellaswag", "piqa"],
                       "size_tasks": {"big": ["hellaswag"]}}}  # fmt: skip
    assert s4.table_t1(spec, tmp_path)["mean_ri"].tolist() == pytest.approx([10.0])
    spec["params"]["metrics"] = {"hellaswag": "acc_norm"}
    assert s4.table_t1(spec, tmp_path)["mean_ri"].tolist() == pytest.approx([-10.0])


def test_toy_tasks_are_scored_as_the_papers_tasks_they_stand_for():
    # the toy demo's panels read as the paper's: LAMBADA by accuracy, Wikitext by word perplexity
    pairs = {
        "toy_wikitext": "wikitext",
        "toy_lambada": "lambada_openai",
        "toy_hellaswag": "hellaswag",
    }
    for toy, paper in pairs.items():
        assert primary(toy) == primary(paper), toy
    assert primary("toy_lambada") == ("acc", True)
