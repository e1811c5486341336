"""Models: offline tokenizer training, tiny BERT build, encoder fetching/loading, classifier.

Toy scale builds its own encoder (`train_tokenizer` + `build_bert`) so the whole DAG runs
offline; paper scale fetches hub encoders (`fetch_model`). Either way the result is a plain
Hugging Face encoder directory (config + `model.safetensors` + tokenizer) under
`results/models/<id>/`, and a local directory works anywhere a hub name does.

`SequenceClassifier` is the one fine-tuning model of every study: encoder + dropout + a new head
reading ONE vector of the last layer (the CLS vector, or the max-norm token of S1.T1). There is
no BERT pooler: S1 reasons about the raw last-layer CLS dimensions the head sees.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from tuneatlas.io import load_tensors, save_tensors, write_json

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MODEL_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]
BUILD_INFO = "tuneatlas_build.json"  # beside a built/fetched encoder: how it was made
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

BUILD_KEYS = {
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "dropout",
    "mlm_steps",
    "mlm_batch_size",
    "mlm_lr",
    "mlm_max_length",
    "mlm_probability",
}
BUILD_REQUIRED = ("hidden_size", "num_layers", "num_heads", "vocab_size")
# Keys of a config `models.<id>` entry that describe where the model comes from rather than its
# architecture; build_bert accepts the whole entry and ignores these.
BUILD_IGNORED = {"source", "arch", "corpus", "name", "trust_remote_code"}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; move it onto `path` if the block succeeds.

    Snakemake declares model directories as outputs, so a killed job must never leave a
    half-written directory under the final name. An existing `path` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            # os.replace cannot overwrite a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' per-load/save progress bars, which clutter every job log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def hub_offline() -> bool:
    """True when the environment forbids hub access (read at call time, not import time)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a filesystem path.
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


