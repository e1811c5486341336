"""Fetching and loading encoders: hub ids or local directories, offline-aware.

A local directory works anywhere a hub name does; with the hub offline a hub id fails at once
with the way out. `fetch_model` copies an encoder into `results/models/<id>/` as safetensors +
tokenizer; `load_encoder` / `load_tokenizer` read such a directory back.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneatlas.errors import ConfigError
from tuneatlas.io import atomic_dir, hub_offline, write_json

log = logging.getLogger(__name__)

BUILD_INFO = "tuneatlas_build.json"  # beside a built/fetched encoder: how it was made


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


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a filesystem path.
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def fetch_model(
    name: str,
    out_dir: str | os.PathLike,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Path:
    """Copy an encoder (hub id or local directory) into `out_dir` as safetensors + tokenizer.

    With HF_HUB_OFFLINE=1 a hub id fails at once (no network time-out). Remote code runs only
    when `trust_remote_code=True` is asked for explicitly. `revision` (a commit hash, branch or
    tag) pins the hub repository's version for the weights and the tokenizer alike.
    """
    from transformers import AutoModel, AutoTokenizer

    local = Path(name).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ValueError(
                f"fetch_model: revision {revision!r} was given for the local directory {name!r};"
                " a revision only applies to a hub name"
            )
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
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if revision is not None:
            kwargs["revision"] = revision
        model = AutoModel.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json(
            {
                "kind": "fetched",
                "source": name,
                "revision": revision,
                "trust_remote_code": trust_remote_code,
                "model_type": model.config.model_type,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            tmp / BUILD_INFO,
        )
    log.info("fetched %s -> %s", name, out_dir)
    return out_dir


def claims_trust(path: str | os.PathLike) -> bool:
    """Whether a model directory's own JSON (build info, or a fine-tuned run's tuneatlas.json)
    records `trust_remote_code: true`. Only a refusal reads this: trust is the config's."""
    import json

    for name in (BUILD_INFO, "tuneatlas.json"):
        info = Path(path) / name
        if info.is_file():
            try:
                return bool(json.loads(info.read_text()).get("trust_remote_code", False))
            except ValueError:
                return False
    return False


def refuse_self_trust(path: str | os.PathLike, trust_remote_code: bool) -> None:
    """Refuse a model directory that asks for its own code to run when the config did not
    grant it: a directory received from someone else must not opt itself in."""
    if not trust_remote_code and claims_trust(path):
        raise ConfigError(
            f"model directory {path} records trust_remote_code: true but the config does not"
            " grant it (models.<id>.trust_remote_code): a model directory cannot grant itself"
            " trust; set trust_remote_code: true on its model in the config only if you trust"
            " its code"
        )


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
    class offers that switch (its weights, if stored, are ignored here: only the `pooler` head
    reads them, through `models.classifier.pretrained_pooler`)."""
    from transformers import AutoConfig, AutoModel

    path = _require_model_dir(path, "encoder directory")
    refuse_self_trust(path, trust_remote_code)
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
