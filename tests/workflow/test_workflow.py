"""Real snakemake runs: the tiny DAG end to end, one table alone, lint, the paper dry-run,
reproducibility, resume after `kill -9` of a fine-tune job, and preemption (SIGTERM -> checkpoint,
exit 75, snakemake's retry resumes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.support import REPO, snakemake, snakemake_env, start_snakemake
from tuneatlas.catalogue import ARTIFACTS, REPRO_TABLES
from tuneatlas.engine.checkpoint import CKPT_DIR, CKPT_FILE
from tuneatlas.io import read_parquet_meta

from .conftest import TINY
from .rows import check_s1_rows, check_s4_t2_rows

pytestmark = pytest.mark.workflow


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a snakemake dry-run."""
    block = dry_run_stdout.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def built_tables(workdir: Path) -> dict[str, pd.DataFrame]:
    return {
        p.stem: pd.read_parquet(p) for p in sorted((workdir / "results/tables").glob("*.parquet"))
    }


def test_tiny_run_writes_catalogued_tables_with_provenance(tiny_run):
    tables = built_tables(tiny_run)
    expected = {a.slug for a in ARTIFACTS.values()}
    repro = {Path(t).stem for t in REPRO_TABLES}  # the papers' values and claims beside ours
    assert expected | repro == set(tables)
    for slug in repro:
        assert read_parquet_meta(tiny_run / f"results/tables/{slug}.parquet")["git_commit"]
    for slug, df in tables.items():
        if slug in repro:
            continue
        artifact = next(a for a in ARTIFACTS.values() if a.slug == slug)
        assert set(artifact.columns) <= set(df.columns), slug
        assert len(df) > 0
        meta = read_parquet_meta(tiny_run / f"results/tables/{slug}.parquet")
        assert meta["artifact"] == artifact.id
        assert re.fullmatch(r"[0-9a-f]{12}", meta["config_hash"])
        assert meta["version"] and meta["git_commit"]
        for figure in artifact.figures:
            assert (tiny_run / figure).stat().st_size > 5000, figure


def test_tiny_run_s1_t1_and_ta2_values(tiny_run):
    t1 = pd.read_parquet(tiny_run / "results/tables/s1_t1.parquet")
    assert set(t1["task"]) == {"sst2", "stsb"}
    assert set(t1["pooling"]) == {"cls", "maxnorm"}
    assert set(t1["split"]) == {"valid", "test"}
    assert set(zip(t1["task"], t1["metric"], strict=True)) == {
        ("sst2", "accuracy"),
        ("stsb", "pearson"),
    }
    assert t1["value"].between(-1, 1).all()
    ta2 = pd.read_parquet(tiny_run / "results/tables/s1_ta2.parquet")
    assert sorted(ta2["seed"].unique()) == [0, 42]
    assert len(ta2) == 2 * 2 * 2  # tasks x seeds x splits
    # the table holds exactly the runs' own final scores
    ev = pd.read_parquet(tiny_run / "results/runs/s1-sst2-s0/eval.parquet")
    own = ev[(ev.metric == "accuracy") & (ev.split == "test")]["value"].item()
    row = ta2[(ta2.task == "sst2") & (ta2.seed == 0) & (ta2.split == "test")]["value"].item()
    assert row == own


def test_tiny_run_s1_and_s4_t2_rows_are_their_run_files(tiny_run):
    """Every S1.T1/T4/T5/TA2 row is its run's eval.parquet value; every S4.T2 score its run's
    lm-eval value and its RI recomputed against the size's baseline (tests/workflow/rows.py)."""
    results = tiny_run / "results"
    # tiny.yaml: 2 datasets x 2 poolings / settings / cross targets x 2 splits, TA2 x 2 seeds
    assert check_s1_rows(results) == 4 * 2 * 2 * 2
    assert check_s4_t2_rows(results) >= 3 * 3  # baseline, first_50, final_50 x 3 tasks


