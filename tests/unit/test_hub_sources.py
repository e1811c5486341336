"""Hub sources against a fake hub that knows the real split names (tests/unit/hub_fake.py).

Every `source: hub` dataset of paper.yaml goes through the real code path, the workflow's two
steps (fetch_hub_dataset on the submit host, prepare_dataset from the copy) and the direct load,
with tiny made-up rows; the fake fails on any split or config name the hub does not have.
Also: streaming sources need a row budget and never read past it; revisions are pinned in
paper.yaml and reach `load_dataset` and `from_pretrained`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import require_module
from tuneatlas.config import validate_config
from tuneatlas.data.prepare import load_raw_splits, output_files, prepare_dataset, read_prepared
from tuneatlas.data.sources import fetch_hub_dataset
from tuneatlas.data.tasks import get_task
from tuneatlas.data.validate import SPLIT_ALIASES, check_source
from tuneatlas.errors import ConfigError, DataError
from tuneatlas.io import read_parquet_meta
from tuneatlas.plan import make_plan
from tuneatlas.preflight import preflight

from .hub_fake import GLUE_COMMIT, HUB, FakeHub

PAPER = Path(__file__).resolve().parents[2] / "paper.yaml"
# read as written, not through validate_config: one broken entry must not hide the others
PAPER_DATASETS = yaml.safe_load(PAPER.read_text())["datasets"]
HUB_DATASETS = sorted(n for n, c in PAPER_DATASETS.items() if c.get("source") == "hub")
# hub repositories with no commit found to pin to (see the comments in paper.yaml)
UNPINNED = {"princeton-nlp/datasets-for-simcse", "shunk031/livedoor-news-corpus"}
COMMIT = re.compile(r"[0-9a-f]{40}")


@pytest.fixture
def hub(monkeypatch):
    datasets = require_module("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # tuneatlas.io.hub_offline would refuse at once
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


def _hub_path(cfg) -> str:
    return cfg.get("path", get_task(cfg["task"]).hub_path)


def _paper_hub_datasets():
    for name in HUB_DATASETS:
        marks = []
        if HUB[_hub_path(PAPER_DATASETS[name])].script:
            marks.append(
                pytest.mark.xfail(
                    raises=RuntimeError,
                    strict=True,
                    reason="a loading-script dataset: datasets >= 4 refuses it (issue 9, item 4)",
                )
            )
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", _paper_hub_datasets())
def test_paper_hub_dataset_prepares_against_the_real_split_names(name, hub, tmp_path):
    cfg = dict(PAPER_DATASETS[name])
    if cfg.get("facts"):  # S4's zsRE facts, a local file `tuneatlas zsre-convert` writes
        facts = tmp_path / "facts.tsv"
        facts.write_text("subject\trelation\tquestion\tanswer\nx\tP1\tq?\ta\n")
        cfg["facts"] = str(facts)
    task = get_task(cfg["task"])
    mapped = dict(cfg.get("splits") or task.hub_split_map)  # our split -> hub split
    fetched = fetch_hub_dataset(name, cfg, tmp_path / "hub")
    assert [c["split"] for c in hub.calls] == list(mapped.values())
    assert all(c["revision"] == cfg.get("revision") for c in hub.calls)
    assert set(fetched) == {SPLIT_ALIASES[s] for s in mapped}

    out = prepare_dataset(name, cfg, tmp_path / "data", seed=0, hub_copy=tmp_path / "hub")
    assert len(hub.calls) == len(mapped)  # the copy is read without the hub
    assert sorted(p.name for p in out.values()) == sorted(output_files(name, cfg))
    if task.is_corpus:
        assert len(read_prepared(out["train"])) > 0
    elif "resplit" not in cfg:
        # each split holds the rows of the hub split it is mapped from
        for ours, theirs in mapped.items():
            df = read_prepared(out[SPLIT_ALIASES[ours]])
            assert len(df) and all(f"/{theirs} " in t for t in df["text_a"])

    # the direct load (no copy) reads the same frames
    direct = load_raw_splits(name, cfg, seed=0)
    from_copy = load_raw_splits(name, cfg, seed=0, hub_copy=tmp_path / "hub")
    assert set(direct) == set(from_copy)
    for key, df in direct.items():
        pd.testing.assert_frame_equal(df, from_copy[key])


def test_fake_hub_fails_on_unknown_split_and_config_names(hub, tmp_path):
    cfg = {"source": "hub", "task": "rte", "splits": {"train": "train", "validation": "valid"}}
    with pytest.raises(ValueError, match=r"Unknown split \"valid\".*'validation'"):
        prepare_dataset("rte", cfg, tmp_path / "a", seed=0)
    with pytest.raises(ValueError, match='Unknown split "validation"'):
        prepare_dataset(
            "mnli",
            {"source": "hub", "task": "mnli", "splits": {"validation": "validation"}},
            tmp_path / "b",
            seed=0,
        )
    with pytest.raises(ValueError, match="BuilderConfig 'sst-2' not found"):
        prepare_dataset("s", {"source": "hub", "task": "sst2", "name": "sst-2"}, tmp_path / "c", 0)
    assert not any(p.suffix == ".parquet" for p in tmp_path.rglob("*"))


def test_hub_copy_must_match_its_source(hub, tmp_path):
    cfg = {"source": "hub", "task": "rte", "revision": GLUE_COMMIT}
    fetch_hub_dataset("rte", cfg, tmp_path / "hub")
    meta = read_parquet_meta(tmp_path / "hub" / "valid.parquet")
    assert meta["origin"] == "hub nyu-mll/glue/rte [validation]" and meta["split"] == "valid"
    moved = {**cfg, "revision": "b" * 40}
    with pytest.raises(DataError, match=r"train\.parquet: fetched for hub source .*fetch it again"):
        prepare_dataset("rte", moved, tmp_path / "data", seed=0, hub_copy=tmp_path / "hub")
    # a transform of the copy is not part of the fetch: the copy still serves
    prepare_dataset(
        "rte", {**cfg, "max_rows": 5}, tmp_path / "d", seed=0, hub_copy=tmp_path / "hub"
    )
    with pytest.raises(ValueError, match="a hub copy was given for a 'synthetic' source"):
        load_raw_splits("x", {"source": "synthetic", "task": "rte"}, 0, hub_copy=tmp_path)


def test_a_wrong_revision_pin_fails_and_leaves_no_copy(hub, tmp_path):
    import datasets

    cfg = {"source": "hub", "task": "rte", "revision": "0" * 40}
    with pytest.raises(datasets.exceptions.DatasetNotFoundError, match="Revision '0{40}'"):
        fetch_hub_dataset("rte", cfg, tmp_path / "hub")
    assert hub.calls and all(c["revision"] == "0" * 40 for c in hub.calls)
    assert not (tmp_path / "hub").exists()
    fetch_hub_dataset("rte", {**cfg, "revision": GLUE_COMMIT}, tmp_path / "hub")  # the pin works


def test_fetch_writes_a_split_in_several_batches_as_one_file(hub, monkeypatch, tmp_path):
    """Every real fetch streams batches of HUB_BATCH_ROWS rows; 5 rows here: 24 train rows are
    5 batches, written as 5 row groups of one Parquet file holding every row in order."""
    import pyarrow.parquet as pq

    from tuneatlas.data import sources

    cfg = {"source": "hub", "task": "rte", "revision": GLUE_COMMIT}
    whole = fetch_hub_dataset("rte", cfg, tmp_path / "one")
    monkeypatch.setattr(sources, "HUB_BATCH_ROWS", 5)
    batched = fetch_hub_dataset("rte", cfg, tmp_path / "many")
    assert pq.ParquetFile(batched["train"]).num_row_groups == 5  # ceil(24 / 5)
    assert pq.ParquetFile(whole["train"]).num_row_groups == 1
    for split in whole:
        pd.testing.assert_frame_equal(
            pd.read_parquet(batched[split]), pd.read_parquet(whole[split]), obj=split
        )
    assert read_parquet_meta(batched["train"]) == read_parquet_meta(whole["train"])
    # and prepare reads the batched copy as it reads the whole one
    a = prepare_dataset("rte", cfg, tmp_path / "a", seed=0, hub_copy=tmp_path / "one")
    b = prepare_dataset("rte", cfg, tmp_path / "b", seed=0, hub_copy=tmp_path / "many")
    for key in a:
        pd.testing.assert_frame_equal(read_prepared(a[key]), read_prepared(b[key]))


# --- streaming needs a budget ---------------------------------------------------------------


def test_streaming_without_a_row_budget_fails_at_validation_naming_the_key():
    raw = {
        "datasets": {"c": {"source": "hub", "task": "pretrain", "streaming": True}},
        "models": {"m": {"source": "hub", "name": "x/y"}},
        "studies": {},
    }
    config = validate_config(raw)
    with pytest.raises(ConfigError, match=r"datasets\.c\.max_rows is required with streaming"):
        preflight(config, make_plan(config), check_device=False)
    with pytest.raises(ConfigError, match=r"datasets\.c\.max_rows is required with streaming"):
        check_source("c", raw["datasets"]["c"])


def test_a_stream_is_read_only_up_to_its_budget(hub, monkeypatch, tmp_path):
    import datasets

    served = []

    def rows():
        for i in range(10**6):
            served.append(i)
            yield {"text": f"document {i}"}

    def streaming_hub(path, name=None, *, split=None, streaming=False, **kwargs):
        assert streaming and split == "train"
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", streaming_hub)
    cfg = {"source": "hub", "task": "pretrain", "streaming": True, "max_rows": 7}
    fetch_hub_dataset("fw", cfg, tmp_path / "hub")
    out = prepare_dataset("fw", cfg, tmp_path / "data", seed=0, hub_copy=tmp_path / "hub")
    assert list(read_prepared(out["train"])["text"]) == [f"document {i}" for i in range(7)]
    assert len(served) <= 8  # the generator is asked for at most one row past the budget


# --- revisions --------------------------------------------------------------------------------


def test_paper_pins_every_hub_revision_to_a_commit():
    config = validate_config(yaml.safe_load(PAPER.read_text()))
    unpinned = set()
    for name, cfg in config["datasets"].items():
        if cfg["source"] == "hub" and _hub_path(cfg) in UNPINNED:
            unpinned.add(_hub_path(cfg))
        elif cfg["source"] == "hub":
            assert COMMIT.fullmatch(cfg.get("revision", "")), f"datasets.{name}.revision"
    for name, model in config["models"].items():
        if model["source"] == "hub":
            assert COMMIT.fullmatch(model.get("revision", "")), f"models.{name}.revision"
    # an unpinned hub repository still in use says so in paper.yaml's comments
    text = PAPER.read_text()
    assert all(f"{repo}" in text and "Not pinned" in text for repo in unpinned)


def test_fetch_model_passes_the_revision_to_model_and_tokenizer(monkeypatch, tmp_path):
    transformers = pytest.importorskip("transformers")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )

    class Tokenizer:
        def save_pretrained(self, path):
            Path(path, "tokenizer_config.json").write_text("{}")

    def model(source, **kwargs):
        calls.append(("model", source, kwargs))
        return transformers.BertModel(config)

    def tokenizer(source, **kwargs):
        calls.append(("tokenizer", source, kwargs))
        return Tokenizer()

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    from tuneatlas.models.hub import BUILD_INFO, fetch_model

    out = fetch_model("google-bert/bert-base-uncased", tmp_path / "m", revision="c" * 40)
    kwargs = {"trust_remote_code": False, "revision": "c" * 40}
    assert calls == [
        ("model", "google-bert/bert-base-uncased", kwargs),
        ("tokenizer", "google-bert/bert-base-uncased", kwargs),
    ]
    assert '"revision": "' + "c" * 40 in (out / BUILD_INFO).read_text()
    with pytest.raises(ValueError, match="a revision only applies to a hub name"):
        fetch_model(str(out), tmp_path / "again", revision="c" * 40)


def test_model_revision_only_for_hub_models():
    raw = {
        "datasets": {"d": {"source": "synthetic", "task": "sst2"}},
        "models": {"m": {"source": "local", "name": "/some/dir", "revision": "main"}},
        "studies": {},
    }
    with pytest.raises(ConfigError, match=r"'models\.m\.revision': only a hub model"):
        validate_config(raw)
