"""Unsupervised SimCSE continued training (S2): a contrastive recipe of the engine.

Each sentence is encoded twice in one forward pass; dropout (probability `spec.dropout`) makes
the two views differ, and nothing else does. The loss is InfoNCE over in-batch negatives:
l_i = -log exp(cos(z_i, z'_i) / T) / sum_j exp(cos(z_i, z'_j) / T), z = MLP(CLS) with the MLP
(Linear + Tanh, SimCSE's training-time pooler) used only during training: the saved model is the
bare encoder, with the base model's own dropout settings, so fine-tuning starts from it as from
any other base model. Defaults follow the SimCSE paper (batch 64, max length 32, T = 0.05,
1 epoch, lr 3e-5 base / 1e-5 large). With `micro_batch_size` each micro-batch has its own
negatives (fewer of them); under DDP, each rank's share.

Checkpoint selection as the SimCSE code runs it (`run_unsup_example.sh`: `--eval_steps 125
--metric_for_best_model stsb_spearman --load_best_model_at_end`; paper App. A: "evaluate the
model every 250 training steps on the development set of STS-B and keep the best checkpoint"):
with an STS-B dev set (`stsb_dir`), the monitored split is `stsb`, scored as Spearman's
correlation between the gold similarity and the cosine of the two sentences' CLS vectors
*before* the MLP (SimCSE's `cls_before_pooler` for `--pooler_type cls --mlp_only_train`), in
eval mode; with `spec.keep_best` the loop keeps the best step's weights and the saved model's
build info records that step and score (`selected`).

Also scored: the same loss and the retrieval accuracy of the positive among the in-batch
candidates on a held-out slice of the corpus (the monitored split when there is no STS-B set),
with dropout drawn from a fixed seed so that they are comparable across steps and never disturb
the training RNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuneatlas.data.labelled import Sentences
from tuneatlas.data.prepare import read_prepared
from tuneatlas.engine.loop import fit
from tuneatlas.engine.recipes import Recipe, model_files_fingerprint
from tuneatlas.io import atomic_dir, write_json
from tuneatlas.metrics import score
from tuneatlas.models.classifier import set_dropout
from tuneatlas.models.hub import BUILD_INFO, load_encoder, load_tokenizer, quiet_hf_progress
from tuneatlas.spec import TrainSpec

HELDOUT = "heldout"
STSB = "stsb"  # the STS-B dev pairs that select the checkpoint


@dataclass(frozen=True)
class SimCSESpec(TrainSpec):
    """A TrainSpec (task "simcse", dataset = the corpus, model = the base, dropout = p) plus
    the contrastive temperature and the held-out slice scored during training."""

    temperature: float = 0.05
    heldout: int = 256  # sentences kept out of training (at most a tenth of the corpus)
    # the saved model's pooler: "mlp" = the trained MLP, as SimCSE's simcse_to_huggingface.py
    # writes it into the released checkpoints; "base" = none saved, `head: pooler` then takes
    # the base model's pretrained pooler (models.classifier.pretrained_pooler)
    pooler: str = "mlp"


class SimCSEModel(nn.Module):
    """Encoder + the training-time MLP over the CLS vector."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        # as BERT initialises a new layer (SimCSE's `cl_init` calls `init_weights`):
        # N(0, initializer_range), bias 0 - not nn.Linear's uniform default
        std = float(getattr(encoder.config, "initializer_range", 0.02))
        nn.init.normal_(self.mlp[0].weight, mean=0.0, std=std)
        nn.init.zeros_(self.mlp[0].bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.mlp(out.last_hidden_state[:, 0])


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of views z1[i] <-> z2[i] against the other z2[j] (cosine / temperature)."""
    sim = F.cosine_similarity(z1.float().unsqueeze(1), z2.float().unsqueeze(0), dim=-1)
    return F.cross_entropy(sim / temperature, torch.arange(len(z1), device=z1.device))


@dataclass(frozen=True)
class SentencePairs:
    """Tokenised sentence pairs with a gold similarity each (the STS-B dev set)."""

    a: Sentences
    b: Sentences
    gold: np.ndarray

    def __len__(self) -> int:
        return len(self.gold)


def cls_vectors(encoder: nn.Module, part: Sentences, size: int, device: torch.device):
    """The CLS vectors of the last layer (before SimCSE's MLP), in batches of `size`."""
    out = []
    for start in range(0, len(part), size):
        rows = list(range(start, min(start + size, len(part))))
        batch = part.batch(rows, device)
        out.append(encoder(**batch).last_hidden_state[:, 0].float())
    return torch.cat(out)


def sts_spearman(encoder: nn.Module, pairs: SentencePairs, size: int, device: torch.device):
    """Spearman's correlation of the pairs' CLS cosines with the gold scores, in eval mode
    (the encoder's train/eval mode is restored)."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            za = cls_vectors(encoder, pairs.a, size, device)
            zb = cls_vectors(encoder, pairs.b, size, device)
            cos = F.cosine_similarity(za, zb, dim=-1).cpu().numpy()
    finally:
        encoder.train(was_training)
    return score("spearman", pairs.gold, cos)


def two_views(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The batch encoded twice in one forward pass: the copies differ by dropout alone."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    z = model(torch.cat([ids, ids]), torch.cat([mask, mask]))
    return z[: len(ids)], z[len(ids) :]


class SimCSERecipe(Recipe):
    """Continue training `model_dir`'s encoder with SimCSE on the corpus in `data_dir`; the
    result is saved as a base model directory at `model_out`. With `stsb_dir` (a prepared STS
    task whose `valid` split is the dev set) STS-B dev Spearman is the monitored score."""

    name = "simcse"

    def __init__(
        self,
        spec: SimCSESpec,
        data_dir: str | os.PathLike,
        model_dir: str | os.PathLike,
        model_out: str | os.PathLike,
        stsb_dir: str | os.PathLike | None = None,
    ) -> None:
        if spec.pooler not in ("mlp", "base"):
            raise ValueError(f"run {spec.run}: pooler must be 'mlp' or 'base', got {spec.pooler!r}")
        if spec.dropout is None or not 0.0 < spec.dropout < 1.0:
            raise ValueError(
                f"run {spec.run}: SimCSE needs a dropout in (0, 1), got {spec.dropout}: the two"
                " views of a sentence differ by dropout alone"
            )
        super().__init__(spec)
        self.data_dir, self.model_dir = Path(data_dir), Path(model_dir)
        self.model_out = Path(model_out)
        self.stsb_dir = Path(stsb_dir) if stsb_dir else None
        self.monitor = STSB if self.stsb_dir else HELDOUT
        self.metric = "spearman" if self.stsb_dir else "accuracy"
        self.final_splits = (HELDOUT, STSB) if self.stsb_dir else (HELDOUT,)

    def build(self) -> tuple[SimCSEModel, dict[str, Sentences]]:
        spec = self.spec
        encoder = load_encoder(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"{self.model_dir}: the tokenizer has no pad token")
        set_dropout(encoder, spec.dropout)
        model = SimCSEModel(encoder)
        texts = read_prepared(self.data_dir / "train.parquet")
        column = "text" if "text" in texts.columns else "text_a"
        texts = texts[column].astype(str).tolist()
        n_held = min(spec.heldout, len(texts) // 10)
        if len(texts) - n_held < 2:
            raise ValueError(f"{self.data_dir}: SimCSE needs at least 2 training sentences")
        enc = self.tokenizer(texts, truncation=True, max_length=spec.max_length)["input_ids"]
        pad = int(self.tokenizer.pad_token_id)
        data = {"train": Sentences(enc[: len(enc) - n_held], pad)}
        data[HELDOUT] = Sentences(enc[len(enc) - n_held :] or enc[:64], pad)
        if self.stsb_dir:
            data[STSB] = self._sts_pairs(pad)
        return model, data

    def _sts_pairs(self, pad: int) -> SentencePairs:
        dev = read_prepared(self.stsb_dir / "valid.parquet")
        if dev["text_b"].isna().any() or len(dev) < 3:
            raise ValueError(
                f"{self.stsb_dir}/valid.parquet: the STS-B dev set needs sentence pairs"
                " (text_a, text_b, label) and at least 3 rows; name a dataset of task stsb"
            )

        def tok(col: str) -> Sentences:
            texts = dev[col].astype(str).tolist()
            ids = self.tokenizer(texts, truncation=True, max_length=self.spec.max_length)
            return Sentences(ids["input_ids"], pad)

        return SentencePairs(tok("text_a"), tok("text_b"), dev["label"].to_numpy(float))

    def inputs_fingerprint(self) -> str:
        fp = model_files_fingerprint(self.data_dir, self.model_dir)
        if self.stsb_dir:
            fp += ":" + model_files_fingerprint(self.stsb_dir, self.model_dir)
        return fp

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast(batch["input_ids"].device):
            z1, z2 = two_views(model, batch)
        return info_nce(z1, z2, self.spec.temperature)

    def evaluate(
        self,
        model: Any,
        data: dict[str, Sentences],
        split: str,
        device: torch.device,
        with_loss: bool,
    ) -> dict[str, float]:
        if split == STSB:
            size = self.spec.eval_batch_size or self.spec.batch_size
            return {"spearman": sts_spearman(model.encoder, data[STSB], size, device)}
        part = data[split]
        size = self.spec.batch_size
        losses, hits, n = [], 0, 0
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.spec.seed)
            for start in range(0, len(part) - 1, size):
                rows = list(range(start, min(start + size, len(part))))
                if len(rows) < 2:
                    break
                z1, z2 = two_views(model, part.batch(rows, device))
                losses.append(float(info_nce(z1, z2, self.spec.temperature)) * len(rows))
                sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1)
                hits += int((sim.argmax(1) == torch.arange(len(rows), device=device)).sum())
                n += len(rows)
        return {"accuracy": hits / n, "loss": float(np.sum(losses) / n)}

    def save(self, model: Any, out_dir: Path, final: dict[str, dict[str, float]], **info: Any):
        """The encoder (its pooler = the MLP, or none: `spec.pooler`) with the base model's
        dropout config and its tokenizer at `model_out`; the held-out scores in the run's
        eval.parquet."""
        from transformers import AutoConfig

        base = AutoConfig.from_pretrained(str(self.model_dir))
        encoder = model.encoder
        for key, value in base.to_dict().items():
            if "dropout" in key and isinstance(value, (int, float)):
                setattr(encoder.config, key, value)
        state = dict(encoder.state_dict())
        if self.spec.pooler == "mlp":
            state["pooler.dense.weight"] = model.mlp[0].weight.detach()
            state["pooler.dense.bias"] = model.mlp[0].bias.detach()
        with atomic_dir(self.model_out) as tmp, quiet_hf_progress():
            encoder.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            write_json(
                {
                    "source": "simcse",
                    "base": str(self.model_dir),
                    "spec": self.spec.to_dict(),
                    "final": final,
                    "selected": self._selected(info),
                    **info,
                },
                tmp / BUILD_INFO,
            )
        self.write_eval(out_dir, "simcse", final)

    def _selected(self, info: dict[str, Any]) -> dict[str, Any]:
        """Which weights were saved: the step (and its monitored score) keep-best chose, or
        the last step."""
        if self.spec.keep_best and info.get("best_step") is not None:
            return {
                "step": info["best_step"],
                "split": self.monitor,
                "metric": self.metric,
                "score": info.get("best_score"),
            }
        return {"step": info.get("steps"), "split": None, "metric": None, "score": None}


def simcse(
    spec: SimCSESpec,
    data_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    model_out: str | os.PathLike,
    run_dir: str | os.PathLike,
    hooks: Sequence[Any] = (),
    device: str | torch.device | None = None,
    stsb_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """SimCSE continued training through the engine (resumes from `run_dir`'s checkpoint)."""
    recipe = SimCSERecipe(spec, data_dir, model_dir, model_out, stsb_dir)
    return fit(recipe, run_dir, hooks, device)