def test_tiny_run_s1_tables_carry_real_signal(tiny_run):
    tables = built_tables(tiny_run)
    t2 = tables["s1_t2"]
    sst2 = t2[(t2.task == "sst2") & (t2.split == "test")]
    all_dims = sst2[sst2["mode"] == "all"]["value"].item()
    best_pair = sst2[(sst2["mode"] == "exhaustive") & (sst2["rank"] == 1)]["value"].item()
    assert all_dims > 0.7  # the synthetic binary task is learnt (majority share ~0.5)
    assert best_pair > all_dims - 0.15  # two CLS dimensions carry most of it, as in the paper
    t4 = tables["s1_t4"].query("task == 'sst2' and split == 'test'").set_index("setting")
    assert t4.loc["frozen_2fc", "value"] < t4.loc["unfrozen_1fc", "value"]
    t5 = tables["s1_t5"].query("split == 'test'")
    assert len(t5) == 4  # 2 x 2 cross matrix
    diagonal = t5[t5.task_a == t5.task_b].set_index("task_b")["value"]
    ta2 = tables["s1_ta2"].query("split == 'test' and seed == 42").set_index("task")["value"]
    pd.testing.assert_series_equal(diagonal.sort_index(), ta2.sort_index(), check_names=False)
    t3 = tables["s1_t3"]
    best = t3[(t3.kind == "best_effective_pair") & (t3.task == "sst2")]
    assert len(best["dims"].iloc[0].split(",")) == 2
    fl = tables["s1_fl"]
    assert sorted(fl["layer"].unique()) == [0, 1, 2]  # embeddings + 2 layers of the tiny BERT


REBUILT_SLUGS = [a.slug for a in ARTIFACTS.values() if a.study != "S1"]


@pytest.mark.parametrize("slug", REBUILT_SLUGS)
def test_each_s2_to_s5_artifact_rebuilds_alone(tiny_run, slug):
    artifact = next(a for a in ARTIFACTS.values() if a.slug == slug)
    table = tiny_run / artifact.table
    before = pd.read_parquet(table)
    for path in (artifact.table, *artifact.figures):
        (tiny_run / path).unlink()
    out = snakemake(tiny_run, "--configfile", str(TINY), "--cores", "1", *artifact.figures).stdout
    counts = job_counts(out) if "Job stats:" in out else {}
    assert set(counts) - {"table", "figure", "animation"} == set(), counts
    pd.testing.assert_frame_equal(pd.read_parquet(table), before, check_exact=True)
    for path in artifact.figures:
        assert (tiny_run / path).stat().st_size > 5000


def test_tiny_run_s5_members_and_ensembles(tiny_run):
    t1 = pd.read_parquet(tiny_run / "results/tables/s5_t1.parquet").set_index("model")
    members = ["s5-all-s0", "s5-all-s1", "s5-ab", "s5-bc", "s5-ca"]
    assert set(members) < set(t1.index)
    assert {"ensemble-seeds", "ensemble-monju", "ensemble-cbtm-style", "oracle-clusters"} < set(
        t1.index
    )
    for run in members:  # predictions.parquet gives back each run's own test accuracy
        ev = pd.read_parquet(tiny_run / f"results/runs/{run}/eval.parquet")
        own = ev[(ev.metric == "accuracy") & (ev.split == "test")]["value"].item()
        assert t1.loc[run, "value"] == pytest.approx(own)
    # the three cluster members saw the training set twice over between them (k = 3)
    seen = t1.loc[["s5-ab", "s5-bc", "s5-ca"], "train_examples"].sum()
    assert seen == 2 * t1.loc["s5-all-s0", "train_examples"]
    test_rows = len(pd.read_parquet(tiny_run / "results/data/sst2/test.parquet"))
    assert (t1["n"] == test_rows).all()
    assert (t1["ci_low"] <= t1["value"]).all() and (t1["value"] <= t1["ci_high"]).all()


