"""Benchmark S4's pre-training loop against a bare PyTorch loop and `transformers.Trainer`.

Three methods train the same FFN-layout LLaMA (config.yaml's toy size by default, baseline
layout, built from the same seed) on the same batches (the engine's seeded epoch order over the
same packed tokens), with the same global batch, sequence length, precision, AdamW (0.9, 0.95,
weight decay 0.1 on >= 2-D tensors), warm-up + cosine schedule and gradient clipping:

- engine: `tuneatlas.engine.loop.fit` with `CausalLMRecipe` (hooks, metrics, progress, ...);
- bare: the model, torch's fused AdamW, clipping and the schedule in a short loop, nothing
  else: the floor the engine's overhead is measured against (target <= 5%);
- trainer: `transformers.Trainer` with its defaults for everything else (fused AdamW, no
  evaluation, saving or logging, dataloader in the main process).

Why interleaved: on a shared machine the load changes from second to second, so methods timed
one after the other see different machines (one such run gave 0.15x, a quiet one 1.01x). Each
method runs in its own long-lived worker process, all with the same torch/OpenMP threads; each
first runs `--warmup` untimed steps (compilation happens there), then the parent lets the
workers run `--chunk` steps each in turn, in a rotating order, `--repeats` times. A method's
tokens/s is the median over its chunks, its spread the min-max; the ratios are medians of the
per-round ratios (the methods of one round ran seconds apart). The load average is printed
before and after.

`--compile on` (the default) runs the engine with `compile: true` (the pre-training setting
`studies.s4.compile`) and the bare loop with its loss function (model + cross-entropy)
compiled as the engine compiles it, both Inductor; Trainer
stays eager unless `--trainer-compile` (its own `torch_compile` argument). The table says which.

    .venv/bin/python benchmarks/bench_pretrain.py                  # toy size, compile on
    .venv/bin/python benchmarks/bench_pretrain.py --compile off    # eager kernels everywhere
    .venv/bin/python benchmarks/bench_pretrain.py --device cuda --precision bf16 \\
        --hidden 1280 --layers 12 --ffn 4480 --seq-len 1024 --batch 8

Prints a table and one JSON line (speedup_vs_trainer, target >= 1.2 on the 2-core development
machine; engine_overhead_vs_bare, target <= 0.05). On CUDA also each method's model FLOPs
utilisation: `tuneatlas.estimate.Arch.flops_per_token` (the LM head counted, the input embedding
lookups not, attention included) against the GPU's dense peak at the precision the run used
(bf16 autocast, TF32 or fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.2
MAX_OVERHEAD = 0.05
METHODS = ("engine", "bare", "trainer")
SEED = 0
VOCAB = 1024  # the BPE trained on the benchmark's corpus


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=224)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=8, help="untimed steps per method (compile)")
    p.add_argument("--chunk", type=int, default=10, help="timed steps per method and round")
    p.add_argument("--repeats", type=int, default=7, help="rounds of interleaved chunks")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", choices=("on", "off"), default="on")
    p.add_argument("--trainer-compile", action="store_true")
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "unset"),
        default="unset",
        help="OMP_WAIT_POLICY of every worker (unset: libgomp's default; passive: idle OpenMP"
        " threads sleep, see _start)",
    )
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _spec(a):
    from tuneatlas.spec import OptimSpec, PretrainSpec, ScheduleSpec

    return PretrainSpec(
        run="bench", task="pretrain", dataset="bench", tokens="tokens", seed=SEED, epochs=1e9,
        max_steps=a.warmup + a.chunk * a.repeats, batch_size=a.batch, eval_batch_size=64,
        seq_len=a.seq_len, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
        ffn_widths=[a.ffn] * a.layers, grad_clip=1.0, checkpoint_every="none",
        precision=a.precision, compile=a.compile == "on",
        optim=OptimSpec(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1),
        schedule=ScheduleSpec(name="cosine", warmup_steps=2),
    )  # fmt: skip


class Pacer:
    """Called at every optimiser step's end (engine hook, TrainerCallback, bare loop alike):
    after the untimed warm-up and after every chunk it reports the chunk's seconds to the
    parent on stdout and blocks until the parent says "go" on stdin."""

    def __init__(self, warmup: int, chunk: int, device: str) -> None:
        self.warmup, self.chunk, self.device, self.steps = warmup, chunk, device, 0
        self.t0: float | None = None

    def on_step_end(self, *args, **kwargs) -> None:
        self.steps += 1
        done = self.steps - self.warmup
        if done < 0 or done % self.chunk:
            return
        _sync(self.device)  # CUDA: the chunk ends when its kernels have run
        if self.t0 is not None:
            print(f"chunk {time.perf_counter() - self.t0}", flush=True)
        else:
            print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(0)  # the parent is done with this worker
        self.t0 = time.perf_counter()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _batches(a, device: str):
    """The engine's batches, endlessly: its seeded epoch order over the token blocks."""
    from tuneatlas.data.tokens import TokenBlocks
    from tuneatlas.engine.loop import epoch_order

    blocks = TokenBlocks.open(a.tokens, "train", a.seq_len)
    spe = len(blocks) // a.batch  # every batch full (the engine's last one per epoch is short)
    epoch = 0
    while True:
        order = epoch_order(len(blocks), SEED, epoch).tolist()
        for b in range(spe):
            yield blocks.batch(order[b * a.batch : (b + 1) * a.batch], device)["input_ids"]
        epoch += 1


