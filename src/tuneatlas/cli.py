"""The `tuneatlas` console script: one sub-command per workflow rule, plus config tools.

Rules pass their run/artifact spec as a JSON string (`--spec`), so the command line of every job
holds everything that determines its result.
"""

# Each sub-command is a row of COMMANDS; the options several share (--spec, --out, --data,
# --model, --device, --config-hash, ...) are declared once. The cmd_* functions import the layers
# below lazily: every job pays the start-up of only what it uses.

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneatlas import __version__

log = logging.getLogger("tuneatlas")


def _setup(threads: int | None) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if threads:
        import torch

        torch.set_num_threads(threads)


def _json(text: str) -> dict[str, Any]:
    return json.loads(text)


def cmd_validate(args: argparse.Namespace) -> None:
    from tuneatlas.config import config_hash, load_config
    from tuneatlas.plan import make_plan
    from tuneatlas.preflight import preflight

    config = load_config(args.config)
    plan = make_plan(config)
    # paths, files, architecture, lengths, device: what the jobs would otherwise find late
    preflight(config, plan, check_device=not args.no_device_check)
    kinds: dict[str, int] = {}
    for run in plan.runs.values():
        kinds[f"{run.study}/{run.kind}"] = kinds.get(f"{run.study}/{run.kind}", 0) + 1
    print(f"{args.config}: valid (hash {config_hash(config)})")
    print(f"  datasets {len(plan.datasets)}, models {len(plan.models)}, runs {len(plan.runs)}")
    for kind, n in sorted(kinds.items()):
        print(f"    {kind}: {n}")
    print(f"  artifacts {len(plan.targets)}: " + ", ".join(plan.targets))
    for name, ds in config["datasets"].items():
        if ds["task"] in config.get("tasks", {}):
            print(f"  dataset {name} (declared task {ds['task']}): {_feeds(ds['task'])}")


def _feeds(task_name: str) -> str:
    """The studies a declared task can feed: S1-S3 and S5 fine-tune any classification task;
    regression fits S1 and S2 only (S3 counts classes, S5 votes on them); S4 pre-trains."""
    from tuneatlas.data.tasks import get_task

    if get_task(task_name).kind == "classification":
        return "can feed S1, S2, S3 (with imbalance), S5"
    return "can feed S1, S2 (regression: not S3 or S5)"


def cmd_prepare(args: argparse.Namespace) -> None:
    from tuneatlas.data.prepare import prepare_dataset

    written = prepare_dataset(
        args.name,
        _json(args.spec),
        Path(args.out),
        seed=args.seed,
        meta={"spec_hash": args.spec_hash, "dataset": args.name},
        hub_copy=Path(args.hub_copy) if args.hub_copy else None,
    )
    log.info("prepared %s: %s", args.name, ", ".join(sorted(written)))


def cmd_livedoor_convert(args: argparse.Namespace) -> None:
    from tuneatlas.data.livedoor import PAPER_SIZES, convert

    sizes = convert(Path(args.archive), Path(args.out_dir), seed=args.seed)
    print(f"{args.out_dir}: " + ", ".join(f"{s}.tsv {n}" for s, n in sizes.items()))
    if sizes != PAPER_SIZES:
        print(f"  note: the paper's split is {PAPER_SIZES} (the 7,367 articles of ldcc-20140209)")


def cmd_zsre_convert(args: argparse.Namespace) -> None:
    from tuneatlas.data.zsre import convert

    n = convert(Path(args.source), Path(args.out))
    print(f"{args.out}: {n} facts (question, answer) for the zsRE probe")


def cmd_fetch_hub(args: argparse.Namespace) -> None:
    from tuneatlas.data.sources import fetch_hub_dataset

    fetch_hub_dataset(args.name, _json(args.spec), Path(args.out))


