"""embed.py: per-layer CLS and max-norm extraction from a fine-tuned run's model directory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from tests.factories import train_spec
from tuneatlas.analysis.embed import extract
from tuneatlas.engine.recipes.finetune import finetune as train
from tuneatlas.engine.recipes.mlm import build_bert
from tuneatlas.io import load_tensors
from tuneatlas.models.classifier import SequenceClassifier
from tuneatlas.models.hub import load_encoder, load_tokenizer
from tuneatlas.spec import OptimSpec

FILLER = "the a movie film plot actor scene story music ending was is very quite".split()
MARKS = ["yes", "maybe", "no"]


def nli(n: int, seed: int) -> pd.DataFrame:
    """mnli-like pairs of varied length: a marker word in the second sentence is the class."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(3))
        a = " ".join(rng.choice(FILLER, int(rng.integers(2, 9))))
        b = " ".join([*rng.choice(FILLER, int(rng.integers(1, 4))), MARKS[label]])
        rows.append((100 + 2 * i, a, b, label))  # idx differs from the row position on purpose
    return pd.DataFrame(rows, columns=["idx", "text_a", "text_b", "label"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    data = root / "data"
    data.mkdir()
    for name, n, seed in (("train", 64, 0), ("valid", 40, 1), ("test", 24, 2)):
        nli(n, seed).to_parquet(data / f"{name}.parquet")
    corpus = nli(200, 5)
    texts = corpus["text_a"].tolist() + corpus["text_b"].tolist()
    cfg = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=100)
    base = build_bert(cfg, texts, root / "base", seed=0)
    spec = train_spec(run="e", task="mnli", epochs=1, max_length=20, optim=OptimSpec(lr=3e-3))
    train(spec, data, base, root / "run")
    return {"root": root, "data": data, "base": base, "model": root / "run" / "model"}


def test_shapes_index_and_metadata(run, tmp_path):
    path = extract(run["model"], run["data"], tmp_path / "emb", batch_size=7)
    t = load_tensors(path)
    sizes = {"train": 64, "valid": 40, "test": 24}
    for split, n in sizes.items():
        assert t[f"{split}.cls"].shape == (3, n, 32) and t[f"{split}.cls"].dtype == np.float32
        assert t[f"{split}.maxnorm"].shape == (n, 32)
        assert (
            t[f"{split}.labels"].tolist()
            == pd.read_parquet(run["data"] / f"{split}.parquet")["label"].tolist()
        )
    assert t["head.weight"].shape == (3, 32) and t["head.bias"].shape == (3,)
    index = pd.read_parquet(tmp_path / "emb" / "index.parquet")
    assert list(index.columns) == ["split", "row", "idx", "label"]
    assert index.groupby("split").size().to_dict() == sizes
    valid = index[index.split == "valid"]
    assert valid["row"].tolist() == list(range(40))
    assert valid["idx"].tolist() == [100 + 2 * i for i in range(40)]
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["pooling"] == "cls" and meta["task"] == "mnli" and meta["max_length"] == "20"


def test_last_layer_cls_through_head_reproduces_logits(run, tmp_path):
    t = load_tensors(extract(run["model"], run["data"], tmp_path / "emb", splits=("valid",)))
    assert not any(k.startswith(("train.", "test.")) for k in t)
    model = SequenceClassifier.load(run["model"]).eval()
    df = pd.read_parquet(run["data"] / "valid.parquet")
    enc = model.tokenizer(
        df["text_a"].tolist(),
        df["text_b"].tolist(),
        truncation=True,
        max_length=20,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits
    from_embeddings = t["valid.cls"][-1] @ t["head.weight"].T + t["head.bias"]
    np.testing.assert_allclose(from_embeddings, logits.numpy(), atol=1e-5)
    # The trained head is not trivially zero: the check above has something to reproduce.
    assert np.abs(from_embeddings).max() > 1e-2


def test_rows_match_a_manual_unpadded_forward(run, tmp_path):
    t = load_tensors(extract(run["model"], run["data"], tmp_path / "emb", splits=("test",)))
    tok = load_tokenizer(run["model"])
    encoder = load_encoder(run["model"]).eval()
    df = pd.read_parquet(run["data"] / "test.parquet")
    for row in (0, 5, 23):
        enc = tok(
            df.text_a[row], df.text_b[row], truncation=True, max_length=20, return_tensors="pt"
        )
        with torch.no_grad():
            hs = encoder(**enc, output_hidden_states=True).hidden_states
        for layer in range(3):
            np.testing.assert_allclose(
                t["test.cls"][layer, row], hs[layer][0, 0].numpy(), atol=1e-5
            )
        last = hs[-1][0]
        norms = [float(last[i].norm()) for i in range(last.shape[0])]
        np.testing.assert_allclose(
            t["test.maxnorm"][row], last[int(np.argmax(norms))].numpy(), atol=1e-5
        )
    # Padding must not change a row: the batch with the longest sequence pads the others.
    assert len({len(tok(a, b)["input_ids"]) for a, b in zip(df.text_a, df.text_b, strict=True)}) > 1


def test_mlp2_head_has_no_head_tensors_and_missing_splits_fail(run, tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(
        load_encoder(run["base"]),
        3,
        head="mlp2",
        pooling="maxnorm",
        task="mnli",
        tokenizer=load_tokenizer(run["base"]),
        max_length=20,
    )
    model.save(tmp_path / "m")
    t = load_tensors(extract(tmp_path / "m", run["data"], tmp_path / "emb", splits=("valid",)))
    assert "head.weight" not in t and set(t) == {"valid.cls", "valid.maxnorm", "valid.labels"}
    with pytest.raises(FileNotFoundError, match="none of the splits"):
        extract(tmp_path / "m", tmp_path, tmp_path / "emb2", splits=("valid",))
    with pytest.raises(FileNotFoundError, match="not a fine-tuned tuneatlas model"):
        extract(run["base"], run["data"], tmp_path / "emb3")
