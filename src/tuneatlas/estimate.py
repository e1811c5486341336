"""What each planned GPU job will cost before it is submitted: peak GPU memory, FLOPs and hours.

`estimate_plan(config, plan, gpu)` gives one `JobEstimate` per job of the GPU rules (train,
train_with_predictions, simcse, fisher, embed, cluster, pretrain, lm_eval); `tuneatlas estimate`
prints them, and the workflow's resource callables (common.smk) size each job's `runtime` and
`mem_mb` from them. The arithmetic, all of it stated here:

- FLOPs (Kaplan et al. 2020, with the attention term of PaLM, Chowdhery et al. 2022, App. B):
  a token costs 2·N_mm + 4·L·d·s forward and three times that forward + backward, N_mm the
  parameters in matrix products (not the input embedding lookups, but an LM head), L layers of
  width d, s tokens per sequence. Sequences are counted at their full length (a fine-tune pads
  or truncates to max_length: an upper bound for short texts).
- Peak memory: fp32 weights 4 + gradients 4 + AdamW's two moments 8 bytes per parameter, + 2
  for autocast's bf16 weight copies; activations of one micro-batch kept for the backward pass
  (Korthikanti et al. 2022, "Reducing activation recomputation", per token and layer:
  BERT b·(8d + 2f) + 2d, LLaMA/SwiGLU b·(10d + 4f), b bytes per element; attention scores
  heads·s·(2b + 1) only where they are materialised - not on GPUs, whose SDPA kernels are
  flash / memory-efficient), the LM's logits s·V·(b + 8) (+ 4: their fp32 copy under
  autocast), and the embeddings' output. tests/unit/test_estimate.py checks both against a
  measured CPU step (within 25%) and the FLOPs against torch's FlopCounterMode (within 3%).
- Hours: FLOPs / (GPUs x the GPU's dense peak at the job's precision x MFU), plus a start-up
  allowance (imports, loading the model); MFU (model FLOPs utilisation) is a setting, 0.4 by
  default, a common planning figure for large transformer training (PaLM reports 46%); short
  fine-tunes of small models reach less, so their hours are a lower bound there.
- Verdict: "fits", "does not fit" (peak above `headroom` x the GPU's memory: the allocator and
  the CUDA context need the rest) or "exceeds runtime" (hours above the site's job limit).

Row counts of hub datasets come from a table of the paper's sources (no download); local files
and synthetic data from the config (`preflight.known_train_rows`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tuneatlas.data.prepare import source_sizes
from tuneatlas.data.validate import imbalanced_train_rows
from tuneatlas.errors import ConfigError
from tuneatlas.plan import Plan
from tuneatlas.preflight import known_train_rows


@dataclass(frozen=True)
class Gpu:
    """A GPU's memory (GB, 1e9 bytes) and dense peak TFLOPS per precision."""

    name: str
    memory_gb: float
    tflops: dict[str, float]  # bf16 (tensor cores), tf32 (tensor cores), fp32 (CUDA cores)
    source: str