def cmd_build_model(args: argparse.Namespace) -> None:
    from tuneatlas.data.prepare import corpus_texts
    from tuneatlas.engine.recipes.mlm import build_bert
    from tuneatlas.models.hub import fetch_model

    spec = _json(args.spec)
    source = spec["source"]
    if source == "build":
        texts = corpus_texts(Path(args.data_root), spec["corpus"])
        build_bert(spec, texts, Path(args.out), seed=args.seed)
    elif source in ("hub", "local"):
        fetch_model(
            spec["name"],
            Path(args.out),
            trust_remote_code=spec.get("trust_remote_code", False),
            revision=spec.get("revision"),
        )
    else:
        raise SystemExit(
            f"model source {source!r} is produced by its study's own rule, not build-model"
        )


def cmd_train(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.hooks import training_hooks
    from tuneatlas.engine.recipes.finetune import finetune
    from tuneatlas.spec import TrainSpec

    spec = TrainSpec.from_dict(_json(args.spec))
    hooks = list(training_hooks(spec))
    if args.predictions:
        from tuneatlas.analysis.predict import PredictionWriter

        # in this process, from the weights in memory: a separate job would pay the torch
        # start-up again, and a run with save_model: false (S2's sweep) keeps no weights
        meta = {"config_hash": os.environ.get("TUNEATLAS_CONFIG_HASH", "")}
        hooks.append(PredictionWriter(args.data, args.predictions, spec.eval_batch_size, meta))
    finetune(
        spec,
        Path(args.data),
        Path(args.model),
        Path(args.out),
        init_dir=Path(args.init) if args.init else None,
        hooks=hooks,
        device=args.device,
    )
    (Path(args.out) / "captures").mkdir(exist_ok=True)  # declared output, empty without capture


def cmd_simcse(args: argparse.Namespace) -> None:
    from tuneatlas.engine.recipes.simcse import SimCSESpec, simcse

    simcse(
        SimCSESpec.from_dict(_json(args.spec)),
        Path(args.data),
        Path(args.model),
        Path(args.out),
        Path(args.run_dir),
        device=args.device,
        stsb_dir=Path(args.stsb) if args.stsb else None,
    )


def cmd_embed(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.embed import extract

    extract(
        Path(args.model),
        Path(args.data),
        Path(args.out),
        splits=tuple(args.splits),
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )


def cmd_subsets(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.subsets.scan import scan_run

    frames = scan_run(
        Path(args.embeddings),
        _json(args.params),
        Path(args.out),
        device=args.device,
        backend=args.backend,
        meta={"config_hash": args.config_hash},
    )
    top = frames["top"]
    log.info("subsets: %d searches -> %s", top["search"].nunique(), args.out)


def cmd_predict(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.predict import write_predictions

    df = write_predictions(
        Path(args.model),
        Path(args.data),
        Path(args.out),
        splits=tuple(args.splits),
        batch_size=args.batch_size,
        device=args.device,
        meta={"config_hash": args.config_hash},
        trust_remote_code=args.trust_remote_code,
    )
    log.info("predict: %d rows (%s) -> %s", len(df), ", ".join(df["split"].unique()), args.out)


def cmd_cluster(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.clusters import cluster_dataset

    cluster_dataset(
        _json(args.spec),
        Path(args.data),
        Path(args.embedder) if args.embedder else None,
        Path(args.out),
        device=args.device,
        meta={"config_hash": args.config_hash},
    )


def cmd_cluster_data(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.clusters import derive_member_dataset

    derive_member_dataset(
        Path(args.data),
        Path(args.clusters),
        args.clusters_kept,
        Path(args.out),
        meta={"config_hash": args.config_hash, "dataset": Path(args.out).name},
    )


def cmd_fisher(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.fisher.trials import fisher_trial

    fisher_trial(
        _json(args.spec),
        Path(args.data),
        Path(args.model),
        Path(args.out),
        device=args.device,
        config_hash=args.config_hash,
    )


def cmd_bundle(args: argparse.Namespace) -> None:
    from tuneatlas.bundles import Member, run_bundle

    parser = build_parser()

    def run_member(argv: list[str]) -> None:
        member_args = parser.parse_args(argv)
        member_args.func(member_args)

    members = [Member.from_json(m) for m in args.member]
    manifest = run_bundle(args.name, members, Path(args.out), run_member)
    log.info("bundle %s: %s -> %s", args.name, manifest["members"], args.out)


def cmd_adopt(args: argparse.Namespace) -> None:
    from tuneatlas.bundles import Member, adopt

    adopt(args.bundle, Member.from_json(args.member))


def cmd_tokenize(args: argparse.Namespace) -> None:
    from tuneatlas.data.tokens import prepare_tokens

    prepare_tokens(Path(args.data), Path(args.out), args.tokenizer, args.vocab_size)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from tuneatlas.engine.device import distributed_group
    from tuneatlas.engine.recipes.causal_lm import pretrain
    from tuneatlas.spec import PretrainSpec

    spec = PretrainSpec.from_dict(_json(args.spec))
    with distributed_group(args.device) as device:
        pretrain(spec, Path(args.tokens), Path(args.out), device=device)


def cmd_lm_eval(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.lmeval import evaluate_run

    evaluate_run(
        _json(args.spec),
        Path(args.model),
        Path(args.data),
        Path(args.out),
        device=args.device,
        config_hash=args.config_hash,
    )


def cmd_fetch_harness(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.lmeval import fetch_harness_tasks

    Path(args.out).mkdir(parents=True, exist_ok=True)
    fetch_harness_tasks(args.tasks, Path(args.out))


def cmd_track(args: argparse.Namespace) -> None:
    from tuneatlas.tracking import track_runs

    runs = _json(args.runs)
    counts = track_runs(runs, Path(args.results), Path(args.out), args.uri, args.failure_table)
    log.info("MLflow store %s: %s", args.uri or args.out, counts)


def cmd_table(args: argparse.Namespace) -> None:
    from tuneatlas.io import provenance, stable_hash, write_parquet
    from tuneatlas.studies.registry import build_table, input_spec_hashes

    spec = _json(args.spec)
    df = build_table(args.artifact, spec, Path(args.results))
    meta = provenance(
        args.config_hash,
        artifact=args.artifact.upper(),
        spec_hash=stable_hash(spec),
        input_spec_hashes=input_spec_hashes(spec, Path(args.results)),
    )
    # what a builder records about its table (S4: the tasks it dropped, corpus passes)
    meta.update({k: json.dumps(v, sort_keys=True) for k, v in df.attrs.items()})
    write_parquet(df, args.out, meta)
    log.info("%s: %d rows -> %s", args.artifact, len(df), args.out)


def cmd_plot(args: argparse.Namespace) -> None:
    from tuneatlas.studies.registry import plot_artifact

    plot_artifact(args.artifact, Path(args.table), [Path(p) for p in args.out])


def cmd_repro(args: argparse.Namespace) -> None:
    import pandas as pd

    from tuneatlas.io import provenance, stable_hash
    from tuneatlas.studies import repro

    if args.what == "figures":
        repro.plot_repro(pd.read_parquet(args.table[0]), Path(args.out[0]))
        repro.plot_findings(pd.read_parquet(args.table[1]), Path(args.out[1]))
        return
    from tuneatlas.studies.published import all_published

    spec = _json(args.spec)  # study -> {"tables": [...], "not_comparable": reason or null}
    comparable = {study: s["not_comparable"] for study, s in spec.items()}
    tables = repro.load_tables(Path(args.results), comparable)
    meta = provenance(args.config_hash, artifact="REPRO", spec_hash=stable_hash(spec))
    values, findings = repro.write_repro_tables(
        tables, all_published(), comparable, [Path(p) for p in args.out], meta
    )
    log.info("REPRO: %d values, %d findings -> %s", len(values), len(findings), args.out)


def cmd_compare(args: argparse.Namespace) -> None:
    from tuneatlas.studies import repro
    from tuneatlas.studies.published import all_published

    comparable = None
    if args.config:
        from tuneatlas.config import load_config
        from tuneatlas.plan import make_plan

        plan = make_plan(load_config(args.config))
        comparable = {study: s["not_comparable"] for study, s in plan.repro.items()}
    values, findings, missing = repro.read_or_compute(Path(args.results), all_published, comparable)
    result = repro.summary(values, findings, missing)
    print(json.dumps(result, indent=1) if args.json else repro.summary_text(result))


def cmd_report_view(args: argparse.Namespace) -> None:
    from tuneatlas.report import write_report_view

    write_report_view(Path(args.input), Path(args.out))


def cmd_catalogue(args: argparse.Namespace) -> None:
    from tuneatlas.catalogue import catalogue_markdown, with_catalogue

    if not args.readme:
        print(catalogue_markdown(), end="")
        return
    readme = Path(args.readme)
    readme.write_text(with_catalogue(readme.read_text()))


def cmd_layouts(args: argparse.Namespace) -> None:
    from tuneatlas.config import load_config
    from tuneatlas.errors import ConfigError
    from tuneatlas.models.layouts import s4_layouts

    s4 = load_config(args.config)["studies"].get("s4")
    if s4 is None:
        raise ConfigError(f"config key 'studies.s4': {args.config} has no S4 section")
    rows = [
        {"size": size, **lay.to_dict()}
        for size, layouts in s4_layouts(s4).items()
        for lay in layouts.values()
    ]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'size':<6} {'variant':<10} {'params':>14} {'rel_diff':>10}  per-layer FFN widths")
    for r in rows:
        widths = " ".join(str(w) for w in r["ffn_widths"])
        head = f"{r['size']:<6} {r['variant']:<10} {r['params']:>14,} {r['rel_diff']:>+10.2e}"
        print(f"{head}  {widths}")
    worst = max(rows, key=lambda r: abs(r["rel_diff"]))
    print(f"largest |rel_diff|: {abs(worst['rel_diff']):.2e} ({worst['size']} {worst['variant']})")


def cmd_estimate(args: argparse.Namespace) -> None:
    from tuneatlas.config import load_config
    from tuneatlas.estimate import report, settings_for
    from tuneatlas.plan import make_plan

    config = load_config(args.config)
    settings = settings_for(args.gpu, args.mfu, args.max_hours)
    if report(config, make_plan(config), settings, args.json):
        raise SystemExit(1)


@dataclass(frozen=True)
class Option:
    """One argument of a sub-command, as `argparse.add_argument` takes it. `env` names the
    environment variable that replaces the default, read when the parser is built: the workflow
    exports the device and the global config hash instead of passing them as rule params, so
    that moving to a GPU or editing an unrelated config key re-runs nothing."""

    flags: tuple[str, ...]
    settings: dict[str, Any]
    env: str | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        settings = dict(self.settings)
        if self.env:
            settings["default"] = os.environ.get(self.env) or settings.get("default")
        parser.add_argument(*self.flags, **settings)


def option(*flags: str, env: str | None = None, **settings: Any) -> Option:
    return Option(flags, settings, env)


# The options several sub-commands share, declared once; the help says what each command reads.
def spec_option(what: str) -> Option:
    return option("--spec", required=True, help=f"{what} as JSON")


def out_option(what: str) -> Option:
    return option("--out", required=True, help=what)


def data_option(
    what: str = "the prepared dataset directory (one Parquet file per split)",
) -> Option:
    return option("--data", required=True, help=what)


def model_option(what: str) -> Option:
    return option("--model", required=True, help=what)


def seed_option(what: str) -> Option:
    return option("--seed", type=int, default=0, help=what)


CONFIG = option("config", help="the config file (YAML)")
ARTIFACT = option("artifact", help="artifact ID, e.g. S1.T2 (any case)")
DATASET_NAME = option("--name", required=True, help="dataset id (the config's datasets key)")
DEVICE = option(
    "--device",
    env="TUNEATLAS_DEVICE",
    default=None,
    help="cpu, cuda, cuda:1 or auto (default: $TUNEATLAS_DEVICE, else auto)",
)
CONFIG_HASH = option(
    "--config-hash",
    env="TUNEATLAS_CONFIG_HASH",
    default="",
    help="global config hash, information for the metadata (default: $TUNEATLAS_CONFIG_HASH)",
)
BATCH_SIZE = option("--batch-size", type=int, default=128, help="examples per forward pass")
# the analyses rank on valid and report test; train-split embeddings of QQP alone are ~12 GB
SPLITS = option("--splits", nargs="+", default=["valid", "test"], help="splits to read")
RUN_MODEL = model_option("the run's model directory")
# the config's models.<id>.trust_remote_code, passed by the rules; a model directory's own JSON
# never grants it
TRUST = option(
    "--trust-remote-code",
    action="store_true",
    help="run the model's own code (only as the config's trust_remote_code grants)",
)
BASE_MODEL = model_option("the base model directory")


@dataclass(frozen=True)
class Command:
    """One sub-command: its name, the function that runs it, its help and its options."""

    name: str
    run: Callable[[argparse.Namespace], None]
    help: str
    options: tuple[Option, ...]
    # "user": listed first in `tuneatlas --help`; "internal": run by one workflow rule each
    # (they take the rule's --spec JSON), listed apart
    group: str = "internal"
    description: str | None = None  # the sub-command's --help text; `help` when None


VALIDATE_HELP = """Check a config before any job runs and list every problem found, one line each:

- the schema (unknown or misspelt keys, types, ranges) and the references between entries
  (datasets, models, corpora named by the studies), tasks declared under `tasks:`;
- each dataset source: its keys, split names, formats, resplit ratios, imbalance arithmetic;
- each local data file: it exists, is UTF-8, has a header and rows, no duplicate columns; and,
  for files up to 64 MiB, every row check of the prepare_data job (text and label columns
  present, no empty text or missing label, labels in the task's label set or id range, no split
  left empty by resplit/imbalance); larger files get the header checks only;
- models (local directories, hub names while offline), max_length against the model's
  positions, keep_best needing a validation split, S5's embedder, and CUDA for device: cuda.

Then prints the plan (runs per study, artifacts) and which studies each dataset with a declared
task can feed. Exit status 1 when anything is wrong."""

COMMANDS = (
    Command(
        "validate",
        cmd_validate,
        "check a config and the files it names before any job; summarise its plan",
        (
            CONFIG,
            option(
                "--no-device-check",
                action="store_true",
                help="skip the check that device: cuda has CUDA here (jobs run on other machines)",
            ),
        ),
        group="user",
        description=VALIDATE_HELP,
    ),
    Command(
        "prepare",
        cmd_prepare,
        "prepare one dataset into normalised Parquet splits",
        (
            DATASET_NAME,
            spec_option("dataset config"),
            seed_option("seed of synthetic data, resplit, imbalance and subsampling"),
            out_option("the prepared dataset directory"),
            option("--spec-hash", default="", help="the dataset spec's hash, for the metadata"),
            option("--hub-copy", default=None, help="local copy of a hub source (fetch-hub)"),
        ),
    ),
    Command(
        "fetch-hub",
        cmd_fetch_hub,
        "download a hub dataset's splits as they are (needs the network)",
        (DATASET_NAME, spec_option("dataset config"), out_option("directory of the copy")),
    ),
    Command(
        "livedoor-convert",
        cmd_livedoor_convert,
        "livedoor archive (ldcc-20140209.tar.gz) -> train/valid/test TSVs (source: file)",
        (
            option("archive", help="ldcc-20140209.tar.gz, or the directory it unpacks to"),
            option("out_dir", help="directory of train.tsv, valid.tsv, test.tsv"),
            seed_option("seed of the stratified split"),
        ),
        group="user",
    ),
    Command(
        "zsre-convert",
        cmd_zsre_convert,
        "zsRE evaluation file (ROME/MEMIT's zsre_mend_eval.json) -> S4 facts TSV (facts:)",
        (
            option("source", help="the zsRE evaluation JSON (a downloaded copy)"),
            option("out", help="the facts TSV to write, e.g. data/zsre/facts.tsv"),
        ),
        group="user",
    ),
    Command(
        "build-model",
        cmd_build_model,
        "build a tiny model offline or fetch one by name",
        (
            spec_option("model config"),
            option(
                "--data-root",
                default="results/data",
                help="prepared datasets, the corpus of a built tokenizer and model",
            ),
            seed_option("seed of the built model's weights"),
            out_option("the model directory"),
        ),
    ),
    Command(
        "train",
        cmd_train,
        "fine-tune one run (resumes from its last checkpoint)",
        (
            spec_option("TrainSpec"),
            data_option(),
            BASE_MODEL,
            option("--init", default=None, help="model dir of the run this one continues from"),
            out_option("the run directory"),
            option(
                "--predictions",
                default=None,
                help="also write the per-example logits here (S5 members)",
            ),
            DEVICE,
        ),
    ),
    Command(
        "simcse",
        cmd_simcse,
        "SimCSE continued training of a base model (S2)",
        (
            spec_option("SimCSESpec"),
            data_option("prepared sentence corpus"),
            BASE_MODEL,
            out_option("the new base model directory"),
            option("--run-dir", required=True, help="checkpoint, metrics and held-out scores"),
            option(
                "--stsb",
                default=None,
                help="prepared STS-B data whose valid split selects the checkpoint (keep-best)",
            ),
            DEVICE,
        ),
    ),
    Command(
        "embed",
        cmd_embed,
        "extract per-layer CLS and max-norm vectors of a run",
        (
            RUN_MODEL,
            data_option(),
            out_option("the embeddings directory"),
            BATCH_SIZE,
            option("--max-length", type=int, default=None, help="default: the run's own"),
            SPLITS,
            DEVICE,
            TRUST,
        ),
    ),
    Command(
        "subsets",
        cmd_subsets,
        "scan the CLS-dimension subsets of one run (S1)",
        (
            option("--embeddings", required=True, help="embeddings dir (or its .safetensors)"),
            option("--params", required=True, help="scan spec as JSON (plan.scans[run])"),
            out_option("directory of the scan's Parquet files"),
            DEVICE,
            option(
                "--backend",
                default="auto",
                choices=["auto", "native", "compile", "eager"],
                help="the scorer's kernels: the AVX-512 C kernel (binary heads, CPU), "
                "torch.compile'd, eager, or auto (native where it applies, else compile)",
            ),
            CONFIG_HASH,
        ),
    ),
    Command(
        "predict",
        cmd_predict,
        "per-example logits of a run on its evaluation splits",
        (
            RUN_MODEL,
            data_option(),
            out_option("predictions.parquet to write"),
            BATCH_SIZE,
            SPLITS,
            DEVICE,
            CONFIG_HASH,
            TRUST,
        ),
    ),
    Command(
        "cluster",
        cmd_cluster,
        "embed a dataset and cluster its training split (S5)",
        (
            spec_option("clustering spec (plan.clusterings)"),
            data_option(),
            option("--embedder", default=None, help="encoder model directory (not for tfidf)"),
            out_option("the clustering's directory"),
            DEVICE,
            CONFIG_HASH,
        ),
    ),
    Command(
        "cluster-data",
        cmd_cluster_data,
        "derive a member dataset from a clustering (S5)",
        (
            data_option("the clustered dataset"),
            option("--clusters", required=True, help="the clustering's directory"),
            option("--keep", dest="clusters_kept", nargs="+", required=True, help="cluster names"),
            out_option("the member dataset's directory (its name is the dataset id)"),
            CONFIG_HASH,
        ),
    ),
    Command(
        "fisher",
        cmd_fisher,
        "per-layer Fisher spectra of a base model (S2)",
        (
            spec_option("Fisher trial spec (plan.fishers)"),
            data_option("the fine-tuning dataset (its train split)"),
            BASE_MODEL,
            out_option("the trial's Parquet file"),
            DEVICE,
            CONFIG_HASH,
        ),
    ),
    Command(
        "bundle",
        cmd_bundle,
        "run many short jobs of one rule in this process (config `bundles`)",
        (
            option("--name", required=True, help="the bundle id (plan.bundles)"),
            option(
                "--member",
                action="append",
                required=True,
                help="one member as JSON: name, argv (its tuneatlas command), outputs, log",
            ),
            out_option("the bundle's manifest (done.json), written when every member is done"),
        ),
    ),
    Command(
        "adopt",
        cmd_adopt,
        "move a bundle member's outputs to their final paths (after rule `bundle`)",
        (
            option("--bundle", required=True, help="the bundle id (plan.bundles)"),
            option("--member", required=True, help="the member as JSON (as `bundle` took it)"),
        ),
    ),
    Command(
        "tokenize",
        cmd_tokenize,
        "tokenise a corpus into packed token files (S4)",
        (
            data_option("the prepared corpus (its train split)"),
            option("--tokenizer", required=True, help="'build' (BPE) or a model directory"),
            option("--vocab-size", type=int, default=None, help="entries of a built BPE"),
            out_option("the tokens directory"),
        ),
    ),
    Command(
        "pretrain",
        cmd_pretrain,
        "pre-train one FFN-layout causal LM (S4)",
        (
            spec_option("PretrainSpec"),
            option("--tokens", required=True, help="the tokens directory"),
            out_option("the run directory"),
            DEVICE,
        ),
    ),
    Command(
        "lm-eval",
        cmd_lm_eval,
        "lm-evaluation-harness + zsRE probe of a model (S4)",
        (
            spec_option("evaluation spec (plan.lm_evals)"),
            model_option("the pre-trained model directory"),
            data_option("the prepared corpus (documents and facts)"),
            out_option("the evaluation's Parquet file"),
            DEVICE,
            CONFIG_HASH,
        ),
    ),
    Command(
        "fetch-harness",
        cmd_fetch_harness,
        "download the datasets of lm-evaluation-harness tasks into a cache (needs the network)",
        (
            option("--tasks", required=True, nargs="+", help="harness task names"),
            out_option("the cache directory the lm-eval jobs read offline"),
        ),
    ),
    Command(
        "table",
        cmd_table,
        "build one artifact table",
        (
            ARTIFACT,
            spec_option("artifact target (runs, params)"),
            option("--results", default="results", help="the results root the table reads"),
            CONFIG_HASH,
            out_option("the table's Parquet file"),
        ),
    ),
    Command(
        "plot",
        cmd_plot,
        "draw one artifact's figure(s) from its table",
        (
            ARTIFACT,
            option("--table", required=True, help="the artifact's table (Parquet)"),
            option("--out", required=True, nargs="+", help="the figure file(s) to write"),
        ),
    ),
    Command(
        "report-view",
        cmd_report_view,
        "what the HTML report shows of a table (an HTML page) or an animation (an APNG)",
        (
            option("--input", required=True, help="an artifact table (.parquet) or GIF"),
            out_option("the view's file (.html for a table, .png for a GIF)"),
        ),
    ),
    Command(
        "track",
        cmd_track,
        "write the finished runs into an MLflow tracking store",
        (
            option("--runs", required=True, help="JSON {study: {kind: [run ids]}} (the plan's)"),
            option("--results", default="results", help="the results root the runs live in"),
            out_option("the SQLite store (a marker file with --uri)"),
            option("--uri", default=None, help="an MLflow server or database URI to write to"),
            option(
                "--failure-table",
                action="append",
                default=[],
                help="a table with run, failed columns (S2.F1)",
            ),
        ),
    ),
    Command(
        "repro",
        cmd_repro,
        "REPRO tables (our values beside the papers', the claims checked) or their figures",
        (
            option("what", choices=["tables", "figures"], help="which outputs to build"),
            option("--spec", default="{}", help="tables: JSON of the plan's repro spec"),
            option("--results", default="results", help="tables: the results root"),
            option("--table", nargs=2, help="figures: repro.parquet and findings.parquet"),
            option("--out", nargs=2, required=True, help="the two output files"),
            CONFIG_HASH,
        ),
    ),
    Command(
        "compare",
        cmd_compare,
        "print how an existing results/ compares with the papers (exit 0 whatever it says)",
        (
            option("--results", default="results", help="the results root"),
            option(
                "--config",
                default=None,
                help="the run's config: says whether it is at the paper's scale when the"
                " results have no repro.parquet",
            ),
            option("--json", action="store_true", help="one JSON object instead of text"),
        ),
        group="user",
    ),
    Command(
        "layouts",
        cmd_layouts,
        "S4: per-layer FFN widths and parameter counts of every variant",
        (CONFIG, option("--json", action="store_true", help="one JSON list instead of a table")),
        group="user",
    ),
    Command(
        "estimate",
        cmd_estimate,
        "peak GPU memory, FLOPs and GPU-hours of every planned GPU job, and whether it fits",
        (
            CONFIG,
            option("--gpu", default="h100", help="h100, h200, a100-80g, a100-40g or v100"),
            option("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed"),
            option("--max-hours", type=float, default=48.0, help="the site's job time limit"),
            option("--json", action="store_true", help="jobs and totals as JSON"),
        ),
        group="user",
    ),
    Command(
        "catalogue",
        cmd_catalogue,
        "print the artifact catalogue as a Markdown table",
        (option("--readme", help="rewrite the catalogue between the markers of this file"),),
        group="user",
    ),
)


GROUPS = {
    "user": "commands",
    "internal": "internal commands (one per workflow rule; snakemake runs them with the rule's"
    " --spec JSON)",
}
DESCRIPTION = """Reproduce five fine-tuning studies with one Snakemake workflow: run it with
`snakemake --profile profiles/local [--configfile CONFIG]`; these commands check configs and
inspect what a run will do. `tuneatlas COMMAND --help` describes one."""


def build_parser() -> argparse.ArgumentParser:
    """The parser; `--help` lists the user commands first, then the internals in their own group
    (every command stays callable by name, so the rules' invocations are unchanged)."""
    listing = "\n\n".join(
        f"{title}:\n" + "\n".join(f"  {c.name:<18} {c.help}" for c in COMMANDS if c.group == group)
        for group, title in GROUPS.items()
    )
    parser = argparse.ArgumentParser(
        prog="tuneatlas",
        description=DESCRIPTION,
        epilog=listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            description=command.description or command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for opt in command.options:
            opt.add_to(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup(args.threads)
    if os.environ.get("TUNEATLAS_DETERMINISTIC", "1") == "1":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from tuneatlas.errors import PREEMPTED_EXIT, Preempted, debug, error_lines

    try:
        args.func(args)
    except Preempted as exc:
        # not an error: the checkpoint is saved, and this status asks for a rerun (retries)
        logging.shutdown()
        print(f"PREEMPTED tuneatlas: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTED_EXIT) from None
    except Exception as exc:
        # one `ERROR tuneatlas: ...` line per error, no traceback wall (TUNEATLAS_DEBUG=1 shows it)
        if debug():
            raise
        logging.shutdown()
        print("\n".join(error_lines(exc)), file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
