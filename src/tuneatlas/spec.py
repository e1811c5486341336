"""Run specifications: the full, serialisable description of one training run (fine-tuning,
pre-training, the toy BERT's masked-LM warm-up).

The plan builds these from the config; the training engine consumes them; `spec.yaml` beside
every run's outputs is `asdict(spec)`. Every field that changes a result lives here, so a
changed hyper-parameter changes the spec and Snakemake re-runs exactly the dependent jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Pooling = Literal["cls", "maxnorm"]
Head = Literal["linear", "mlp2", "pooler", "roberta"]
HeadInit = Literal["encoder", "pytorch"]
ScheduleName = Literal["linear", "constant", "cosine"]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class OptimSpec:
    """AdamW. `correct_bias=False` reproduces the former `transformers.AdamW` option (S2)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    correct_bias: bool = True


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule. Warm-up is linear from 0; decay ends at 0 on the last step."""

    name: ScheduleName = "linear"
    warmup_epochs: float = 0.0  # fraction of an epoch (S2: 0.3)
    warmup_steps: int = 0  # absolute steps (S4: 1000); the larger of the two applies


@dataclass(frozen=True)
class CaptureSpec:
    """In-loop capture: every `every` steps, record probe/test embeddings and scores (S3)."""

    every: int = 0  # 0 = off
    probe_per_class: int = 10
    test_set: bool = True
    split: str = "test"


@dataclass(frozen=True)
class FisherSpec:
    """In-loop empirical-Fisher spectra (S2.F4): every `every` steps, per layer, on a fixed
    training mini-batch of `batch_size` rows drawn with the run's seed."""

    every: int = 0  # 0 = off
    batch_size: int = 16
    energy: float = 0.99  # eigenvalue mass of the effective rank
    # Gram products: fast (float32, float64 sums) | exact (float64). Plans set it from
    # studies.s2.fisher.precision (default fast); a spec written before the key computed exact
    precision: str = "exact"
    extra_steps: tuple[int, ...] = ()  # also measured (S2's Fig. 4: steps 1-4 of the warm-up)


