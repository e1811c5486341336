"""SimCSE continued training (S2): the loss against a direct computation, the two views differ by
dropout alone, and the saved model is a bare encoder that fine-tuning can start from."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from transformers import AutoConfig

from tuneatlas.engine.recipes.mlm import build_bert
from tuneatlas.engine.recipes.simcse import (
    SimCSEModel,
    SimCSERecipe,
    SimCSESpec,
    info_nce,
    simcse,
    two_views,
)
from tuneatlas.models.classifier import set_dropout
from tuneatlas.models.hub import BUILD_INFO, load_encoder, load_tokenizer
from tuneatlas.spec import OptimSpec

WORDS = "the a film plot actor music song band good bad long short story scene".split()


def test_info_nce_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    t = 0.05

    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    expected = 0.0
    for i in range(4):
        logits = [cos(z1[i], z2[j]) / t for j in range(4)]
        expected -= logits[i] - math.log(sum(math.exp(x) for x in logits))
    assert float(info_nce(z1, z2, t)) == pytest.approx(expected / 4, rel=1e-5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("simcse")
    g = torch.Generator().manual_seed(1)
    texts = [
        " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (6,), generator=g))
        for _ in range(120)
    ]
    (root / "corpus").mkdir()
    pd.DataFrame({"idx": range(len(texts)), "text": texts}).to_parquet(
        root / "corpus" / "train.parquet"
    )
    cfg = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=60)
    base = build_bert({**cfg, "dropout": 0.1}, texts, root / "base", seed=0)
    return {"root": root, "corpus": root / "corpus", "base": base}


def _spec(**kw) -> SimCSESpec:
    base = dict(
        run="s2-simcse-p0.3",
        task="simcse",
        dataset="c",
        model="b",
        seed=3,
        epochs=1,
        batch_size=16,
        max_length=16,
        dropout=0.3,
        optim=OptimSpec(lr=1e-3),
        checkpoint_every=0,
        heldout=20,
    )
    return SimCSESpec(**{**base, **kw})


def test_the_two_views_differ_by_dropout_alone(world):
    model = SimCSEModel(load_encoder(world["base"]))
    tok = load_tokenizer(world["base"])
    enc = tok(["the film was good", "a long story"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    model.train()
    set_dropout(model, 0.3)
    z1, z2 = two_views(model, batch)
    assert not torch.allclose(z1, z2)
    set_dropout(model, 0.0)  # same forward pass, no dropout: identical views
    z1, z2 = two_views(model, batch)
    torch.testing.assert_close(z1, z2, rtol=0, atol=1e-6)
    model.eval()
    set_dropout(model, 0.3)
    z1, z2 = two_views(model, batch)
    torch.testing.assert_close(z1, z2, rtol=0, atol=1e-6)


def test_simcse_saves_a_bare_encoder_with_the_base_dropout(world):
    root = world["root"]
    res = simcse(_spec(), world["corpus"], world["base"], root / "model", root / "run")
    # 120 sentences; heldout 20, capped at a tenth of the corpus: 12 held out
    assert res["steps"] == math.ceil(108 / 16)
    weights = load_encoder(root / "model").state_dict()
    assert not any(k.startswith("mlp") for k in weights)  # the MLP is training-time only
    base = load_encoder(world["base"]).state_dict()
    assert weights.keys() == base.keys()
    assert any(not torch.equal(weights[k], base[k]) for k in base)  # it did train
    saved = AutoConfig.from_pretrained(root / "model")
    assert (
        saved.hidden_dropout_prob == AutoConfig.from_pretrained(world["base"]).hidden_dropout_prob
    )
    info = json.loads((root / "model" / BUILD_INFO).read_text())
    assert info["source"] == "simcse" and info["spec"]["dropout"] == 0.3
    ev = pd.read_parquet(root / "run" / "eval.parquet")
    assert set(ev["metric"]) == {"accuracy", "loss"} and set(ev["split"]) == {"heldout"}
    assert 0.0 <= ev.set_index("metric").loc["accuracy", "value"] <= 1.0


def test_heldout_scores_are_repeatable_and_leave_the_training_rng_alone(world):
    recipe = SimCSERecipe(_spec(), world["corpus"], world["base"], world["root"] / "unused")
    torch.manual_seed(0)
    model, data = recipe.build()
    model.train()
    state = torch.get_rng_state()
    first = recipe.evaluate(model, data, "heldout", torch.device("cpu"), with_loss=True)
    assert torch.equal(state, torch.get_rng_state())
    assert recipe.evaluate(model, data, "heldout", torch.device("cpu"), True) == first
    assert len(data["train"]) == 108 and len(data["heldout"]) == 12


def test_simcse_refuses_a_run_without_dropout(world):
    with pytest.raises(ValueError, match=r"dropout in \(0, 1\)"):
        SimCSERecipe(_spec(dropout=None), world["corpus"], world["base"], world["root"] / "x")


@pytest.fixture(scope="module")
def stsb_dir(world):
    g = torch.Generator().manual_seed(2)

    def sentence():
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (5,), generator=g))

    rows = [(sentence(), sentence(), float(i % 6)) for i in range(30)]
    path = world["root"] / "stsb"
    path.mkdir()
    pd.DataFrame(
        {
            "idx": range(len(rows)),
            "text_a": [r[0] for r in rows],
            "text_b": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
    ).to_parquet(path / "valid.parquet")
    return path


def test_stsb_spearman_is_the_rank_correlation_of_cls_cosines(world, stsb_dir):
    from scipy.stats import spearmanr

    recipe = SimCSERecipe(_spec(), world["corpus"], world["base"], world["root"] / "u", stsb_dir)
    torch.manual_seed(0)
    model, data = recipe.build()
    model.train()
    got = recipe.evaluate(model, data, "stsb", torch.device("cpu"), with_loss=True)
    assert model.training  # the mode is restored
    # independently: one sentence at a time, CLS of the bare encoder (no MLP), eval mode
    dev = pd.read_parquet(stsb_dir / "valid.parquet")
    tok, enc = load_tokenizer(world["base"]), load_encoder(world["base"]).eval()
    cos = []
    with torch.no_grad():
        for a, b in zip(dev["text_a"], dev["text_b"], strict=True):
            za = enc(**tok(a, return_tensors="pt")).last_hidden_state[0, 0]
            zb = enc(**tok(b, return_tensors="pt")).last_hidden_state[0, 0]
            # the same cosine op: the tiny model's cosines lie close together, and a
            # last-digit difference would swap ranks
            cos.append(float(torch.nn.functional.cosine_similarity(za, zb, dim=0)))
    expected = spearmanr(dev["label"], cos).statistic
    assert got["spearman"] == pytest.approx(expected, abs=1e-6)


def test_keep_best_saves_the_early_weights_when_the_dev_score_peaks_early(
    world, stsb_dir, monkeypatch
):
    """Scripted dev scores peak at the first evaluation (step 2): the saved encoder is the one
    of step 2, not the last step's, and the build info says so."""
    import tuneatlas.engine.recipes.simcse as mod

    scores = iter([0.2, 0.9, 0.5, 0.4, 0.3, 0.1])
    monkeypatch.setattr(mod, "sts_spearman", lambda *a, **k: next(scores, 0.0))

    class Snapshots:
        def __init__(self):
            self.at = {}

        def on_evaluate(self, state, split, _scores):
            if not state.final:
                enc = state.model.encoder.state_dict()
                self.at[state.step] = {k: v.clone() for k, v in enc.items()}

    snaps, root = Snapshots(), world["root"]
    spec = _spec(keep_best=True, eval_every=2, run="s2-simcse-kb")
    res = mod.simcse(
        spec,
        world["corpus"],
        world["base"],
        root / "kb",
        root / "kb-run",
        [snaps],
        stsb_dir=stsb_dir,
    )
    # 108 rows / 16 = 7 steps: evaluations at steps 2, 4, 6, 7 score 0.2, 0.9, 0.5, 0.4
    assert sorted(snaps.at) == [2, 4, 6, 7] and res["best_step"] == 4
    saved = load_encoder(root / "kb").state_dict()
    for k, v in snaps.at[4].items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0)
    assert any(not torch.equal(saved[k], snaps.at[7][k]) for k in saved)
    info = json.loads((root / "kb" / BUILD_INFO).read_text())
    assert info["selected"] == {"step": 4, "split": "stsb", "metric": "spearman", "score": 0.9}


