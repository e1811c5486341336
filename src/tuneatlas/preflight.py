"""Checks made before any job starts, from the config and the files and directories it names.

`preflight(config, plan)` is the one entry point: `tuneatlas validate` and the workflow's
common.smk both call it after schema validation and planning, so a bad path, a header-only
split file, impossible architecture arithmetic or `device: cuda` without CUDA fail before
snakemake schedules anything. It is where the files a config names are looked at: the plan
is a pure function of the config, so what needs the data (S5's k against the training rows)
is checked here. Every message has the shape ``<what> (<key or file:row>): <how to fix>``
(`tuneatlas.errors.error_lines` prints them).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuneatlas.data.prepare import (
    load_raw_splits,
    local_source_files,
    output_files,
    source_sizes,
)
from tuneatlas.data.sources import load_sources, unique_fields
from tuneatlas.data.tasks import TASKS
from tuneatlas.data.transform import columns_for, row_problems, split_counts
from tuneatlas.data.validate import (
    check_source,
    format_of,
    imbalance_size_problems,
    imbalanced_train_rows,
)
from tuneatlas.errors import ConfigError, DataError
from tuneatlas.plan import Plan

PEEK_BYTES = 1 << 20  # what validation reads of a data file: the header and the first rows
# Files up to this size are read whole and run through prepare_data's own checks (columns,
# empty text, labels against the task, empty splits after resplit/imbalance); a larger file
# gets the head checks only, and its rows are checked by the prepare_data job.
ROW_CHECK_BYTES = 64 << 20

# ---------------------------------------------------------------------------------------------
# Data files: what can be seen from the head of each file


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]


def check_data_file(path: Path, fmt: str, key: str) -> str | None:
    """The problem with the head of a local data file, or None: missing, empty, not UTF-8,
    duplicate columns, a header without rows (what `prepare` would otherwise take silently)."""
    where = f"{key} = {path}"
    if not path.exists():
        return (
            f"file not found ({key}: {path} does not exist; relative paths are read from the"
            f" working directory {Path.cwd()}): fix the path in the config"
        )
    if path.is_dir():
        return f"a directory, not a file ({where}): name the split file itself, or use 'dir'"
    if path.stat().st_size == 0:
        return f"empty file ({where}): a split file needs a header line and rows; add them"
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported by name
            return f"not a Parquet file ({where}: {err}): rewrite it, or set 'format'"
        names = meta.schema.to_arrow_schema().names
        if _duplicates(names):
            return f"duplicate column(s) {_duplicates(names)} ({where}): rename them"
        if meta.num_rows == 0:
            return f"no rows ({where}): add rows or remove the file from the config"
        return None
    with path.open("rb") as fh:
        head = fh.read(PEEK_BYTES)
        complete = not fh.read(1)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if complete or err.start < len(head) - 4:  # not a character cut at the peek's end
            return (
                f"not UTF-8 text ({path}: byte {err.start}, {key}): re-save the file as UTF-8"
                " (e.g. iconv -f latin1 -t utf-8)"
            )
        text = head[: err.start].decode("utf-8-sig")
    # the line ends the reader accepts: LF, CRLF and a classic Mac's CR alone
    lines = re.split(r"\r\n|\r|\n", text)
    if not complete:
        lines = lines[:-1]  # the peek may end inside a line
    rows = [line for line in lines if line.strip()]
    if fmt in ("tsv", "csv"):
        if not rows:
            return f"empty file ({where}): a {fmt.upper()} needs a header line and rows"
        header = rows[0].split("\t") if fmt == "tsv" else next(csv.reader([rows[0]]))
        dup = _duplicates([h.strip() for h in header])
        if dup:
            return (
                f"duplicate column(s) {dup} in the header ({path}:1, {key}): rename or drop"
                " one; the reader would keep one silently"
            )
        if len(rows) < 2:
            return (
                f"a header but no rows ({path}, {key}): add rows or remove the file from the config"
            )
        return None
    if not rows:
        return f"no records ({where}): only blank lines; add rows or remove the file"
    if fmt == "jsonl" and not rows[0].lstrip().startswith("["):
        try:
            json.loads(rows[0], object_pairs_hook=unique_fields)
        except ValueError as err:
            return f"{err} ({path}:{lines.index(rows[0]) + 1}, {key}): fix the record"
    return None


# ---------------------------------------------------------------------------------------------
# The config against the machine and the files it names


def _model_config(name: str) -> dict[str, Any] | None:
    path = Path(name).expanduser() / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _train_key(config: Mapping[str, Any], study: str, field: str, kind: str) -> str:
    """The most specific config key that sets `field` for a run of `study`."""
    sections = [f"studies.{study}.preliminary_train"] if kind == "preliminary" else []
    sections += [f"studies.{study}.train", "train"]
    for section in sections:
        node: Any = config
        for part in section.split("."):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        if isinstance(node, Mapping) and field in node:
            return f"{section}.{field}"
    return f"train.{field} (default)"


def _position_limit(model: Mapping[str, Any]) -> int | None:
    if model["source"] == "build":
        return int(model["max_position_embeddings"])
    if model["source"] == "local":
        found = _model_config(model["name"]) or {}
        limit = found.get("max_position_embeddings")
        return limit if isinstance(limit, int) else None
    return None


def _check_models(config: Mapping[str, Any], problems: list[str]) -> None:
    offline = config.get("offline", False)
    for name, model in config["models"].items():
        key = f"models.{name}"
        source = model["source"]
        if source == "build":
            hidden, heads = model["hidden_size"], model["num_heads"]
            if hidden % heads:
                fits = [d for d in range(heads, 0, -1) if hidden % d == 0][0]
                problems.append(
                    f"num_heads {heads} does not divide hidden_size {hidden} ({key}.num_heads):"
                    f" use a divisor of {hidden}, e.g. num_heads: {fits}"
                )
            if not model.get("corpus"):
                problems.append(
                    f"a built model needs a tokenizer corpus ({key}.corpus is empty): list at"
                    f" least one dataset id, e.g. corpus: [{next(iter(config['datasets']))}]"
                )
            if model.get("dropout", 0.1) >= 1:
                problems.append(
                    f"dropout {model['dropout']} drops every activation ({key}.dropout):"
                    " use a value in [0, 1), e.g. 0.1"
                )
        elif source == "local":
            directory = Path(model["name"]).expanduser()
            found = _model_config(model["name"])
            if not directory.is_dir():
                problems.append(
                    f"model directory not found ({key}.name = {directory}): fix the path; it"
                    " must hold config.json, the weights and the tokenizer files"
                )
            elif found is None:
                problems.append(
                    f"not a model directory: no readable config.json ({key}.name = {directory}):"
                    " point it at a directory that save_pretrained wrote"
                )
            elif found.get("auto_map") and not model.get("trust_remote_code"):
                problems.append(
                    f"the model needs its own code (auto_map in {directory}/config.json,"
                    f" {key}.trust_remote_code): set trust_remote_code: true only if you trust"
                    " the code files in that directory"
                )
        elif source == "hub" and offline:
            if not (Path("results") / "models" / name / "config.json").is_file():
                problems.append(
                    f"hub model {model['name']!r} while offline: true ({key}.name): download it"
                    f" elsewhere (`hf download {model['name']} --local-dir DIR`) and use"
                    " source: local with name: DIR, or set offline: false"
                )


def maker_of(ds: Mapping[str, Any], where: str, path: Path) -> str | None:
    """The command that writes a missing local file of a dataset, when the package has one:
    livedoor's TSVs (`livedoor-convert`) and S4's zsRE facts (`zsre-convert`)."""
    if where == "facts":
        return f"`tuneatlas zsre-convert zsre_mend_eval.json {path}`"
    if ds.get("task") == "livedoor":
        return f"`tuneatlas livedoor-convert ldcc-20140209.tar.gz {path.parent}` (see README)"
    return None


# {missing path: [(config key, the command that makes it or None)]}: the files a real run needs
Missing = dict[Path, list[tuple[str, str | None]]]


def _missing_problems(missing: Missing) -> list[str]:
    """One error per config key naming a missing file (a real run refuses to start)."""
    problems = []
    for path, keys in missing.items():
        for key, maker in keys:
            fix = f"make it with {maker}, or fix the path" if maker else "fix the path"
            problems.append(
                f"file not found ({key}: {path} does not exist; relative paths are read from"
                f" the working directory {Path.cwd()}): {fix} in the config"
            )
    return problems


def missing_warnings(missing: Missing) -> list[str]:
    """One warning per missing file (a dry-run plans without it), naming every key that reads
    it and the command that makes it."""
    out = []
    for path, keys in missing.items():
        maker = next((m for _, m in keys if m), None)
        names = ", ".join(k for k, _ in keys)
        out.append(
            f"{path} does not exist yet ({names}): a real run refuses to start without it;"
            + (f" make it with {maker}" if maker else " write it or fix the path in the config")
        )
    return out


def _check_datasets(
    config: Mapping[str, Any], plan: Plan, problems: list[str], missing: Missing
) -> None:
    offline = config.get("offline", False)
    for name, ds in config["datasets"].items():
        key = f"datasets.{name}"
        try:
            task = check_source(name, ds)
            files = local_source_files(name, ds)
        except ValueError as err:  # DataError too: a missing `dir`
            problems.append(f"{err} ({key})" if key not in str(err) else str(err))
            continue
        for where, path in files.items():
            if not path.exists():
                sub = "dir" if where.startswith("dir/") else where
                missing.setdefault(path, []).append((f"{key}.{sub}", maker_of(ds, where, path)))
        complete = all(p.exists() for p in files.values())
        files = {w: p for w, p in files.items() if p.exists()}
        if ds["source"] == "hub" and offline and not (Path("results") / "hub" / name).exists():
            problems.append(
                f"hub dataset while offline: true ({key}.source): point it at local files"
                " (source: file with files: {train: ..., validation: ...} or dir: ...), or set"
                " offline: false"
            )
        before = len(problems)
        for where, path in files.items():
            if where == "facts":
                continue
            sub = where.replace("/", ".") if where.startswith("files.") else "dir"
            try:
                fmt = format_of(path, ds.get("format"))
            except DataError as err:
                problems.append(f"{err} ({key}.{sub})")
                continue
            problem = check_data_file(path, fmt, f"{key}.{sub}")
            if problem and "resplit" in ds and "header but no rows" in problem:
                problem += (
                    "; with resplit the other splits' rows alone would be re-split into train,"
                    " valid and test"
                )
            if problem:
                problems.append(problem)
        if complete and len(problems) == before:  # all open: check rows as prepare_data will
            problems += _row_problems(name, ds, task, files, config.get("seed", 0))
        if "facts" in files and not files["facts"].is_file():
            problems.append(f"not a file ({key}.facts = {files['facts']}): fix the path")
        if ds["source"] == "synthetic" and "imbalance" in ds:
            problems += imbalance_size_problems(name, ds, task)
        try:
            have = {f.removesuffix(".parquet") for f in output_files(name, ds)} - {"classes"}
        except ValueError:
            continue
        for run in plan.runs.values():
            spec = run.spec
            if run.kind == "finetune" and spec.get("dataset") == name and spec.get("keep_best"):
                if "valid" not in have:
                    problems.append(
                        f"keep_best needs a validation split, dataset {name!r} has"
                        f" {sorted(have)} ({_train_key(config, run.study, 'keep_best', '')}):"
                        " add a validation file, set resplit, or keep_best: false"
                    )
                    break


def _row_problems(
    name: str, ds: Mapping[str, Any], task: Any, files: Mapping[str, Path], seed: int
) -> list[str]:
    """prepare_data's row checks on a file source whose files are at most ROW_CHECK_BYTES:
    each column key of each split file, then (all clean) the whole load as the job runs it."""
    data_files = [p for where, p in files.items() if where != "facts"]
    if ds.get("source") != "file" or not data_files:
        return []
    if any(not p.is_file() or p.stat().st_size > ROW_CHECK_BYTES for p in data_files):
        return []
    try:
        loaded = load_sources(name, ds, task)
    except ValueError as err:
        return [str(err)]
    columns = columns_for(task, ds)
    problems = [
        p
        for raw, lines, origin in loaded.values()
        for p in row_problems(raw, task, columns, origin, lines)
    ]
    if not problems:
        try:
            load_raw_splits(name, ds, seed)
        except ValueError as err:
            problems.append(str(err))
    return problems


def _check_train(config: Mapping[str, Any], plan: Plan, problems: list[str]) -> None:
    sections = [("train", config.get("train") or {})]
    for study, section in config["studies"].items():
        for part in ("train", "preliminary_train"):
            if isinstance(section.get(part), Mapping):
                sections.append((f"studies.{study}.{part}", section[part]))
    for where, section in sections:
        dropout = section.get("dropout")
        if dropout is not None and dropout >= 1:
            problems.append(
                f"dropout {dropout} drops every activation ({where}.dropout): use a value in"
                " [0, 1), or null to keep the model's own"
            )
    reported: set[tuple[str, str]] = set()
    for run in plan.runs.values():
        spec = run.spec
        if run.kind != "finetune" or spec.get("model") not in config["models"]:
            continue
        limit = _position_limit(config["models"][spec["model"]])
        length = spec.get("max_length")
        if limit is not None and isinstance(length, int) and length > limit:
            kind = "preliminary" if "prelim" in run.id else ""
            key = _train_key(config, run.study, "max_length", kind)
            if (key, spec["model"]) not in reported:
                reported.add((key, spec["model"]))
                problems.append(
                    f"max_length {length} exceeds the {limit} positions of model"
                    f" {spec['model']!r} ({key}; run {run.id}): use max_length <= {limit}"
                )


def known_train_rows(name: str, ds: Mapping[str, Any]) -> int | None:
    """Training rows of a dataset when the config fixes them (synthetic sizes or local files,
    after max_rows, a re-split or an imbalance), else None (hub data: the job counts them)."""
    try:
        found = source_sizes(name, ds)
    except DataError:
        return None  # a missing or unreadable file: the dataset's own checks report it
    if found is None:
        return None
    cap = ds.get("max_rows")
    sizes = {k: min(n, cap) if cap else n for k, n in found.items()}
    if ds.get("imbalance"):
        return imbalanced_train_rows(ds["imbalance"])
    if ds.get("resplit"):
        return split_counts(sum(sizes.values()), ds["resplit"])[0]
    return sizes.get("train")


def _check_s5(config: Mapping[str, Any], problems: list[str]) -> None:
    """S5's ensembles vote on classes, and its k clusters need at least k training rows
    (counted in the files when local)."""
    s5 = config["studies"].get("s5")
    if not s5 or not s5.get("enabled", True):
        return
    task = config["datasets"][s5["dataset"]]["task"]
    if task in TASKS and TASKS[task].is_regression:  # an unknown task: _check_datasets says so
        problems.append(
            f"config key 'studies.s5.dataset': dataset {s5['dataset']!r} is a regression task"
            f" ({task}); ensembles vote on classes, use a classification dataset"
        )
        return
    rows = known_train_rows(s5["dataset"], config["datasets"][s5["dataset"]])
    if rows is not None and s5["k"] > rows:
        problems.append(
            f"config key 'studies.s5.k': {s5['k']} clusters exceed the {rows} training examples"
            f" of dataset {s5['dataset']!r}; use k <= {rows}"
        )


def _check_corpus_rows(config: Mapping[str, Any], problems: list[str]) -> None:
    """Row counts a job would find too small, where the config fixes them (synthetic sizes,
    local files): S4's and S2's corpora need 2 documents / sentences (one part is held out),
    S2's Fisher mini-batch draws distinct training rows."""
    studies, datasets = config["studies"], config["datasets"]
    needs = []  # (key, dataset id, rows needed, why)
    s4, s2 = studies.get("s4") or {}, studies.get("s2") or {}
    if s4.get("enabled", True) and s4.get("corpus") in datasets:
        needs.append(("studies.s4.corpus", s4["corpus"], 2, "one document is held out"))
    if s2.get("enabled", True) and s2.get("corpus") in datasets:
        needs.append(("studies.s2.corpus", s2["corpus"], 2, "SimCSE contrasts sentences"))
    if s2.get("enabled", True) and s2.get("dataset") in datasets:
        n = s2.get("fisher", {}).get("batch_size", 16)
        why = "the Fisher mini-batch draws distinct training rows"
        needs.append(("studies.s2.fisher.batch_size", s2["dataset"], n, why))
    for key, name, need, why in needs:
        rows = known_train_rows(name, datasets[name])
        if rows is not None and rows < need:
            problems.append(
                f"config key '{key}': dataset {name!r} has {rows} training row(s), {need}"
                f" needed ({why}): give it more rows"
                + (" or lower the batch size" if key.endswith("batch_size") else "")
            )