def test_simcse_model_builds_alone_and_loads_as_a_base_model(tiny_run):
    from tuneatlas.models.hub import BUILD_INFO, load_encoder

    model_dir = tiny_run / "results/models/s2-simcse-p0.1"
    before = {k: v.clone() for k, v in load_encoder(model_dir).state_dict().items()}
    shutil.rmtree(model_dir)
    shutil.rmtree(tiny_run / "results/runs/s2-simcse-p0.1")
    out = snakemake(
        tiny_run, "--configfile", str(TINY), "--cores", "2", "results/models/s2-simcse-p0.1"
    ).stdout
    assert job_counts(out) == {"simcse": 1}  # the corpus and the base model are there
    encoder = load_encoder(model_dir)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    base = load_encoder(tiny_run / "results/models/bert-tiny")
    assert encoder.state_dict().keys() == base.state_dict().keys()
    info = json.loads((model_dir / BUILD_INFO).read_text())
    assert info["source"] == "simcse" and info["spec"]["temperature"] == 0.05
    ev = pd.read_parquet(tiny_run / "results/runs/s2-simcse-p0.1/eval.parquet")
    assert set(ev["split"]) == {"heldout"}


def test_report_builds(tiny_run):
    snakemake(tiny_run, "--configfile", str(TINY), "--report", "results/report.html")
    html = (tiny_run / "results/report.html").read_text(errors="replace")
    assert "s1_t1" in html


def test_a_rerun_with_every_job_bundled_gives_identical_tables(tiny_run, tmp_path):
    """Fixed seeds give identical tables, and running every bundleable job in bundles (S1's
    two waves, S2's sweep and Fisher trials, S4's pre-training and its evaluations, S5's
    members) changes none of them: tiny_run runs one job per run."""
    bundles = {
        "s1": {"train": 6},
        "s2": {"train": 4, "fisher": 2},
        "s4": {"pretrain": 3, "lm_eval": 3},
        "s5": {"train": 5},
    }
    config = tmp_path / "bundled.yaml"
    config.write_text(yaml.safe_dump(yaml.safe_load(TINY.read_text()) | {"bundles": bundles}))
    work = tmp_path / "work"
    # the tables alone: the figures and report views drawn from them are not compared here
    tables = [f"results/tables/{slug}.parquet" for slug in built_tables(tiny_run)]
    out = snakemake(work, "--configfile", str(config), "--cores", "2", *tables).stdout
    # S1: 9 first-wave runs in 2 bundles, the 2 sequential ones in a third; S2: 2 + 2; S4: 1
    # of pre-training, 1 of evaluations; S5: 1
    counts = job_counts(out)
    assert counts["bundle"] == 10 and not {"pretrain", "fisher", "lm_eval"} & set(counts), counts
    assert counts["train"] == 2, counts  # S3's two runs only
    assert {p.name for p in (work / "results/bundles").iterdir()} >= {"s1-train-w1-00"}
    # training jobs and bundles go before what reads them, and first of all the first-wave
    # bundle that holds the runs the second wave starts from (tables, figures: no priority, none
    # printed); S5's clustering, which its members' training waits for, goes with training
    served = dict(re.findall(r"wildcards: \w+=(\S+)\n\s+priority: (\d)\n", out))
    assert {job for job, p in served.items() if p == "2"} == {"s1-train-01"}, served
    # every bundle, S3's two train jobs, S2's SimCSE, S5's clustering and its 3 member datasets
    assert len(served) == 10 + 2 + 1 + 1 + 3, served
    table_job = re.search(r"rule table:\n(?: {4}.*\n)+", out)
    assert table_job and "priority" not in table_job[0], out
    first, second = built_tables(tiny_run), built_tables(work)
    assert first.keys() == second.keys()
    for slug in first:
        pd.testing.assert_frame_equal(first[slug], second[slug], check_exact=True, obj=slug)


def test_one_table_runs_only_what_it_needs(tmp_path):
    out = snakemake(
        tmp_path, "--configfile", str(TINY), "-n", "results/tables/s1_t1.parquet"
    ).stdout
    counts = job_counts(out)
    # sst2 + stsb + the topics corpus of the tokenizer; CLS and max-norm run per task; no embeddings
    assert counts == {"prepare_data": 3, "build_model": 1, "train": 4, "table": 1}


