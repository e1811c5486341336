"""Atomic writers for every artifact: Parquet tables with provenance metadata, tensors, specs.

A killed job must never leave a truncated file that looks complete, so every writer goes
through a temporary file in the same directory followed by an atomic rename.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneatlas import __version__

# numpy, pandas and pyarrow load in the functions that use them: `adopt` and the CLI's error
# path import this module and need none of them (~0.4 s a job)
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

META_PREFIX = "tuneatlas."
_UMASK = os.umask(0)
os.umask(_UMASK)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def disk_full(exc: BaseException) -> bool:
    """Whether an exception means the disk (or quota) is full, whoever raised it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return isinstance(exc, OSError | RuntimeError) and (
        "No space left on device" in text or "unexpected pos" in text or "file write failed" in text
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except (OSError, RuntimeError) as exc:
            # writers report a full disk in their own words (torch: "unexpected pos ...",
            # pyarrow: an OSError without errno): name it and the file that was being written
            if disk_full(exc):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for everyone
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


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
        follow_umask(tmp)
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


def follow_umask(root: Path) -> None:
    """Give `root` and everything under it the modes of a plain `mkdir`/`open` under the
    user's umask: mkdtemp makes 0700 and some writers (safetensors via transformers) 0600,
    which would hide model directories from collaborators on a shared cluster."""
    os.chmod(root, 0o777 & ~_UMASK)
    for base, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o777 & ~_UMASK)
        for f in files:
            p = os.path.join(base, f)
            executable = os.stat(p).st_mode & 0o100
            os.chmod(p, (0o777 if executable else 0o666) & ~_UMASK)


_OFFLINE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})


def hub_offline() -> str | None:
    """The environment variable that puts the hub offline (read at call time), or None when the
    hub may be reached."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _OFFLINE_VALUES:
            return var
    return None


def remove_interrupted_writes(path: str | os.PathLike) -> None:
    """Delete the temporary files of `atomic_path(path)` writes that a kill cut short (the
    `finally` above never ran for them); `path` itself is left alone."""
    path = Path(path)
    for stale in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*"):
        stale.unlink(missing_ok=True)


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@cache
def git_commit() -> str:
    """Commit of the package's checkout ("unknown" outside git), "+dirty" if modified."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def provenance(config_hash: str, **extra: Any) -> dict[str, str]:
    """Metadata stored in every Parquet file: config hash, package version, git commit."""
    meta = {"config_hash": config_hash, "version": __version__, "git_commit": git_commit()}
    meta.update(
        {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in extra.items()}
    )
    return meta


def write_parquet(
    df: pd.DataFrame, path: str | os.PathLike, meta: Mapping[str, str] | None = None
) -> Path:
    """Write `df` atomically, with `meta` stored under `tuneatlas.*` keys of the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    merged = dict(table.schema.metadata or {})
    for key, value in (meta or {}).items():
        merged[(META_PREFIX + key).encode()] = str(value).encode()
    table = table.replace_schema_metadata(merged)
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_parquet_meta(path: str | os.PathLike) -> dict[str, str]:
    """The `tuneatlas.*` metadata of a Parquet file, without the prefix."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    return {
        k.decode()[len(META_PREFIX) :]: v.decode()
        for k, v in raw.items()
        if k.decode().startswith(META_PREFIX)
    }


def write_yaml(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path, ".yaml") as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    return Path(path)


def save_tensors(
    tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save numpy arrays or torch tensors to a safetensors file, atomically."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {
        k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in tensors.items()
    }
    with atomic_path(path, ".safetensors") as tmp:
        save_file(arrays, str(tmp), metadata=dict(metadata or {}))
    return Path(path)


def load_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))