def _model(a):
    import torch

    from tuneatlas.engine.recipes.causal_lm import build_causal_lm

    meta = json.loads((Path(a.tokens) / "tokens.json").read_text())
    torch.manual_seed(SEED)
    return build_causal_lm(_spec(a), meta["vocab_size"], meta["eos_id"])


def run_engine(a, pacer: Pacer) -> None:
    from tuneatlas.engine.loop import fit
    from tuneatlas.engine.recipes.causal_lm import CausalLMRecipe

    recipe = CausalLMRecipe(_spec(a), a.tokens)
    recipe.final_splits = ()  # no final evaluation: training throughput only
    with tempfile.TemporaryDirectory() as out:
        fit(recipe, out, hooks=[pacer], device=a.device)


def run_bare(a, pacer: Pacer) -> None:
    """Model, AdamW, clipping, schedule, the same batches: the arithmetic of the spec and no
    other work."""
    import torch
    import torch.nn.functional as F

    from tuneatlas.engine.optim import make_scheduler

    spec = _spec(a)
    model = _model(a).to(a.device)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), fused=True)
    sched = make_scheduler(opt, spec.schedule, 10**9, spec.max_steps)
    bf16 = a.precision == "bf16" and a.device.startswith("cuda")

    def loss_of(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())

    # compiled as the engine compiles it (model and loss, static shapes)
    loss_fn = torch.compile(loss_of, dynamic=False) if spec.compile else loss_of
    batches = _batches(a, a.device)
    for _ in range(spec.max_steps):
        loss = loss_fn(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        pacer.on_step_end()


def run_trainer(a, pacer: Pacer) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Blocks(torch.utils.data.IterableDataset):
        """The engine's batches, one sequence at a time (Trainer batches them again); an
        iterable dataset, so Trainer's own shuffling does not reorder them."""

        def __iter__(self):
            for ids in _batches(a, "cpu"):
                for row in ids:
                    yield {"input_ids": row[:-1], "labels": row[:-1]}  # the model shifts labels

    class Pace(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            pacer.on_step_end()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=a.batch, max_steps=_spec(a).max_steps,
            learning_rate=3e-4, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1,
            lr_scheduler_type="cosine", warmup_steps=2, max_grad_norm=1.0, logging_strategy="no",
            save_strategy="no", report_to=[], dataloader_num_workers=0, seed=SEED,
            use_cpu=a.device == "cpu", disable_tqdm=True, bf16=a.precision == "bf16",
            torch_compile=a.trainer_compile,
        )  # fmt: skip
        Trainer(model=_model(a), args=args, train_dataset=Blocks(), callbacks=[Pace()]).train()


def _make_tokens(a, root: Path) -> Path:
    """A corpus long enough that no method reaches the end of an epoch: the engine's last batch
    of an epoch is short (a compiled model compiles a graph for it), the others' are full."""
    from tuneatlas.data import synthetic
    from tuneatlas.data.tokens import pack, train_bpe

    tokens = (a.warmup + a.chunk * a.repeats + 1) * a.batch * (a.seq_len + 1)
    # a synthetic document is about 51 BPE tokens (1,500 documents: 77k); 20% to spare
    documents = max(1500, math.ceil(1.2 * tokens / 51))
    docs, _ = synthetic.pretrain_corpus(documents, seed=0)
    texts = docs["text"].tolist()
    out = root / "tokens"
    pack(texts, train_bpe(texts, VOCAB, out), out)
    return out


def _worker(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    pacer = Pacer(a.warmup, a.chunk, a.device)
    {"engine": run_engine, "bare": run_bare, "trainer": run_trainer}[a.method](a, pacer)


def _start(a, method: str, tokens: Path) -> subprocess.Popen:
    # the same threads for torch's intra-op pool and for OpenMP (Inductor's C++ kernels)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    if a.omp_wait_policy != "unset":
        # Spinning OpenMP threads wait at every kernel's barrier for a thread the OS gave to
        # another process: on a loaded 2-core machine a compiled step of many small kernels
        # took 5-15x longer (measured); passive waiting sleeps instead, but slows eager
        # kernels on a quiet machine. Not the default: it moves the ratio (benchmarks/README).
        # libgomp reads it at start-up.
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy.upper()
    cmd = [sys.executable, __file__, *sys.argv[1:], "--method", method, "--tokens", str(tokens)]
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
    )


def _expect(proc: subprocess.Popen, what: str) -> str:
    """The worker's next protocol line (other output, e.g. library warnings, is skipped)."""
    for line in proc.stdout:
        if line.startswith(what):
            return line[len(what) :].strip()
    raise RuntimeError(f"worker {proc.args[-3]} exited (status {proc.wait()}) before {what!r}")


def measure(a, tokens: Path) -> dict[str, list[float]]:
    """Seconds of each method's chunks, round by round; warm-up (and compilation) of the
    workers one at a time, so that no worker's compilation overlaps another's timed chunk."""
    workers = {}
    for m in METHODS:
        workers[m] = _start(a, m, tokens)
        _expect(workers[m], "ready")
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    try:
        for r in range(a.repeats):
            order = METHODS[r % 3 :] + METHODS[: r % 3]  # nobody always goes first
            for m in order:
                workers[m].stdin.write("go\n")
                workers[m].stdin.flush()
                seconds[m].append(float(_expect(workers[m], "chunk ")))
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=60)
    return seconds


