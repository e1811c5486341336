"""S5's clustering: embed a dataset with any encoder, or with tf-idf + truncated SVD (c-BTM's
featurisation, `spec["kind"] == "tfidf"`), cluster its training split, and derive the member
datasets (each trained on all clusters but one).

`cluster_dataset` writes `results/clusters/<id>/`:
- `centres.safetensors`: "centres" float32 [k, H] (k-means centres or mixture means);
- `assignments.parquet`: one row per example of every split (split, row, idx, label, cluster,
  and `d_<cluster>` = the Euclidean distance of its embedding to each centre), so that the
  ensembles weight test inputs with the same embedder that clustered the training set;
- `embedder.json`: which encoder, pooling and clustering produced them, and the cluster sizes.

`derive_member_dataset` then writes an ordinary prepared dataset (results/data/<task>-<member>/)
whose train split keeps the rows of the member's clusters and whose other splits are copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tuneatlas import __version__
from tuneatlas.data.members import cluster_labels
from tuneatlas.data.prepare import read_prepared
from tuneatlas.data.tasks import SPLITS
from tuneatlas.errors import DataError
from tuneatlas.io import (
    atomic_dir,
    git_commit,
    read_parquet_meta,
    save_tensors,
    write_json,
    write_parquet,
)

if TYPE_CHECKING:  # torch is imported where it is used: cluster_data jobs need none of it
    import torch

log = logging.getLogger(__name__)

CENTRES_FILE = "centres.safetensors"
ASSIGNMENTS_FILE = "assignments.parquet"
EMBEDDER_FILE = "embedder.json"


# --- embedding -------------------------------------------------------------------------------
def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":  # sentence-transformers' pooling: mean over the real tokens
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown pooling {pooling!r}; use cls or mean")


def embed_texts(
    encoder: Any,
    tokenizer: Any,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    pooling: str,
    max_length: int,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Pooled last-layer embeddings [N, H] (float32) of the texts, in order."""
    import torch

    encoder.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(text_a), batch_size):
            stop = start + batch_size
            enc = tokenizer(
                list(text_a[start:stop]),
                list(text_b[start:stop]) if text_b is not None else None,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            hidden = encoder(**enc).last_hidden_state
            chunks.append(_pool(hidden, enc["attention_mask"], pooling).float().cpu())
    return torch.cat(chunks).numpy()


def _dir_fingerprint(path: Path) -> str:
    """Hash of a model directory's config and weight files (names, sizes, config bytes)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


# --- clustering ------------------------------------------------------------------------------
def fit_clusters(x: np.ndarray, k: int, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres [k, H], training assignments [N]) by seeded k-means or a Gaussian mixture."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if len(x) < k:
        raise DataError(
            f"studies.s5.k: {k} clusters need at least {k} training examples, the training split"
            f" has {len(x)}; lower k"
        )
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)
    if method == "gmm":
        gm = GaussianMixture(n_components=k, covariance_type="diag", random_state=seed).fit(x)
        return gm.means_.astype(np.float32), gm.predict(x).astype(np.int64)
    raise ValueError(f"studies.s5.clustering.method: unknown {method!r}; use kmeans or gmm")


def distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distances [N, k] of each row of x to each centre (float64)."""
    x64, c64 = x.astype(np.float64), centres.astype(np.float64)
    sq = (x64**2).sum(1)[:, None] - 2 * x64 @ c64.T + (c64**2).sum(1)[None, :]
    return np.sqrt(np.clip(sq, 0.0, None))


def cluster_dataset(
    spec: Mapping[str, Any],
    data_dir: str | os.PathLike,
    embedder_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    device: str | torch.device | None = None,
    meta: Mapping[str, str] | None = None,
) -> Path:
    """Embed every split of `data_dir` with the encoder in `embedder_dir`, cluster the train
    split and write centres, assignments (with distances) and the embedder's identity.

    `spec`: k, method (kmeans | gmm), seed, pooling (cls | mean), max_length, batch_size,
    embedder (the model id and its config entry, recorded as the embedder's identity).
    """
    from tuneatlas.engine.device import resolve_device

    data_dir = Path(data_dir)
    tfidf = spec.get("kind") == "tfidf"
    if tfidf:
        frames, embedded = tfidf_splits(spec, data_dir)
    else:
        if embedder_dir is None:
            raise ValueError("cluster: a neural embedder needs its model directory (--embedder)")
        embedder_dir = Path(embedder_dir)
        frames, embedded = _embed_splits(spec, data_dir, embedder_dir, resolve_device(device))
    if "train" not in frames:
        raise DataError(f"{data_dir}: no train.parquet to cluster; prepare the dataset first")
    k = int(spec["k"])
    centres, train_assign = fit_clusters(embedded["train"], k, spec["method"], int(spec["seed"]))
    labels = cluster_labels(k)
    assignments = _assignments(frames, embedded, centres, train_assign, labels)
    sizes = assignments[assignments["split"] == "train"]["cluster"].value_counts()
    empty = [c for c in labels if c not in sizes.index]
    if empty:
        raise DataError(
            f"studies.s5.k: cluster(s) {empty} of k = {k} received no training example; lower k"
            " or use method: kmeans"
        )
    info = {
        "embedder": "tfidf" if tfidf else spec.get("embedder"),
        **(
            {"svd_dims": int(spec["svd_dims"])}
            if tfidf
            else {
                "embedder_dir": str(embedder_dir),
                "embedder_fingerprint": _dir_fingerprint(embedder_dir),
                "pooling": spec["pooling"],
                "max_length": int(spec["max_length"]),
            }
        ),
        "method": spec["method"],
        "k": k,
        "seed": int(spec["seed"]),
        "dims": int(centres.shape[1]),
        "clusters": labels,
        "train_sizes": {c: int(sizes[c]) for c in labels},
        "data": str(data_dir),
        "version": __version__,
        "git_commit": git_commit(),
    }
    file_meta = {**(meta or {}), "clustering": json.dumps(info, sort_keys=True, default=str)}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_tensors({"centres": centres}, tmp / CENTRES_FILE, metadata=file_meta)
        write_parquet(assignments, tmp / ASSIGNMENTS_FILE, file_meta)
        write_json(info, tmp / EMBEDDER_FILE)
    log.info("cluster: k=%d train sizes %s -> %s", k, info["train_sizes"], out_dir)
    return out_dir


def _texts(df: pd.DataFrame) -> list[str]:
    """One text per row: text_a, and text_b after it for a pair task."""
    a = df["text_a"].astype(str)
    return (
        (a + " " + df["text_b"].astype(str)).tolist() if df["text_b"].notna().all() else a.tolist()
    )


def tfidf_splits(
    spec: Mapping[str, Any], data_dir: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """The prepared splits and their tf-idf vectors reduced by truncated SVD to `svd_dims`
    (fitted on train only, seeded) and scaled to unit length, so that Euclidean k-means on them
    ranks as cosine does on the tf-idf vectors (latent semantic analysis)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    frames = {
        split: read_prepared(data_dir / f"{split}.parquet")
        for split in SPLITS
        if (data_dir / f"{split}.parquet").is_file()
    }
    if "train" not in frames:
        raise DataError(f"{data_dir}: no train.parquet to cluster; prepare the dataset first")
    vectoriser = TfidfVectorizer(sublinear_tf=True).fit(_texts(frames["train"]))
    train = vectoriser.transform(_texts(frames["train"]))
    dims = int(spec["svd_dims"])
    if not 1 <= dims < min(train.shape):
        raise DataError(
            f"studies.s5.embedder.svd_dims: {dims} must be below the training rows and the"
            f" vocabulary ({train.shape[0]} x {train.shape[1]}); lower it"
        )
    svd = TruncatedSVD(n_components=dims, random_state=int(spec["seed"])).fit(train)
    embedded = {
        split: normalize(svd.transform(vectoriser.transform(_texts(df)))).astype(np.float32)
        for split, df in frames.items()
    }
    log.info("cluster: tf-idf %d terms -> %d SVD dims", train.shape[1], dims)
    return frames, embedded


def _embed_splits(
    spec: Mapping[str, Any], data_dir: Path, embedder_dir: Path, dev: torch.device
) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """The prepared splits present in `data_dir` and their embeddings by the encoder."""
    from tuneatlas.models.hub import load_encoder, load_tokenizer

    trust = bool(spec.get("trust_remote_code", False))
    encoder = load_encoder(embedder_dir, trust_remote_code=trust).to(dev)
    tokenizer = load_tokenizer(embedder_dir, trust_remote_code=trust)
    frames, embedded = {}, {}
    for split in SPLITS:
        path = data_dir / f"{split}.parquet"
        if not path.is_file():
            continue
        df = read_prepared(path)
        text_b = df["text_b"].astype(str).tolist() if df["text_b"].notna().all() else None
        frames[split] = df
        embedded[split] = embed_texts(
            encoder,
            tokenizer,
            df["text_a"].astype(str).tolist(),
            text_b,
            spec["pooling"],
            int(spec["max_length"]),
            int(spec["batch_size"]),
            dev,
        )
        log.info("cluster: embedded %s %s", split, embedded[split].shape)
    return frames, embedded


def _assignments(
    frames: Mapping[str, pd.DataFrame],
    embedded: Mapping[str, np.ndarray],
    centres: np.ndarray,
    train_assign: np.ndarray,
    labels: list[str],
) -> pd.DataFrame:
    """Every row's cluster (train: the fit's own; others: the nearest centre) and distances."""
    rows = []
    for split, df in frames.items():
        d = distances(embedded[split], centres)
        assign = train_assign if split == "train" else d.argmin(1)
        table = pd.DataFrame(
            {
                "split": split,
                "row": np.arange(len(df), dtype=np.int64),
                "idx": df["idx"].to_numpy(np.int64),
                "label": df["label"].to_numpy(),
                "cluster": [labels[c] for c in assign],
            }
        )
        for j, name in enumerate(labels):
            table[f"d_{name}"] = d[:, j]
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def read_assignments(clusters_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    clusters_dir = Path(clusters_dir)
    info = json.loads((clusters_dir / EMBEDDER_FILE).read_text())
    return pd.read_parquet(clusters_dir / ASSIGNMENTS_FILE), info


def derive_member_dataset(
    data_dir: str | os.PathLike,
    clusters_dir: str | os.PathLike,
    clusters: Sequence[str],
    out_dir: str | os.PathLike,
    meta: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """The member dataset of `clusters`: the train rows assigned to them; other splits copied.

    Returns the row count per split written.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    assignments, info = read_assignments(clusters_dir)
    unknown = sorted(set(clusters) - set(info["clusters"]))
    if unknown:
        raise ValueError(f"clusters {unknown} are not in {clusters_dir} ({info['clusters']})")
    train = read_prepared(data_dir / "train.parquet")
    assigned = assignments[assignments["split"] == "train"]
    if not np.array_equal(assigned["idx"].to_numpy(), train["idx"].to_numpy()):
        raise DataError(
            f"{clusters_dir} was clustered from another version of {data_dir}; re-run cluster"
        )
    keep = assigned["cluster"].isin(list(clusters)).to_numpy()
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            src = data_dir / f"{split}.parquet"
            if not src.is_file():
                continue
            if split == "train":
                file_meta = {
                    **read_parquet_meta(src),
                    **(meta or {}),
                    "clusters": ",".join(clusters),
                    "rows": str(int(keep.sum())),
                    "source_rows": str(len(train)),  # the step budget of `steps_from: source`
                }
                write_parquet(train[keep].reset_index(drop=True), tmp / src.name, file_meta)
                counts[split] = int(keep.sum())
            else:
                shutil.copy2(src, tmp / src.name)
                counts[split] = int(pd.read_parquet(src, columns=["idx"]).shape[0])
    log.info("member data %s: clusters %s, rows %s", out_dir.name, list(clusters), counts)
    return counts
