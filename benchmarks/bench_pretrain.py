"""Benchmark S4's pre-training loop against `transformers.Trainer` on the same work.

Same FFN-layout LLaMA (config.yaml's toy size by default, baseline layout), same packed tokens
(a BPE-tokenised synthetic corpus built here), same global batch, sequence length, AdamW (0.9,
0.95, weight decay 0.1, no decay on 1-D tensors), warm-up + cosine schedule and gradient
clipping. Each method runs in its own subprocess, one after the other: `--steps` optimiser
steps, the first `--warmup` of them untimed; tokens/s = timed steps x batch x seq_len / seconds.
Trainer runs with its defaults for everything else (no evaluation, no saving, no logging
callbacks, dataloader in the main process).

    .venv/bin/python benchmarks/bench_pretrain.py                # toy size, 40 steps
    .venv/bin/python benchmarks/bench_pretrain.py --hidden 256 --layers 8 --steps 30

Prints a table and one JSON line: tokens_per_s, hf_trainer_tokens_per_s,
speedup_vs_hf_trainer (target >= 1.2 on the 2-core development machine); on CUDA also the
model FLOPs utilisation (6 N + 12 L d T FLOPs per token against the GPU's dense bf16 peak, for
the GPUs in PEAK_TFLOPS).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.2
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=224)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--method", choices=("ours", "trainer"), help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _spec(a, run: str):
    from tuneatlas.spec import OptimSpec, PretrainSpec, ScheduleSpec

    return PretrainSpec(
        run=run, task="pretrain", dataset="bench", tokens="tokens", seed=0, epochs=1e9,
        max_steps=a.steps, batch_size=a.batch, eval_batch_size=64, seq_len=a.seq_len,
        hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
        ffn_widths=[a.ffn] * a.layers, grad_clip=1.0, checkpoint_every="none",
        optim=OptimSpec(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1),
        schedule=ScheduleSpec(name="cosine", warmup_steps=2),
    )  # fmt: skip


class StepClock:
    """Wall-clock time of every optimiser step's end."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, *args, **kwargs):  # engine hook and TrainerCallback alike
        self.times.append(time.perf_counter())


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(a) -> list[float]:
    from tuneatlas.engine.loop import fit
    from tuneatlas.engine.recipes.causal_lm import CausalLMRecipe

    clock = StepClock()
    recipe = CausalLMRecipe(_spec(a, "ours"), a.tokens)
    recipe.final_splits = ()  # no final evaluation: training throughput only
    with tempfile.TemporaryDirectory() as out:
        fit(recipe, out, hooks=[clock], device=a.device)
    return clock.times


def run_trainer(a) -> list[float]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tuneatlas.data.tokens import TokenBlocks
    from tuneatlas.engine.recipes.causal_lm import build_causal_lm

    meta = json.loads((Path(a.tokens) / "tokens.json").read_text())
    torch.manual_seed(0)
    model = build_causal_lm(_spec(a, "trainer"), meta["vocab_size"], meta["eos_id"])
    blocks = TokenBlocks.open(a.tokens, "train", a.seq_len)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            ids = blocks.batch([i])["input_ids"][0, :-1]
            return {"input_ids": ids, "labels": ids}

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.on_step_end()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=a.batch, max_steps=a.steps,
            learning_rate=3e-4, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1,
            lr_scheduler_type="cosine", warmup_steps=2, max_grad_norm=1.0, logging_strategy="no",
            save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0,
            use_cpu=a.device == "cpu", disable_tqdm=True,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[Clock()]).train()
    return clock.times


def _make_tokens(root: Path) -> Path:
    from tuneatlas.data import synthetic
    from tuneatlas.data.tokens import pack, train_bpe

    docs, _ = synthetic.pretrain_corpus(1500, seed=0)
    texts = docs["text"].tolist()
    out = root / "tokens"
    pack(texts, train_bpe(texts, 1024, out), out)
    return out


def _flops_per_token(a) -> float:
    from tuneatlas.models.layouts import llama_params

    vocab = 1024
    n = llama_params(a.hidden, [a.ffn] * a.layers, vocab) - 2 * vocab * a.hidden
    return 6 * n + 12 * a.layers * a.hidden * a.seq_len


def main(argv=None) -> None:
    a = _args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.method:  # a child process: time one method, print its step times
        times = run_ours(a) if a.method == "ours" else run_trainer(a)
        print(json.dumps(times))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokens = _make_tokens(Path(tmp))
        rates = {}
        for method in ("ours", "trainer"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--method", method, "--tokens",
                   str(tokens)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            times = json.loads(out.strip().splitlines()[-1])
            timed = times[a.warmup :]
            seconds = timed[-1] - timed[0]
            rates[method] = (len(timed) - 1) * a.batch * a.seq_len / seconds
    speedup = rates["ours"] / rates["trainer"]
    print(f"L={a.layers} d={a.hidden} d_f={a.ffn} T={a.seq_len} B={a.batch}, {a.steps} steps"
          f" ({a.warmup} untimed), torch threads {a.threads}, device {a.device}")  # fmt: skip
    print(f"{'method':<22} {'tokens/s':>12}")
    print(f"{'tuneatlas engine':<22} {rates['ours']:>12,.0f}")
    print(f"{'transformers.Trainer':<22} {rates['trainer']:>12,.0f}")
    print(f"speedup {speedup:.2f} (target >= {TARGET})")
    result = {
        "tokens_per_s": rates["ours"],
        "hf_trainer_tokens_per_s": rates["trainer"],
        "speedup_vs_hf_trainer": speedup,
        "target": TARGET,
    }
    if a.device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        achieved = rates["ours"] * _flops_per_token(a) / 1e12
        result.update(gpu=name, tflops=achieved, mfu=achieved / peak if peak else None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