# --------------------------------------------------------------------------------------------
# tokenizer and tiny BERT
# --------------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    model_max_length: int = 512,
    min_frequency: int = 2,
) -> Any:
    """Train a lower-casing BERT-style WordPiece tokenizer offline and save it to `out_dir`.

    Special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; single inputs become
    `[CLS] a [SEP]`, pairs `[CLS] a [SEP] b [SEP]` with token_type_ids 0/1.
    `AutoTokenizer.from_pretrained(out_dir)` reloads it. Returns the PreTrainedTokenizerFast.

    The pipeline (BERT normaliser, pre-tokeniser, WordPiece model, post-processor) is
    `tokenizers`'; the vocabulary is learned by `learn_wordpiece_vocab` rather than by
    `tokenizers.trainers.WordPieceTrainer`, whose merges break count ties in hash order and so
    give a different vocabulary on every run (measured: 4 distinct vocabularies in 6 runs).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} leaves no room for words")
    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(w for w, _ in words)
    if not counts:
        raise ValueError("train_tokenizer: the texts are empty; pass the training corpus")
    vocab = SPECIAL_TOKENS + learn_wordpiece_vocab(
        counts, vocab_size - len(SPECIAL_TOKENS), min_frequency=min_frequency
    )
    tok = Tokenizer(
        models.WordPiece(
            {t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", continuing_subword_prefix="##"
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        # transformers 5 drops token_type_ids from the default input names; BERT needs them.
        model_input_names=MODEL_INPUT_NAMES,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int], size: int, min_frequency: int = 2
) -> list[str]:
    """WordPiece vocabulary by frequency-based merges (what `WordPieceTrainer` does), with ties
    broken by the merged pair's text so the result is a pure function of the counts.

    Words start as characters (`c`, then `##c` inside a word); the most frequent adjacent pair
    is merged until `size` tokens exist or no pair occurs `min_frequency` times. All characters
    are kept even beyond `size`, so every seen word stays encodable without [UNK].
    """
    splits = {w: [w[0]] + ["##" + c for c in w[1:]] for w in sorted(word_counts) if w}
    vocab = sorted({s for parts in splits.values() for s in parts})
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[str]] = defaultdict(set)
    for w, parts in splits.items():
        for pair in zip(parts, parts[1:], strict=False):
            pairs[pair] += word_counts[w]
            where[pair].add(w)
    # Max-heap by (count, then the smaller pair text first) with lazy deletion of stale entries.
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    seen = set(vocab)
    while len(vocab) < size and heap:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        a, b = pair
        merged = a + b[2:]  # b is always a continuation piece "##..."
        if merged not in seen:
            vocab.append(merged)
            seen.add(merged)
        changed: set[tuple[str, str]] = set()
        for w in sorted(where.pop(pair, ())):
            parts, n = splits[w], word_counts[w]
            for p in zip(parts, parts[1:], strict=False):
                pairs[p] -= n
                changed.add(p)
                where[p].discard(w)
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[w] = out
            for p in zip(out, out[1:], strict=False):
                pairs[p] += n
                changed.add(p)
                where[p].add(w)
        pairs.pop(pair, None)
        for p in sorted(changed):
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                pairs.pop(p, None)
    return vocab


def _build_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("arch", "bert") != "bert":
        raise ValueError(f"build_bert: arch {cfg['arch']!r} is not 'bert'")
    cfg = {k: v for k, v in cfg.items() if k not in BUILD_IGNORED}
    unknown = set(cfg) - BUILD_KEYS
    if unknown:
        raise ValueError(
            f"build_bert: unknown model config keys {sorted(unknown)}; known: {sorted(BUILD_KEYS)}"
        )
    missing = [k for k in BUILD_REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"build_bert: model config lacks required keys {missing}")
    out = {
        "intermediate_size": 4 * int(cfg["hidden_size"]),
        "max_position_embeddings": 512,
        "dropout": 0.1,
        "mlm_steps": 0,
        "mlm_batch_size": 32,
        "mlm_lr": 1e-3,
        "mlm_max_length": 64,
        "mlm_probability": 0.15,
    }
    out.update(cfg)
    if out["hidden_size"] % out["num_heads"]:
        raise ValueError(
            f"build_bert: hidden_size {out['hidden_size']} is not divisible by "
            f"num_heads {out['num_heads']}"
        )
    return out


def build_bert(
    cfg: dict[str, Any], texts: Iterable[str], out_dir: str | os.PathLike, seed: int
) -> Path:
    """Build a small BERT encoder offline: tokenizer trained on `texts`, random init from `seed`,
    then `mlm_steps` masked-LM steps on `texts` so the encoder is (cheaply) "pre-trained".

    `cfg` keys: hidden_size, num_layers, num_heads, vocab_size (required); intermediate_size
    (4x hidden), max_position_embeddings (512), dropout (0.1), mlm_steps (0), mlm_batch_size
    (32), mlm_lr (1e-3), mlm_max_length (64), mlm_probability (0.15).
    Writes `out_dir` atomically: config + model.safetensors (a BertModel with pooler, like hub
    BERTs) + tokenizer + `tuneatlas_build.json`. Deterministic on CPU for a fixed seed.
    """
    from transformers import BertConfig, BertForMaskedLM, BertModel

    c = _build_cfg(dict(cfg))
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"build_bert: no non-empty texts to train the tokenizer for {out_dir}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp, quiet_hf_progress():
        tokenizer = train_tokenizer(
            texts, int(c["vocab_size"]), tmp, model_max_length=int(c["max_position_embeddings"])
        )
        config = BertConfig(
            vocab_size=len(tokenizer),  # a small corpus may give fewer words than requested
            hidden_size=int(c["hidden_size"]),
            num_hidden_layers=int(c["num_layers"]),
            num_attention_heads=int(c["num_heads"]),
            intermediate_size=int(c["intermediate_size"]),
            max_position_embeddings=int(c["max_position_embeddings"]),
            hidden_dropout_prob=float(c["dropout"]),
            attention_probs_dropout_prob=float(c["dropout"]),
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        mlm = BertForMaskedLM(config)
        losses = _mlm_pretrain(mlm, tokenizer, texts, c, seed) if c["mlm_steps"] > 0 else []
        # Save a plain BertModel with a pooler so AutoModel loads it without missing keys,
        # like a hub BERT; the pooler stays at its seeded random init (never used by tuneatlas).
        torch.manual_seed(seed + 1)
        encoder = BertModel(config, add_pooling_layer=True)
        missing, unexpected = encoder.load_state_dict(mlm.bert.state_dict(), strict=False)
        if unexpected or any(not k.startswith("pooler.") for k in missing):
            raise RuntimeError(f"build_bert: weight transfer mismatch {missing} {unexpected}")
        encoder.save_pretrained(str(tmp))
        write_json(
            {
                "kind": "bert",
                "config": c,
                "seed": seed,
                "vocab_size": len(tokenizer),
                "num_texts": len(texts),
                "mlm_losses": [round(x, 6) for x in losses],
                "parameters": sum(p.numel() for p in encoder.parameters()),
            },
            tmp / BUILD_INFO,
        )
    log.info(
        "built BERT %s: %d layers, hidden %d, vocab %d, %d MLM steps (loss %s)",
        out_dir,
        c["num_layers"],
        c["hidden_size"],
        len(tokenizer),
        c["mlm_steps"],
        f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "n/a",
    )
    return out_dir


def _mlm_pretrain(
    mlm: nn.Module, tokenizer: Any, texts: list[str], c: dict[str, Any], seed: int
) -> list[float]:
    """Masked-LM training (BERT's 15% / 80-10-10 masking), every random draw from one seeded
    generator so the built encoder is reproducible."""
    from tuneatlas.optim import AdamW

    gen = torch.Generator().manual_seed(seed)
    enc = tokenizer(texts, truncation=True, max_length=int(c["mlm_max_length"]))
    rows = enc["input_ids"]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    batch, steps = int(c["mlm_batch_size"]), int(c["mlm_steps"])
    opt = AdamW(mlm.parameters(), lr=float(c["mlm_lr"]), eps=1e-8, weight_decay=0.01)
    mlm.train()
    order = torch.randperm(len(rows), generator=gen)
    pos, losses = 0, []
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(rows), generator=gen), 0
        idx = order[pos : pos + batch].tolist()
        pos += batch
        ids, mask = _pad([rows[i] for i in idx], tokenizer.pad_token_id)
        labels = ids.clone()
        candidates = mask.bool() & ~torch.isin(ids, special)
        chosen = (torch.rand(ids.shape, generator=gen) < float(c["mlm_probability"])) & candidates
        labels[~chosen] = -100
        r = torch.rand(ids.shape, generator=gen)
        inputs = ids.clone()
        inputs[chosen & (r < 0.8)] = tokenizer.mask_token_id
        swap = chosen & (r >= 0.8) & (r < 0.9)
        inputs[swap] = torch.randint(len(special), len(tokenizer), ids.shape, generator=gen)[swap]
        if not chosen.any():
            continue  # nothing masked in this batch (tiny texts): no signal, skip the update
        out = mlm(input_ids=inputs, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------
# fetching and loading encoders
# --------------------------------------------------------------------------------------------


def fetch_model(name: str, out_dir: str | os.PathLike, trust_remote_code: bool = False) -> Path:
    """Copy an encoder (hub id or local directory) into `out_dir` as safetensors + tokenizer.

    With HF_HUB_OFFLINE=1 a hub id fails at once (no network time-out). Remote code runs only
    when `trust_remote_code=True` is asked for explicitly.
    """
    from transformers import AutoModel, AutoTokenizer

    local = Path(name).expanduser()
    if local.is_dir():
        source = str(local)
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"fetch_model: model directory {name!r} does not exist; it must hold config.json, "
            "the weights and the tokenizer files"
        )
    elif hub_offline():
        raise RuntimeError(
            f"fetch_model: {name!r} is not a local directory and the hub is unreachable "
            "(HF_HUB_OFFLINE=1). Download it elsewhere (e.g. `hf download "
            f"{name} --local-dir DIR`) and put that local directory in the config in place of "
            "the hub name, or unset HF_HUB_OFFLINE on a machine with network access."
        )
    else:
        source = name
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp, quiet_hf_progress():
        model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json(
            {
                "kind": "fetched",
                "source": name,
                "trust_remote_code": trust_remote_code,
                "model_type": model.config.model_type,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            tmp / BUILD_INFO,
        )
    log.info("fetched %s -> %s", name, out_dir)
    return out_dir


def _require_model_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} {path} is not a model directory (no config.json); build it with "
            "`tuneatlas build-model` or fetch it with fetch_model"
        )
    return path


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


def load_encoder(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """Load the bare encoder of a model directory, without a BERT-style pooler when the model
    class offers that switch (its weights, if stored, are ignored: tuneatlas never uses them)."""
    from transformers import AutoConfig, AutoModel

    path = _require_model_dir(path, "encoder directory")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {}
    model_cls = AutoModel._model_mapping.get(type(config), None) if not trust_remote_code else None
    if model_cls is not None and "add_pooling_layer" in inspect.signature(model_cls).parameters:
        kwargs["add_pooling_layer"] = False
    # transformers prints a LOAD REPORT table for the (expected) unused pooler weights of every
    # hub BERT; drop that record and report what matters ourselves. (A filter, not a logger
    # level: raising that logger's level makes transformers log a tensor-parallel warning.)
    hf_logger = logging.getLogger("transformers.modeling_utils")
    hf_logger.addFilter(_drop_load_report)
    try:
        with quiet_hf_progress():
            model, info = AutoModel.from_pretrained(
                str(path),
                config=config,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
                **kwargs,
            )
    finally:
        hf_logger.removeFilter(_drop_load_report)
    if info.get("missing_keys"):
        log.warning(
            "encoder %s: weights missing from the checkpoint, randomly initialised: %s",
            path,
            sorted(info["missing_keys"]),
        )
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith("pooler."))
    if unexpected:
        log.info("encoder %s: unused checkpoint weights: %s", path, unexpected)
    return model


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"no usable tokenizer in {path}: {e}. The model directory must hold the tokenizer "
            "files (build_bert and fetch_model save them)."
        ) from e


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


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # [B, C] (C = 1 for regression)
    pooled: torch.Tensor  # [B, H], the one vector the head reads
    hidden_states: tuple[torch.Tensor, ...] | None  # L+1 x [B, T, H] when asked for


class SequenceClassifier(nn.Module):
    """Encoder + dropout + head on one last-layer vector ("cls" or "maxnorm").

    head "linear": nn.Linear(H, C); "mlp2": Linear(H, H) -> ReLU -> Linear(H, C) (S1.T4, with a
    frozen encoder). `dropout` None keeps the encoder config's dropout (and uses its classifier
    dropout for the head); a number sets every dropout (hidden, attention, head) to it.
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
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "maxnorm"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'cls' or 'maxnorm'")
        if head not in ("linear", "mlp2"):
            raise ValueError(f"unknown head {head!r}; use 'linear' or 'mlp2'")
        if regression and num_labels != 1:
            raise ValueError(f"a regression head has num_labels 1, got {num_labels}")
        self.encoder = encoder
        self.tokenizer = tokenizer
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
        if head == "linear":
            self.head: nn.Module = nn.Linear(hidden, self.num_labels)
        else:
            self.head = nn.Sequential(
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, self.num_labels)
            )

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
        logits = self.head(self.dropout(pooled))
        return ClassifierOutput(logits, pooled, out.hidden_states if output_hidden_states else None)

    def info(self, **extra: Any) -> dict[str, Any]:
        return {
            "task": self.task,
            "num_labels": self.num_labels,
            "pooling": self.pooling,
            "head": self.head_kind,
            "regression": self.regression,
            "head_dropout": self.dropout.p,
            "max_length": self.max_length,
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
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> SequenceClassifier:
        """Reload a model written by `save` (encoder config keeps the dropout it trained with)."""
        info = cls.read_info(path)
        encoder = load_encoder(path)
        model = cls(
            encoder,
            info["num_labels"],
            pooling=info["pooling"],
            head=info["head"],
            dropout=None,
            regression=info["regression"],
            task=info.get("task"),
            tokenizer=load_tokenizer(path),
            max_length=info.get("max_length"),
        )
        model.dropout.p = float(info.get("head_dropout", model.dropout.p))
        state = {k: torch.from_numpy(v) for k, v in load_tensors(Path(path) / HEAD_FILE).items()}
        model.head.load_state_dict(state)
        if device is not None:
            model.to(device)
        return model


__all__ = [
    "ClassifierOutput",
    "SequenceClassifier",
    "atomic_dir",
    "build_bert",
    "config_dropout",
    "fetch_model",
    "hub_offline",
    "load_encoder",
    "load_tokenizer",
    "maxnorm_pool",
    "pool",
    "set_dropout",
    "train_tokenizer",
]
