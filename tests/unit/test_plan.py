"""The plan: paper.yaml yields exactly the grids of docs/studies.md; toy specs are consistent."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from tuneatlas.catalogue import ARTIFACTS
from tuneatlas.config import load_config, validate_config
from tuneatlas.errors import ConfigError
from tuneatlas.plan import make_plan
from tuneatlas.spec import PretrainSpec, TrainSpec

GLUE = ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb"]


@pytest.fixture(scope="module")
def paper(repo):
    return make_plan(load_config(repo / "paper.yaml"))


def runs_of(plan, study, kind="finetune"):
    return {k: r for k, r in plan.runs.items() if r.study == study and r.kind == kind}


def test_s1_grid(paper):
    runs = runs_of(paper, "s1")
    specs = [TrainSpec.from_dict(r.spec) for r in runs.values()]
    direct = [
        s
        for s in specs
        if s.init_from is None and s.pooling == "cls" and not s.freeze_encoder and s.dropout == 0.1
    ]
    assert Counter(s.dataset for s in direct) == {t: 5 for t in GLUE}
    assert {s.seed for s in direct} == {42, 0, 331, 17, 31}
    assert sorted(s.dataset for s in specs if s.pooling == "maxnorm") == sorted(GLUE)
    frozen = [s for s in specs if s.freeze_encoder]
    assert len(frozen) == 8 and all(s.head == "mlp2" for s in frozen)
    assert len([s for s in specs if s.dropout == 0.0]) == 8
    cross = [s for s in specs if s.init_from]
    assert len(cross) == 56  # 8 x 8 matrix, the diagonal is direct fine-tuning
    assert len(paper.targets["S1.T5"].runs) == 64
    assert {(runs[s.init_from].spec["dataset"], s.dataset) for s in cross} == {
        (a, b) for a in GLUE for b in GLUE if a != b
    }
    main = TrainSpec.from_dict(runs["s1-sst2-s42"].spec)
    assert (main.optim.lr, main.batch_size, main.epochs, main.dropout) == (5e-5, 64, 5, 0.1)
    assert len(runs) == 40 + 8 + 8 + 8 + 56


def test_s2_grid(paper):
    runs = runs_of(paper, "s2")
    labels = Counter(r.extra["model_label"] for r in runs.values())
    assert set(labels) == {
        "vanilla",
        "simcse-p0.05",
        "simcse-p0.1",
        "simcse-p0.3",
        "simcse-p0.4",
        "simcse-p0.5",
    }
    lrs = {r.extra["lr"] for r in runs.values()}
    assert lrs == {5e-6, 1e-5, 1.5e-5, 2e-5, 2.5e-5, 3e-5}
    assert len(runs) == 6 * 6 * 30
    spec = TrainSpec.from_dict(runs["s2-vanilla-lr2e-5-s0"].spec)
    assert spec.optim.correct_bias is False and spec.optim.eps == 1e-6
    assert (spec.batch_size, spec.epochs, spec.schedule.warmup_epochs) == (16, 3, 0.3)
    assert spec.save_model is False  # a sweep keeps no weights
    assert len(runs_of(paper, "s2", "simcse")) == 5
    # 30 Fisher trials per model, each with its own seed for the head and the mini-batch
    assert len(paper.fishers) == 6 * 30
    trial = paper.fishers["s2-simcse-p0.1-t7"]
    assert (trial["model"], trial["trial"], trial["batch_size"]) == ("s2-simcse-p0.1", 7, 16)
    assert trial["precision"] == "fast"  # paper.yaml: float32 Gram products, float64 sums
    assert trial["dataset"] == "rte-glue"
    assert len(paper.targets["S2.T2"].fishers) == 180
    assert paper.targets["S2.T1"].datasets == ("rte-glue",)
    # in the loop: Fisher on SimCSE(0.1) and vanilla x 1e-5/2e-5/3e-5, every seed; polar: seed 0
    f4, f2 = paper.targets["S2.F4"].runs, paper.targets["S2.F2"].runs
    assert len(f4) == 2 * 3 * 30 and len(f2) == 2 * 3 * 5 and set(f2) < set(f4)
    inloop = TrainSpec.from_dict(runs["s2-simcse-p0.1-lr2e-5-s0"].spec)
    assert (inloop.fisher.every, inloop.fisher.batch_size, inloop.polar_every) == (47, 16, 47)
    assert inloop.fisher.precision == "fast"
    seed1 = TrainSpec.from_dict(runs["s2-vanilla-lr1e-5-s5"].spec)  # not a polar seed
    assert seed1.fisher.every == 47 and seed1.polar_every == 0
    assert "fisher" not in runs["s2-vanilla-lr5e-6-s0"].spec  # outside the in-loop cells


def test_in_loop_cells_outside_the_sweep_name_the_key(repo):
    import copy

    raw = yaml.safe_load((repo / "config.yaml").read_text())
    for key, value in (("lrs", [7.0e-3]), ("models", ["simcse-p0.2"])):
        cfg = copy.deepcopy(raw)
        cfg["studies"]["s2"]["fisher"][key] = value
        with pytest.raises(ConfigError, match=f"studies.s2.fisher.{key}"):
            make_plan(validate_config(cfg))


def test_s2_draws_the_papers_single_runs_and_refuses_seeds_without_a_run(repo, paper):
    for artifact_id in ("S2.F2", "S2.F4"):
        assert paper.targets[artifact_id].params["draw"] == "auto"  # the paper's figures
    assert paper.models["s2-simcse-p0.1"]["source"] == "simcse"
    assert paper.runs["s2-simcse-p0.1"].spec["pooler"] == "mlp"  # simcse_to_huggingface.py
    for key, draw in (("fisher", [30]), ("polar", [5])):  # 30 seeds; polar records 0-4
        raw = yaml.safe_load((repo / "paper.yaml").read_text())
        raw["studies"]["s2"][key]["draw"] = draw
        with pytest.raises(ConfigError, match=rf"studies\.s2\.{key}\.draw': seeds \[{draw[0]}\]"):
            make_plan(validate_config(raw))


def test_s3_runs(paper):
    runs = runs_of(paper, "s3")
    main = TrainSpec.from_dict(runs["s3-main-s42"].spec)
    assert main.capture.every == 10 and main.capture.probe_per_class == 10
    assert (main.optim.lr, main.batch_size, main.epochs, main.schedule.name) == (
        2e-5,
        32,
        10,
        "constant",
    )
    assert main.schedule.warmup_epochs == 0
    prelim = TrainSpec.from_dict(runs["s3-prelim-s42"].spec)
    assert (prelim.epochs, prelim.schedule.name) == (3, "linear")


def test_s4_grid(paper):
    runs = runs_of(paper, "s4", "pretrain")
    per_size = Counter(r.extra["size"] for r in runs.values())
    assert per_size == {"285M": 16, "570M": 16, "2B": 3}
    assert {r.extra["variant"] for r in runs.values() if r.extra["size"] == "2B"} == {
        "baseline",
        "final_90",
        "middle_70",
    }
    spec = PretrainSpec.from_dict(runs["s4-285m-final_90"].spec)
    # the token budget over 20,000 steps of 1,024 tokens: 5.7e9 / 2.048e7 = 278 sequences
    assert (spec.max_steps, spec.seq_len, spec.batch_size) == (20000, 1024, 278)
    assert spec.ffn_widths == [0, 0] + [5376] * 10 and spec.tokens == "s4"
    assert spec.optim.betas == (0.9, 0.95) and spec.optim.weight_decay == 0.1
    assert (spec.schedule.name, spec.schedule.warmup_steps, spec.optim.lr) == ("cosine", 1000, 3e-4)
    assert spec.precision == "bf16"
    assert paper.tokens["s4"] == {"corpus": "fineweb-edu", "tokenizer": "gpt2", "vocab_size": 50257}
    assert set(paper.lm_evals) == set(runs)
    assert paper.targets["S4.T1"].lm_evals == tuple(runs)
    assert "wikitext" in paper.lm_evals["s4-2b-baseline"]["tasks"]


HARNESS8 = ["wikitext", "lambada_openai", "hellaswag", "arc_easy", "arc_challenge", "winogrande",
            "piqa", "openbookqa"]  # fmt: skip
PAPER4 = ["wikitext", "lambada_openai", "hellaswag", "zsre"]


def test_s4_task_sets_fresh_corpora_and_micro_batches_are_the_papers(paper):
    # Table 1 / Fig. 3: 4 tasks (with zsRE) for 285M/570M; Tables 2/3: the 8 harness tasks for 2B
    assert paper.lm_evals["s4-285m-final_90"]["tasks"] == PAPER4[:3]
    assert paper.lm_evals["s4-2b-final_90"]["tasks"] == HARNESS8
    for artifact in ("S4.T1", "S4.F3"):
        params = paper.targets[artifact].params
        assert params["size_tasks"] == {"285M": PAPER4, "570M": PAPER4}
        assert {i["size"] for i in params["runs"].values()} == {"285M", "570M"}
        assert params["drop_below_chance"] is True and params["passes"] == {}
    t2 = paper.targets["S4.T2"].params
    assert t2["size_tasks"] == {"2B": HARNESS8} and len(t2["runs"]) == 3
    # every size reads a corpus that holds its budget: 570M and 2B the sample-100BT tokens
    specs = {
        s: PretrainSpec.from_dict(paper.runs[f"s4-{s}-baseline"].spec)
        for s in ("285m", "570m", "2b")
    }
    assert [specs[s].tokens for s in specs] == [
        "s4",
        "s4-fineweb-edu-100bt",
        "s4-fineweb-edu-100bt",
    ]
    assert paper.tokens["s4-fineweb-edu-100bt"]["corpus"] == "fineweb-edu-100bt"
    # one forward pass of 16 / 16 / 4 sequences (what fits an 80 GB GPU: tuneatlas estimate);
    # the step's batch stays the token budget's
    assert [(specs[s].micro_batch_size, specs[s].batch_size) for s in specs] == [
        (16, 278), (16, 557), (4, 1953)
    ]  # fmt: skip


def _s4_paper_like(repo, **size_2b):
    raw = yaml.safe_load((repo / "paper.yaml").read_text())
    raw["studies"]["s4"]["sizes"]["2B"].update(corpus="fineweb-edu", **size_2b)
    return raw


def test_s4_refuses_a_budget_larger_than_its_corpus_unless_repeat_ok(repo):
    raw = _s4_paper_like(repo)
    with pytest.raises(ConfigError) as err:
        make_plan(validate_config(raw))
    msg = str(err.value)
    assert "'studies.s4.sizes.2B.tokens'" in msg and "4e+10" in msg and "5.87e+09" in msg
    assert "datasets.fineweb-edu.train_tokens" in msg and "repeat_ok: true" in msg
    plan = make_plan(validate_config(_s4_paper_like(repo, repeat_ok=True)))
    assert plan.targets["S4.T2"].params["passes"] == {"2B": pytest.approx(40.0e9 / 5.87e9)}


def test_s4_an_artifact_task_no_size_was_evaluated_on_is_refused(repo):
    raw = yaml.safe_load((repo / "paper.yaml").read_text())
    raw["studies"]["s4"]["artifacts"]["S4.T1"]["tasks"] = ["piqa"]
    with pytest.raises(ConfigError, match=r"studies.s4.artifacts.S4.T1.tasks': sizes \['285M'"):
        make_plan(validate_config(raw))


def test_s5_grid(paper):
    runs = runs_of(paper, "s5")
    assert sorted(runs) == ["s5-ab", "s5-all-s0", "s5-all-s1", "s5-all-s2", "s5-bc", "s5-ca"]
    specs = {r: TrainSpec.from_dict(run.spec) for r, run in runs.items()}
    assert {s.model for s in specs.values()} == {"roberta-base"}
    assert [specs[f"s5-all-s{i}"].seed for i in range(3)] == [0, 1, 2]
    # each member trains on its own derived dataset: three different specs, not three copies
    assert {specs[m].dataset for m in ("s5-ab", "s5-bc", "s5-ca")} == {
        "sst2-glue-ab",
        "sst2-glue-bc",
        "sst2-glue-ca",
    }
    assert paper.datasets["sst2-glue-ab"]["clusters"] == ["A", "B"]
    assert paper.clusterings["s5"]["k"] == 3
    # tf-idf, as c-BTM (which the poster follows) clusters: no embedder model
    assert paper.clusterings["s5"]["embedder"] is None
    assert (paper.clusterings["s5"]["kind"], paper.clusterings["s5"]["svd_dims"]) == ("tfidf", 128)
    target = paper.targets["S5.T1"]
    assert set(target.predictions) == set(runs) and target.clusterings == ("s5",)


def test_every_artifact_is_planned_with_its_fixed_path(paper):
    assert set(paper.targets) == set(ARTIFACTS)
    assert len(ARTIFACTS) == 27
    assert ARTIFACTS["S1.T2"].table == "results/tables/s1_t2.parquet"
    assert ARTIFACTS["S3.F4"].figures == ("results/figures/s3_f4.png", "results/figures/s3_f4.gif")


def test_run_ids_are_unique_and_readable(paper):
    for run_id in paper.runs:
        assert run_id == run_id.lower() and " " not in run_id and len(run_id) < 40


def test_plan_is_pure(repo):
    config = load_config(repo / "config.yaml")
    a, b = make_plan(config), make_plan(config)
    assert a.runs == b.runs and a.final_outputs() == b.final_outputs()


def test_train_section_reaches_every_run_spec(repo):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["train"]["precision"] = "bf16"
    from tuneatlas.engine.recipes.simcse import SimCSESpec

    # S4 pre-trains from scratch with its own studies.s4.precision
    runs = [r for r in make_plan(validate_config(config)).runs.values() if r.kind != "pretrain"]
    kinds = {"simcse": SimCSESpec, "pretrain": PretrainSpec}
    specs = [kinds.get(r.kind, TrainSpec).from_dict(r.spec) for r in runs]
    assert specs and {s.precision for s in specs} == {"bf16"}


def test_a_run_without_saved_weights_cannot_feed_embeddings(repo):
    from tuneatlas.errors import ConfigError

    raw = yaml.safe_load((repo / "config.yaml").read_text())
    raw["studies"]["s1"]["train"]["save_model"] = False
    with pytest.raises(ConfigError, match=r"reads the model of run s1-\S+, which has save_model"):
        make_plan(validate_config(raw))
    raw["studies"]["s1"]["train"]["save_model"] = True
    assert make_plan(validate_config(raw)).runs["s1-sst2-s42"].spec["save_model"] is True


@pytest.mark.parametrize("config_file", ["config.yaml", "paper.yaml"])
def test_every_planned_run_is_consumed_and_specs_are_distinct(repo, config_file):
    plan = make_plan(load_config(repo / config_file))
    consumed = {
        r for t in plan.targets.values() for r in (*t.runs, *t.embeddings, *t.subsets, *t.lm_evals)
    }
    # a consumed run consumes its init_from run and the run producing its base model
    # (S2's SimCSE models); follow those edges to a fixed point
    frontier = set(consumed)
    while frontier:
        run = plan.runs[frontier.pop()]
        for dep in (run.spec.get("init_from"), run.spec.get("model")):
            if dep in plan.runs and dep not in consumed:
                consumed.add(dep)
                frontier.add(dep)
    assert consumed <= set(plan.runs)
    assert set(plan.runs) - consumed == set(), "planned runs that no target reads"
    # the run id is the only field two runs may share: anything else trains the same thing twice
    by_spec: dict[str, list[str]] = {}
    for run_id, run in plan.runs.items():
        spec = {k: v for k, v in run.spec.items() if k != "run"}
        key = json.dumps([run.kind, spec], sort_keys=True, default=str)
        by_spec.setdefault(key, []).append(run_id)
    assert [ids for ids in by_spec.values() if len(ids) > 1] == []


def test_s3_tables_read_the_runs_the_paper_uses(repo, paper):
    t = paper.targets
    prelim, main = "s3-prelim-s42", "s3-main-s42"
    assert t["S3.F4"].runs == t["S3.F5"].runs == (prelim,)
    assert t["S3.F4"].params["runs"] == {"prelim": prelim}
    assert t["S3.F7"].runs == (prelim, main)
    assert t["S3.F7"].params["runs"] == {"prelim": prelim, "main": main}
    for aid in ("S3.F8", "S3.F9", "S3.T1", "S3.T2", "S3.F12"):
        assert t[aid].runs == (main,) and t[aid].params["runs"] == {"main": main}, aid
    assert set(t["S3.T1"].params) == {"study", "runs", "stay_T", "stay_D", "space"}
    assert t["S3.F9"].params["space"] == "hidden" and t["S3.F9"].params["speed_points"] == "probe"
    assert "stay_D" not in t["S3.F4"].params  # a table's params are what it reads
    # without a preliminary run every S3 table reads the main run
    raw = yaml.safe_load((repo / "paper.yaml").read_text())
    raw["studies"]["s3"]["preliminary_dataset"] = None
    alone = make_plan(validate_config(raw))
    assert "s3-prelim-s42" not in alone.runs
    assert {alone.targets[a].runs for a in ARTIFACTS if a.startswith("S3.")} == {(main,)}


@pytest.mark.parametrize("name", ["paper.yaml", "config.yaml"])
def test_the_plan_reads_no_file(repo, monkeypatch, name):
    """The plan is a pure function of the config: built with every file-system entry point
    failing, it equals the plan built normally (what needs files is tuneatlas.preflight's)."""
    import builtins
    import io
    import os
    from pathlib import Path

    config = load_config(repo / name)
    expected = make_plan(config)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the plan touched the file system: {args!r}")

    for owner, attr in [
        (builtins, "open"),
        (io, "open"),
        (os, "open"),
        (os, "stat"),
        (os, "lstat"),
        (os, "listdir"),
        (os, "scandir"),
        (os.path, "exists"),
        (os.path, "isfile"),
        (os.path, "isdir"),
        *((Path, m) for m in ("stat", "exists", "is_file", "is_dir", "iterdir", "glob")),
        *((Path, m) for m in ("open", "read_text", "read_bytes", "resolve")),
    ]:
        monkeypatch.setattr(owner, attr, refuse)
    try:
        plan = make_plan(config)
    finally:
        monkeypatch.undo()  # before pytest reports a failure: it reads files to do so
    assert plan == expected


def test_s2_paper_in_loop_steps_polar_seeds_and_sweep_predictions(paper):
    run = paper.runs["s2-simcse-p0.1-lr2e-5-s0"]
    assert run.spec["fisher"]["extra_steps"] == [1, 2, 3, 4]  # the paper's Fig. 4 ticks
    assert len(paper.targets["S2.F2"].runs) == 2 * 3 * 5  # 2 models x 3 lrs x seeds 0-4
    sweep = paper.targets["S2.T1"].runs
    assert paper.targets["S2.T1"].predictions == sweep and len(sweep) == 6 * 6 * 30


def test_s2_without_simcse_is_one_switch_and_polar_is_off_unless_asked(repo):
    raw = yaml.safe_load((repo / "paper.yaml").read_text())
    s2 = raw["studies"]["s2"]
    s2["simcse"]["enabled"] = False
    del s2["corpus"], s2["polar"]
    plan = make_plan(validate_config(raw))
    assert not runs_of(plan, "s2", "simcse")
    labels = {r.extra["model_label"] for r in runs_of(plan, "s2").values()}
    assert labels == {"vanilla"}
    assert "S2.F2" not in plan.targets  # no polar seeds named: no weight snapshots
    assert {r.split("-lr")[0] for r in plan.targets["S2.F4"].runs} == {"s2-vanilla"}
    assert {f["label"] for f in plan.fishers.values()} == {"vanilla"}
