"""S4's pre-training data: a corpus tokenised once into packed token files (nanoGPT-style).

``results/tokens/<id>/`` holds ``train.bin`` and ``valid.bin`` (the documents' token ids, each
document followed by the end-of-text token, concatenated; uint16 when the vocabulary fits, else
uint32; read memory-mapped), ``tokens.json`` (dtype, token counts, the sha256 of each file's
bytes, vocabulary size, end-of-text id) and the tokenizer itself (``tokenizer.json`` + its
transformers config), so that a run and the evaluation use the very tokenizer the tokens came
from; a pre-training resumes only a checkpoint of the same token content. The last
`valid_fraction` of the documents (at least one) form ``valid.bin``.

At toy scale the tokenizer is a byte-level BPE trained offline on the corpus (`train_bpe`: the
`tokenizers` trainer on one thread, documents in file order, so the same corpus gives the same
merges); at paper scale it is a hub tokenizer (GPT-2's) fetched like a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneatlas.io import atomic_dir, atomic_path

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
META_FILE = "tokens.json"
VALID_FRACTION = 0.05


def train_bpe(texts: list[str], vocab_size: int, out_dir: str | os.PathLike) -> Any:
    """A byte-level BPE tokenizer with `vocab_size` entries (EOS included) trained on `texts`,
    saved to `out_dir` as a transformers fast tokenizer; returns it."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread: the same merges every time
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS
    )
    fast.save_pretrained(str(out_dir))
    return fast


def held_out(n_documents: int, valid_fraction: float = VALID_FRACTION) -> int:
    """How many of the corpus's last documents are kept out of training (at least one)."""
    return max(1, round(n_documents * valid_fraction))


def pack(
    texts: list[str],
    tokenizer: Any,
    out_dir: str | os.PathLike,
    valid_fraction: float = VALID_FRACTION,
) -> dict[str, Any]:
    """Tokenise `texts` (each followed by EOS) into ``train.bin`` / ``valid.bin`` under `out_dir`
    and write ``tokens.json``; returns that metadata."""
    if len(texts) < 2:
        raise ValueError(f"a pre-training corpus needs at least 2 documents, got {len(texts)}")
    token = tokenizer.eos_token or EOS
    eos = tokenizer.convert_tokens_to_ids(token)
    # a tokenizer without the token maps it to its unknown id (a BERT: [UNK]), not to None
    if eos is None or token not in tokenizer.get_vocab():
        raise ValueError(
            f"the tokenizer has no end-of-text token ({token!r} is not in its vocabulary, e.g."
            " a BERT tokenizer): documents could not be separated; point studies.s4.tokenizer"
            " at a causal-LM tokenizer (GPT-2's) or use build"
        )
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    n_valid = held_out(len(texts), valid_fraction)
    meta: dict[str, Any] = {"dtype": np.dtype(dtype).name, "vocab_size": vocab, "eos_id": eos}
    out = Path(out_dir)
    for split, part in (("train", texts[:-n_valid]), ("valid", texts[-n_valid:])):
        ids = tokenizer(list(part), add_special_tokens=False)["input_ids"]
        flat = np.fromiter(
            (t for doc in ids for t in (*doc, eos)), dtype=dtype, count=sum(len(d) + 1 for d in ids)
        )
        with atomic_path(out / f"{split}.bin", ".bin") as tmp:
            flat.tofile(tmp)
        meta[f"{split}_tokens"] = int(flat.size)
        meta[f"{split}_sha256"] = hashlib.sha256(memoryview(flat).cast("B")).hexdigest()
        meta[f"{split}_documents"] = len(part)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def prepare_tokens(
    corpus_dir: Path, out_dir: Path, tokenizer: str, vocab_size: int | None = None
) -> dict[str, Any]:
    """The `tokenize` rule: the corpus's ``train.parquet`` texts, tokenised with a BPE trained
    on them (`tokenizer` = "build", `vocab_size` entries) or with a fetched tokenizer
    directory, packed into `out_dir` (written whole or not at all)."""
    import pandas as pd
    from transformers import AutoTokenizer

    texts = pd.read_parquet(Path(corpus_dir) / "train.parquet", columns=["text"])["text"].tolist()
    with atomic_dir(out_dir) as tmp:
        if tokenizer == "build":
            if not vocab_size:
                raise ValueError("tokenizer: build needs studies.s4.vocab_size")
            tok = train_bpe(texts, vocab_size, tmp)
        else:
            tok = AutoTokenizer.from_pretrained(tokenizer)
            tok.save_pretrained(str(tmp))
        meta = pack(texts, tok, tmp)
    log.info(
        "tokens %s: %d train / %d valid tokens, vocabulary %d",
        out_dir,
        meta["train_tokens"],
        meta["valid_tokens"],
        meta["vocab_size"],
    )
    return meta


def content_hash(tokens_dir: str | os.PathLike) -> dict[str, str]:
    """The sha256 of each packed file's bytes: the ones `pack` wrote into ``tokens.json``, else
    (token files packed before it recorded them) hashed now, in 64 MiB chunks."""
    meta = json.loads((Path(tokens_dir) / META_FILE).read_text())
    out = {}
    for split in ("train", "valid"):
        digest = meta.get(f"{split}_sha256")
        if digest is None:
            h = hashlib.sha256()
            with open(Path(tokens_dir) / f"{split}.bin", "rb") as f:
                while chunk := f.read(1 << 26):
                    h.update(chunk)
            digest = h.hexdigest()
        out[split] = digest
    return out


@dataclass
class TokenBlocks:
    """Non-overlapping blocks of `seq_len` + 1 tokens of a packed file (inputs and their next
    tokens); `batch(rows)` stacks blocks as ``input_ids`` [B, seq_len + 1]."""

    tokens: np.ndarray  # memory-mapped
    seq_len: int

    @classmethod
    def open(cls, tokens_dir: str | os.PathLike, split: str, seq_len: int) -> TokenBlocks:
        meta = json.loads((Path(tokens_dir) / META_FILE).read_text())
        path = Path(tokens_dir) / f"{split}.bin"
        blocks = cls(np.memmap(path, dtype=meta["dtype"], mode="r"), seq_len)
        if len(blocks) == 0:
            raise ValueError(
                f"{path}: {blocks.tokens.size} tokens make no block of seq_len + 1 ="
                f" {seq_len + 1}; use a larger corpus or a shorter studies.s4.seq_len"
            )
        return blocks

    def __len__(self) -> int:
        return (self.tokens.size - 1) // self.seq_len

    def batch(self, rows: Any, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        t = self.seq_len
        ids = np.stack([self.tokens[r * t : r * t + t + 1] for r in rows]).astype(np.int64)
        return {"input_ids": torch.from_numpy(ids).to(device)}
