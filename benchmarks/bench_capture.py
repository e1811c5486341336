"""Training-time overhead of in-loop S3 capture (`tuneatlas.analysis.capture.EmbeddingCapture`).

One TrainSpec is trained with capture off and with capture on (every 10 steps, 10 probe rows per
class, the whole test split recorded), alternating the two conditions (off/on, on/off, ...) over
`--repeats` repetitions each, in fresh output directories. Reported per model scale: median wall
time of `train.train` for each condition, the overhead ratio on - off, the time spent inside the
capture hook, captures count and storage per capture; then an estimate (a model, not a
measurement) of how the overhead scales to the paper's set-up.

Data: the synthetic 9-class `livedoor` mirror, imbalanced like S3's main run (3 classes x 400,
3 x 100, 3 x 10 train rows = 1530, classes assigned to groups at random), a balanced 405-row test
split (45 per class) and a 90-row valid split (10 per class). Model: the toy BERT of config.yaml
(hidden 64, 4 layers, 4 heads, intermediate 128, vocab 2000) built offline without MLM steps
(pre-training changes no timing); training as S3's toy config (batch 32, eval batch 256,
max_length 48, 10 epochs, constant lr 5e-4, checkpoint every 50 steps). `--hidden/--layers` add a
second, bigger scale.

    .venv/bin/python benchmarks/bench_capture.py            # toy scale, 3 repeats
    .venv/bin/python benchmarks/bench_capture.py --quick    # 3 epochs, 2 repeats: a smoke run
    .venv/bin/python benchmarks/bench_capture.py --hidden 256 --layers 4

Prints a table and one JSON line (``{"bench": "capture", ...}``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the engine's progress bar would clutter the table

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tuneatlas.analysis.capture import (  # noqa: E402
    CAPTURES_DIR,
    EMBEDDINGS_FILE,
    SCORES_FILE,
    EmbeddingCapture,
)
from tuneatlas.data import synthetic  # noqa: E402
from tuneatlas.engine.recipes.finetune import finetune as train  # noqa: E402
from tuneatlas.engine.recipes.mlm import build_bert  # noqa: E402
from tuneatlas.spec import CaptureSpec, OptimSpec, ScheduleSpec, TrainSpec  # noqa: E402

SEED = 0
GROUP_SIZES = (400, 100, 10)  # S3 main run: 3 classes per group
CLASSES = 9
TEST_PER_CLASS = 45  # 405 test rows, as in the paper's balanced S3 test set
VALID_PER_CLASS = 10
TOY = {"hidden_size": 64, "num_layers": 4, "num_heads": 4, "intermediate_size": 128}
CAPTURE = CaptureSpec(every=10, probe_per_class=10, test_set=True, split="test")

# Paper set-up of S3 (paper.yaml / docs/studies.md), for the scaling estimate.
PAPER = {"n_test": 405, "every": 10, "batch": 32, "train_rows": 1530, "epochs": 10}


# --- set-up -----------------------------------------------------------------------------------
def make_data(out: Path, seed: int = SEED) -> dict[str, int]:
    """Imbalanced 9-class train, balanced test and valid splits as prepared parquet files."""
    rng = np.random.default_rng(seed)
    sizes = np.repeat(GROUP_SIZES, CLASSES // len(GROUP_SIZES))
    train_sizes = dict(zip(rng.permutation(CLASSES).tolist(), sizes.tolist(), strict=True))
    need = {c: train_sizes[c] + TEST_PER_CLASS + VALID_PER_CLASS for c in range(CLASSES)}
    n = 12 * sum(need.values())
    pool = synthetic.generate("livedoor", n, seed)
    parts: dict[str, list[Any]] = {"train": [], "valid": [], "test": []}
    for c in range(CLASSES):
        rows = pool[pool["label"] == c]
        if len(rows) < need[c]:
            raise RuntimeError(f"class {c}: {len(rows)} synthetic rows, need {need[c]}")
        parts["test"].append(rows.iloc[:TEST_PER_CLASS])
        parts["valid"].append(rows.iloc[TEST_PER_CLASS : TEST_PER_CLASS + VALID_PER_CLASS])
        start = TEST_PER_CLASS + VALID_PER_CLASS
        parts["train"].append(rows.iloc[start : start + train_sizes[c]])
    out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    counts = {}
    for split, frames in parts.items():
        df = pd.concat(frames).sort_values("idx").reset_index(drop=True)
        df.to_parquet(out / f"{split}.parquet")
        counts[split] = len(df)
    return counts


def make_model(out: Path, arch: dict[str, int]) -> Path:
    cfg = {**arch, "vocab_size": 2000, "max_position_embeddings": 128, "mlm_steps": 0}
    return build_bert(cfg, synthetic.tokenizer_texts(SEED), out, seed=SEED)


def base_spec(epochs: float) -> TrainSpec:
    return TrainSpec(
        run="bench-capture",
        task="livedoor",
        dataset="bench-livedoor-imb",
        model="bench-bert",
        seed=SEED,
        epochs=epochs,
        batch_size=32,
        eval_batch_size=256,
        max_length=48,
        optim=OptimSpec(lr=5e-4),
        schedule=ScheduleSpec(name="constant"),
        checkpoint_every=50,
    )


# --- instrumentation --------------------------------------------------------------------------
def clock() -> np.ndarray:
    """(wall, process CPU) seconds. CPU time is the robust one on shared, loaded cores: the
    engine runs one torch thread, so a job waiting for a core accrues wall time but no CPU."""
    return np.array([time.perf_counter(), time.process_time()])


class StepClock:
    """Hook timestamping every step end: the median gap is the cost of one training step."""

    def __init__(self) -> None:
        self.stamps: list[np.ndarray] = []

    def on_train_start(self, state: Any) -> None:
        self.stamps = [clock()]

    def on_step_end(self, state: Any) -> None:
        self.stamps.append(clock())

    def step_seconds(self) -> np.ndarray:
        return np.median(np.diff(np.stack(self.stamps), axis=0), axis=0)


class TimedCapture(EmbeddingCapture):
    """EmbeddingCapture that accounts the (wall, CPU) time spent in each of its engine calls."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.seconds = {k: np.zeros(2) for k in ("capture", "state_dict", "write")}
        self.capture_times: list[np.ndarray] = []

    def _maybe_capture(self, state: Any) -> None:
        n = len(self._steps)
        t = clock()
        super()._maybe_capture(state)
        dt = clock() - t
        self.seconds["capture"] += dt
        if len(self._steps) > n:
            self.capture_times.append(dt)

    def state_dict(self) -> dict[str, Any]:
        t = clock()
        try:
            return super().state_dict()
        finally:
            self.seconds["state_dict"] += clock() - t

    def write(self, out_dir: str | os.PathLike) -> Path:
        t = clock()
        try:
            return super().write(out_dir)
        finally:
            self.seconds["write"] += clock() - t


