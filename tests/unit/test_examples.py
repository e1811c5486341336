"""examples/*.yaml: every config a researcher copies validates and plans as documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneatlas.config import load_config
from tuneatlas.data.prepare import local_source_files
from tuneatlas.plan import make_plan
from tuneatlas.spec import TrainSpec


@pytest.fixture
def example(repo):
    return repo / "examples" / "sst2-minilm.yaml"


def test_every_example_validates_and_plans(repo):
    examples = sorted((repo / "examples").glob("*.yaml"))
    assert examples, "examples/ holds no config"
    for path in examples:
        make_plan(load_config(path))  # schema + references + plan: raises on any problem


def test_sst2_minilm_example_is_s1_with_the_papers_recipe_on_local_files(example):
    config = load_config(example)
    plan = make_plan(config)
    assert {r.study for r in plan.runs.values()} == {"s1"}
    spec = TrainSpec.from_dict(plan.runs["s1-sst2-s42"].spec)
    assert (spec.optim.lr, spec.batch_size, spec.epochs, spec.dropout) == (5e-5, 32, 5, 0.1)
    assert spec.head_init == "encoder" and spec.keep_best and spec.max_length == 64
    dataset = config["datasets"]["sst2"]
    assert dataset["source"] == "file" and dataset["resplit"] == [8, 1, 1]
    # relative paths are read from the working directory snakemake runs in (the repo root)
    files = local_source_files("sst2", dataset)
    assert [str(p) for p in files.values()] == ["../shared/data/sst2/dev.tsv"]
    model = config["models"]["minilm"]
    assert model["source"] == "local" and model["name"] == "./models/all-MiniLM-L6-v2"


def test_sst2_minilm_example_passes_tuneatlas_validate(repo, example, tmp_path):
    # `tuneatlas validate` checks the paths too: run it in a directory laid out as the example's
    # comment says (the data file beside the checkout, the model link under models/)
    work = tmp_path / "checkout"
    data = tmp_path / "shared" / "data" / "sst2"
    data.mkdir(parents=True)
    (data / "dev.tsv").write_text("text\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(20)))

    def validate() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tuneatlas", "validate", str(example)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )

    work.mkdir()
    proc = validate()  # before the model link: refused, naming the key and the fix
    assert proc.returncode == 1 and "models.minilm.name" in proc.stderr
    assert "model directory not found" in proc.stderr
    model = work / "models" / "all-MiniLM-L6-v2"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 512}')
    proc = validate()
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "s1/finetune: 4" in proc.stdout