def stub_local_sources(workdir: Path, config_file: Path) -> None:
    """Stand-ins for a config's local data files (paper.yaml: the livedoor TSVs that
    `tuneatlas livedoor-convert` writes), which the DAG needs to exist even in a dry-run. They
    pass what validation checks of the real files: known categories, and enough rows per class
    for the imbalanced set-up (the paper's largest group, 400, plus its 45 test rows)."""
    from tuneatlas.data.livedoor import CATEGORIES, Article, write_tsv

    rows = [
        Article(f"text/{c}/{c}-{i}.txt", "http://x", "2012-01-01", "title", f"body {i}", c)
        for c in CATEGORIES
        for i in range(450)
    ]

    for cfg in yaml.safe_load(config_file.read_text())["datasets"].values():
        for path in (cfg.get("files") or {}).values() if cfg["source"] == "file" else ():
            if not Path(path).is_absolute() and not (workdir / path).exists():
                write_tsv(rows, workdir / path)
        facts = cfg.get("facts")  # S4's zsRE facts (paper.yaml: `tuneatlas zsre-convert` writes)
        if facts and not Path(facts).is_absolute() and not (workdir / facts).exists():
            (workdir / facts).parent.mkdir(parents=True, exist_ok=True)
            (workdir / facts).write_text("subject\trelation\tquestion\tanswer\nx\tP1\tq?\ta\n")


def test_paper_dry_run_builds_every_studys_full_grid(tmp_path):
    """CI's dry-run: a work directory without any data file plans the whole DAG and warns once
    per missing local file, naming the command that makes it."""
    out = snakemake(tmp_path, "--configfile", str(REPO / "paper.yaml"), "-n", "-p").stdout
    warnings = sorted(line for line in out.splitlines() if line.startswith("WARNING tuneatlas"))
    assert len(warnings) == 3, warnings  # livedoor's train and test TSVs, the zsRE facts
    livedoor = "make it with `tuneatlas livedoor-convert ldcc-20140209.tar.gz data/livedoor`"
    assert warnings[0].startswith("WARNING tuneatlas: data/livedoor/test.tsv does not exist")
    assert "datasets.livedoor-imb.files.test" in warnings[0] and livedoor in warnings[0]
    assert "data/livedoor/train.tsv" in warnings[1] and livedoor in warnings[1]
    assert "`tuneatlas zsre-convert zsre_mend_eval.json data/zsre/facts.tsv`" in warnings[2]
    assert "Exception" not in out  # no rule's input function failed on the way
    assert not (tmp_path / "data").exists()
    counts = job_counts(out)
    # a bundled fine-tune or Fisher trial is one adopt job (its bundle ran it)
    bundled_train = counts.get("adopt_train", 0) + counts.get("adopt_train_with_predictions", 0)
    counts["train"] += counts.get("train_with_predictions", 0) + bundled_train
    counts["fisher"] = counts.get("fisher", 0) + counts.get("adopt_fisher", 0)
    # S3: the main run, and the preliminary run when paper.yaml's S3 section names its dataset
    paper = yaml.safe_load((REPO / "paper.yaml").read_text())
    s3 = paper["studies"]["s3"]
    s3_datasets = {s3["dataset"], s3.get("preliminary_dataset")} - {None}
    s2, s4, s5 = (paper["studies"][s] for s in ("s2", "s4", "s5"))
    # S1: 40 (8 tasks x 5 seeds) + 8 max-norm + 8 frozen + 8 no-dropout + 56 cross;
    # S2: (vanilla + 5 SimCSE models) x 6 lrs x 30 seeds; S5: 3 seed + 3 cluster members (k = 3)
    assert counts["train"] == 120 + 1 + bool(s3.get("preliminary_dataset")) + 1080 + 6
    assert counts["simcse"] == 5 and counts["fisher"] == 6 * 30  # 30 trials per model
    assert (s2["model"], len(s2["lrs"]), s2["n_seeds"]) == ("bert-large", 6, 30)
    # paper.yaml bundles S2's sweep: 36 fine-tunes or 12 Fisher trials per sbatch
    assert paper["bundles"] == {"s2": {"train": 36, "fisher": 12}}
    assert counts["adopt_train_with_predictions"] == 1080 and counts["adopt_fisher"] == 180
    assert counts["bundle"] == 1080 // 36 + 180 // 12
    # GLUE + livedoor (+ imbalanced) + S2's RTE (public validation), wiki1m and STS-B dev
    # (SimCSE's checkpoint selection) + S4's FineWeb-Edu (sample-10BT for 285M, sample-100BT for
    # 570M/2B: fresh tokens) + S5's SST-2
    assert s2["simcse"]["stsb"] == "stsb-glue"
    s4_corpora = {s4["corpus"]} | {a["corpus"] for a in s4["sizes"].values() if a.get("corpus")}
    assert counts["prepare_data"] == 8 + len(s3_datasets) + 3 + len(s4_corpora) + 1
    # S4: 285M and 570M (15 variants + baseline each), the 2B check (2 variants + baseline)
    assert (
        counts["pretrain"] == counts["lm_eval"] == 16 + 16 + 3
        and counts["tokenize"] == len(s4_corpora) == 2
    )
    assert counts["embed"] == 16  # main + no-dropout run per task
    assert counts["subsets"] == 16  # one subset scan per embedded run
    # S1 9 + S2 6 + S3 8 + S4 3 + S5 1; S3.F4's figure is the animation rule
    assert counts["table"] == counts["figure"] + 1 == 27
    assert (s5["model"], s5["k"], s5["seeds"]) == ("roberta-base", 3, [0, 1, 2])
    assert counts["cluster"] == 1 and counts["cluster_data"] == 3
    # the S5 members and S2's sweep (per-example validation predictions), in the train count
    assert counts["train_with_predictions"] + counts["adopt_train_with_predictions"] == 6 + 1080
    # every hub dataset and model is fetched by a rule of its own, run on the submit host
    s1_datasets = paper["studies"]["s1"]["datasets"]
    used = [*s1_datasets, *s3_datasets, s2["dataset"], s2["corpus"], s2["simcse"]["stsb"]]
    used += [*s4_corpora, s5["dataset"]]
    hub = [d for d in used if paper["datasets"][d]["source"] == "hub"]
    assert counts["fetch_hub_data"] == len(hub)  # livedoor: a local file (livedoor-convert)
    # bert-base, bert-large, bert-ja, roberta-base, gpt2 (S4's tokenizer)
    assert counts["fetch_model"] == 5 and "build_model" not in counts
    # the harness tasks' datasets: one local fetch for the 35 lm_eval jobs, which read it offline
    assert counts["fetch_harness_data"] == 1
    harness = re.search(r"fetch-harness --tasks ([\w ]+) --out results/hub/harness", out)
    assert harness and set(harness[1].split()) == set(s4["sizes"]["2B"]["eval_tasks"])


