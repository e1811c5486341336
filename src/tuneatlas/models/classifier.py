"""The one fine-tuning model of every study: encoder + dropout + a new head on one vector.

`SequenceClassifier` reads ONE vector of the last layer (the CLS vector, or the max-norm token of
S1.T1). The head is a setting (`train.head`): "linear" on the raw vector (S1: its paper feeds the
raw last-layer CLS to a new FC layer, and S1 reasons about the dimensions the head sees), BERT's
pretrained pooler + linear ("pooler", as BertForSequenceClassification) or RoBERTa's
classification head ("roberta", as RobertaForSequenceClassification); "mlp2" is S1.T4's.
`build_classifier` makes one for a run (base or cross fine-tuned encoder + a new head),
`predict` gives its logits on a tokenised split, `task_of_model` the task it was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from tuneatlas.data.labelled import Split
from tuneatlas.data.tasks import Task, fine_tuning_task
from tuneatlas.io import atomic_dir, load_tensors, save_tensors, write_json
from tuneatlas.models.hub import BUILD_INFO, load_encoder, load_tokenizer, quiet_hf_progress
from tuneatlas.spec import TrainSpec

CLASSIFIER_INFO = "tuneatlas.json"  # beside a fine-tuned model: task, pooling, head
HEAD_FILE = "head.safetensors"

# Config attributes that hold dropout probabilities in common encoder configs; an override
# rewrites them so the saved config describes the dropout the weights were trained with.
_DROPOUT_CONFIG_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "hidden_dropout",
    "attention_dropout",
    "activation_dropout",
    "dropout",
    "classifier_dropout",
    "seq_classif_dropout",
)
# Float attributes some attention modules read instead of an nn.Dropout (e.g. LLaMA-style).
_DROPOUT_MODULE_ATTRS = ("attention_dropout", "dropout_p")


# --------------------------------------------------------------------------------------------
# dropout and pooling
# --------------------------------------------------------------------------------------------


def config_dropout(config: Any) -> float:
    """The classifier dropout a config implies (BERT: classifier_dropout, else hidden)."""
    for key in ("classifier_dropout", "seq_classif_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def set_dropout(module: nn.Module, p: float) -> None:
    """Set every dropout probability inside `module` (and its config) to `p`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    config = getattr(module, "config", None)
    if config is not None:
        for key in _DROPOUT_CONFIG_KEYS:
            if isinstance(getattr(config, key, None), (int, float)):
                setattr(config, key, p)
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        for attr in _DROPOUT_MODULE_ATTRS:
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, p)


