"""Reruns follow lineage (DESIGN principle 8) and requests fail at DAG time (issue 8, items 4-5):
real `snakemake -n` plans after edits of a config or of a local data file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from tests.support import snakemake
from tuneatlas.io import read_parquet_meta

from .conftest import TINY
from .test_workflow import job_counts

pytestmark = pytest.mark.workflow

NOTHING = "Nothing to be done"


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _plan(workdir: Path, config: Path, *targets: str) -> tuple[str, dict[str, int]]:
    out = snakemake(workdir, "--configfile", str(config), "-n", *targets).stdout
    return out, (job_counts(out) if "Job stats:" in out else {})


def test_threads_and_one_s3_param_replan_only_that_table(tiny_run, tmp_path):
    out, counts = _plan(tiny_run, TINY)
    assert NOTHING in out, counts  # the baseline is up to date
    config = yaml.safe_load(TINY.read_text())
    config["threads"] = 2
    config["studies"]["s3"]["stay_D"] = [0.05, 0.2, 0.5]
    out, counts = _plan(tiny_run, _write(config, tmp_path / "edited.yaml"))
    # that table, its figure and report page, and the reproduction summary that reads every table
    downstream = {"repro_tables": 1, "repro_figures": 1, "summary_views": 1}
    assert counts == {"table": 1, "figure": 1, "table_view": 1, **downstream, "all": 1}, out[-3000:]
    assert "output: results/tables/s3_t1.parquet" in out
    assert "output: results/figures/s3_t1.png" in out


def test_device_is_no_param(tiny_run, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    assert config["device"] == "cpu"
    config["device"] = "auto"
    out, counts = _plan(tiny_run, _write(config, tmp_path / "auto.yaml"))
    assert NOTHING in out, counts


def test_tables_record_the_config_hash_and_the_spec_hashes_they_were_built_from(tiny_run):
    meta = read_parquet_meta(tiny_run / "results/tables/s3_t1.parquet")
    assert len(meta["config_hash"]) == 12  # information, from $TUNEATLAS_CONFIG_HASH
    assert len(meta["spec_hash"]) == 12  # the table's own target spec
    inputs = json.loads(meta["input_spec_hashes"])
    run_meta = read_parquet_meta(tiny_run / "results/runs/s3-main-s42/eval.parquet")
    assert inputs == {"s3-main-s42": run_meta["spec_hash"]}
    t1 = json.loads(
        read_parquet_meta(tiny_run / "results/tables/s1_t1.parquet")["input_spec_hashes"]
    )
    assert set(t1) == {"s1-sst2-s42", "s1-stsb-s42", "s1-sst2-maxnorm-s42", "s1-stsb-maxnorm-s42"}


# --- a local `source: file` dataset ------------------------------------------------------------
RUN = "results/runs/s1-mysst-s42/eval.parquet"


def _tsv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    pos, neg = "good great fine lovely superb".split(), "bad awful poor dull terrible".split()
    lines = ["sentence\tlabel"]
    for i in range(n):
        words = [rng.choice(pos if i % 2 else neg) for _ in range(4)] + [rng.choice(pos + neg)]
        lines.append(f"{' '.join(words)}\t{i % 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _file_config(tmp_path: Path, source: dict) -> Path:
    config = {
        "seed": 0,
        "device": "cpu",
        "offline": True,
        "threads": 1,
        "datasets": {"mysst": {"source": "file", "task": "sst2", **source, "resplit": [8, 1, 1]}},
        "models": {
            "bert-tiny": {
                "source": "build",
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 32,
                "vocab_size": 200,
                "max_position_embeddings": 16,
                "mlm_steps": 2,
                "corpus": ["mysst"],
            }
        },
        "train": {"batch_size": 32, "eval_batch_size": 64, "max_length": 16, "epochs": 1},
        "studies": {"s1": {"model": "bert-tiny", "datasets": ["mysst"], "seeds": [42]}},
    }
    return _write(config, tmp_path / "file.yaml")


def test_an_edited_data_file_is_prepared_again_with_what_depends_on_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    train, dev = _tsv(src / "train.tsv", 160, 0), _tsv(src / "dev.tsv", 40, 1)
    config = _file_config(tmp_path, {"files": {"train": str(train), "validation": str(dev)}})
    work = tmp_path / "work"
    snakemake(work, "--configfile", str(config), "--cores", "1", RUN)
    out, _ = _plan(work, config, RUN)
    assert NOTHING in out
    with train.open("a") as f:
        f.write("good great fine lovely superb\t1\n")
    out, counts = _plan(work, config, RUN)
    assert counts == {"prepare_data": 1, "build_model": 1, "train": 1}, out[-3000:]
    assert f"Updated input files: {train}" in out


def test_a_dir_source_declares_its_split_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _tsv(src / "train.tsv", 20, 0)
    _tsv(src / "dev.tsv", 10, 1)
    (src / "README").write_text("not a split\n")
    config = _file_config(tmp_path, {"dir": str(src)})
    out, counts = _plan(tmp_path / "work", config, "results/data/mysst")
    assert counts == {"prepare_data": 1}
    assert f"input: {src / 'dev.tsv'}, {src / 'train.tsv'}" in out


def test_a_missing_data_file_fails_at_dag_time_naming_the_key(tmp_path):
    train = _tsv(tmp_path / "train.tsv", 20, 0)
    missing = tmp_path / "nope.tsv"
    config = _file_config(tmp_path, {"files": {"train": str(train), "validation": str(missing)}})
    # a real run refuses before any job; a dry-run (CI without the data) plans and warns once
    proc = snakemake(
        tmp_path / "work", "--configfile", str(config), "--cores", "1", RUN, check=False
    )
    assert proc.returncode != 0
    assert f"datasets.mysst.files.validation: {missing} does not exist" in proc.stdout
    assert "MissingInputException" not in proc.stdout and "Job stats:" not in proc.stdout
    proc = snakemake(tmp_path / "work", "--configfile", str(config), "-n", RUN)
    warning = f"{missing} does not exist yet (datasets.mysst.files.validation)"
    assert proc.stdout.count(warning) == 1 and "Job stats:" in proc.stdout


# --- guards ----------------------------------------------------------------------------------
def test_an_artifact_of_a_study_the_config_lacks_fails_before_any_job(tmp_path):
    no_s4 = tmp_path / "no_s4.yaml"
    config = yaml.safe_load(TINY.read_text())
    del config["studies"]["s4"]
    no_s4.write_text(yaml.safe_dump(config))
    proc = snakemake(
        tmp_path, "--configfile", str(no_s4), "-n", "results/tables/s4_t1.parquet", check=False
    )
    assert proc.returncode != 0
    assert "S4.T1 is not planned: this config has no section studies.s4" in proc.stdout
    assert "Job stats:" not in proc.stdout


def test_an_unknown_artifact_fails_with_the_known_ids(tmp_path):
    for target in ("results/tables/s9_zz.parquet", "results/figures/s1_zz.png"):
        proc = snakemake(tmp_path, "--configfile", str(TINY), "-n", target, check=False)
        assert proc.returncode != 0
        slug = Path(target).stem
        assert f"no artifact has the file name {slug!r}; known ids" in proc.stdout, proc.stdout
        assert "S1.T1, S1.T2" in proc.stdout and "Job stats:" not in proc.stdout
