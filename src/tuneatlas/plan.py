"""The plan: a pure function from a validated config to every run and artifact target.

The Snakefile maps plan entries to rules and holds no experiment logic. Run ids are short and
readable (``s1-sst2-s42``, ``s1-cola-then-sst2-s42``, ``s2-simcse-p0.1-lr2e-5-s7``); each run
carries its full spec, which rules pass as params so a changed hyper-parameter re-runs exactly
the dependent jobs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tuneatlas.bundles import plan_bundles
from tuneatlas.catalogue import ARTIFACTS, REPRO_FIGURES, REPRO_TABLES, Artifact
from tuneatlas.config import unsafe_id
from tuneatlas.data.members import members
from tuneatlas.errors import ConfigError
from tuneatlas.models.layouts import s4_layouts
from tuneatlas.spec import (
    CaptureSpec,
    FisherSpec,
    OptimSpec,
    PretrainSpec,
    ScheduleSpec,
    TrainSpec,
)

RESULTS = "results"

# config `train` keys that belong to the nested optimiser / schedule specs
_OPTIM_KEYS = {"lr", "betas", "eps", "weight_decay", "correct_bias"}
_SCHEDULE_KEYS = {
    "schedule": "name",
    "warmup_epochs": "warmup_epochs",
    "warmup_steps": "warmup_steps",
}


@dataclass(frozen=True)
class Run:
    """One job that trains something: a fine-tune (`spec` is a TrainSpec dict), a SimCSE
    continued training (SimCSESpec) or a LLaMA pre-training (PretrainSpec)."""

    id: str
    study: str
    kind: str  # finetune | simcse | pretrain
    spec: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """An artifact of the catalogue with the runs and embeddings its table is computed from.

    `subsets` lists the runs whose subset scan (`results/subsets/<run>/`, the `subsets` rule)
    the table reads; `Plan.scans` holds each such run's scan spec.
    """

    artifact: Artifact
    runs: tuple[str, ...] = ()
    embeddings: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    subsets: tuple[str, ...] = ()
    predictions: tuple[str, ...] = ()  # runs whose predictions.parquet it reads
    clusterings: tuple[str, ...] = ()  # results/clusters/<id>/ it reads (rule cluster)
    fishers: tuple[str, ...] = ()  # results/fisher/<id>.parquet it reads (rule fisher)
    datasets: tuple[str, ...] = ()  # prepared datasets it reads (results/data/<id>/)
    lm_evals: tuple[str, ...] = ()  # results/lm_eval/<run>.parquet it reads (rule lm_eval)


@dataclass
class Plan:
    datasets: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]
    runs: dict[str, Run]
    targets: dict[str, Target]
    # run id -> spec of its subset scan (tuneatlas.analysis.subsets.scan): the `subsets` rule
    scans: dict[str, dict[str, Any]] = field(default_factory=dict)
    # clustering id -> spec of the `cluster` rule (S5)
    clusterings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Fisher trial id -> spec of the `fisher` rule (S2)
    fishers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # tokens id -> spec of the `tokenize` rule; pre-training run -> its `lm_eval` spec (S4)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    lm_evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlflow: bool = False  # config `tracking.mlflow`: rule all also builds the MLflow store
    # REPRO (rules repro_tables / repro_figures): study -> {"tables": [its artifact tables],
    # "not_comparable": why its numbers cannot be set beside the paper's, or None}
    repro: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bundle id -> {"rule": train | fisher | pretrain | lm_eval, "members": [ids]} (`bundles`,
    # tuneatlas.bundles): the members' jobs run inside rule `bundle`
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def bundle_of(self, rule: str, name: str) -> str | None:
        """The bundle that runs job `name` of `rule`, or None when it runs on its own."""
        for bundle_id, bundle in self.bundles.items():
            if bundle["rule"] == rule and name in bundle["members"]:
                return bundle_id
        return None

    def final_outputs(self) -> list[str]:
        """Table and figure paths of every artifact of the enabled studies, the REPRO tables
        and figures, and the MLflow store when asked for (`rule all`)."""
        outputs = [
            p for t in self.targets.values() for p in (t.artifact.table, *t.artifact.figures)
        ]
        outputs += [*REPRO_TABLES, *REPRO_FIGURES] if self.repro else []
        return outputs + ([f"{RESULTS}/mlflow.db"] if self.mlflow else [])

    def scan_spec(self, run_id: str) -> dict[str, Any]:
        """Spec of the subset scan of `run_id` (the `subsets` rule's params)."""
        try:
            return self.scans[run_id]
        except KeyError:
            raise KeyError(
                f"run {run_id!r} has no subset scan in this plan; scanned runs: "
                + ", ".join(sorted(self.scans))
            ) from None

    def add(self, run: Run) -> str:
        why = unsafe_id(run.id)
        if why:  # ids are built from config ids and values: a guard for what they may build
            raise ConfigError(f"run id {run.id!r} ({run.study}) is unsafe: {why}")
        existing = self.runs.get(run.id)
        if existing is not None and existing.spec != run.spec:
            raise ConfigError(_collision(run.id, run.study, existing.spec, run.spec))
        self.runs[run.id] = run
        return run.id


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _collision(run_id: str, study: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which values of two runs differ although their ids print alike, and the way out."""
    fa, fb = _flat(a), _flat(b)
    keys = [k for k in sorted({*fa, *fb}) if fa.get(k) != fb.get(k)]
    keys = [k for k in keys if k in fa and k in fb] or keys  # the values set on both first
    diff = [f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys]
    return (
        f"two different runs share the id {run_id!r} (studies.{study}): {', '.join(diff)} differ"
        " but print alike in the id; make those config values differ in the digits the id"
        " shows (e.g. lr 2.0e-3 and 3.0e-3, dropout 0.1 and 0.2), or keep one"
    )


def train_spec(
    run: str, task: str, dataset: str, model: str, layers: list[dict[str, Any]], **fields: Any
) -> TrainSpec:
    """Merge config `train` sections (later ones win) and explicit fields into a TrainSpec."""
    merged: dict[str, Any] = {}
    for layer in [*layers, fields]:
        merged.update(layer or {})
    optim = {k: merged.pop(k) for k in list(merged) if k in _OPTIM_KEYS}
    if "betas" in optim:
        optim["betas"] = tuple(optim["betas"])
    schedule = {_SCHEDULE_KEYS[k]: merged.pop(k) for k in list(merged) if k in _SCHEDULE_KEYS}
    return TrainSpec(
        run=run,
        task=task,
        dataset=dataset,
        model=model,
        optim=OptimSpec(**optim),
        schedule=ScheduleSpec(**schedule),
        **merged,
    )


def _lr_tag(lr: float) -> str:
    mantissa, exponent = f"{lr:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def make_plan(config: dict[str, Any]) -> Plan:
    """Expand a validated config (tuneatlas.config.validate_config) into the plan."""
    plan = Plan(
        datasets=dict(config["datasets"]),
        models=dict(config["models"]),
        runs={},
        targets={},
        mlflow=config.get("tracking", {}).get("mlflow", False),
    )
    studies = config["studies"]
    builders = {"s1": _plan_s1, "s2": _plan_s2, "s3": _plan_s3, "s4": _plan_s4, "s5": _plan_s5}
    for name, section in studies.items():
        if section.get("enabled", True):
            builders[name](plan, config, section)
            plan.repro[name] = {
                "tables": sorted(
                    t.artifact.table
                    for t in plan.targets.values()
                    if t.artifact.study.lower() == name
                ),
                "not_comparable": toy_scale_reason(config, section),
            }
    _check_saved_models(plan)
    _grant_trust(plan)
    _plan_bundles(plan, config.get("bundles", {}))
    return plan


def _plan_bundles(plan: Plan, sizes: dict[str, dict[str, int]]) -> None:
    """Cut each study's bundleable jobs into bundles (tuneatlas.bundles): its fine-tunes, Fisher
    trials, pre-training runs and their evaluations. A fine-tune that starts from another run's
    weights goes to a later wave of its study's bundles (`<study>-train-w<depth>-NN`, depth =
    the runs it starts from, one after another): its input is an earlier bundle's output, never
    a sibling's."""
    groups: dict[str, tuple[str, list[str]]] = {}  # group -> (rule, members)
    for run in plan.runs.values():
        if run.kind in ("finetune", "pretrain"):
            rule = "train" if run.kind == "finetune" else "pretrain"
            depth = _init_depth(plan, run.id)
            group = f"{run.study}-{rule}" + (f"-w{depth}" if depth else "")
            groups.setdefault(group, (rule, []))[1].append(run.id)
    for fisher_id in plan.fishers:
        groups.setdefault("s2-fisher", ("fisher", []))[1].append(fisher_id)
    for run_id in plan.lm_evals:
        groups.setdefault("s4-lm_eval", ("lm_eval", []))[1].append(run_id)
    for group, (rule, names) in sorted(groups.items()):
        size = sizes.get(group.split("-")[0], {}).get(rule, 1)
        for bundle_id, cut in plan_bundles(group, names, size).items():
            plan.bundles[bundle_id] = {"rule": rule, "members": cut}


def _init_depth(plan: Plan, run_id: str) -> int:
    """How many runs `run_id` starts from, one from the other's weights (0: from a base model)."""
    init_from = plan.runs[run_id].spec.get("init_from")
    return 1 + _init_depth(plan, init_from) if init_from else 0


def toy_scale_reason(config: dict[str, Any], section: dict[str, Any]) -> str | None:
    """Why a study's numbers are not the paper's: a model it names is built here (not the
    paper's pre-trained one) or a dataset it names is synthetic; None when neither."""
    named = {
        v
        for value in section.values()
        for v in (value if isinstance(value, list) else [value])
        if isinstance(v, str)
    }
    built = sorted(
        m for m in named & set(config["models"]) if config["models"][m].get("source") == "build"
    )
    synthetic = sorted(
        d
        for d in named & set(config["datasets"])
        if config["datasets"][d].get("source") == "synthetic"
    )
    if not built and not synthetic:
        return None
    parts = [f"model {m} is built here" for m in built]
    parts += [f"dataset {d} is synthetic" for d in synthetic]
    return "toy scale: " + ", ".join(parts)


def _grant_trust(plan: Plan) -> None:
    """A fine-tune of a model whose config entry sets trust_remote_code carries that grant in
    its spec: the one place the train, embed and predict jobs take it from."""
    for run in plan.runs.values():
        if run.kind == "finetune" and plan.models[run.spec["model"]].get("trust_remote_code"):
            run.spec["trust_remote_code"] = True


def _check_saved_models(plan: Plan) -> None:
    """A run trained with `save_model: false` keeps no weights: nothing may read its model."""
    unsaved = {r for r, run in plan.runs.items() if run.spec.get("save_model") is False}
    readers = [
        (f"run {r}", run.spec["init_from"])
        for r, run in plan.runs.items()
        if run.spec.get("init_from") in unsaved
    ]
    readers += [
        (f"artifact {t.artifact.id}", r)
        for t in plan.targets.values()
        for r in (*t.embeddings, *t.subsets)  # a subset scan reads the run's embeddings
        if r in unsaved
    ]
    if readers:
        who, run = readers[0]
        raise ConfigError(
            f"{who} reads the model of run {run}, which has save_model: false; set "
            f"save_model: true in the train section of the study that plans {run}"
        )


def task_of(config: dict[str, Any], dataset: str) -> str:
    return config["datasets"][dataset]["task"]


# --- S1 -------------------------------------------------------------------------------------
def _plan_s1(plan: Plan, config: dict[str, Any], s1: dict[str, Any]) -> None:
    """Direct fine-tunes per dataset and seed, their subset scans, and the ablations (max-norm
    pooling, frozen encoder, no dropout, the cross fine-tuning matrix)."""
    seeds = s1["seeds"]
    main = seeds[0]
    layers = [config.get("train", {}), s1.get("train", {})]
    head = {**layers[0], **layers[1]}.get("head", "linear")
    if head != "linear":
        raise ConfigError(
            f"config key 'studies.s1.train.head': S1 needs the linear head on the raw CLS vector"
            f" (its paper; the subset scans score W[:, S] h_S + b of that Linear), got {head!r};"
            " set it to linear"
        )

    def finetune(run_id: str, dataset: str, seed: int, **fields: Any) -> str:
        spec = train_spec(
            run_id, task_of(config, dataset), dataset, s1["model"], layers, seed=seed, **fields
        )
        return plan.add(Run(run_id, "s1", "finetune", spec.to_dict()))

    direct = {(t, s): finetune(f"s1-{t}-s{s}", t, s) for t in s1["datasets"] for s in seeds}
    maxnorm = {
        t: finetune(f"s1-{t}-maxnorm-s{main}", t, main, pooling="maxnorm") for t in s1["datasets"]
    }
    main_runs = {t: direct[t, main] for t in s1["datasets"]}
    main_list = tuple(main_runs.values())

    def target(artifact_id: str, runs=(), embeddings=(), scans=(), **params: Any) -> None:
        plan.targets[artifact_id] = Target(
            ARTIFACTS[artifact_id],
            tuple(runs),
            tuple(embeddings),
            {"study": "s1", "datasets": s1["datasets"], **params},
            subsets=tuple(scans),
        )

    def scan(run_id: str, triples: bool, layers: bool) -> str:
        """What the subset scan of `run_id` computes: pairs always (S1.T2, S1.FA3), triples
        for S1.TA1/S1.T3, per-layer pairs for S1.FL."""
        plan.scans[run_id] = _s1_scan_spec(plan.runs[run_id].spec, s1, triples, layers)
        return run_id

    main_scans = tuple(scan(r, triples=True, layers=True) for r in main_list)
    target("S1.T1", runs=main_list + tuple(maxnorm.values()))
    target("S1.TA2", runs=tuple(direct.values()))
    target("S1.T2", scans=main_scans, subsets=s1["subsets"])
    target("S1.TA1", scans=main_scans, subsets=s1["subsets"])
    target("S1.T3", scans=main_scans, subsets=s1["subsets"])
    target("S1.FL", scans=main_scans, layers=s1["layers"])
    if s1["frozen"]:
        frozen = [
            finetune(f"s1-{t}-frozen-s{main}", t, main, head="mlp2", freeze_encoder=True)
            for t in s1["datasets"]
        ]
        target("S1.T4", runs=main_list + tuple(frozen))
    if s1["no_dropout"]:
        nd_datasets = s1["no_dropout_datasets"] or s1["datasets"]
        nodrop = [finetune(f"s1-{t}-nodrop-s{main}", t, main, dropout=0.0) for t in nd_datasets]
        nodrop = [scan(r, triples=False, layers=False) for r in nodrop]
        target(
            "S1.FA3",
            scans=tuple(main_runs[t] for t in nd_datasets) + tuple(nodrop),
            subsets=s1["subsets"],
            dropout_datasets=nd_datasets,
        )
    cross_datasets = s1["cross_datasets"] or s1["datasets"]
    cells = _s1_cross_cells(cross_datasets, main_runs, finetune, main)
    target("S1.T5", runs=cells, cross_datasets=cross_datasets)


def _s1_cross_cells(
    datasets: list[str], main_runs: dict[str, str], finetune: Callable[..., str], seed: int
) -> tuple[str, ...]:
    """The runs of S1.T5's matrix, row a (fine-tuned first) by column b: the diagonal is b's
    direct fine-tuning, any other cell fine-tunes b from a's main run."""
    return tuple(
        main_runs[b]
        if a == b
        else finetune(f"s1-{a}-then-{b}-s{seed}", b, seed, init_from=main_runs[a])
        for a, b in itertools.product(datasets, datasets)
    )


def _s1_scan_spec(
    run_spec: dict[str, Any], s1: dict[str, Any], triples: bool, layers: bool
) -> dict[str, Any]:
    """Spec of one run's subset scan: exactly what the scan reads (the pair rate resolved)."""
    sub = s1["subsets"]
    large = run_spec["dataset"] in sub["large_datasets"]
    return {
        "task": run_spec["task"],
        "seed": run_spec["seed"],
        "top_k": sub["top_k"],
        "effective_top": sub["effective_top"],
        # the schema's defaults (a spec built without validation, in tests, lacks them)
        "effective_rule": sub.get("effective_rule", "largest"),
        "effective_min_drop": sub.get("effective_min_drop", 0.05),
        "pair_rate": sub["pair_rate_large"] if large else sub["pair_rate"],
        "histogram_bins": sub["histogram_bins"],
        "triples": (
            {"exhaustive": sub["exhaustive_triples"], "sample_sizes": sub["triple_sample_sizes"]}
            if triples
            else None
        ),
        "layers": dict(s1["layers"]) if layers else None,
    }


# --- S2 ---------------------------------------------------------------------------------------
# global `train` keys a SimCSE run takes (execution settings, not the objective's recipe)
_SIMCSE_TRAIN_KEYS = {"eval_batch_size", "checkpoint_every", "precision", "tf32", "grad_clip"}


def _plan_s2(plan: Plan, config: dict[str, Any], s2: dict[str, Any]) -> None:
    """The SimCSE models, the fine-tuning sweep (S2.T1/F1, in-loop S2.F2/F4) and the Fisher
    trials at initialisation (S2.F3/T2)."""
    # sweep runs keep no weights unless the study's own train section asks for them
    layers = [config.get("train", {}), {"save_model": False}, s2.get("train", {})]
    models = {"vanilla": s2["model"], **_plan_simcse(plan, config, s2)}
    inloop_targets = _plan_s2_sweep(plan, config, s2, models, layers)
    _plan_s2_fishers(plan, config, s2, models, layers)
    plan.targets.update(inloop_targets)


def _plan_simcse(plan: Plan, config: dict[str, Any], s2: dict[str, Any]) -> dict[str, str]:
    """One SimCSE continued training per dropout; {model label: model id}."""
    simcse = s2["simcse"]
    if not simcse["enabled"]:  # S2 on the base model alone: the sweep and Fisher of vanilla
        return {}
    if simcse["dropouts"] and not s2.get("corpus"):
        raise ConfigError(
            "config key 'studies.s2.corpus': the SimCSE models (studies.s2.simcse.dropouts)"
            " need a sentence corpus; name a dataset of task simcse"
        )
    models = {}
    for p in simcse["dropouts"]:
        model_id = f"s2-simcse-p{p:g}"
        models[f"simcse-p{p:g}"] = model_id
        # a SimCSESpec (tuneatlas.engine.recipes.simcse): a TrainSpec + temperature; SimCSE's
        # own schedule (linear decay, no warm-up) and no weight decay, whatever `train` says
        spec = train_spec(
            model_id,
            "simcse",
            s2["corpus"],
            s2["model"],
            [{k: v for k, v in config.get("train", {}).items() if k in _SIMCSE_TRAIN_KEYS}],
            seed=config["seed"],
            dropout=p,
            lr=simcse["lr"],
            batch_size=simcse["batch_size"],
            epochs=simcse["epochs"],
            max_length=simcse["max_length"],
            schedule="linear",
            # SimCSE keeps the checkpoint with the best STS-B dev Spearman (engine/recipes/simcse)
            keep_best=bool(simcse.get("stsb")),
            eval_every=simcse["eval_every"] if simcse.get("stsb") else 0,
        ).to_dict()
        spec["temperature"] = simcse["temperature"]
        spec["pooler"] = simcse["pooler"]
        plan.models[model_id] = {
            "source": "simcse",
            "base": s2["model"],
            "corpus": s2["corpus"],
            "stsb": simcse.get("stsb"),
        }
        plan.add(Run(model_id, "s2", "simcse", spec))
    return models


def _plan_s2_sweep(
    plan: Plan,
    config: dict[str, Any],
    s2: dict[str, Any],
    models: dict[str, str],
    layers: list[dict[str, Any]],
) -> dict[str, Target]:
    """Every (model, lr, seed) fine-tune (S2.T1, S2.F1); the cells of `fisher` also measure
    in the loop: returns the targets that read those measurements (S2.F2, S2.F4)."""
    dataset = s2["dataset"]
    task = task_of(config, dataset)
    fisher, polar = s2["fisher"], s2["polar"]
    inloop_cells = _inloop_cells(s2, models)
    _check_drawn_seeds(s2)
    sweep, fisher_runs, polar_runs = [], [], []
    for (label, model), lr, seed in itertools.product(
        models.items(), s2["lrs"], range(s2["n_seeds"])
    ):
        run_id = f"s2-{label}-lr{_lr_tag(lr)}-s{seed}"
        inloop: dict[str, Any] = {}
        if (label, lr) in inloop_cells:
            keys = ("every", "batch_size", "energy", "precision")
            inloop["fisher"] = FisherSpec(
                **{k: fisher[k] for k in keys}, extra_steps=tuple(fisher["extra_steps"])
            )
            fisher_runs.append(run_id)
            if seed in polar["seeds"]:
                inloop["polar_every"] = polar["every"]
                polar_runs.append(run_id)
        spec = train_spec(run_id, task, dataset, model, layers, seed=seed, lr=lr, **inloop)
        extra = {"model_label": label, "lr": lr, "seed": seed}
        sweep.append(plan.add(Run(run_id, "s2", "finetune", spec.to_dict(), extra)))
    grid = {
        "study": "s2",
        "models": list(models),
        "lrs": s2["lrs"],
        "dataset": dataset,
        "failure_threshold": s2["failure_threshold"],
        "runs": {r: plan.runs[r].extra for r in sweep},
    }
    for artifact_id in ("S2.T1", "S2.F1"):
        plan.targets[artifact_id] = Target(
            ARTIFACTS[artifact_id], tuple(sweep), params=grid, datasets=(dataset,)
        )
    # every sweep run writes its per-example predictions (a few KB): a failed run can be
    # inspected (does it predict one class?) and its accuracy recomputed
    plan.targets["S2.T1"] = replace(plan.targets["S2.T1"], predictions=tuple(sweep))
    # in-loop: the polar trajectory (S2.F2) and the Fisher spectra during training (S2.F4),
    # with each run's failure flag as in S2.F1
    return {
        artifact_id: Target(
            ARTIFACTS[artifact_id],
            tuple(runs),
            params={**grid, "runs": {r: plan.runs[r].extra for r in runs}, "draw": draw},
            datasets=(dataset,),
        )
        for artifact_id, runs, draw in (
            ("S2.F2", polar_runs, polar["draw"]),
            ("S2.F4", fisher_runs, fisher["draw"]),
        )
        if runs
    }


def _check_drawn_seeds(s2: dict[str, Any]) -> None:
    """A `draw` list may only name seeds whose runs exist (and, for S2.F2, record the trace)."""
    for key, among in (
        ("fisher", set(range(s2["n_seeds"]))),
        ("polar", set(s2["polar"]["seeds"]) & set(range(s2["n_seeds"]))),
    ):
        draw = s2[key]["draw"]
        if isinstance(draw, list) and not set(draw) <= among:
            raise ConfigError(
                f"config key 'studies.s2.{key}.draw': seeds {sorted(set(draw) - among)} have no"
                f" in-loop run to draw; use seeds of {sorted(among)}"
            )


def _plan_s2_fishers(
    plan: Plan,
    config: dict[str, Any],
    s2: dict[str, Any],
    models: dict[str, str],
    layers: list[dict[str, Any]],
) -> None:
    """The Fisher trials at initialisation: a fresh head per (model, trial) (rule `fisher`)."""
    dataset, fisher = s2["dataset"], s2["fisher"]
    task = task_of(config, dataset)
    trials = {}
    for (label, model), trial in itertools.product(models.items(), range(fisher["trials"])):
        fisher_id = f"s2-{label}-t{trial}"
        # the head a fine-tune of this model would get (pooling, head, dropout, max_length)
        head = train_spec(fisher_id, task, dataset, model, layers, seed=trial)
        plan.fishers[fisher_id] = {
            "model": model,
            "label": label,
            "dataset": dataset,
            "trial": trial,
            "batch_size": fisher["batch_size"],
            "energy": fisher["energy"],
            "precision": fisher["precision"],
            "train": head.to_dict(),
        }
        trials[fisher_id] = {"model": label, "trial": trial}
    for artifact_id in ("S2.F3", "S2.T2"):
        plan.targets[artifact_id] = Target(
            ARTIFACTS[artifact_id],
            fishers=tuple(trials),
            params={"study": "s2", "models": list(models), "trials": trials},
        )


def _inloop_cells(s2: dict[str, Any], models: dict[str, str]) -> set[tuple[str, float]]:
    """The (model label, lr) cells whose sweep runs measure in the loop (S2.F2 / S2.F4)."""
    fisher = s2["fisher"]
    chosen = fisher["models"]
    if not s2["simcse"]["enabled"]:  # no SimCSE models: their default in-loop cells go too
        chosen = [m for m in chosen if not m.startswith("simcse-")]
    for key, values, known in (
        ("models", chosen, list(models)),
        ("lrs", fisher["lrs"], s2["lrs"]),
    ):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ConfigError(
                f"config key 'studies.s2.fisher.{key}': {unknown} not in the sweep;"
                f" use values of {known}"
            )
    return set(itertools.product(chosen, fisher["lrs"]))


# --- S3 --------------------------------------------------------------------------------------
def _plan_s3(plan: Plan, config: dict[str, Any], s3: dict[str, Any]) -> None:
    capture = CaptureSpec(
        every=s3["capture_every"],
        probe_per_class=s3["probe_per_class"],
        test_set=s3["capture_test_set"],
    )
    seed = s3["seed"]
    runs = {}
    variants = [("main", s3["dataset"], s3["train"])]
    if s3["preliminary_dataset"]:
        variants.append(("prelim", s3["preliminary_dataset"], s3["preliminary_train"]))
    for name, dataset, overrides in variants:
        run_id = f"s3-{name}-s{seed}"
        spec = train_spec(
            run_id,
            task_of(config, dataset),
            dataset,
            s3["model"],
            [config.get("train", {}), overrides],
            seed=seed,
            capture=capture,
        )
        runs[name] = plan.add(Run(run_id, "s3", "finetune", spec.to_dict()))
    # The runs each table reads, as the paper uses them: the F4 animation and the F5 trajectories
    # come from the balanced preliminary run, F7 shows both (the paper's Fig. 3 = preliminary
    # accuracy; Figs. 6-7 = the main run); the rest analyse the imbalanced main run. Without a
    # preliminary run, everything reads the main run.
    shown = "prelim" if "prelim" in runs else "main"
    setups = {
        "S3.F4": (shown,),
        "S3.F5": (shown,),
        "S3.F7": tuple(s for s in S3_SETUPS if s in runs),
    }
    for artifact_id, artifact in ARTIFACTS.items():
        if artifact.study == "S3":
            read = setups.get(artifact_id, ("main",))
            params = {k: s3[k] for k in S3_TARGET_PARAMS.get(artifact_id, ())}
            plan.targets[artifact_id] = Target(
                artifact,
                tuple(runs[s] for s in read),
                (),
                {"study": "s3", "runs": {s: runs[s] for s in read}, **params},
            )


# S3 set-ups in the order tables and figures show them (the paper's Fig. 3 comes first)
S3_SETUPS = ("prelim", "main")
# the study keys each S3 table reads (tuneatlas.studies.s3.TABLES); others read none
S3_TARGET_PARAMS: dict[str, tuple[str, ...]] = {
    "S3.F8": ("space",),
    "S3.F9": ("space", "speed_points"),
    "S3.T1": ("stay_T", "stay_D", "space"),
    "S3.T2": ("linearity_k", "linearity_eps", "space"),
    "S3.F12": ("linearity_ks", "space"),
}


# --- S4 ---------------------------------------------------------------------------------------
S4_TOKENS = "s4"  # results/tokens/s4/: the corpus tokenised once for every variant


def _s4_matched_layouts(s4: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`s4_layouts`, refusing a grid the code cannot build faithfully: a ratio that expands no
    layer of a size, or a variant whose parameter count misses the baseline's by more than
    `studies.s4.max_param_diff` (the expanded width rounds to `width_multiple`)."""
    out = {}
    for size, arch in s4["sizes"].items():
        try:
            out.update(s4_layouts({**s4, "sizes": {size: arch}}))
        except ValueError as e:
            raise ConfigError(
                f"config key 'studies.s4.ratios': size {size!r} ({arch['num_layers']} layers): {e}"
            ) from None
        limit = s4.get("max_param_diff", 0.01)
        for name, lay in out[size].items():
            if abs(lay.rel_diff) > limit:
                raise ConfigError(
                    f"config key 'studies.s4.sizes.{size}': variant {name} has {lay.params:,}"
                    f" parameters against the baseline's {lay.baseline_params:,}"
                    f" ({lay.rel_diff:+.1%}), beyond studies.s4.max_param_diff {limit:.1%}:"
                    f" the expanded FFN width rounds to width_multiple {s4['width_multiple']};"
                    " set studies.s4.width_multiple: 1 (or a smaller multiple), or change the"
                    " size's intermediate_size"
                )
    return out


def _plan_s4(plan: Plan, config: dict[str, Any], s4: dict[str, Any]) -> None:
    """Every (size, variant) pre-trains on its size's packed tokens (rule `pretrain`) and is
    evaluated on its size's tasks (rule `lm_eval`); S4.F3/T1/T2 read the evaluations."""
    if not s4.get("corpus"):
        raise ConfigError(
            "config key 'studies.s4.corpus': name the pre-training corpus (a dataset of task"
            " pretrain)"
        )
    evals, variants_info, size_tasks = [], {}, {}
    for size, layouts in _s4_matched_layouts(s4).items():
        arch = s4["sizes"][size]
        wanted = arch.get("variants")
        unknown = sorted(set(wanted or ()) - set(layouts))
        if unknown:
            raise ConfigError(
                f"config key 'studies.s4.sizes.{size}.variants': {unknown} are not variants of"
                f" the grid; use names of {sorted(layouts)}"
            )
        batch = _s4_batch_size(s4, size, arch)
        _check_s4_budget(config, s4, size)
        corpus, tokens = s4_corpus(s4, size), s4_tokens_key(s4, size)
        plan.tokens[tokens] = {"corpus": corpus, **{k: s4[k] for k in ("tokenizer", "vocab_size")}}
        tasks = arch.get("eval_tasks") or s4["eval_tasks"]
        size_tasks[size] = [*tasks, *(["zsre"] if _has_facts(config, corpus) else [])]
        for name, lay in layouts.items():
            if wanted is not None and name != "baseline" and name not in wanted:
                continue
            run_id = f"s4-{size.lower()}-{name}"
            spec = _s4_pretrain_spec(run_id, config, s4, arch, batch, lay.ffn_widths)
            spec = replace(spec, dataset=corpus, tokens=tokens)
            info = {
                "size": size,
                "variant": name,
                "position": lay.position,
                "ratio": lay.ratio,
                "params": lay.params,
                "rel_diff": lay.rel_diff,
            }
            plan.add(Run(run_id, "s4", "pretrain", spec.to_dict(), info))
            plan.lm_evals[run_id] = {
                "run": run_id,
                "tasks": tasks,
                "corpus": corpus,
                "max_length": s4["seq_len"],
            }
            evals.append(run_id)
            variants_info[run_id] = info
    for artifact_id in ("S4.F3", "S4.T1", "S4.T2"):
        params = _s4_target_params(config, s4, artifact_id, variants_info, size_tasks)
        plan.targets[artifact_id] = Target(
            ARTIFACTS[artifact_id], lm_evals=tuple(evals), params=params
        )


def s4_corpus(s4: dict[str, Any], size: str) -> str:
    """The dataset a size pre-trains on: its own `corpus`, else studies.s4.corpus."""
    return s4["sizes"][size].get("corpus") or s4["corpus"]


def s4_tokens_key(s4: dict[str, Any], size: str) -> str:
    """The token files a size reads: results/tokens/s4/ for studies.s4.corpus (shared by every
    size on it), results/tokens/s4-<corpus>/ for a size with a corpus of its own."""
    corpus = s4_corpus(s4, size)
    return S4_TOKENS if corpus == s4["corpus"] else f"{S4_TOKENS}-{corpus}"


def _has_facts(config: dict[str, Any], corpus: str) -> bool:
    """Whether the zsRE probe runs: the corpus has a facts file (a synthetic corpus has its own)."""
    spec = config["datasets"][corpus]
    return bool(spec.get("facts")) or spec.get("source") == "synthetic"


def _s4_target_params(
    config: dict[str, Any],
    s4: dict[str, Any],
    artifact_id: str,
    runs: dict[str, dict[str, Any]],
    size_tasks: dict[str, list[str]],
) -> dict[str, Any]:
    """What one S4 artifact reads: its sizes' runs, per size the tasks it shows (the artifact's
    `tasks` among those the size was evaluated on), the metric of each task, the below-chance
    rule and, for sizes whose budget repeats their corpus, the number of passes."""
    chosen = s4["artifacts"].get(artifact_id, {})
    sizes = chosen.get("sizes") or list(size_tasks)
    unknown = sorted(set(sizes) - set(size_tasks))
    if unknown:
        raise ConfigError(
            f"config key 'studies.s4.artifacts.{artifact_id}.sizes': {unknown} are not sizes;"
            f" use names of {list(size_tasks)}"
        )
    wanted = chosen.get("tasks")
    tasks = {s: [t for t in size_tasks[s] if wanted is None or t in wanted] for s in sizes}
    empty = [s for s, t in tasks.items() if not t]
    if empty:
        raise ConfigError(
            f"config key 'studies.s4.artifacts.{artifact_id}.tasks': sizes {empty} were evaluated"
            f" on none of {wanted} (their tasks: {[size_tasks[s] for s in empty]}); name tasks"
            " of studies.s4.eval_tasks / sizes.<size>.eval_tasks (zsre needs a facts file)"
        )
    return {
        "study": "s4",
        "runs": {r: info for r, info in runs.items() if info["size"] in sizes},
        "tasks": sorted({t for ts in tasks.values() for t in ts}, key=_first_seen(tasks)),
        "size_tasks": tasks,
        "metrics": dict(s4["metrics"]),
        "drop_below_chance": s4["drop_below_chance"],
        "passes": {s: p for s in sizes if (p := s4_passes(config, s4, s)) > 1},
    }


def _first_seen(tasks: dict[str, list[str]]) -> Callable[[str], int]:
    order = list(dict.fromkeys(t for ts in tasks.values() for t in ts))
    return order.index


def _check_s4_budget(config: dict[str, Any], s4: dict[str, Any], size: str) -> None:
    """Refuse a size whose token budget exceeds its corpus's declared train_tokens: the paper
    trains every size on fresh tokens (5.7B / 11.4B / 40B), and a repeated corpus changes the
    comparison; `repeat_ok: true` accepts it (the tables then record the passes)."""
    passes = s4_passes(config, s4, size)
    if passes <= 1 or s4["sizes"][size]["repeat_ok"]:
        return
    corpus = s4_corpus(s4, size)
    raise ConfigError(
        f"config key 'studies.s4.sizes.{size}.tokens': size {size} needs"
        f" {s4['sizes'][size]['tokens']:.4g} training tokens but its corpus {corpus!r} holds"
        f" {config['datasets'][corpus]['train_tokens']:.4g} (datasets.{corpus}.train_tokens):"
        f" it would read the corpus {passes:.2f} times. Give the size a larger corpus"
        f" (studies.s4.sizes.{size}.corpus, or a larger max_rows), or set"
        f" studies.s4.sizes.{size}.repeat_ok: true"
    )


def s4_passes(config: dict[str, Any], s4: dict[str, Any], size: str) -> float:
    """How many times a size's budget reads its corpus: tokens / the corpus's declared
    train_tokens (1.0 when either is unknown)."""
    budget = s4["sizes"][size].get("tokens")
    available = config["datasets"][s4_corpus(s4, size)].get("train_tokens")
    return budget / available if budget and available else 1.0


def _s4_batch_size(s4: dict[str, Any], size: str, arch: dict[str, Any]) -> int:
    """Sequences per optimiser step: `batch_size`, else the size's token budget spread over
    the steps (tokens / (steps x seq_len))."""
    if s4["batch_size"] is not None:
        return s4["batch_size"]
    if "tokens" not in arch:
        raise ConfigError(
            f"config key 'studies.s4.sizes.{size}.tokens': the token budget sets the"
            " batch (tokens / (steps x seq_len)); set it, or studies.s4.batch_size"
        )
    return max(1, round(arch["tokens"] / (s4["steps"] * s4["seq_len"])))


def _s4_pretrain_spec(
    run_id: str,
    config: dict[str, Any],
    s4: dict[str, Any],
    arch: dict[str, Any],
    batch: int,
    ffn_widths: list[int],
) -> PretrainSpec:
    """One variant's pre-training: the size's architecture with the layout's FFN widths."""
    return PretrainSpec(
        run=run_id,
        task="pretrain",
        dataset=s4["corpus"],
        tokens=S4_TOKENS,
        seed=config["seed"],
        epochs=1e9,  # the step budget decides; the corpus repeats when it is smaller
        max_steps=s4["steps"],
        batch_size=batch,
        micro_batch_size=arch.get("micro_batch_size") or s4["micro_batch_size"],
        eval_batch_size=s4["eval_batch_size"],
        seq_len=s4["seq_len"],
        hidden_size=arch["hidden_size"],
        num_layers=arch["num_layers"],
        num_heads=arch["num_heads"],
        ffn_widths=ffn_widths,
        grad_clip=1.0,
        precision=s4["precision"],
        compile=s4["compile"],
        checkpoint_every=s4["checkpoint_every"],
        optim=OptimSpec(lr=s4["lr"], betas=tuple(s4["betas"]), weight_decay=s4["weight_decay"]),
        schedule=ScheduleSpec(name="cosine", warmup_steps=s4["warmup_steps"]),
    )


# --- S5 -------------------------------------------------------------------------------------
S5_CLUSTERING = "s5"  # results/clusters/s5/: the study's one clustering


def _plan_s5(plan: Plan, config: dict[str, Any], s5: dict[str, Any]) -> None:
    layers = [config.get("train", {}), s5.get("train", {})]
    dataset = s5["dataset"]
    task = task_of(config, dataset)
    merged_train = {**config.get("train", {}), **s5.get("train", {})}
    plan.clusterings[S5_CLUSTERING] = _s5_clustering(plan, config, s5, merged_train)
    # a cluster member trains for as many optimiser steps as a seed model (`member_steps: seed`:
    # the step count of the full training split) or for the same epochs over its own rows
    budget = {"steps_from": "source"} if s5["member_steps"] == "seed" else {}
    member_list = []
    for seed in s5["seeds"]:
        run_id = f"s5-all-s{seed}"
        spec = train_spec(run_id, task, dataset, s5["model"], layers, seed=seed)
        plan.add(Run(run_id, "s5", "finetune", spec.to_dict(), {"member": "seed"}))
        member_list.append({"run": run_id, "kind": "seed"})
    for member in members(s5["k"]):
        # a derived dataset (results/data/<task>-<member>/, rule cluster_data): the training
        # rows of the member's clusters, the other splits as they are
        derived = f"{dataset}-{member['name']}"
        if derived in config["datasets"]:
            raise ConfigError(
                f"config key 'datasets.{derived}': the name is taken by S5's member dataset of"
                f" clusters {member['clusters']}; rename the dataset"
            )
        plan.datasets[derived] = {
            "source": "clusters",
            "task": task,
            "base": dataset,
            "clustering": S5_CLUSTERING,
            "clusters": member["clusters"],
        }
        run_id = f"s5-{member['name']}"
        spec = train_spec(run_id, task, derived, s5["model"], layers, seed=s5["seeds"][0], **budget)
        plan.add(Run(run_id, "s5", "finetune", spec.to_dict(), {"member": "cluster"}))
        member_list.append({"run": run_id, "kind": "cluster", **member})
    runs = tuple(m["run"] for m in member_list)
    params = {k: s5[k] for k in ("combine", "temperature", "bootstrap", "bootstrap_seed")}
    plan.targets["S5.T1"] = Target(
        ARTIFACTS["S5.T1"],
        runs,
        params={
            "study": "s5",
            "members": member_list,
            "clustering": S5_CLUSTERING,
            "eval_split": s5["eval_split"],
            **params,
        },
        predictions=runs,
        clusterings=(S5_CLUSTERING,),
    )


def _s5_clustering(
    plan: Plan, config: dict[str, Any], s5: dict[str, Any], merged_train: dict[str, Any]
) -> dict[str, Any]:
    """The clustering spec (tuneatlas.analysis.clusters.cluster_dataset) of S5's embedder."""
    emb, dataset = s5["embedder"], s5["dataset"]
    common = {
        "k": s5["k"],
        "method": s5["clustering"]["method"],
        "seed": s5["clustering"]["seed"],
    }
    if emb["kind"] == "tfidf":
        return {
            "dataset": dataset,
            "embedder": None,
            "kind": "tfidf",
            "svd_dims": emb["svd_dims"],
        } | common
    embedder = emb.get("model") or s5["model"]
    _check_s5_embedder(config, embedder)
    return {
        "dataset": dataset,
        "embedder": embedder,
        "embedder_spec": plan.models[embedder],
        "pooling": emb["pooling"],
        "max_length": emb.get("max_length") or merged_train.get("max_length", 128),
        "batch_size": merged_train.get("eval_batch_size", 128),
        "trust_remote_code": bool(plan.models[embedder].get("trust_remote_code", False)),
    } | common


def _check_s5_embedder(config: dict[str, Any], embedder: str) -> None:
    """What S5 needs of the models: a defined embedder. (A classification dataset with at
    least k training rows is `tuneatlas.preflight`'s to check: it reads the task registry and
    the files.)"""
    if embedder not in config["models"]:
        raise ConfigError(
            f"config key 'studies.s5.embedder.model': unknown model {embedder!r}; defined: "
            + ", ".join(sorted(config["models"]))
        )