def _mfu(a, rates: dict[str, float]) -> dict[str, object]:
    """TFLOPS and MFU per method against the peak of the precision the runs used (no method
    turns TF32 on here: fp32 or bf16 autocast)."""
    import torch

    from tuneatlas.estimate import Arch, matmul_precision, training_mfu

    arch = Arch(a.layers, a.hidden, (a.ffn,) * a.layers, a.heads, VOCAB, causal=True)
    name, precision = torch.cuda.get_device_name(), matmul_precision(a.precision, tf32=False)
    out = {m: training_mfu(r, arch, a.seq_len, name, precision) for m, r in rates.items()}
    return {
        "gpu": name,
        "mfu_precision": precision,
        "tflops": {m: t for m, (t, _) in out.items()},
        "mfu": {m: u for m, (_, u) in out.items()},
    }


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summarise(a, seconds: dict[str, list[float]], load: list[list[float]]) -> dict[str, object]:
    tokens = a.chunk * a.batch * a.seq_len
    rates = {m: [tokens / s for s in seconds[m]] for m in METHODS}
    med = {m: statistics.median(r) for m, r in rates.items()}
    # per-round ratios: the methods of one round shared the machine's state
    vs_trainer = [e / t for e, t in zip(rates["engine"], rates["trainer"], strict=True)]
    vs_bare = [b / e - 1 for e, b in zip(rates["engine"], rates["bare"], strict=True)]
    return {
        "speedup_vs_trainer": statistics.median(vs_trainer),
        "speedup_vs_trainer_range": [min(vs_trainer), max(vs_trainer)],
        "engine_overhead_vs_bare": statistics.median(vs_bare),
        "engine_overhead_vs_bare_range": [min(vs_bare), max(vs_bare)],
        "tokens_per_s": med,
        "tokens_per_s_range": {m: [min(r), max(r)] for m, r in rates.items()},
        "compile": {
            "engine": a.compile == "on",
            "bare": a.compile == "on",
            "trainer": a.trainer_compile,
        },
        "threads": a.threads,
        "omp_wait_policy": a.omp_wait_policy,
        "device": a.device,
        "precision": a.precision,
        "repeats": a.repeats,
        "steps_per_chunk": a.chunk,
        "loadavg_before": load[0],
        "loadavg_after": load[1],
        "target_speedup": TARGET,
        "target_overhead": MAX_OVERHEAD,
    }


def report(a, result: dict) -> None:
    compiled = result["compile"]
    print(
        f"L={a.layers} d={a.hidden} d_f={a.ffn} T={a.seq_len} B={a.batch}, device {a.device}"
        f" {a.precision}, torch/OpenMP threads {a.threads} (OMP_WAIT_POLICY {a.omp_wait_policy});"
        f" {a.warmup} untimed steps, then"
        f" {a.repeats} interleaved rounds of {a.chunk} steps per method"
    )
    print(f"load average (1, 5, 15 min) before {result['loadavg_before']}, after"
          f" {result['loadavg_after']}")  # fmt: skip
    print(f"{'method':<22} {'compile':<8} {'median tok/s':>13} {'min':>9} {'max':>9}")
    names = {"engine": "tuneatlas engine", "bare": "bare PyTorch loop",
             "trainer": "transformers.Trainer"}  # fmt: skip
    for m in METHODS:
        lo, hi = result["tokens_per_s_range"][m]
        on = "on" if compiled[m] else "off"
        print(f"{names[m]:<22} {on:<8} {result['tokens_per_s'][m]:>13,.0f} {lo:>9,.0f} {hi:>9,.0f}")
    s, (slo, shi) = result["speedup_vs_trainer"], result["speedup_vs_trainer_range"]
    o, (olo, ohi) = result["engine_overhead_vs_bare"], result["engine_overhead_vs_bare_range"]
    print(f"engine / Trainer: median {s:.2f} (rounds {slo:.2f}-{shi:.2f}), target >= {TARGET}")
    print(f"engine overhead over bare: median {o:+.1%} (rounds {olo:+.1%} to {ohi:+.1%}),"
          f" target <= {MAX_OVERHEAD:.0%}")  # fmt: skip


def main(argv=None) -> None:
    a = _args(argv)
    if a.method:  # a worker process
        _worker(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokens = _make_tokens(a, Path(tmp))
        load = [_loadavg()]
        seconds = measure(a, tokens)
        load.append(_loadavg())
    result = summarise(a, seconds, load)
    if a.device.startswith("cuda"):
        result.update(_mfu(a, result["tokens_per_s"]))
    report(a, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