def _check_s4_tokenizer(config: Mapping[str, Any], problems: list[str]) -> None:
    """`studies.s4.tokenizer` is `build` or the id of a `models` entry (whose directory holds
    the tokenizer); anything else would fail only in the tokenize job, as a missing file."""
    s4 = config["studies"].get("s4")
    if not s4 or not s4.get("enabled", True):
        return
    name = s4.get("tokenizer", "build")
    if name != "build" and name not in config["models"]:
        problems.append(
            f"config key 'studies.s4.tokenizer': {name!r} is neither 'build' nor a model id;"
            f" defined models: {', '.join(sorted(config['models']))} (add the model whose"
            " tokenizer to use, e.g. gpt2 from the hub, or write build)"
        )


def _check_device(config: Mapping[str, Any], problems: list[str]) -> None:
    if config.get("device") != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        problems.append(
            f"device: cuda, but {why} on this machine (torch {torch.__version__}) (device):"
            " set device: auto (CUDA when present, else CPU) or cpu, or run where a GPU is"
        )


def preflight(
    config: Mapping[str, Any], plan: Plan, *, check_device: bool = True, dry_run: bool = False
) -> list[str]:
    """Every check that the config and the files it names allow, before any job starts.

    Raises one ConfigError listing every problem (one line each). `check_device=False` skips
    the CUDA check where jobs run on other machines (a cluster profile). With `dry_run` (a
    plan that runs nothing, e.g. CI's `snakemake -n`) a missing local data file is no error:
    the returned warnings name each one and the command that makes it.
    """
    problems: list[str] = []
    missing: Missing = {}
    if check_device:
        _check_device(config, problems)
    _check_models(config, problems)
    _check_datasets(config, plan, problems, missing)
    _check_train(config, plan, problems)
    _check_s5(config, problems)
    _check_s4_tokenizer(config, problems)
    _check_corpus_rows(config, problems)
    if not dry_run:
        problems = _missing_problems(missing) + problems
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return missing_warnings(missing)