def run_once(spec: TrainSpec, data: Path, model: Path, out: Path, on: bool) -> dict[str, Any]:
    steps = StepClock()
    hooks: list[Any] = [steps]
    cap = None
    if on:
        spec = replace(spec, capture=CAPTURE)
        cap = TimedCapture(spec.capture)
        hooks.insert(0, cap)
    t = clock()
    result = train(spec, data, model, out, hooks=hooks, device="cpu")
    wall, cpu = clock() - t
    step_wall, step_cpu = steps.step_seconds()
    rec: dict[str, Any] = {
        "on": on,
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": int(result["steps"]),
        "step_s": step_wall,
        "step_cpu_s": step_cpu,
    }
    if cap is not None:
        caps = out / CAPTURES_DIR
        hook = sum(cap.seconds.values())
        per_capture = np.median(np.stack(cap.capture_times), axis=0)
        rec.update(
            captures=len(cap.steps),
            hook_s=hook[0],
            hook_cpu_s=hook[1],
            hook_parts_cpu_s={k: round(float(v[1]), 4) for k, v in cap.seconds.items()},
            capture_s=per_capture[0],
            capture_cpu_s=per_capture[1],
            file_bytes=(caps / EMBEDDINGS_FILE).stat().st_size
            + (caps / SCORES_FILE).stat().st_size,
        )
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in rec.items()}