# Dense (no sparsity) peaks from the vendor's datasheets: NVIDIA H100 Tensor Core GPU datasheet
# (SXM5), H200 datasheet, A100 datasheet (SXM4; 40 and 80 GB), V100 datasheet (SXM2 32 GB; no
# bf16: its fp16 tensor peak stands in, the engine's bf16 autocast needs Ampere or newer).
GPUS = {
    "h100": Gpu("h100", 80, {"bf16": 989, "tf32": 494, "fp32": 67}, "NVIDIA H100 datasheet, SXM5"),
    "h200": Gpu("h200", 141, {"bf16": 989, "tf32": 494, "fp32": 67}, "NVIDIA H200 datasheet, SXM"),
    "a100-80g": Gpu("a100-80g", 80, {"bf16": 312, "tf32": 156, "fp32": 19.5}, "NVIDIA A100"),
    "a100-40g": Gpu("a100-40g", 40, {"bf16": 312, "tf32": 156, "fp32": 19.5}, "NVIDIA A100"),
    "v100": Gpu("v100", 32, {"bf16": 125, "tf32": 15.7, "fp32": 15.7}, "NVIDIA V100, SXM2"),
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Dense peak TFLOPS of a GPU named as `torch.cuda.get_device_name()` names it (e.g.
    "NVIDIA H100 80GB HBM3") at `precision` (bf16, tf32 or fp32: the arithmetic the run's
    matmuls used); None for a GPU not in `GPUS`."""
    name = device_name.lower()
    for key, gpu in GPUS.items():
        model, _, memory = key.partition("-")  # "a100-80g": the model, then its memory
        if model in name and (not memory or memory.rstrip("g") + "gb" in name.replace(" ", "")):
            return float(gpu.tflops[precision])
    return None


def matmul_precision(precision: str, tf32: bool) -> str:
    """The arithmetic a run's matmuls use on CUDA: bf16 under bf16 autocast, else TF32 when
    the run turns it on, else fp32; the key of `Gpu.tflops` its MFU divides by."""
    return "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")


def training_mfu(
    tokens_per_s: float, arch: Arch, seq: int, device_name: str, precision: str
) -> tuple[float, float | None]:
    """(achieved TFLOPS, model FLOPs utilisation) of training at `tokens_per_s`: FLOPs per
    token as `Arch.flops_per_token` counts them (the LM head included) against the dense peak
    of the GPU at the arithmetic actually used (`matmul_precision`); MFU None for a GPU not
    in `GPUS`."""
    achieved = tokens_per_s * arch.flops_per_token(seq, backward=True) / 1e12
    peak = peak_tflops(device_name, precision)
    return achieved, (achieved / peak if peak else None)


@dataclass(frozen=True)
class Settings:
    """The assumptions of an estimate (all printed with it)."""

    gpu: Gpu = GPUS["h100"]
    mfu: float = 0.4
    max_hours: float = 48.0  # the site's longest job; 48 h is a common SLURM partition limit
    startup_s: float = 60.0  # imports + loading the model (~30 s measured for bert-large), x2
    headroom: float = 0.9  # share of GPU memory a job may plan to use


# Encoders of the paper's hub models: the config.json of each repository (layers, width, FFN
# width, heads, vocabulary), so that a plan is estimated without downloading anything.
HUB_ARCHS = {
    "google-bert/bert-base-uncased": (12, 768, 3072, 12, 30522),
    "google-bert/bert-large-uncased": (24, 1024, 4096, 16, 30522),
    "tohoku-nlp/bert-base-japanese-v3": (12, 768, 3072, 12, 32768),
    "FacebookAI/roberta-base": (12, 768, 3072, 12, 50265),
}

# Labelled rows of the paper's hub datasets per split (the hub's dataset cards: GLUE of
# nyu-mll/glue, princeton-nlp's wiki1m_for_simcse.txt), by task; test splits of GLUE carry no
# labels and are never read.
HUB_ROWS = {
    "cola": {"train": 8551, "validation": 1043},
    "sst2": {"train": 67349, "validation": 872},
    "mrpc": {"train": 3668, "validation": 408},
    "qqp": {"train": 363846, "validation": 40430},
    "mnli": {"train": 392702, "validation_matched": 9815, "validation_mismatched": 9832},
    "qnli": {"train": 104743, "validation": 5463},
    "rte": {"train": 2490, "validation": 277},
    "stsb": {"train": 5749, "validation": 1500},
    "simcse": {"train": 1000000},
}

# Requests of the harness's tasks (examples x answer choices of the split it scores; wikitext:
# ~2.4e5 words of its test documents in 1,024-token rolling windows, ~330) and the zsRE probe
# (19,086 questions of zsre_mend_eval.json); each request is counted at the full seq_len.
HARNESS_REQUESTS = {
    "wikitext": 330,
    "lambada_openai": 5153,
    "hellaswag": 10042 * 4,
    "arc_easy": 2376 * 4,
    "arc_challenge": 1172 * 4,
    "winogrande": 1267 * 2,
    "piqa": 1838 * 2,
    "openbookqa": 500 * 4,
    "zsre": 19086,
}

# livedoor as `tuneatlas livedoor-convert` writes it (train / valid + test), for a dry-run plan
# before the archive is converted
LOCAL_ROWS = {"livedoor": (5894, 737 + 736)}

GPU_RULES = ("train", "simcse", "fisher", "embed", "cluster", "pretrain", "lm_eval")


@dataclass(frozen=True)
class Arch:
    """What the arithmetic needs of a transformer: per-layer FFN widths, a LM head or not."""

    layers: int
    hidden: int
    ffn: tuple[int, ...]
    heads: int
    vocab: int
    causal: bool = False  # a LLaMA-style LM (SwiGLU, LM head) rather than a BERT encoder

    @property
    def matmul_params(self) -> int:
        d = self.hidden
        ffn = sum((3 if self.causal else 2) * d * f for f in self.ffn)
        head = self.vocab * d if self.causal else 0
        return self.layers * 4 * d * d + ffn + head

    @property
    def params(self) -> int:
        return self.matmul_params + self.vocab * self.hidden

    def flops_per_token(self, seq: int, backward: bool) -> float:
        forward = 2 * self.matmul_params + 4 * self.layers * self.hidden * seq
        return 3 * forward if backward else forward

    def activation_bytes(self, seq: int, b: int, scores: bool) -> float:
        """Bytes kept for the backward pass per sequence of `seq` tokens, at b bytes/element."""
        d = self.hidden
        per_layer = [
            b * (10 * d + 4 * f) if self.causal else b * (8 * d + 2 * f) + 2 * d for f in self.ffn
        ]
        total = sum(per_layer) + (b + 1) * d  # + the embeddings' output and dropout mask
        if scores:
            total += self.layers * self.heads * seq * (2 * b + 1)
        # the LM's logits, their fp32 copy under autocast, log-softmax and its gradient
        logits = self.vocab * (b + (4 if b == 2 else 0) + 8) if self.causal else 0
        return seq * (total + logits)


@dataclass
class JobEstimate:
    """One planned GPU job: what it costs and whether it fits."""

    rule: str
    job: str
    study: str
    params: int
    flops: float
    peak_gb: float
    gpus: int
    hours: float
    gpu_hours: float
    verdict: str = "fits"
    key: str = ""  # the config key that changes the peak memory (micro-batch) or GPU count
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime_min(self) -> int:
        return max(10, math.ceil(self.hours * 60))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "extra"}


# ---------------------------------------------------------------------------------------------
# What a job reads: its model's architecture and its dataset's rows


def model_arch(plan: Plan, model_id: str, results: Path = Path("results")) -> Arch | None:
    """The architecture of a planned model (a SimCSE model is its base's), or None when
    neither the config, the table of hub models nor a config.json on disk tells it."""
    spec = plan.models[model_id]
    if spec["source"] == "simcse":
        return model_arch(plan, spec["base"], results)
    if spec["source"] == "build":
        layers = spec["num_layers"]
        return Arch(
            layers,
            spec["hidden_size"],
            (spec["intermediate_size"],) * layers,
            spec["num_heads"],
            spec["vocab_size"],
        )
    if spec["source"] == "hub" and spec["name"] in HUB_ARCHS:
        layers, d, f, heads, vocab = HUB_ARCHS[spec["name"]]
        return Arch(layers, d, (f,) * layers, heads, vocab)
    where = Path(spec["name"]) if spec["source"] == "local" else results / "models" / model_id
    try:
        found = json.loads((where.expanduser() / "config.json").read_text())
        layers = found["num_hidden_layers"]
        return Arch(
            layers,
            found["hidden_size"],
            (found["intermediate_size"],) * layers,
            found["num_attention_heads"],
            found["vocab_size"],
        )
    except (OSError, ValueError, KeyError):
        return None


def dataset_rows(
    name: str, ds: Mapping[str, Any], base_rows: Mapping[str, tuple[int | None, int]]
) -> tuple[int | None, int]:
    """(training rows, other labelled rows) of a planned dataset; None training rows when not
    known before the data is fetched. An S5 member (some clusters of its base) counts as its
    base: an upper bound."""
    if ds["source"] == "clusters":
        return base_rows.get(ds["base"], (None, 0))
    if ds.get("imbalance"):  # rows per class fixed by the config
        imb = ds["imbalance"]
        classes = len(imb["group_sizes"]) * imb["classes_per_group"]
        return imbalanced_train_rows(imb), imb.get("test_per_class", 0) * classes
    train = known_train_rows(name, ds)
    if train is None and ds.get("task") in LOCAL_ROWS:  # the converter's output, not made yet
        return LOCAL_ROWS[ds["task"]]
    sizes = source_sizes(name, ds) if ds["source"] != "hub" else None
    if ds["source"] == "hub" and ds.get("task") in HUB_ROWS:
        sizes = HUB_ROWS[ds["task"]]
        if ds.get("splits"):
            sizes = {ours: sizes.get(theirs, 0) for ours, theirs in ds["splits"].items()}
        total = sum(sizes.values())
        if ds.get("max_rows"):
            total = min(total, ds["max_rows"])
        if ds.get("resplit"):
            weights = ds["resplit"]
            train = total * weights[0] // sum(weights)
        else:
            train = min(sizes.get("train", 0), ds.get("max_rows") or total)
    if train is None or sizes is None:
        return train, 0
    return train, max(0, sum(sizes.values()) - train)


Rows = dict[str, tuple[int | None, int]]


def plan_rows(plan: Plan) -> Rows:
    """(training rows, other labelled rows) of every planned dataset, S5's members last."""
    rows: Rows = {}
    for name, ds in sorted(plan.datasets.items(), key=lambda kv: kv[1]["source"] == "clusters"):
        rows[name] = dataset_rows(name, ds, rows)
    return rows


# ---------------------------------------------------------------------------------------------
# One job


@dataclass(frozen=True)
class Work:
    """What a job computes: tokens through forward + backward and forward only, the sequences
    of one forward pass (per GPU), and the bytes of training state per parameter."""

    arch: Arch
    seq: int
    train_tokens: float
    forward_tokens: float
    micro: int
    precision: str = "fp32"  # bf16 (autocast) | tf32 | fp32
    state_bytes: int = 16  # weights 4 + grads 4 + AdamW 8; 8 without an optimiser; 4 eval only
    gpus: int = 1
    key: str = ""  # the config key of the micro-batch
    gpus_key: str = ""  # the config key of the GPUs per job, where there is one


def _job(rule: str, job: str, study: str, work: Work, settings: Settings) -> JobEstimate:
    arch, gpu = work.arch, settings.gpu
    flops = work.train_tokens * arch.flops_per_token(work.seq, True)
    flops += work.forward_tokens * arch.flops_per_token(work.seq, False)
    b = 2 if work.precision == "bf16" else 4
    state = arch.params * (work.state_bytes + (2 if work.precision == "bf16" else 0))
    acts = work.micro * arch.activation_bytes(work.seq, b, scores=False)
    if work.state_bytes <= 4:  # inference: only the layer being computed is alive
        acts = acts / arch.layers * 2
    peak_gb = (state + acts) / 1e9
    rate = gpu.tflops[work.precision] * 1e12 * settings.mfu * work.gpus
    hours = (flops / rate + settings.startup_s) / 3600
    est = JobEstimate(
        rule, job, study, arch.params, flops, peak_gb, work.gpus, hours, hours * work.gpus
    )
    est.key = work.key
    if peak_gb > settings.headroom * gpu.memory_gb:
        est.verdict = "does not fit"
        est.note = (
            f"needs {peak_gb:.1f} GB, {gpu.name} allows {settings.headroom * gpu.memory_gb:.0f}"
            f" of {gpu.memory_gb:.0f} GB: lower {work.key} (now {work.micro})"
        )
    elif hours > settings.max_hours:
        est.verdict = "exceeds runtime"
        need = math.ceil(hours * work.gpus / settings.max_hours)
        more = f"{need} GPUs ({work.gpus_key}), or " if work.gpus_key else ""
        est.key = work.gpus_key or work.key
        est.note = (
            f"needs {hours:.0f} h on {work.gpus} {gpu.name} ({hours * work.gpus:.0f} GPU-h), the"
            f" limit is {settings.max_hours:.0f} h: {more}resume it across jobs from its"
            " checkpoints (retries)"
        )
    return est


def _precision(spec: Mapping[str, Any]) -> str:
    if spec.get("precision") == "bf16":
        return "bf16"
    return "tf32" if spec.get("tf32") else "fp32"


def _finetune_work(plan: Plan, run: Any, results: Path, sizes: Rows) -> Work | str:
    spec = run.spec
    arch = model_arch(plan, spec["model"], results)
    rows, others = sizes[spec["dataset"]]
    if arch is None or rows is None:
        return "model size unknown" if arch is None else "training rows unknown (hub data)"
    if spec.get("max_train_samples"):
        rows = min(rows, spec["max_train_samples"])
    steps = math.ceil(rows / spec["batch_size"]) * spec["epochs"]
    if spec.get("max_steps"):
        steps = min(steps, spec["max_steps"])
    seq = spec["max_length"]
    section = "preliminary_train" if "prelim" in run.id else "train"
    return Work(
        arch,
        seq,
        train_tokens=steps * spec["batch_size"] * seq,
        forward_tokens=others * seq * (math.ceil(spec["epochs"]) + 1),  # evals at epoch ends
        micro=spec.get("micro_batch_size") or spec["batch_size"],
        precision=_precision(spec),
        key=f"studies.{run.study}.{section}.micro_batch_size",
    )


def _simcse_work(plan: Plan, run: Any, results: Path, sizes: Rows) -> Work | str:
    spec = run.spec
    arch = model_arch(plan, spec["model"], results)
    rows, _ = sizes[spec["dataset"]]
    if arch is None or rows is None:
        return "model size unknown" if arch is None else "training rows unknown (hub data)"
    seq = spec["max_length"]
    micro = spec.get("micro_batch_size") or spec["batch_size"]
    # every sentence is encoded twice (two dropout masks), in one forward pass
    return Work(
        arch,
        seq,
        train_tokens=2 * rows * spec["epochs"] * seq,
        forward_tokens=0,
        micro=2 * micro,
        precision=_precision(spec),
        key=f"studies.{run.study}.simcse.batch_size",
    )


def _pretrain_work(plan: Plan, run: Any, gpus: int) -> Work:
    spec = run.spec
    widths = tuple(spec["ffn_widths"])
    arch = Arch(
        spec["num_layers"],
        spec["hidden_size"],
        widths,
        spec["num_heads"],
        plan.tokens[spec["tokens"]]["vocab_size"],
        causal=True,
    )
    seq, batch = spec["seq_len"], spec["batch_size"]
    per_rank = math.ceil(batch / gpus)
    size = run.extra.get("size", "<size>")
    return Work(
        arch,
        seq,
        train_tokens=spec["max_steps"] * batch * seq,
        forward_tokens=0,
        micro=min(spec.get("micro_batch_size") or per_rank, per_rank),
        precision=_precision(spec),
        gpus=gpus,
        key=f"studies.s4.sizes.{size}.micro_batch_size",
        gpus_key="studies.s4.gpus",
    )


def _forward_work(arch: Arch, rows: int, seq: int, batch: int, key: str) -> Work:
    return Work(arch, seq, 0, rows * seq, batch, state_bytes=4, key=key)


def _lm_eval_work(plan: Plan, run_id: str, spec: Mapping[str, Any]) -> tuple[Work, str]:
    arch = _pretrain_work(plan, plan.runs[run_id], 1).arch
    unknown = [t for t in spec["tasks"] if t not in HARNESS_REQUESTS]
    requests = sum(HARNESS_REQUESTS.get(t, 0) for t in spec["tasks"]) + HARNESS_REQUESTS["zsre"]
    note = f"not counted: {', '.join(unknown)}" if unknown else ""
    # the harness's batch of 32 requests (analysis.lmeval), weights in fp32
    return _forward_work(arch, requests, spec["max_length"], 32, "lm_eval batch_size"), note


def _jobs(plan: Plan, config: Mapping[str, Any], results: Path) -> list[tuple[str, str, str, Any]]:
    """(rule, job id, study, Work or why it cannot be estimated) of every planned GPU job."""
    predicted = {r for t in plan.targets.values() for r in t.predictions}
    sizes = plan_rows(plan)
    gpus = int(config["studies"].get("s4", {}).get("gpus", 1))
    out: list[tuple[str, str, str, Any]] = []
    for run in plan.runs.values():
        if run.kind == "finetune":
            rule = "train_with_predictions" if run.id in predicted else "train"
            out.append((rule, run.id, run.study, _finetune_work(plan, run, results, sizes)))
        elif run.kind == "simcse":
            out.append(("simcse", run.id, run.study, _simcse_work(plan, run, results, sizes)))
        else:
            out.append(("pretrain", run.id, run.study, _pretrain_work(plan, run, gpus)))
    for fid, spec in plan.fishers.items():
        arch = model_arch(plan, spec["model"], results)
        seq = spec["train"]["max_length"]
        work = (
            Work(
                arch,
                seq,
                spec["batch_size"] * seq,
                0,
                spec["batch_size"],
                state_bytes=8,
                key="studies.s2.fisher.batch_size",
            )
            if arch
            else "model size unknown"
        )
        out.append(("fisher", fid, "s2", work))
    embedded = {r for t in plan.targets.values() for r in (*t.embeddings, *t.subsets)}
    for rid in sorted(embedded):
        spec = plan.runs[rid].spec
        arch = model_arch(plan, spec["model"], results)
        train, others = sizes[spec["dataset"]]
        key = f"studies.{plan.runs[rid].study}.train.eval_batch_size"
        work = (
            _forward_work(arch, train + others, spec["max_length"], spec["eval_batch_size"], key)
            if arch and train is not None
            else "model size or rows unknown"
        )
        out.append(("embed", rid, plan.runs[rid].study, work))
    for cid, spec in plan.clusterings.items():
        if not spec["embedder"]:  # tf-idf (+ SVD): no model, no GPU work to estimate
            continue
        arch = model_arch(plan, spec["embedder"], results)
        train, _ = sizes[spec["dataset"]]
        work = (
            _forward_work(arch, train, spec["max_length"], spec["batch_size"], "studies.s5")
            if arch and train is not None
            else "model size or rows unknown"
        )
        out.append(("cluster", cid, "s5", work))
    for rid, spec in plan.lm_evals.items():
        out.append(("lm_eval", rid, "s4", _lm_eval_work(plan, rid, spec)))
    return out


def estimate_plan(
    config: Mapping[str, Any],
    plan: Plan,
    settings: Settings = Settings(),
    results: Path = Path("results"),
) -> list[JobEstimate]:
    """One estimate per planned GPU job (an unknown model or row count: verdict "unknown")."""
    found = []
    for rule, job, study, work in _jobs(plan, config, results):
        note = ""
        if isinstance(work, tuple):
            work, note = work
        if isinstance(work, str):
            found.append(
                JobEstimate(rule, job, study, 0, 0.0, 0.0, 1, 0.0, 0.0, "unknown", note=work)
            )
            continue
        est = _job(rule, job, study, work, settings)
        est.note = est.note or note
        found.append(est)
    return found


# ---------------------------------------------------------------------------------------------
# Reports


def totals(found: list[JobEstimate]) -> dict[str, dict[str, dict[str, float]]]:
    """{"rule": {rule: sums}, "study": {study: sums}} of jobs, GPU-hours, PFLOPs, worst peak."""
    out: dict[str, dict[str, dict[str, float]]] = {"rule": {}, "study": {}}
    for est in found:
        for level, name in (("rule", est.rule), ("study", est.study)):
            row = out[level].setdefault(
                name, {"jobs": 0, "gpu_hours": 0.0, "pflops": 0.0, "max_peak_gb": 0.0}
            )
            row["jobs"] += 1
            row["gpu_hours"] += est.gpu_hours
            row["pflops"] += est.flops / 1e15
            row["max_peak_gb"] = max(row["max_peak_gb"], est.peak_gb)
    return out


def assumptions(settings: Settings) -> str:
    gpu = settings.gpu
    peaks = ", ".join(f"{k} {v:g}" for k, v in gpu.tflops.items())
    return (
        f"GPU {gpu.name}: {gpu.memory_gb:g} GB, dense peak TFLOPS {peaks} ({gpu.source}); MFU"
        f" {settings.mfu:g} (--mfu; 0.4 by default); a job plans {settings.headroom:.0%} of the"
        f" memory; site limit {settings.max_hours:g} h per job (--max-hours); start-up"
        f" {settings.startup_s:g} s per job"
    )


def table(found: list[JobEstimate], settings: Settings) -> str:
    """The human report: assumptions, one line per job, totals per rule and per study."""
    lines = [assumptions(settings), ""]
    head = f"{'rule':<23}{'job':<34}{'params':>9}{'PFLOP':>11}{'peak GB':>9}{'GPUs':>5}{'hours':>9}"
    lines += [head + "  verdict", "-" * (len(head) + 9)]
    for e in found:
        line = (
            f"{e.rule:<23}{e.job:<34}{e.params / 1e6:>8.0f}M{e.flops / 1e15:>11.1f}"
            f"{e.peak_gb:>9.1f}{e.gpus:>5}{e.hours:>9.2f}  {e.verdict}"
        )
        lines.append(line + (f": {e.note}" if e.note else ""))
    sums = totals(found)
    for level in ("rule", "study"):
        lines += ["", f"{'per ' + level:<23}{'jobs':>6}{'GPU-hours':>12}{'PFLOP':>12}{'max GB':>8}"]
        for name, row in sums[level].items():
            lines.append(
                f"{name:<23}{row['jobs']:>6}{row['gpu_hours']:>12.1f}{row['pflops']:>12.1f}"
                f"{row['max_peak_gb']:>8.1f}"
            )
    total = sum(r["gpu_hours"] for r in sums["study"].values())
    lines.append(f"{'all':<23}{len(found):>6}{total:>12.1f}")
    return "\n".join(lines)


def refusals(found: list[JobEstimate]) -> list[str]:
    """One line per job that cannot fit its GPU: the job, the memory and the key to change."""
    return [
        f"{e.rule} {e.job} does not fit: {e.note}" for e in found if e.verdict == "does not fit"
    ]


def report(config: Mapping[str, Any], plan: Plan, settings: Settings, as_json: bool) -> int:
    """Print the estimate of a plan; 1 when a job cannot fit its GPU (named on stderr)."""
    import sys

    found = estimate_plan(config, plan, settings)
    if as_json:
        doc = {
            "assumptions": {**asdict(settings), "text": assumptions(settings)},
            "jobs": [e.to_dict() for e in found],
            "totals": totals(found),
        }
        print(json.dumps(doc, indent=1))
    else:
        print(table(found, settings))
    for e in found:
        if e.verdict == "exceeds runtime":
            print(f"WARNING tuneatlas: {e.rule} {e.job}: {e.note}", file=sys.stderr)
    bad = refusals(found)
    for line in bad:
        print(f"ERROR tuneatlas: {line}", file=sys.stderr)
    return 1 if bad else 0


def settings_for(gpu: str, mfu: float = 0.4, max_hours: float = 48.0) -> Settings:
    if gpu not in GPUS:
        raise ConfigError(f"unknown GPU {gpu!r} (--gpu): one of {', '.join(GPUS)}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"MFU {mfu} (--mfu): a share of the peak in (0, 1], e.g. 0.4")
    return Settings(GPUS[gpu], mfu, max_hours)


# ---------------------------------------------------------------------------------------------
# Scheduler resources (the workflow's resource callables)

MARGIN = 2.0  # a job asks twice its estimate: short jobs run below the MFU, data loading, evals


def job_resources(
    est: JobEstimate | None, attempt: int, settings: Settings, default: Mapping[str, int]
) -> dict[str, int]:
    """`runtime` (minutes) and `mem_mb` (host memory) of one attempt of a job: MARGIN x the
    estimate, times the attempt number on a retry (a job killed for time or memory asks for
    more), the runtime capped at the site limit (a longer job resumes from its checkpoint on
    the next attempt). Host memory: 8 GB (Python, torch, CUDA context, data) + two fp32 copies
    of the weights (the loaded state dict beside the model). `default` (the rule's own values)
    stands in for a job without an estimate."""
    if est is None or est.verdict == "unknown":
        return {k: int(v) * attempt for k, v in default.items()}
    minutes = max(15.0, MARGIN * est.hours * 60) * attempt
    return {
        "runtime": math.ceil(min(minutes, settings.max_hours * 60)),
        "mem_mb": math.ceil((8000 + 8 * est.params / 1e6) * attempt),
    }


def bundle_resources(
    ests: list[JobEstimate | None], attempt: int, settings: Settings, default: Mapping[str, int]
) -> dict[str, int]:
    """A bundle job's (tuneatlas.bundles) `runtime` and `mem_mb`: its members one after another,
    so their hours add up (one start-up floor, not one per member) and the largest member sets
    the memory; members without an estimate count `default` each."""
    known = [e for e in ests if e is not None and e.verdict != "unknown"]
    if not known:
        runtime = int(default["runtime"]) * attempt * len(ests)
        return {"runtime": runtime, "mem_mb": int(default["mem_mb"]) * attempt}
    unknown = len(ests) - len(known)  # members without an estimate count the default each
    unknown_hours = unknown * default["runtime"] / 60 if unknown else 0.0
    combined = replace(
        known[0],
        hours=sum(e.hours for e in known) + unknown_hours,
        params=max(e.params for e in known),
    )
    return job_resources(combined, attempt, settings, default)
