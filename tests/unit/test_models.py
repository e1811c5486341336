"""models.py: offline tokenizer, tiny BERT build, fetch (local + offline refusal), classifier."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuneatlas.engine.recipes.mlm import build_bert
from tuneatlas.io import atomic_dir
from tuneatlas.models.build import train_tokenizer
from tuneatlas.models.classifier import (
    CLASSIFIER_INFO,
    SequenceClassifier,
    maxnorm_pool,
    set_dropout,
)
from tuneatlas.models.hub import fetch_model, load_encoder, load_tokenizer

WORDS = "the a movie film plot actor scene story music ending was is very quite".split()
TINY = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    vocab_size=120,
    max_position_embeddings=64,
)


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS + ["good", "bad"], 8)) for _ in range(n)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    build_bert({**TINY, "mlm_steps": 15, "mlm_batch_size": 16}, corpus(), out, seed=3)
    return out


def test_train_tokenizer_bert_style_and_reloads(tmp_path):
    from transformers import AutoTokenizer

    tok = train_tokenizer(corpus(), 200, tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for i, name in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]):
        assert again.convert_tokens_to_ids(name) == i
    single = again("The MOVIE was good")
    assert single["input_ids"][0] == 2 and single["input_ids"][-1] == 3
    assert again.convert_ids_to_tokens(single["input_ids"][1:-1]) == ["the", "movie", "was", "good"]
    pair = again("the movie", "a film")
    assert pair["input_ids"] == tok("the movie", "a film")["input_ids"]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert pair["input_ids"].count(3) == 2
    assert again.pad_token_id == 0 and again.mask_token_id == 4
    # Deterministic: the same corpus gives the same vocabulary.
    other = train_tokenizer(corpus(), 200, tmp_path / "tok2")
    assert other.get_vocab() == tok.get_vocab()


def test_build_bert_loads_and_is_deterministic(base, tmp_path):
    from transformers import AutoModel

    enc = AutoModel.from_pretrained(base)
    assert enc.config.num_hidden_layers == 2 and enc.config.hidden_size == 32
    assert enc.config.num_attention_heads == 2 and enc.config.intermediate_size == 64
    info = json.loads((base / "tuneatlas_build.json").read_text())
    assert info["seed"] == 3 and info["config"]["mlm_steps"] == 15
    losses = info["mlm_losses"]
    assert len(losses) == 15 and np.mean(losses[-5:]) < np.mean(losses[:5])  # MLM learned
    assert load_tokenizer(base).model_max_length == 64
    same = tmp_path / "same"
    build_bert({**TINY, "mlm_steps": 15, "mlm_batch_size": 16}, corpus(), same, seed=3)
    a = load_file(base / "model.safetensors")
    b = load_file(same / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other"
    build_bert(TINY, corpus(), other, seed=4)
    c = load_file(other / "model.safetensors")
    assert not torch.equal(
        a["embeddings.word_embeddings.weight"], c["embeddings.word_embeddings.weight"]
    )


def test_build_bert_rejects_unknown_and_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown model config keys.*'hiden_size'"):
        build_bert({**TINY, "hiden_size": 3}, corpus(), tmp_path / "x", seed=0)
    with pytest.raises(ValueError, match="lacks required keys.*num_heads"):
        build_bert(
            {"hidden_size": 32, "num_layers": 1, "vocab_size": 50}, corpus(), tmp_path / "y", 0
        )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fetch_model_local_dir_and_offline_refusal(base, tmp_path, monkeypatch):
    out = fetch_model(str(base), tmp_path / "copy")
    a = load_encoder(base).state_dict()
    b = load_encoder(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        load_tokenizer(out)("the movie")["input_ids"]
        == load_tokenizer(base)("the movie")["input_ids"]
    )
    assert json.loads((out / "tuneatlas_build.json").read_text())["source"] == str(base)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1.*local directory"):
        fetch_model("google-bert/bert-base-uncased", tmp_path / "hub")
    assert time.time() - t0 < 2.0  # refused at once, no network time-out
    assert not (tmp_path / "hub").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch_model(str(tmp_path / "no" / "such" / "dir"), tmp_path / "z")


def test_maxnorm_pool_ignores_padding():
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [9.0, 9.0]],  # last position is padding
            [[0.0, 5.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = maxnorm_pool(hidden, mask)
    assert torch.equal(out, torch.tensor([[0.0, 3.0], [0.0, 5.0]]))


def _batch(tok, texts, pairs=None):
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def test_classifier_pooling_matches_manual(base):
    tok = load_tokenizer(base)
    ids, mask, types = _batch(tok, ["the movie was good", "bad", "a very quite good film plot"])
    torch.manual_seed(0)
    for pooling in ("cls", "maxnorm"):
        model = SequenceClassifier(load_encoder(base), 3, pooling=pooling).eval()
        with torch.no_grad():
            out = model(ids, mask, types, output_hidden_states=True)
            last = model.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
        assert len(out.hidden_states) == 3 and out.logits.shape == (3, 3)
        for i in range(3):
            n = int(mask[i].sum())
            if pooling == "cls":
                want = last[i, 0]
            else:
                norms = [float(last[i, t].norm()) for t in range(n)]
                want = last[i, int(np.argmax(norms))]
            assert torch.allclose(out.pooled[i], want, atol=1e-6)
        w, b = model.head.weight, model.head.bias
        assert torch.allclose(out.logits, out.pooled @ w.T + b, atol=1e-6)


def test_dropout_override(base):
    keep = SequenceClassifier(load_encoder(base), 2)
    assert keep.dropout.p == pytest.approx(0.1)
    assert keep.encoder.config.hidden_dropout_prob == pytest.approx(0.1)

    off = SequenceClassifier(load_encoder(base), 2, dropout=0.0)
    drops = [m for m in off.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)
    assert off.encoder.config.attention_probs_dropout_prob == 0.0
    ids, mask, types = _batch(load_tokenizer(base), ["the movie was good", "a bad plot"])
    off.train()
    a = off(ids, mask, types).logits
    off.eval()
    b = off(ids, mask, types).logits
    assert torch.equal(a, b)  # no dropout anywhere: train mode is deterministic

    high = SequenceClassifier(load_encoder(base), 2, dropout=0.3)
    assert all(m.p == 0.3 for m in high.modules() if isinstance(m, torch.nn.Dropout))
    high.train()
    assert not torch.equal(high(ids, mask, types).logits, high(ids, mask, types).logits)

    enc = load_encoder(base)
    set_dropout(enc, 0.2)
    assert enc.config.hidden_dropout_prob == 0.2
    with pytest.raises(ValueError, match="dropout must be in"):
        set_dropout(enc, 1.5)


@pytest.mark.parametrize("head", ["linear", "mlp2"])
def test_classifier_save_load_roundtrip(base, tmp_path, head):
    torch.manual_seed(1)
    model = SequenceClassifier(
        load_encoder(base),
        3,
        pooling="maxnorm",
        head=head,
        dropout=0.0,
        task="mnli",
        tokenizer=load_tokenizer(base),
        max_length=32,
    )
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p))
    model.save(tmp_path / "m", run="r")
    info = json.loads((tmp_path / "m" / CLASSIFIER_INFO).read_text())
    assert info["task"] == "mnli" and info["num_labels"] == 3 and info["pooling"] == "maxnorm"
    assert info["head"] == head and info["regression"] is False and info["run"] == "r"
    assert not (tmp_path / "m" / "pooler").exists()
    again = SequenceClassifier.load(tmp_path / "m").eval()
    model.eval()
    ids, mask, types = _batch(
        load_tokenizer(tmp_path / "m"), ["the movie", "a bad film"], ["x", "y"]
    )
    with torch.no_grad():
        assert torch.equal(model(ids, mask, types).logits, again(ids, mask, types).logits)
    assert again.dropout.p == 0.0 and again.max_length == 32
    # Saving again over an existing directory replaces it atomically.
    again.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_classifier_rejects_bad_options(base):
    enc = load_encoder(base)
    with pytest.raises(ValueError, match="unknown pooling 'mean'"):
        SequenceClassifier(enc, 2, pooling="mean")
    with pytest.raises(ValueError, match="unknown head"):
        SequenceClassifier(enc, 2, head="mlp3")
    with pytest.raises(ValueError, match="regression head has num_labels 1"):
        SequenceClassifier(enc, 2, regression=True)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_load_encoder_reports_missing_weights_but_not_the_pooler(base, tmp_path, caplog):
    import shutil

    from safetensors.torch import save_file

    caplog.set_level("INFO", logger="tuneatlas.models.hub")
    load_encoder(base)  # a hub-like BERT with pooler weights, loaded without the pooler
    assert "weights missing" not in caplog.text and "LOAD REPORT" not in caplog.text
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    load_encoder(broken)
    assert "weights missing from the checkpoint" in caplog.text
    assert "encoder.layer.1.output.dense.weight" in caplog.text


def test_classifier_on_a_non_bert_encoder(base, tmp_path):
    # DistilBERT: no pooler switch, no token_type_ids, other dropout config names.
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    DistilBertModel(cfg).save_pretrained(tmp_path / "distil")
    load_tokenizer(base).save_pretrained(tmp_path / "distil")
    enc = load_encoder(tmp_path / "distil")
    assert SequenceClassifier(enc, 2).dropout.p == pytest.approx(cfg.seq_classif_dropout)
    model = SequenceClassifier(enc, 2, pooling="maxnorm", dropout=0.0).train()
    assert enc.config.dropout == 0.0 and enc.config.attention_dropout == 0.0
    ids, mask, _ = _batch(load_tokenizer(base), ["the movie was good", "a bad plot"])
    a = model(ids, mask).logits
    assert torch.equal(a, model.eval()(ids, mask).logits)
    model.save(tmp_path / "m")
    again = SequenceClassifier.load(tmp_path / "m").eval()
    assert torch.equal(again(ids, mask).logits, a)
