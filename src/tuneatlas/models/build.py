"""Toy-scale encoders built offline: a WordPiece tokenizer trained on the synthetic corpus and a
tiny BERT, briefly MLM-pre-trained, saved as a plain Hugging Face encoder directory
(config + `model.safetensors` + tokenizer) under `results/models/<id>/`. Paper scale fetches hub
encoders instead (`tuneatlas.models.hub`); both give the same kind of directory.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from tuneatlas.io import atomic_dir, write_json
from tuneatlas.models.hub import BUILD_INFO, quiet_hf_progress

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MODEL_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]

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
    mlm: torch.nn.Module, tokenizer: Any, texts: list[str], c: dict[str, Any], seed: int
) -> list[float]:
    """Masked-LM training (BERT's 15% / 80-10-10 masking), every random draw from one seeded
    generator so the built encoder is reproducible."""
    from tuneatlas.engine.optim import AdamW

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
