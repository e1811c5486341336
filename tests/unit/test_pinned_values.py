"""Losses pinned to values computed by hand (numpy, float64), not to shapes or ranges: the causal
LM's next-token loss (and that the shift matters), the fine-tuning loss the loop logs, and one
SimCSE gradient step against the InfoNCE gradient derived by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tests.factories import train_spec
from tuneatlas.engine.recipes.causal_lm import CausalLMRecipe
from tuneatlas.engine.recipes.simcse import SimCSERecipe, SimCSESpec
from tuneatlas.spec import OptimSpec, PretrainSpec


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# --- causal LM: the next-token loss ---------------------------------------------------------


class Bigram(nn.Module):
    """logits[b, t] = table[ids[b, t]]: the prediction after token t depends on t alone."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


class Blocks:
    """The `TokenBlocks` interface the recipe's evaluate reads: len and batch(rows)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = torch.tensor(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows, device) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[list(rows)].to(device)}


PRETRAIN = PretrainSpec(run="p", dataset="c", tokens="t", eval_batch_size=1, seq_len=4)
V = 5
# token v predicts itself strongly: predicting the current token (no shift) would score well,
# the next token (the truth of these rows, which never repeat a token) badly
TABLE = 3.0 * np.eye(V) + np.arange(V * V).reshape(V, V) % 3 * 0.25
IDS = np.array([[0, 1, 2, 3, 4], [4, 2, 0, 3, 1]])  # 2 sequences of seq_len + 1 tokens


def _hand_lm_loss(table: np.ndarray, ids: np.ndarray, shift: int) -> float:
    logp = _log_softmax(table.astype(np.float64))
    terms = [
        -logp[seq[t], seq[t + shift]] for seq in ids for t in range(len(seq) - 1)
    ]  # position t sees tokens up to t; shift 1 = the next token is the target
    return float(np.mean(terms))


def test_causal_lm_loss_is_the_mean_next_token_cross_entropy():
    recipe = CausalLMRecipe(PRETRAIN, "unused")
    model = Bigram(TABLE)
    batch = {"input_ids": torch.tensor(IDS)}
    want = _hand_lm_loss(TABLE, IDS, shift=1)
    unshifted = _hand_lm_loss(TABLE, IDS, shift=0)
    assert want > unshifted + 2.0  # the case tells the two apart
    assert float(recipe.loss(model, batch).detach()) == pytest.approx(want, rel=1e-6)
    # evaluation: the same per-token mean, summed over batches of one sequence each
    scores = recipe.evaluate(model, {"valid": Blocks(IDS)}, "valid", torch.device("cpu"), True)
    assert scores["loss"] == pytest.approx(want, rel=1e-6)
    assert scores["perplexity"] == pytest.approx(np.exp(want), rel=1e-6)


# --- fine-tuning: the loss the loop logs is the cross-entropy of the model's logits ---------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tuneatlas.engine.recipes.mlm import build_bert

    root = tmp_path_factory.mktemp("pinned")
    rng = np.random.default_rng(0)
    words = "the a film plot good bad very dull fine".split()
    frames = {}
    for split, n in (("train", 24), ("valid", 12)):
        labels = rng.integers(2, size=n)
        text = [" ".join(rng.choice(words, 5)) for _ in range(n)]
        frames[split] = pd.DataFrame(
            {"idx": range(n), "text_a": text, "text_b": None, "label": labels}
        )
        (root / "data").mkdir(exist_ok=True)
        frames[split].to_parquet(root / "data" / f"{split}.parquet")
    cfg = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=60)
    model = build_bert(cfg, frames["train"]["text_a"].tolist(), root / "model", seed=0)
    return {"root": root, "data": root / "data", "model": model}


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    logp = _log_softmax(logits.astype(np.float64))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_finetune_logged_losses_are_the_direct_cross_entropy(tiny):
    """lr 0 (the weights never move) and one batch of every training row: the loss logged at
    step 1 is the saved model's mean cross-entropy on train, the valid loss on valid."""
    from tuneatlas.data.labelled import tokenize_splits
    from tuneatlas.data.tasks import fine_tuning_task
    from tuneatlas.engine.recipes.finetune import finetune
    from tuneatlas.models.classifier import SequenceClassifier, predict

    spec = train_spec(
        batch_size=24, max_steps=1, dropout=0.0, optim=OptimSpec(lr=0.0), checkpoint_every="none"
    )
    out = tiny["root"] / "run"
    finetune(spec, tiny["data"], tiny["model"], out, device="cpu")
    metrics = pd.read_parquet(out / "metrics.parquet")
    model = SequenceClassifier.load(out / "model")
    task = fine_tuning_task(spec.task)
    data = tokenize_splits(tiny["data"], model.tokenizer, spec.max_length, task)
    cpu = torch.device("cpu")
    direct = {
        s: _cross_entropy(predict(model, data[s], 64, cpu), data[s].labels.numpy()) for s in data
    }
    train_loss = metrics[metrics["split"].isna() & (metrics["step"] == 1)]["loss"].item()
    assert train_loss == pytest.approx(direct["train"], rel=1e-5)
    valid = metrics[(metrics["split"] == "valid") & (metrics["metric"] == "loss")]
    assert valid["value"].iloc[-1] == pytest.approx(direct["valid"], rel=1e-5)


