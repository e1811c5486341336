"""Toy-scale encoders built offline: a WordPiece tokenizer trained on the synthetic corpus, a
tiny BERT's config and seeded initialisation, and the plain Hugging Face encoder directory it is
saved as (config + `model.safetensors` + tokenizer) under `results/models/<id>/`. Its brief
masked-LM pre-training is a recipe of the engine (`tuneatlas.engine.recipes.mlm`, which also
holds `build_bert`, the whole build). Paper scale fetches hub encoders instead
(`tuneatlas.models.hub`); both give the same kind of directory.
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

from tuneatlas.io import write_json
from tuneatlas.models.hub import BUILD_INFO

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
# architecture; bert_build_config accepts the whole entry and ignores these.
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


def bert_build_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config `models.<id>` entry of `source: build`, checked, with every default filled in.

    Keys: hidden_size, num_layers, num_heads, vocab_size (required); intermediate_size
    (4x hidden), max_position_embeddings (512), dropout (0.1), mlm_steps (0), mlm_batch_size
    (32), mlm_lr (1e-3), mlm_max_length (64), mlm_probability (0.15).
    """
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


def init_bert(c: dict[str, Any], vocab_size: int, pad_token_id: int, seed: int) -> torch.nn.Module:
    """A BertForMaskedLM of the checked build config `c`, initialised from `seed`."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab_size,  # the tokenizer's: a small corpus may give fewer words than asked
        hidden_size=int(c["hidden_size"]),
        num_hidden_layers=int(c["num_layers"]),
        num_attention_heads=int(c["num_heads"]),
        intermediate_size=int(c["intermediate_size"]),
        max_position_embeddings=int(c["max_position_embeddings"]),
        hidden_dropout_prob=float(c["dropout"]),
        attention_probs_dropout_prob=float(c["dropout"]),
        pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    return BertForMaskedLM(config)


def save_encoder(mlm: torch.nn.Module, out_dir: Path, seed: int, info: dict[str, Any]) -> None:
    """Write the encoder of a BertForMaskedLM to `out_dir` as a plain BertModel with a pooler,
    so that AutoModel loads it without missing keys like a hub BERT (the pooler stays at its
    random init from `seed` + 1; tuneatlas never uses it), and `info` + the parameter count as
    `tuneatlas_build.json`. The tokenizer is the caller's to save beside it."""
    from transformers import BertModel

    torch.manual_seed(seed + 1)
    encoder = BertModel(mlm.config, add_pooling_layer=True)
    missing, unexpected = encoder.load_state_dict(mlm.bert.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"build_bert: weight transfer mismatch {missing} {unexpected}")
    encoder.save_pretrained(str(out_dir))
    parameters = sum(p.numel() for p in encoder.parameters())
    write_json({**info, "parameters": parameters}, Path(out_dir) / BUILD_INFO)