def test_the_slurm_profile_sizes_each_gpu_job_from_its_estimate(tmp_path):
    """`snakemake -n --profile profiles/slurm --configfile paper.yaml`: per-job runtime and host
    memory of the GPU rules follow `tuneatlas estimate` (larger S4 models ask for more)."""
    out = snakemake(
        tmp_path,
        "--profile",
        str(REPO / "profiles/slurm"),
        "--configfile",
        str(REPO / "paper.yaml"),
        "-n",
        env=snakemake_env(drop=["TUNEATLAS_ESTIMATE_GPU", "TUNEATLAS_GPU_MODEL"]),
    ).stdout
    found = {}
    for block in re.split(r"\n(?=\[)", out):
        rule = re.search(r"^rule (\w+):", block, re.M)
        run = re.search(r"wildcards: \w+=(\S+)", block)
        res = re.search(r"resources: (.*)", block)
        if rule and run and res:
            fields = dict(f.split("=", 1) for f in res[1].split(", "))
            found[rule[1], run[1]] = (int(fields["runtime"]), int(fields["mem_mb"]))
    small, mid, big = (found["pretrain", f"s4-{s}-baseline"] for s in ("285m", "570m", "2b"))
    assert small[0] < mid[0] and small[1] < mid[1] < big[1]
    assert big[0] == 48 * 60  # the 2B run needs ~430 h: the site limit, resumed on retries
    assert found["train", "s1-qqp-s42"][0] > found["train", "s1-rte-s42"][0]
    assert found["subsets", "s1-rte-s42"] == (240, 32000)  # not estimated: the profile's value