# --- SimCSE: one gradient step against the InfoNCE gradient derived by hand -----------------


class Masked(nn.Module):
    """z_r = (x_r * m_r) @ W with x_r = features[first token of row r] and a fixed mask m_r per
    row: the two copies of a batch (`two_views`) differ by their masks, as dropout makes them."""

    def __init__(self, features: np.ndarray, w: np.ndarray, masks: np.ndarray) -> None:
        super().__init__()
        self.features = torch.tensor(features, dtype=torch.float64)
        self.masks = torch.tensor(masks, dtype=torch.float64)
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.features[input_ids[:, 0]] * self.masks) @ self.w


def _hand_info_nce(a: np.ndarray, b: np.ndarray, w: np.ndarray, t: float):
    """InfoNCE of z1 = a @ w against z2 = b @ w and its gradient in w, by the chain rule:
    dL/ds_ij = (p_ij - [i == j]) / (n t) with p the row softmax of s / t, and
    d cos(u, v)/du = v / (|u| |v|) - cos(u, v) u / |u|^2."""
    z1, z2 = a @ w, b @ w
    n1, n2 = np.linalg.norm(z1, axis=1), np.linalg.norm(z2, axis=1)
    s = (z1 @ z2.T) / np.outer(n1, n2)
    logp = _log_softmax(s / t)
    n = len(z1)
    loss = -np.trace(logp) / n
    d = (np.exp(logp) - np.eye(n)) / (n * t)  # dL/ds
    g1 = d @ (z2 / n2[:, None]) / n1[:, None] - (d * s).sum(1)[:, None] * z1 / n1[:, None] ** 2
    g2 = d.T @ (z1 / n1[:, None]) / n2[:, None] - (d * s).sum(0)[:, None] * z2 / n2[:, None] ** 2
    return loss, a.T @ g1 + b.T @ g2


def test_simcse_one_step_is_the_hand_computed_infonce_gradient_step():
    rng = np.random.default_rng(3)
    n, d_in, d_out, t, lr = 4, 6, 3, 0.05, 0.01
    features = rng.normal(size=(n, d_in))
    w = rng.normal(size=(d_in, d_out))
    masks = (rng.random(size=(2 * n, d_in)) > 0.3) / 0.7  # view 1 rows, then view 2 rows
    spec = SimCSESpec(run="s", task="simcse", dataset="c", model="m", dropout=0.3, temperature=t)
    recipe = SimCSERecipe(spec, "unused", "unused", "unused")
    model = Masked(features, w, masks)
    batch = {"input_ids": torch.arange(n)[:, None], "attention_mask": torch.ones(n, 1)}
    loss = recipe.loss(model, batch)
    loss.backward()
    want_loss, want_grad = _hand_info_nce(features * masks[:n], features * masks[n:], w, t)
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(model.w.grad.numpy(), want_grad, rtol=1e-4, atol=1e-6)
    # the step the loop takes with plain SGD: w - lr * grad, against the hand-computed one
    torch.optim.SGD(model.parameters(), lr=lr).step()
    np.testing.assert_allclose(model.w.detach().numpy(), w - lr * want_grad, rtol=1e-5, atol=1e-7)