# --- one scale --------------------------------------------------------------------------------
def timed_runs(
    name: str, spec: TrainSpec, data: Path, model: Path, work: Path, repeats: int
) -> list[dict[str, Any]]:
    """A warm-up, then `repeats` runs per condition, alternating off/on and on/off."""
    # Warm-up (imports, allocator, BLAS): a few steps with capture, not timed.
    run_once(replace(spec, max_steps=12), data, model, work / f"warm-{name}", on=True)
    records: list[dict[str, Any]] = []
    for r in range(repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for on in order:
            out = work / f"{name}-{'on' if on else 'off'}-{r}"
            rec = run_once(spec, data, model, out, on)
            records.append(rec)
            print(
                f"  [{name}] rep {r} capture {'on ' if on else 'off'}: {rec['wall_s']:.2f}s"
                + f" wall, {rec['cpu_s']:.2f}s CPU"
                + (
                    f" (hook {rec['hook_cpu_s']:.2f}s CPU, {rec['captures']} captures)"
                    if on
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )
    return records


def bench_scale(
    name: str, arch: dict[str, int], data: Path, counts: dict[str, int], work: Path, args: Any
) -> dict[str, Any]:
    model = make_model(work / f"model-{name}", arch)
    spec = base_spec(args.epochs)
    records = timed_runs(name, spec, data, model, work, args.repeats)
    off = [r for r in records if not r["on"]]
    on = [r for r in records if r["on"]]

    def med(key: str, runs: list[dict[str, Any]]) -> float:
        return float(statistics.median(r[key] for r in runs))

    off_s, on_s = med("wall_s", off), med("wall_s", on)
    off_cpu, on_cpu = med("cpu_s", off), med("cpu_s", on)
    step_cpu = med("step_cpu_s", off)  # one training step: collate, fwd, bwd, clip, AdamW
    capture_cpu = med("capture_cpu_s", on)  # one capture: eval forward of the test split
    n_test, hidden = counts["test"], arch["hidden_size"]
    # r = forward cost per test row / training cost per train row, the one ratio the overhead
    # depends on: overhead ~ n_test * r / (every * batch) (+ the step-0 and last captures).
    ratio_r = (capture_cpu / n_test) / (step_cpu / spec.batch_size)
    steps, captures = on[0]["steps"], on[0]["captures"]
    return {
        "scale": name,
        **arch,
        "train_rows": counts["train"],
        "test_rows": n_test,
        "steps": steps,
        "repeats": args.repeats,
        "off_s": off_s,
        "on_s": on_s,
        "overhead": on_s / off_s - 1.0,
        "off_cpu_s": off_cpu,
        "on_cpu_s": on_cpu,
        "cpu_overhead": on_cpu / off_cpu - 1.0,
        "off_runs_s": [round(r["wall_s"], 3) for r in off],
        "on_runs_s": [round(r["wall_s"], 3) for r in on],
        "off_runs_cpu_s": [round(r["cpu_s"], 3) for r in off],
        "on_runs_cpu_s": [round(r["cpu_s"], 3) for r in on],
        "hook_cpu_s": med("hook_cpu_s", on),
        "hook_share": med("hook_cpu_s", on) / off_cpu,
        "hook_parts_cpu_s": on[0]["hook_parts_cpu_s"],
        "captures": captures,
        "capture_s": med("capture_s", on),
        "capture_cpu_s": capture_cpu,
        "step_s": med("step_s", off),
        "step_cpu_s": step_cpu,
        "fwd_per_row_over_train_per_row": ratio_r,
        "predicted_overhead": captures * capture_cpu / (steps * step_cpu),
        "embedding_bytes_per_capture": n_test * hidden * 4,
        "file_bytes_per_capture": med("file_bytes", on) / captures,
    }


def paper_estimate(r: float) -> float:
    """Overhead ~ (captures x forward of the test set) / (steps x training step), from r."""
    p = PAPER
    steps = p["epochs"] * -(-p["train_rows"] // p["batch"])
    captures = steps // p["every"] + 1 + (steps % p["every"] != 0)
    return captures * p["n_test"] * r / (steps * p["batch"])


# --- output -----------------------------------------------------------------------------------
def print_table(results: list[dict[str, Any]]) -> None:
    cols = [
        ("scale", "{}"),
        ("hidden_size", "{}"),
        ("num_layers", "{}"),
        ("steps", "{}"),
        ("off_s", "{:.2f}"),
        ("on_s", "{:.2f}"),
        ("overhead", "{:+.1%}"),
        ("off_cpu_s", "{:.2f}"),
        ("on_cpu_s", "{:.2f}"),
        ("cpu_overhead", "{:+.1%}"),
        ("hook_share", "{:.1%}"),
        ("predicted_overhead", "{:.1%}"),
        ("captures", "{}"),
        ("capture_cpu_s", "{:.4f}"),
        ("step_cpu_s", "{:.4f}"),
        ("fwd_per_row_over_train_per_row", "{:.3f}"),
        ("embedding_bytes_per_capture", "{}"),
        ("file_bytes_per_capture", "{:.0f}"),
    ]
    heads = [
        "scale", "H", "L", "steps", "off s", "on s", "wall ovh", "off cpu", "on cpu", "cpu ovh",
        "hook/off", "model", "captures", "cpu/capture", "cpu/step", "r", "emb B/capt",
        "file B/capt",
    ]  # fmt: skip
    rows = [[fmt.format(res[k]) for k, fmt in cols] for res in results]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print(" | ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 epochs, 2 repeats (smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="runs per condition (default 3)")
    p.add_argument("--epochs", type=float, default=None, help="training epochs (default 10)")
    p.add_argument("--hidden", type=int, default=None, help="add a scale with this hidden size")
    p.add_argument("--layers", type=int, default=None, help="layers of the added scale")
    p.add_argument("--heads", type=int, default=None, help="heads of the added scale")
    p.add_argument("--threads", type=int, default=1, help="torch threads (config.yaml: 1)")
    p.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default tmp)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.epochs = args.epochs or (3.0 if args.quick else 10.0)
    return args


def model_scales(args: argparse.Namespace) -> list[tuple[str, dict[str, int]]]:
    """The toy scale, and a bigger one when --hidden or --layers asks for it."""
    scales = [("toy", dict(TOY))]
    if args.hidden or args.layers:
        h = args.hidden or TOY["hidden_size"]
        scales.append(
            (
                "big",
                {
                    "hidden_size": h,
                    "num_layers": args.layers or TOY["num_layers"],
                    "num_heads": args.heads or max(4, h // 64),  # BERT: 64 dims per head
                    "intermediate_size": 4 * h,
                },
            )
        )
    return scales


def print_paper_estimate(results: list[dict[str, Any]]) -> float:
    """The measured overheads, then the paper set-up's estimate; returns it at r = 1/3."""
    for res in results:
        est = paper_estimate(res["fwd_per_row_over_train_per_row"])
        res["paper_estimate_at_measured_r"] = est
        print(
            f"[{res['scale']}] measured overhead {res['overhead']:+.1%} wall, "
            f"{res['cpu_overhead']:+.1%} CPU time (target <= 10%); "
            f"model captures x CPU/capture / (steps x CPU/step) = "
            f"{res['predicted_overhead']:.1%}; r = {res['fwd_per_row_over_train_per_row']:.3f}."
        )
    flops = paper_estimate(1 / 3)
    print(
        "ESTIMATE (not measured), paper set-up (BERT-base, 405 test rows, every 10 steps, batch "
        "32, 1530 train rows, 10 epochs = 480 steps, 49 captures): overhead ~= "
        "captures x 405 x r / (steps x 32). With r = 1/3 (a forward is ~1/3 of forward+backward "
        f"FLOPs, compute-bound, same precision) ~= {flops:.0%}; at the r measured here: "
        + ", ".join(f"{r['scale']} {r['paper_estimate_at_measured_r']:.0%}" for r in results)
        + ". The toy set-up has the paper's row counts, so only r changes with scale. On GPU "
        "the capture forward runs in fp32 (no autocast, no TF32) while training runs under "
        "bf16 autocast: r then also carries the fp32/bf16 throughput ratio (several x on "
        "tensor-core GPUs), so expect a GPU overhead well above the r = 1/3 figure."
    )
    return flops


def result_line(args: argparse.Namespace, results: list[dict[str, Any]], flops: float) -> str:
    """The final JSON line: settings, the r = 1/3 estimate and every scale's measurements."""
    return json.dumps(
        {
            "bench": "capture",
            "threads": args.threads,
            "epochs": args.epochs,
            "capture": {
                "every": CAPTURE.every,
                "probe_per_class": CAPTURE.probe_per_class,
                "test_set": CAPTURE.test_set,
            },
            "paper_estimate_r_one_third": flops,
            "results": [
                {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}
                for r in results
            ],
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # per-load notices of transformers, once per run

    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        work = args.workdir or Path(tmp)
        data = work / "data"
        counts = make_data(data)
        print(
            f"data: {counts} (train groups {GROUP_SIZES} x 3 classes); threads {args.threads}; "
            f"epochs {args.epochs}; repeats {args.repeats}",
            file=sys.stderr,
        )
        results = [bench_scale(n, a, data, counts, work, args) for n, a in model_scales(args)]

    print_table(results)
    print()
    flops = print_paper_estimate(results)
    print(result_line(args, results, flops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
