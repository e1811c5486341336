"""Causal-LM pre-training from scratch (S4): a recipe of the engine.

The model is `tuneatlas.models.llama_ffn.FFNLlamaForCausalLM` with the spec's per-layer FFN
widths, initialised from the run's seed; the data are packed token files
(`tuneatlas.data.tokens`): each training row is a block of `seq_len` + 1 tokens, the loss the
mean next-token cross-entropy over the block. The token budget becomes steps in the plan
(tokens / (batch_size x seq_len)); the global batch goes through gradient accumulation with
`micro_batch_size`, and over DDP ranks, in the loop. Scores: validation loss and perplexity.
The saved model directory (`<run>/model/`) holds the model and the tokenizer of the tokens.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuneatlas.data.tokens import META_FILE, TokenBlocks, content_hash
from tuneatlas.engine.loop import fit
from tuneatlas.engine.recipes import Recipe
from tuneatlas.io import atomic_dir, stable_hash
from tuneatlas.models.hub import quiet_hf_progress
from tuneatlas.spec import PretrainSpec


def build_causal_lm(spec: PretrainSpec, vocab_size: int, eos_id: int) -> torch.nn.Module:
    from tuneatlas.models.llama_ffn import FFNLlamaConfig, FFNLlamaForCausalLM

    if len(spec.ffn_widths) != spec.num_layers:
        raise ValueError(
            f"run {spec.run}: {len(spec.ffn_widths)} FFN widths for {spec.num_layers} layers"
        )
    config = FFNLlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=max(spec.ffn_widths),
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        ffn_widths=list(spec.ffn_widths),
        max_position_embeddings=spec.seq_len,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    return FFNLlamaForCausalLM(config)


class CausalLMRecipe(Recipe):
    """Pre-train a fresh FFN-layout LLaMA on the packed tokens in `tokens_dir`."""

    name = "causal_lm"
    metric = "neg_loss"  # higher is better, as the loop's keep-best expects
    final_splits = ("valid",)

    def __init__(self, spec: PretrainSpec, tokens_dir: str | os.PathLike) -> None:
        if spec.keep_best:
            raise ValueError(f"run {spec.run}: keep_best is not for pre-training")
        super().__init__(spec)
        self.tokens_dir = Path(tokens_dir)

    def build(self) -> tuple[torch.nn.Module, dict[str, TokenBlocks]]:
        import json

        meta = json.loads((self.tokens_dir / META_FILE).read_text())
        model = build_causal_lm(self.spec, meta["vocab_size"], meta["eos_id"])
        data = {
            s: TokenBlocks.open(self.tokens_dir, s, self.spec.seq_len) for s in ("train", "valid")
        }
        return model, data

    def inputs_fingerprint(self) -> str:
        """The token files' content (sha256 from `tokenize`) and metadata: a re-tokenised corpus
        of exactly the same size still makes an old checkpoint stale."""
        meta = (self.tokens_dir / META_FILE).read_text()
        return stable_hash({"content": content_hash(self.tokens_dir), "meta": meta}, 32)

    def describe(self, data: dict[str, Any]) -> str:
        blocks = data["train"]
        return f"{len(blocks)} blocks of {blocks.seq_len} tokens"

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        with self.autocast(ids.device):
            logits = model(input_ids=ids[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())

    def evaluate(
        self,
        model: Any,
        data: dict[str, TokenBlocks],
        split: str,
        device: torch.device,
        with_loss: bool,
    ) -> dict[str, float]:
        blocks, size = data[split], self.spec.eval_batch_size
        was_training = model.training
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(blocks), size):
                rows = range(start, min(start + size, len(blocks)))
                ids = blocks.batch(rows, device)["input_ids"]
                logits = model(input_ids=ids[:, :-1]).logits.float()
                total += float(
                    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
                )
                n += ids[:, 1:].numel()
        model.train(was_training)
        loss = total / n
        return {"loss": loss, "neg_loss": -loss, "perplexity": math.exp(min(loss, 50.0))}

    def save(self, model: Any, out_dir: Path, final: dict[str, dict[str, float]], **info: Any):
        with atomic_dir(out_dir / "model") as tmp, quiet_hf_progress():
            model.save_pretrained(tmp, safe_serialization=True)
            for p in self.tokens_dir.iterdir():
                if p.suffix == ".json" and p.name != META_FILE:
                    shutil.copy2(p, tmp / p.name)  # the tokenizer of the tokens
        self.write_eval(out_dir, "pretrain", final)


def pretrain(
    spec: PretrainSpec,
    tokens_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    hooks: Sequence[Any] = (),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Pre-train through the engine (resumes from `run_dir`'s checkpoint)."""
    return fit(CausalLMRecipe(spec, tokens_dir), run_dir, hooks, device)