def test_a_real_paper_run_still_refuses_missing_data_up_front(tmp_path):
    proc = snakemake(
        tmp_path, "--configfile", str(REPO / "paper.yaml"), "--cores", "1", check=False
    )
    assert proc.returncode != 0
    assert "file not found (datasets.livedoor.files.train: data/livedoor/train.tsv" in proc.stdout
    assert "tuneatlas zsre-convert" in proc.stdout and "Building DAG" not in proc.stdout


def test_only_the_hub_fetches_the_tracking_store_and_adopts_are_local_rules(tmp_path):
    """On SLURM, localrules run on the submit host (compute nodes often have no network); an
    adopt job moves a bundled run's outputs into place, a second's file moves."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    stub_local_sources(tmp_path, REPO / "paper.yaml")  # the workflow checks they exist
    with SnakemakeApi() as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[REPO / "paper.yaml"]),
            snakefile=REPO / "Snakefile",
            workdir=tmp_path,
        )._workflow
        assert workflow._localrules == {
            "fetch_hub_data",
            "fetch_model",
            "fetch_harness_data",
            "track",
            "adopt_train",
            "adopt_train_with_predictions",
            "adopt_fisher",
            "adopt_pretrain",
            "adopt_lm_eval",
        }


def test_the_harness_job_runs_with_the_network_cut_off(tmp_path):
    """An lm_eval job (a GPU rule) reads nothing from the network: the rule itself sets the hub
    and datasets libraries offline, whatever the config's `offline`, and the job succeeds with
    every proxy pointing at a closed port. Paper-scale hub tasks come from the local rule
    fetch_harness_data's cache (test_paper_dry_run...)."""
    raw = yaml.safe_load(TINY.read_text())
    raw["offline"] = False  # the rule, not the config, keeps the job offline
    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump(raw))
    nowhere = "http://127.0.0.1:9"
    env = snakemake_env(
        drop=["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY"],
        **{k: nowhere for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    )
    target = "results/lm_eval/s4-tiny-baseline.parquet"
    out = snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "-p", target, env=env)
    shell = next(line for line in out.stdout.splitlines() if " lm-eval " in line)
    assert shell.startswith("Shell command: export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1;")
    scores = pd.read_parquet(tmp_path / target)
    assert {"toy_wikitext", "toy_lambada", "toy_hellaswag"} <= set(scores["task"])
    assert "fetch_harness_data" not in out.stdout  # toy tasks: nothing to fetch


def test_a_bundle_of_hub_task_evaluations_reads_the_fetched_cache_offline(tmp_path):
    """paper.yaml with S4's evaluations bundled (`bundles.s4.lm_eval`): a bundle job waits for
    fetch_harness_data's cache and runs with the environment of an lm_eval job of its own."""
    paper = yaml.safe_load((REPO / "paper.yaml").read_text())
    config = tmp_path / "bundled.yaml"
    config.write_text(yaml.safe_dump(paper | {"bundles": {"s4": {"lm_eval": 12}}}))
    target = "results/bundles/s4-lm_eval-00/done.json"
    out = snakemake(tmp_path, "--configfile", str(config), "-n", "-p", target).stdout
    counts = job_counts(out)
    assert counts["bundle"] == counts["fetch_harness_data"] == 1 and "lm_eval" not in counts
    assert counts["pretrain"] == 12, counts  # the bundle's members' models
    cache = tmp_path.resolve() / "results/hub/harness"
    offline = "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
    env = f"{offline} HF_DATASETS_CACHE={cache}/datasets HF_HUB_CACHE={cache}/hub;"
    shell = next(line for line in out.splitlines() if " bundle --name s4-lm_eval-00" in line)
    assert shell.startswith(f"Shell command: {env} python -m tuneatlas"), shell
    assert shell.count('"argv": ["lm-eval", ') == 12


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--configfile", str(TINY), "--lint", check=False)
    assert proc.returncode == 0, proc.stdout
    assert "Lints for" not in proc.stdout