def maxnorm_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the non-padding token whose vector has the largest L2 norm."""
    norms = hidden.float().norm(dim=-1).masked_fill(attention_mask == 0, float("-inf"))
    best = norms.argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), best]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "maxnorm":
        return maxnorm_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling {pooling!r}; use 'cls' or 'maxnorm'")


# --------------------------------------------------------------------------------------------
# the classifier
# --------------------------------------------------------------------------------------------


HEAD_INITS = ("encoder", "pytorch")
DEFAULT_INITIALIZER_RANGE = 0.02  # BERT's, for an encoder config that names none


def initializer_range(config: Any) -> float:
    """The std the encoder family initialises new Linear weights with (BERT: 0.02)."""
    value = getattr(config, "initializer_range", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_INITIALIZER_RANGE


@torch.no_grad()
def init_head(head: nn.Module, scheme: str, config: Any) -> None:
    """Initialise the new head's Linear layers in place.

    "encoder": weight ~ N(0, config.initializer_range), bias 0, as BERT-family models initialise
    a new classifier. This matters on real encoders: PyTorch's default bias is uniform in
    +-1/sqrt(H), a logit offset of order 0.1 that a fine-tune at lr 5e-5 barely moves, and with
    only 2-3 CLS dimensions fed to the head (S1) that offset decides nearly every prediction.
    "pytorch": keep nn.Linear's default (uniform weight and bias) - the init of results made
    before this option existed; nothing is drawn here, so those results reproduce bit for bit.
    """
    if scheme == "pytorch":
        return
    if scheme != "encoder":
        raise ValueError(f"unknown head_init {scheme!r}; use one of {HEAD_INITS}")
    std = initializer_range(config)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(mean=0.0, std=std)
            if m.bias is not None:
                m.bias.zero_()


HEADS = ("linear", "mlp2", "pooler", "roberta")


def make_head(kind: str, hidden: int, num_labels: int, p: float) -> nn.Module:
    """The head module after the pooled vector (see `SequenceClassifier`)."""
    if kind == "linear":
        return nn.Linear(hidden, num_labels)
    if kind == "mlp2":
        return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_labels))
    if kind in ("pooler", "roberta"):
        # BERT: classifier(dropout(tanh(pooler.dense(cls)))); RoBERTa: out_proj(dropout(tanh(
        # dense(dropout(cls))))): the same layers, the first dropout is the model's own
        return nn.Sequential(
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(p), nn.Linear(hidden, num_labels)
        )
    raise ValueError(f"unknown head {kind!r}; use one of {HEADS}")


def pretrained_pooler(model_dir: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """BERT's pretrained pooler (dense weight and bias) from a model directory's checkpoint, or
    None. A SimCSE model saved with `pooler: base` (none of its own) defers to the base it was
    trained from, whose pooler SimCSE never touched; with `pooler: mlp` its checkpoint holds the
    trained MLP as its pooler, as SimCSE's simcse_to_huggingface.py writes it."""
    import json

    path = Path(model_dir)
    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if key.endswith(("pooler.dense.weight", "pooler.dense.bias")):
                    found[key.rsplit(".", 1)[1]] = f.get_tensor(key)
    if not found and (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        for key, value in state.items():
            if key.endswith(("pooler.dense.weight", "pooler.dense.bias")):
                found[key.rsplit(".", 1)[1]] = value
    if len(found) == 2:
        return found
    info = path / BUILD_INFO
    if info.is_file():
        base = json.loads(info.read_text()).get("base")
        if base and Path(base).is_dir() and Path(base).resolve() != path.resolve():
            return pretrained_pooler(base)
    return None


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # [B, C] (C = 1 for regression)
    pooled: torch.Tensor  # [B, H], the last-layer vector (CLS / max-norm) before any head layer
    hidden_states: tuple[torch.Tensor, ...] | None  # L+1 x [B, T, H] when asked for


class SequenceClassifier(nn.Module):
    """Encoder + dropout + head on one last-layer vector ("cls" or "maxnorm").

    head "linear": dropout -> nn.Linear(H, C); "mlp2": dropout -> Linear(H, H) -> ReLU ->
    Linear(H, C) (S1.T4, with a frozen encoder); "pooler": BERT's pooler Linear(H, H) -> tanh ->
    dropout -> Linear(H, C), the pooler's weights set by `load_pooler` (`build_classifier` does);
    "roberta": dropout -> dense Linear(H, H) -> tanh -> dropout -> out_proj Linear(H, C), all new.
    `dropout` None keeps the encoder config's dropout (and uses its classifier dropout for the
    head); a number sets every dropout (hidden, attention, head) to it.
    `head_init` (see `init_head`): "encoder" initialises every head Linear as the BERT family
    initialises a new classifier, "pytorch" keeps nn.Linear's default (uniform weight and bias).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        *,
        pooling: str = "cls",
        head: str = "linear",
        dropout: float | None = None,
        regression: bool = False,
        task: str | None = None,
        tokenizer: Any = None,
        max_length: int | None = None,
        head_init: str = "encoder",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "maxnorm"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'cls' or 'maxnorm'")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; use one of {HEADS}")
        if head == "pooler" and pooling != "cls":
            raise ValueError("head 'pooler' reads the CLS vector (BERT's pooler); use pooling cls")
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {head_init!r}; use one of {HEAD_INITS}")
        if regression and num_labels != 1:
            raise ValueError(f"a regression head has num_labels 1, got {num_labels}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.trust_remote_code = False  # set when the encoder's own code was loaded
        self.num_labels = int(num_labels)
        self.pooling = pooling
        self.head_kind = head
        self.regression = regression
        self.task = task
        self.max_length = max_length
        self.encoder_frozen = False
        if dropout is not None:
            set_dropout(encoder, dropout)
            head_p = float(dropout)
        else:
            head_p = config_dropout(encoder.config)
        self.dropout = nn.Dropout(head_p)
        hidden = int(encoder.config.hidden_size)
        self.head: nn.Module = make_head(head, hidden, self.num_labels, head_p)
        # After nn.Linear's own init, so "pytorch" draws exactly what it always drew.
        self.head_init = head_init
        init_head(self.head, head_init, encoder.config)

    @torch.no_grad()
    def load_pooler(self, pooler: dict[str, torch.Tensor]) -> None:
        """Set the "pooler" head's dense layer to BERT's pretrained pooler weights."""
        if self.head_kind != "pooler":
            raise ValueError(f"head {self.head_kind!r} has no pooler")
        self.head[0].weight.copy_(pooler["weight"])
        self.head[0].bias.copy_(pooler["bias"])

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def freeze_encoder(self) -> None:
        """Stop training the encoder; its forward then runs without building a graph."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder_frozen = True

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ClassifierOutput:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            out = self.encoder(
                **kwargs, output_hidden_states=output_hidden_states, return_dict=True
            )
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        # BERT's pooler reads the encoder output as it is (no dropout before the pooler)
        logits = self.head(pooled if self.head_kind == "pooler" else self.dropout(pooled))
        return ClassifierOutput(logits, pooled, out.hidden_states if output_hidden_states else None)

    def info(self, **extra: Any) -> dict[str, Any]:
        return {
            "task": self.task,
            "num_labels": self.num_labels,
            "pooling": self.pooling,
            "head": self.head_kind,
            "head_init": self.head_init,
            "regression": self.regression,
            "head_dropout": self.dropout.p,
            "max_length": self.max_length,
            # only when true, so that the info of every ordinary run stays as it was
            **({"trust_remote_code": True} if self.trust_remote_code else {}),
            **extra,
        }

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write encoder (safetensors) + tokenizer + head.safetensors + tuneatlas.json to `path`,
        atomically (a temporary directory renamed onto `path`). `extra` goes into the json."""
        path = Path(path)
        with atomic_dir(path) as tmp, quiet_hf_progress():
            self.encoder.save_pretrained(str(tmp))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
            save_tensors(
                {k: v.float() for k, v in self.head.state_dict().items()},
                tmp / HEAD_FILE,
                metadata={"head": self.head_kind},
            )
            write_json(self.info(**extra), tmp / CLASSIFIER_INFO)
        return path

    def save_info_only(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write only tuneatlas.json to `path` (a run with `save_model: false`): what was trained,
        without weights, so that nothing later mistakes the directory for a usable model."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            write_json(self.info(weights_saved=False, **extra), tmp / CLASSIFIER_INFO)
        return path

    @classmethod
    def read_info(cls, path: str | os.PathLike) -> dict[str, Any]:
        import json

        info_path = Path(path) / CLASSIFIER_INFO
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{info_path} not found: {path} is not a fine-tuned tuneatlas model directory "
                "(train writes runs/<run>/model/)"
            )
        return json.loads(info_path.read_text())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ) -> SequenceClassifier:
        """Reload a model written by `save` (encoder config keeps the dropout it trained with).
        `trust_remote_code` is the config's grant; the directory's own JSON cannot give it."""
        info = cls.read_info(path)
        if info.get("weights_saved") is False:
            raise FileNotFoundError(
                f"{path} holds no weights: run {info.get('run')!r} was trained with "
                "save_model: false; set save_model: true for runs whose model is used later"
            )
        trust = bool(trust_remote_code)
        encoder = load_encoder(path, trust_remote_code=trust)
        model = cls(
            encoder,
            info["num_labels"],
            pooling=info["pooling"],
            head=info["head"],
            dropout=None,
            regression=info["regression"],
            task=info.get("task"),
            tokenizer=load_tokenizer(path, trust_remote_code=trust),
            max_length=info.get("max_length"),
            head_init=info.get("head_init", "pytorch"),  # overwritten by the saved head below
        )
        model.trust_remote_code = trust
        model.dropout.p = float(info.get("head_dropout", model.dropout.p))
        state = {k: torch.from_numpy(v) for k, v in load_tensors(Path(path) / HEAD_FILE).items()}
        model.head.load_state_dict(state)
        if device is not None:
            model.to(device)
        return model


# --------------------------------------------------------------------------------------------
# building one for a run, its task, inference
# --------------------------------------------------------------------------------------------


def build_classifier(
    spec: TrainSpec,
    task: Task,
    model_dir: str | os.PathLike | None,
    init_dir: str | os.PathLike | None,
) -> SequenceClassifier:
    """Encoder from `model_dir`, or the fine-tuned encoder of `init_dir` (cross fine-tuning),
    with a new head. Call after seeding: the head's init draws from the global torch RNG."""
    source = init_dir if init_dir is not None else model_dir
    if source is None:
        raise ValueError(f"run {spec.run}: pass model_dir (or init_dir for cross fine-tuning)")
    trust = spec.trust_remote_code  # the config's grant, never the directory's JSON
    encoder = load_encoder(source, trust_remote_code=trust)
    model = SequenceClassifier(
        encoder,
        task.num_labels,
        pooling=spec.pooling,
        head=spec.head,
        head_init=spec.head_init,
        dropout=spec.dropout,
        regression=task.is_regression,
        task=task.name,
        tokenizer=load_tokenizer(source, trust_remote_code=trust),
        max_length=spec.max_length,
    )
    model.trust_remote_code = trust
    if spec.head == "pooler":
        pooler = pretrained_pooler(model_dir if model_dir is not None else source)
        if pooler is None:
            raise ValueError(
                f"run {spec.run}: head 'pooler' needs BERT's pretrained pooler (pooler.dense) in"
                f" {model_dir or source}, which has none; set the study's train.head to roberta"
                " (a new dense + tanh layer) or linear"
            )
        model.load_pooler(pooler)
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if isinstance(limit, int) and spec.max_length > limit:
        raise ValueError(
            f"run {spec.run}: max_length {spec.max_length} exceeds the model's "
            f"max_position_embeddings {limit} ({source}); lower max_length in the config"
        )
    if spec.freeze_encoder:
        model.freeze_encoder()
    return model


@torch.no_grad()
def predict(
    model: SequenceClassifier, split: Split, batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits [N, C] of `split` in file order, in eval mode and fp32 whatever the training
    precision (reported scores stay exact); restores the mode."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for b in split.iter_batches(batch_size, device=device):
            out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
            chunks.append(out.logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def task_of_model(model: SequenceClassifier, fallback_name: str) -> Task:
    """The registered task a fine-tuned model was trained on, or a minimal stand-in for an
    unregistered name (labels are then read but not range-checked against a registry row)."""
    if model.task is not None:
        try:
            return fine_tuning_task(model.task)
        except ValueError:
            pass
    return Task(
        name=model.task or fallback_name,
        kind="regression" if model.regression else "classification",
        num_labels=model.num_labels,
        metric="pearson" if model.regression else "accuracy",
        hub_path="",
        hub_name=None,
        text_a="text_a",
        text_b=None,
        label="label",
        hub_splits=(),
        synthetic="",
    )