def test_the_simcse_mlp_starts_as_bert_initialises_a_layer(world):
    torch.manual_seed(0)
    model = SimCSEModel(load_encoder(world["base"]))
    w, b = model.mlp[0].weight.detach(), model.mlp[0].bias.detach()
    std = load_encoder(world["base"]).config.initializer_range
    assert torch.count_nonzero(b) == 0
    # 32 x 32 draws; nn.Linear's default uniform(±1/√32) would have a std of 0.10
    assert float(w.std()) == pytest.approx(std, rel=0.1)


def test_the_saved_pooler_is_the_trained_mlp_or_else_the_base_models(world):
    """pooler mlp: the checkpoint's pooler is the MLP as training left it (SimCSE's
    simcse_to_huggingface.py); pooler base: none saved, and `head: pooler` reads the base's."""
    from safetensors import safe_open

    from tuneatlas.models.classifier import pretrained_pooler

    class LastMLP:
        def on_evaluate(self, state, split, _scores):
            self.mlp = {k: v.detach().clone() for k, v in state.model.mlp.state_dict().items()}

    root, grab = world["root"], LastMLP()
    spec = _spec(run="s2-simcse-mlp")
    simcse(spec, world["corpus"], world["base"], root / "mlp", root / "mlp-run", [grab])
    found = pretrained_pooler(root / "mlp")
    torch.testing.assert_close(found["weight"], grab.mlp["0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(found["bias"], grab.mlp["0.bias"], rtol=0, atol=0)
    base_pooler = pretrained_pooler(world["base"])
    assert not torch.equal(found["weight"], base_pooler["weight"])

    spec = _spec(run="s2-simcse-base", pooler="base")
    simcse(spec, world["corpus"], world["base"], root / "nopool", root / "nopool-run")
    with safe_open(str(root / "nopool" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if "pooler" in k]  # noqa: SIM118
    torch.testing.assert_close(pretrained_pooler(root / "nopool")["weight"], base_pooler["weight"])
    with pytest.raises(ValueError, match="pooler must be 'mlp' or 'base'"):
        simcse(_spec(pooler="cls"), world["corpus"], world["base"], root / "x", root / "x-run")