def _train_pid(run: str, workdir: Path) -> int | None:
    """The pid of the train job of `run` that snakemake started in `workdir` (another work
    directory may be training the same run meanwhile)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if Path(os.readlink(proc / "cwd")) != workdir.resolve():
                continue
        except OSError:
            continue
        if b"tuneatlas" in cmd and b"train" in cmd and any(run.encode() in c for c in cmd):
            return int(proc.name)
    return None


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["train"].update(epochs=40, checkpoint_every=10)  # long enough to be killed mid-run
    long_cfg = tmp_path / "long.yaml"
    long_cfg.write_text(yaml.safe_dump(config))
    run = "s1-sst2-s42"
    target = f"results/runs/{run}/eval.parquet"

    clean = tmp_path / "clean"  # the uninterrupted reference, on the other core meanwhile
    reference = start_snakemake(clean, "--configfile", str(long_cfg), "--cores", "1", target)
    killed = tmp_path / "killed"
    proc = start_snakemake(killed, "--configfile", str(long_cfg), "--cores", "1", target)
    ckpt = killed / "results/runs" / run / CKPT_DIR
    # wait for the finished checkpoint itself: the directory also holds the atomic-write temp file
    checkpoint_file = ckpt / CKPT_FILE
    deadline = time.monotonic() + 300
    pid = None
    while time.monotonic() < deadline and proc.poll() is None:
        pid = _train_pid(run, killed)
        if pid and checkpoint_file.exists():
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=120)
    assert pid is not None and proc.returncode != 0, (
        f"the job was not killed mid-run:\n{out[-3000:]}"
    )
    assert not (killed / target).exists()
    assert ckpt.exists(), "the checkpoint must survive the failed job"

    rerun = snakemake(killed, "--configfile", str(long_cfg), "--cores", "1", target)
    reference_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, reference_out[-3000:]
    log = (killed / f"results/logs/train/{run}.log").read_text()
    assert "resum" in log.lower(), log[-2000:]
    for name in ("metrics.parquet", "eval.parquet"):
        a = pd.read_parquet(clean / "results/runs" / run / name)
        b = pd.read_parquet(killed / "results/runs" / run / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    assert rerun.returncode == 0


def test_sigterm_saves_a_checkpoint_and_the_retry_resumes_to_identical_outputs(tmp_path):
    # SLURM's preemption / time-limit signal is a SIGTERM to the job's processes (profiles/slurm
    # sends it --signal seconds early). checkpoint_every: none, so the only checkpoint the retry
    # can resume from is the one the SIGTERM made.
    config = yaml.safe_load(TINY.read_text())
    config["train"].update(epochs=40, checkpoint_every="none")
    long_cfg = tmp_path / "long.yaml"
    long_cfg.write_text(yaml.safe_dump(config))
    run = "s1-sst2-s42"
    target = f"results/runs/{run}/eval.parquet"

    term = tmp_path / "term"
    proc = start_snakemake(
        term, "--configfile", str(long_cfg), "--cores", "1", "--retries", "1", target
    )
    log = term / f"results/logs/train/{run}.log"
    deadline, pid = time.monotonic() + 300, None
    while time.monotonic() < deadline and proc.poll() is None:
        pid = _train_pid(run, term)
        if pid and log.exists() and "recipe finetune" in log.read_text():
            time.sleep(1.5)  # some steps into the training
            os.kill(pid, signal.SIGTERM)
            break
        time.sleep(0.02)
    clean = tmp_path / "clean"  # meanwhile: the uninterrupted reference
    snakemake(clean, "--configfile", str(long_cfg), "--cores", "1", target)
    out, _ = proc.communicate(timeout=600)
    assert pid is not None and proc.returncode == 0, out[-3000:]
    assert "exit status 75" in out, out[-3000:]  # the first attempt stopped as preempted
    resumed = re.search(r"resuming from checkpoint at step (\d+)/(\d+)", log.read_text())
    assert resumed, log.read_text()[-2000:]
    assert 0 < int(resumed[1]) < int(resumed[2])
    assert not (term / "results/runs" / run / CKPT_DIR).exists()
    for name in ("metrics.parquet", "eval.parquet"):
        a = pd.read_parquet(clean / "results/runs" / run / name)
        b = pd.read_parquet(term / "results/runs" / run / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
