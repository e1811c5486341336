"""The `tuneatlas` console script: one sub-command per workflow rule, plus config tools.

Rules pass their run/artifact spec as a JSON string (`--spec`), so the command line of every job
holds everything that determines its result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

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


def _spec(text: str) -> dict[str, Any]:
    return json.loads(text)


def cmd_validate(args: argparse.Namespace) -> None:
    from tuneatlas.checks import preflight
    from tuneatlas.config import config_hash, load_config
    from tuneatlas.plan import make_plan

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


def cmd_prepare(args: argparse.Namespace) -> None:
    from tuneatlas.data.prepare import prepare_dataset

    written = prepare_dataset(
        args.name,
        _spec(args.spec),
        Path(args.out),
        seed=args.seed,
        meta={"config_hash": args.config_hash, "dataset": args.name},
        hub_copy=Path(args.hub_copy) if args.hub_copy else None,
    )
    log.info("prepared %s: %s", args.name, ", ".join(sorted(written)))


def cmd_livedoor_convert(args: argparse.Namespace) -> None:
    from tuneatlas.data.livedoor import PAPER_SIZES, convert

    sizes = convert(Path(args.archive), Path(args.out_dir), seed=args.seed)
    print(f"{args.out_dir}: " + ", ".join(f"{s}.tsv {n}" for s, n in sizes.items()))
    if sizes != PAPER_SIZES:
        print(f"  note: the paper's split is {PAPER_SIZES} (the 7,367 articles of ldcc-20140209)")


def cmd_fetch_hub(args: argparse.Namespace) -> None:
    from tuneatlas.data.prepare import fetch_hub_dataset

    fetch_hub_dataset(args.name, _spec(args.spec), Path(args.out))


def _corpus_texts(data_root: Path, datasets: list[str]) -> list[str]:
    import pandas as pd

    texts: list[str] = []
    for name in datasets:
        for path in sorted((data_root / name).glob("*.parquet")):
            df = pd.read_parquet(path)
            for column in ("text_a", "text_b", "text"):
                if column in df:
                    texts.extend(df[column].dropna().astype(str).tolist())
    return texts


def cmd_build_model(args: argparse.Namespace) -> None:
    from tuneatlas.engine.recipes.mlm import build_bert
    from tuneatlas.models.hub import fetch_model

    spec = _spec(args.spec)
    source = spec["source"]
    if source == "build":
        texts = _corpus_texts(Path(args.data_root), spec["corpus"])
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
    from tuneatlas.engine.recipes.finetune import finetune
    from tuneatlas.spec import TrainSpec

    spec = TrainSpec.from_dict(_spec(args.spec))
    hooks = []
    if spec.capture.every:
        from tuneatlas.analysis.capture import EmbeddingCapture

        hooks.append(EmbeddingCapture(spec.capture))
    if spec.fisher.every or spec.polar_every:
        from tuneatlas.analysis.inloop import FisherTrace, PolarTrace

        hooks += [FisherTrace(spec.fisher)] if spec.fisher.every else []
        hooks += [PolarTrace(spec.polar_every)] if spec.polar_every else []
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
    if args.predictions:
        from tuneatlas.analysis.predict import write_predictions

        # in this process: a separate job would pay the torch start-up again for a few seconds
        write_predictions(
            Path(args.out) / "model",
            Path(args.data),
            Path(args.predictions),
            batch_size=spec.eval_batch_size,
            device=args.device,
            meta={"config_hash": os.environ.get("TUNEATLAS_CONFIG_HASH", "")},
        )


def cmd_simcse(args: argparse.Namespace) -> None:
    from tuneatlas.engine.recipes.simcse import SimCSESpec, simcse

    simcse(
        SimCSESpec.from_dict(_spec(args.spec)),
        Path(args.data),
        Path(args.model),
        Path(args.out),
        Path(args.run_dir),
        device=args.device,
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
    )


def cmd_subsets(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.subset_scan import scan_run

    frames = scan_run(
        Path(args.embeddings),
        _spec(args.params),
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
    )
    log.info("predict: %d rows (%s) -> %s", len(df), ", ".join(df["split"].unique()), args.out)


def cmd_cluster(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.clusters import cluster_dataset

    cluster_dataset(
        _spec(args.spec),
        Path(args.data),
        Path(args.embedder),
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
    from tuneatlas.analysis.fisher_trials import fisher_trial

    fisher_trial(
        _spec(args.spec),
        Path(args.data),
        Path(args.model),
        Path(args.out),
        device=args.device,
        config_hash=args.config_hash,
    )


def cmd_tokenize(args: argparse.Namespace) -> None:
    from tuneatlas.data.tokens import prepare_tokens

    prepare_tokens(Path(args.data), Path(args.out), args.tokenizer, args.vocab_size)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from tuneatlas.engine.device import distributed_group
    from tuneatlas.engine.recipes.causal_lm import pretrain
    from tuneatlas.spec import PretrainSpec

    spec = PretrainSpec.from_dict(_spec(args.spec))
    with distributed_group(args.device) as device:
        pretrain(spec, Path(args.tokens), Path(args.out), device=device)


def cmd_lm_eval(args: argparse.Namespace) -> None:
    from tuneatlas.analysis.lmeval import evaluate_run

    evaluate_run(
        _spec(args.spec),
        Path(args.model),
        Path(args.data),
        Path(args.out),
        device=args.device,
        config_hash=args.config_hash,
    )


def input_spec_hashes(target: dict[str, Any], results: Path) -> dict[str, str]:
    """Run id -> spec hash of every run a table is built from (its runs, embeddings and
    subsets): the eval.parquet metadata's `spec_hash`, else the hash of the run's spec.yaml."""
    import yaml

    from tuneatlas.io import read_parquet_meta, stable_hash

    runs = sorted({r for key in ("runs", "embeddings", "subsets") for r in target.get(key) or ()})
    hashes: dict[str, str] = {}
    for run in runs:
        run_dir = results / "runs" / run
        eval_file, spec_file = run_dir / "eval.parquet", run_dir / "spec.yaml"
        found = read_parquet_meta(eval_file).get("spec_hash") if eval_file.is_file() else None
        if not found and spec_file.is_file():
            found = stable_hash(yaml.safe_load(spec_file.read_text()))
        hashes[run] = found or "unknown"
    return hashes


def cmd_table(args: argparse.Namespace) -> None:
    from tuneatlas.io import provenance, stable_hash, write_parquet
    from tuneatlas.studies.registry import build_table

    spec = _spec(args.spec)
    df = build_table(args.artifact, spec, Path(args.results))
    meta = provenance(
        args.config_hash,
        artifact=args.artifact.upper(),
        spec_hash=stable_hash(spec),
        input_spec_hashes=input_spec_hashes(spec, Path(args.results)),
    )
    write_parquet(df, args.out, meta)
    log.info("%s: %d rows -> %s", args.artifact, len(df), args.out)


def cmd_plot(args: argparse.Namespace) -> None:
    from tuneatlas.studies.registry import plot_artifact

    plot_artifact(args.artifact, Path(args.table), [Path(p) for p in args.out])


def catalogue_markdown() -> str:
    from tuneatlas.catalogue import ARTIFACTS

    lines = [
        "| ID | reproduces | table | figure | columns |",
        "|---|---|---|---|---|",
    ]
    for a in ARTIFACTS.values():
        figures = "<br>".join(f"`{f}`" for f in a.figures)
        lines.append(
            f"| {a.id} | {a.study}: {a.title} | `{a.table}` | {figures} | {', '.join(a.columns)} |"
        )
    return "\n".join(lines) + "\n"


def cmd_catalogue(args: argparse.Namespace) -> None:
    table = catalogue_markdown()
    if not args.readme:
        print(table, end="")
        return
    readme = Path(args.readme)
    text = readme.read_text()
    start, end = "<!-- catalogue:start -->\n", "<!-- catalogue:end -->"
    head, rest = text.split(start)
    readme.write_text(head + start + table + end + rest.split(end, 1)[1])


def cmd_layouts(args: argparse.Namespace) -> None:
    from tuneatlas.config import ConfigError, load_config
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


def _add_device(p: argparse.ArgumentParser) -> None:
    # The workflow exports the config's device as $TUNEATLAS_DEVICE instead of passing it as a
    # rule param, so that moving to a GPU re-runs nothing.
    p.add_argument(
        "--device",
        default=os.environ.get("TUNEATLAS_DEVICE") or None,
        help="cpu, cuda, cuda:1 or auto (default: $TUNEATLAS_DEVICE, else auto)",
    )


def _add_config_hash(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config-hash",
        default=os.environ.get("TUNEATLAS_CONFIG_HASH", ""),
        help="global config hash, information for the metadata (default: $TUNEATLAS_CONFIG_HASH)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tuneatlas", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate a config and summarise its plan")
    p.add_argument("config")
    p.add_argument(
        "--no-device-check",
        action="store_true",
        help="skip the check that device: cuda has CUDA here (jobs run on other machines)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("prepare", help="prepare one dataset into normalised Parquet splits")
    p.add_argument("--name", required=True)
    p.add_argument("--spec", required=True, help="dataset config as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--config-hash", default="")
    p.add_argument("--hub-copy", default=None, help="local copy of a hub source (fetch-hub)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "fetch-hub", help="download a hub dataset's splits as they are (needs the network)"
    )
    p.add_argument("--name", required=True)
    p.add_argument("--spec", required=True, help="dataset config as JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fetch_hub)

    p = sub.add_parser(
        "livedoor-convert",
        help="livedoor archive (ldcc-20140209.tar.gz) -> train/valid/test TSVs (source: file)",
    )
    p.add_argument("archive", help="ldcc-20140209.tar.gz, or the directory it unpacks to")
    p.add_argument("out_dir", help="directory of train.tsv, valid.tsv, test.tsv")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    p.set_defaults(func=cmd_livedoor_convert)

    p = sub.add_parser("build-model", help="build a tiny model offline or fetch one by name")
    p.add_argument("--spec", required=True, help="model config as JSON")
    p.add_argument("--data-root", default="results/data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_build_model)

    p = sub.add_parser("train", help="fine-tune one run (resumes from its last checkpoint)")
    p.add_argument("--spec", required=True, help="TrainSpec as JSON")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--init", default=None, help="model dir of the run this one continues from")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--predictions", default=None, help="also write the per-example logits here (S5 members)"
    )
    _add_device(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("simcse", help="SimCSE continued training of a base model (S2)")
    p.add_argument("--spec", required=True, help="SimCSESpec as JSON")
    p.add_argument("--data", required=True, help="prepared sentence corpus")
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument("--out", required=True, help="the new base model directory")
    p.add_argument("--run-dir", required=True, help="checkpoint, metrics and held-out scores")
    _add_device(p)
    p.set_defaults(func=cmd_simcse)

    p = sub.add_parser("embed", help="extract per-layer CLS and max-norm vectors of a run")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=None, help="default: the run's own")
    # the analyses rank on valid and report test; train-split embeddings of QQP alone are ~12 GB
    p.add_argument("--splits", nargs="+", default=["valid", "test"])
    _add_device(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("subsets", help="scan the CLS-dimension subsets of one run (S1)")
    p.add_argument("--embeddings", required=True, help="embeddings dir (or its .safetensors)")
    p.add_argument("--params", required=True, help="scan spec as JSON (plan.scans[run])")
    p.add_argument("--out", required=True, help="directory of the scan's Parquet files")
    _add_device(p)
    p.add_argument("--backend", default="auto", choices=["auto", "compile", "eager"])
    _add_config_hash(p)
    p.set_defaults(func=cmd_subsets)

    p = sub.add_parser("predict", help="per-example logits of a run on its evaluation splits")
    p.add_argument("--model", required=True, help="the run's model directory")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="predictions.parquet to write")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--splits", nargs="+", default=["valid", "test"])
    _add_device(p)
    _add_config_hash(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cluster", help="embed a dataset and cluster its training split (S5)")
    p.add_argument("--spec", required=True, help="clustering spec as JSON (plan.clusterings)")
    p.add_argument("--data", required=True)
    p.add_argument("--embedder", required=True, help="encoder model directory")
    p.add_argument("--out", required=True)
    _add_device(p)
    _add_config_hash(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("cluster-data", help="derive a member dataset from a clustering (S5)")
    p.add_argument("--data", required=True, help="the clustered dataset")
    p.add_argument("--clusters", required=True, help="the clustering's directory")
    p.add_argument("--keep", dest="clusters_kept", nargs="+", required=True, help="cluster names")
    p.add_argument("--out", required=True)
    _add_config_hash(p)
    p.set_defaults(func=cmd_cluster_data)

    p = sub.add_parser("fisher", help="per-layer Fisher spectra of a base model (S2)")
    p.add_argument("--spec", required=True, help="Fisher trial spec as JSON (plan.fishers)")
    p.add_argument("--data", required=True, help="the fine-tuning dataset (its train split)")
    p.add_argument("--model", required=True, help="the base model directory")
    p.add_argument("--out", required=True, help="the trial's Parquet file")
    _add_device(p)
    _add_config_hash(p)
    p.set_defaults(func=cmd_fisher)

    p = sub.add_parser("tokenize", help="tokenise a corpus into packed token files (S4)")
    p.add_argument("--data", required=True, help="the prepared corpus (its train split)")
    p.add_argument("--tokenizer", required=True, help="'build' (BPE) or a model directory")
    p.add_argument("--vocab-size", type=int, default=None, help="entries of a built BPE")
    p.add_argument("--out", required=True, help="the tokens directory")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("pretrain", help="pre-train one FFN-layout causal LM (S4)")
    p.add_argument("--spec", required=True, help="PretrainSpec as JSON")
    p.add_argument("--tokens", required=True, help="the tokens directory")
    p.add_argument("--out", required=True, help="the run directory")
    _add_device(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness + zsRE probe of a model (S4)")
    p.add_argument("--spec", required=True, help="evaluation spec as JSON (plan.lm_evals)")
    p.add_argument("--model", required=True, help="the pre-trained model directory")
    p.add_argument("--data", required=True, help="the prepared corpus (documents and facts)")
    p.add_argument("--out", required=True, help="the evaluation's Parquet file")
    _add_device(p)
    _add_config_hash(p)
    p.set_defaults(func=cmd_lm_eval)

    p = sub.add_parser("table", help="build one artifact table")
    p.add_argument("artifact")
    p.add_argument("--spec", required=True, help="artifact target as JSON (runs, params)")
    p.add_argument("--results", default="results")
    _add_config_hash(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("plot", help="draw one artifact's figure(s) from its table")
    p.add_argument("artifact")
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True, nargs="+")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "layouts", help="S4: per-layer FFN widths and parameter counts of every variant"
    )
    p.add_argument("config")
    p.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    p.set_defaults(func=cmd_layouts)

    p = sub.add_parser("catalogue", help="print the artifact catalogue as a Markdown table")
    p.add_argument("--readme", help="rewrite the catalogue between the markers of this file")
    p.set_defaults(func=cmd_catalogue)

    args = parser.parse_args(argv)
    _setup(args.threads)
    if os.environ.get("TUNEATLAS_DETERMINISTIC", "1") == "1":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from tuneatlas.checks import debug, error_lines

    try:
        args.func(args)
    except Exception as exc:
        # one `ERROR tuneatlas: ...` line per error, no traceback wall (TUNEATLAS_DEBUG=1 shows it)
        if debug():
            raise
        logging.shutdown()
        print("\n".join(error_lines(exc)), file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