@dataclass(frozen=True)
class TrainSpec:
    run: str  # short readable id, also the directory name under results/runs/
    task: str  # task registry name (metric, label count, regression or not)
    dataset: str  # prepared dataset id under results/data/
    model: str  # base model id under results/models/
    seed: int = 42
    init_from: str | None = None  # run id whose fine-tuned encoder starts this run (cross FT)
    epochs: float = 3.0
    max_steps: int | None = None  # caps the step count (quick runs)
    batch_size: int = 32  # examples per optimiser step (the global batch, over all DDP ranks)
    micro_batch_size: int | None = None  # examples per forward pass; smaller = accumulation
    eval_batch_size: int = 128
    max_length: int = 128
    dropout: float | None = None  # None keeps the model's own; 0.0 turns dropout off
    pooling: Pooling = "cls"
    head: Head = "linear"
    # new head's init: "encoder" = N(0, initializer_range) weights, zero bias (as BERT does);
    # "pytorch" = nn.Linear's default uniform weight and bias (results made before this key)
    head_init: HeadInit = "encoder"
    freeze_encoder: bool = False
    grad_clip: float | None = 1.0
    precision: Precision = "fp32"  # bf16 = autocast on CUDA only; CPU always runs fp32
    tf32: bool = False  # TF32 matmuls on CUDA (faster, ~1e-3 relative); no effect on CPU
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    # resumable checkpoints: N steps (0 = at epoch ends only), "none", or "<T>min" of wall time
    checkpoint_every: int | str = 0
    eval_every: int = 0  # steps between validation evaluations; 0 = at epoch ends only
    max_train_samples: int | None = None
    keep_best: bool = False  # end with the weights of the best validation evaluation (S1)
    capture: CaptureSpec = field(default_factory=CaptureSpec)
    save_model: bool = True  # False: runs read only for their scores keep no weights (S2 sweep)
    fisher: FisherSpec = field(default_factory=FisherSpec)  # S2.F4
    polar_every: int = 0  # S2.F2: steps between weight snapshots of the polar trajectory; 0 = off
    # "source": plan the step count for the training rows of the dataset this one was derived
    # from (an S5 cluster member trains as many steps as a seed model); "own": its own rows
    steps_from: str = "own"
    # the config's models.<model>.trust_remote_code: the one grant of running a model's own code
    # (a model or run directory's JSON can never grant it; see models.hub.refuse_self_trust)
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        # the in-loop S2 keys only where they are on, so that every other run's spec (its
        # hash and snakemake's params trigger) is what it was before they existed
        if not self.fisher.every:
            del d["fisher"]
        elif not self.fisher.extra_steps:
            del d["fisher"]["extra_steps"]
        else:
            d["fisher"]["extra_steps"] = list(self.fisher.extra_steps)
        if not self.polar_every:
            del d["polar_every"]
        if self.steps_from == "own":
            del d["steps_from"]
        if not self.trust_remote_code:
            del d["trust_remote_code"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSpec:
        return cls(**_nested_specs(cls, d))


def _nested_specs(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """`d` (a spec's to_dict) checked against the fields of `cls`, its nested sections
    (optim, schedule, capture, fisher) as their dataclasses."""
    d = dict(d)
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    if "optim" in d:
        o = dict(d["optim"])
        if "betas" in o:
            o["betas"] = tuple(o["betas"])
        d["optim"] = OptimSpec(**o)
    sections = {"schedule": ScheduleSpec, "capture": CaptureSpec, "fisher": FisherSpec}
    for key, section in sections.items():
        if key in d:
            d[key] = section(**d[key])
    if "fisher" in d and not isinstance(d["fisher"].extra_steps, tuple):
        d["fisher"] = replace(d["fisher"], extra_steps=tuple(d["fisher"].extra_steps))
    return d


@dataclass(frozen=True)
class PretrainSpec:
    """Pre-training of a LLaMA-style causal LM from scratch (S4): the corpus (`dataset`), the
    token set it was packed into (`tokens`, under results/tokens/), the training the loop reads,
    and the architecture."""

    run: str
    dataset: str  # the prepared corpus
    tokens: str  # the token set id under results/tokens/
    task: str = "pretrain"
    seed: int = 42
    epochs: float = 1.0  # bounds the steps; the step budget (max_steps) decides
    max_steps: int | None = None
    batch_size: int = 32  # sequences per optimiser step (the global batch, over all DDP ranks)
    micro_batch_size: int | None = None  # sequences per forward pass; smaller = accumulation
    eval_batch_size: int = 128
    grad_clip: float | None = 1.0
    precision: Precision = "fp32"  # bf16 = autocast on CUDA only; CPU always runs fp32
    tf32: bool = False
    # torch.compile (Inductor) the training forward/backward: faster, not bit-identical to eager
    compile: bool = False
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    checkpoint_every: int | str = 0
    eval_every: int = 0
    max_train_samples: int | None = None
    keep_best: bool = False
    seq_len: int = 1024
    hidden_size: int = 1280
    num_layers: int = 12
    num_heads: int = 20
    ffn_widths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainSpec:
        return cls(**_nested_specs(cls, d))


@dataclass(frozen=True)
class MLMSpec:
    """Masked-LM pre-training of a toy BERT (`models.<id>` with `source: build`): the fields the
    training loop reads, plus BERT's masking. No split is scored during training; the loop runs
    `max_steps` steps (`epochs` only bounds them) of a constant learning rate."""

    run: str
    seed: int = 0
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32  # texts per optimiser step
    max_length: int = 64  # tokens per text (truncated)
    mlm_probability: float = 0.15  # share of non-special tokens chosen (80% [MASK], 10% random)
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(lr=1e-3, weight_decay=0.01))
    schedule: ScheduleSpec = field(default_factory=lambda: ScheduleSpec(name="constant"))
    grad_clip: float | None = 1.0
    micro_batch_size: int | None = None
    precision: Precision = "fp32"
    tf32: bool = False
    checkpoint_every: int | str = 0
    eval_every: int = 0
    max_train_samples: int | None = None
    keep_best: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d
