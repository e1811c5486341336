"""Masked-LM pre-training of the toy BERT (`models.<id>` with `source: build`): a recipe of the
engine, and `build_bert`, the whole build of such a model.

`build_bert` trains the WordPiece tokenizer on the corpus, initialises a BERT from the seed,
pre-trains it through the loop for `mlm_steps` steps, and writes the encoder directory
(`tuneatlas.models.build.save_encoder`) with `tuneatlas_build.json`, whose `mlm_losses` are the
run's per-step losses from `metrics.parquet`. The loop's checkpoint, metrics and spec go to a
run directory beside it (`.<id>.mlm/`), so a killed build resumes.

The masking is BERT's: 15% of the non-special tokens are chosen, of which 80% become [MASK],
10% a random token and 10% stay; the loss is the cross-entropy on the chosen tokens. Its
random draws come from the global torch RNG on the CPU, which the loop seeds and checkpoints,
so a build is deterministic on CPU for a fixed seed, resumed or not.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from tuneatlas.data.labelled import Sentences
from tuneatlas.engine.loop import fit
from tuneatlas.engine.recipes import Recipe
from tuneatlas.io import atomic_dir, stable_hash
from tuneatlas.models.build import bert_build_config, init_bert, save_encoder, train_tokenizer
from tuneatlas.models.hub import quiet_hf_progress
from tuneatlas.spec import MLMSpec, OptimSpec

log = logging.getLogger(__name__)

IGNORED = -100  # the label of a token that is not predicted


def mask_tokens(
    ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Any, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of BERT's masking of the CPU batch `ids`; labels are IGNORED except at
    the chosen tokens. Draws from the global torch RNG."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    candidates = attention_mask.bool() & ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape) < probability) & candidates
    labels = ids.masked_fill(~chosen, IGNORED)
    r = torch.rand(ids.shape)
    inputs = ids.clone()
    inputs[chosen & (r < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    # the special tokens hold the first ids (SPECIAL_TOKENS): a random token is a word piece
    inputs[swap] = torch.randint(len(special), len(tokenizer), ids.shape)[swap]
    return inputs, labels


class MLMRecipe(Recipe):
    """Pre-train a freshly initialised BertForMaskedLM on `texts`; `save` writes the encoder
    directory's weights and build record to `model_dir` (the tokenizer is already there)."""

    name = "mlm"
    monitor = None
    final_splits = ()

    def __init__(
        self,
        spec: MLMSpec,
        build: dict[str, Any],
        tokenizer: Any,
        texts: list[str],
        model_dir: str | os.PathLike,
    ) -> None:
        super().__init__(spec)
        self.build_config, self.tokenizer, self.texts = build, tokenizer, texts
        self.model_dir = Path(model_dir)

    def build(self) -> tuple[torch.nn.Module, dict[str, Sentences]]:
        tok, spec = self.tokenizer, self.spec
        model = init_bert(self.build_config, len(tok), tok.pad_token_id, spec.seed)
        ids = tok(self.texts, truncation=True, max_length=spec.max_length)["input_ids"]
        return model, {"train": Sentences(ids, int(tok.pad_token_id))}

    def inputs_fingerprint(self) -> str:
        """The corpus and the architecture (the spec holds only the training's fields)."""
        texts = hashlib.sha256("\n".join(self.texts).encode()).hexdigest()
        return stable_hash({"texts": texts, "build": self.build_config}, 32)

    def describe(self, data: dict[str, Sentences]) -> str:
        return f"{len(data['train'])} texts, vocabulary {len(self.tokenizer)}"

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        inputs, labels = mask_tokens(
            ids.cpu(), mask.cpu(), self.tokenizer, self.spec.mlm_probability
        )
        labels = labels.to(ids.device)
        with self.autocast(ids.device):
            logits = model(input_ids=inputs.to(ids.device), attention_mask=mask).logits
        total = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORED, reduction="sum"
        )
        # mean over the chosen tokens; a batch with none (tiny texts) gives 0 and no gradient
        return total / max(1, int((labels != IGNORED).sum()))

    def save(self, model: Any, out_dir: Path, final: dict[str, dict[str, float]], **info: Any):
        losses = pd.read_parquet(out_dir / "metrics.parquet")["loss"].dropna().tolist()
        save_encoder(model, self.model_dir, self.spec.seed, self.build_record(losses))

    def build_record(self, losses: list[float]) -> dict[str, Any]:
        """`tuneatlas_build.json` (save_encoder adds the parameter count)."""
        return {
            "kind": "bert",
            "config": self.build_config,
            "seed": self.spec.seed,
            "vocab_size": len(self.tokenizer),
            "num_texts": len(self.texts),
            "mlm_losses": [round(x, 6) for x in losses],
        }


def mlm_spec(build: dict[str, Any], run: str, seed: int) -> MLMSpec:
    """The masked-LM run of a checked build config: `mlm_steps` steps (an epoch has at least
    one step, so `mlm_steps` epochs never run short), AdamW with weight decay 0.01."""
    steps = int(build["mlm_steps"])
    return MLMSpec(
        run=run,
        seed=seed,
        epochs=float(steps),
        max_steps=steps,
        batch_size=int(build["mlm_batch_size"]),
        max_length=int(build["mlm_max_length"]),
        mlm_probability=float(build["mlm_probability"]),
        optim=OptimSpec(lr=float(build["mlm_lr"]), weight_decay=0.01),
    )


def build_bert(
    cfg: dict[str, Any],
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    seed: int,
    run_dir: str | os.PathLike | None = None,
) -> Path:
    """Build a small BERT encoder offline: tokenizer trained on `texts`, random init from `seed`,
    then `mlm_steps` masked-LM steps on `texts` (`models.build.bert_build_config` lists the
    `cfg` keys). Writes `out_dir` atomically: config + model.safetensors (a BertModel with
    pooler, like hub BERTs) + tokenizer + `tuneatlas_build.json`; the masked-LM run's directory
    is `run_dir` (default: `.<name>.mlm` beside `out_dir`). Deterministic on CPU for a fixed
    seed."""
    c = bert_build_config(dict(cfg))
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"build_bert: no non-empty texts to train the tokenizer for {out_dir}")
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir.with_name(f".{out_dir.name}.mlm")
    with atomic_dir(out_dir) as tmp, quiet_hf_progress():
        tokenizer = train_tokenizer(
            texts, int(c["vocab_size"]), tmp, model_max_length=int(c["max_position_embeddings"])
        )
        recipe = MLMRecipe(mlm_spec(c, out_dir.name, seed), c, tokenizer, texts, tmp)
        if c["mlm_steps"] > 0:
            fit(recipe, run_dir)
        else:
            model = init_bert(c, len(tokenizer), tokenizer.pad_token_id, seed)
            save_encoder(model, tmp, seed, recipe.build_record([]))
    log.info(
        "built BERT %s: %d layers, hidden %d, vocab %d, %d MLM steps",
        out_dir,
        c["num_layers"],
        c["hidden_size"],
        len(tokenizer),
        c["mlm_steps"],
    )
    return out_dir
