"""``mldcn scale``: the paper's experiment — families × FLOPs budgets × seeds.

For every family and budget the family's width is solved to the budget
(``match_budget``, ±3%), all families share one head and one training recipe,
and every family gets the same tuning: a small grid over the learning rate and
the embedding regulariser, run on the first seed and chosen on validation AUC
(never on test); the other seeds then train the chosen setting. The outputs:

    results.jsonl / results.csv    every run (resumable: finished runs are skipped)
    summary.md / summary.json      mean ± std test AUC and logloss per family and budget,
                                   paired t-tests over seeds and DeLong tests (first seed)
                                   of the reference family against each rival, latency
    auc_vs_flops.png               test AUC against interaction FLOPs, one line per family
    loss_vs_flops.png              (3 budgets or more) the scaling law per family, fitted
    loss_vs_examples.png           (one pass) held-out logloss against examples seen, fitted
    learning_curves.png            (one pass) the learning curves, a panel per budget
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mldcn.config import Config, ConfigError, from_dict, save_yaml, to_dict
from mldcn.extras import available, require
from mldcn.files import atomic_path, write_text_atomic
from mldcn.data.dataset import Dataset
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig, ModelConfig, model_config_from_dict
from mldcn.models.multitask import multitask_from_dict
from mldcn.models.registry import create_model, get_family, get_preset, list_models
from mldcn.studies.plots import plot_auc_vs_flops, plot_learning_curves, plot_scaling
from mldcn.studies.runner import RunSpec, forward_latency_us, run_study
from mldcn.studies.scaling import FORMS, compare_exponents, fit_scaling
from mldcn.studies.stats import delong, paired_t
from mldcn.studies.table import format_table, mean_sd
from mldcn.train.loop import TrainConfig
from mldcn.data.source import DataConfig, load_data

FAMILIES = ("mldcn", "dcnv2_lowrank", "masknet_parallel", "wukong", "rankmixer")


@dataclass(frozen=True)
class TuningGrid(Config):
    """The hyper-parameters every family is tuned over (same grid for all)."""

    lr: tuple[float, ...] = (1e-3, 3e-3)
    embedding_l2: tuple[float, ...] = (0.0,)

    _positive = ("lr",)


@dataclass(frozen=True)
class ScaleConfig(Config):
    """A matched-FLOPs sweep.

    Attributes:
        budgets: interaction FLOPs per example to match (±3%).
        families: model presets, one per family, or names of ``variants``; each is
            resized to each budget.
        variants: named model configs beside the presets, e.g. ``{mldcn_no_ln:
            {preset: mldcn, interaction: {layer_norm: none}}}`` (any mapping a run
            config's ``model:`` takes): a family with non-default options, without a
            preset. The sweep's shared ``embedding_dim`` and ``head`` replace theirs.
        seeds: training seeds (the first one also runs the tuning grid).
        reference: the preset compared against every other (significance tests).
        embedding_dim, head: shared by all families.
        multitask: the multi-task structure every family is arranged in, e.g.
            ``{kind: mmoe, num_experts: 4}`` to compare the families as MMoE
            experts (the budget is then on all experts and gates); None: each
            preset's own (single task for the main families).
        train: the shared training recipe (``lr``/``embedding_l2`` come from ``grid``).
        grid: the tuning grid.
        latency_batches: batch sizes of the forward-latency measurement.
        data: the data set; default: the industrial-shape log with its neutral
            teacher (:mod:`mldcn.data.industrial`), not the embedded synthetic log,
            whose planted instance-gated interactions favour ML-DCN and MaskNet.
    """

    budgets: tuple[float, ...] = (50_000, 150_000, 500_000, 1_500_000)
    families: tuple[str, ...] = FAMILIES
    variants: dict[str, dict] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    reference: str = "mldcn"
    embedding_dim: int = 16
    head: HeadConfig = field(default_factory=lambda: HeadConfig(structure="parallel", hidden=(256, 128)))
    multitask: dict | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=2048, patience=1, progress=False))
    grid: TuningGrid = field(default_factory=TuningGrid)
    latency_batches: tuple[int, ...] = (1, 512)
    data: DataConfig = field(default_factory=lambda: DataConfig(source="industrial"))

    _positive = ("budgets", "embedding_dim", "latency_batches")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.seeds or not self.families or not self.budgets:
            raise ConfigError("ScaleConfig needs budgets, families and seeds")
        if self.reference not in self.families:
            raise ConfigError(f"reference {self.reference!r} is not among the families {list(self.families)}")
        for name in self.variants:
            if name in list_models():
                raise ConfigError(f"scale.variants: {name!r} is a preset's name; give the variant another")
        for name in self.families:
            self.model(name)
        if self.multitask is not None:
            multitask_from_dict(self.multitask, "scale.multitask")

    def model(self, name: str) -> ModelConfig:
        """The model config of a family of the sweep: a variant's, or a preset's."""
        if name in self.variants:
            return model_config_from_dict(self.variants[name], f"scale.variants.{name}")
        return get_preset(name)


def scale_config_from_dict(data: dict) -> ScaleConfig:
    return from_dict(ScaleConfig, data, "scale")


def _key(family: str, budget: float, seed: int, lr: float, l2: float) -> str:
    return f"{family}|{budget:g}|seed={seed}|lr={lr:g}|l2={l2:g}"


def _seed_runs(config, chosen, results, family: str, budget: float) -> list[dict]:
    """A family's records at one budget with its chosen setting, one per seed (in config order)."""
    return [results[_key(family, budget, s, *chosen[family, budget])] for s in config.seeds]


def sized_models(config: ScaleConfig, dataset: Dataset) -> dict[tuple[str, float], ModelConfig]:
    """Each family's config at each budget, with the shared head and embedding size."""
    models = {}
    for family in config.families:
        base = config.model(family).replace(embedding_dim=config.embedding_dim, head=config.head)
        if config.multitask is not None:
            base = base.replace(multitask=multitask_from_dict(config.multitask, "scale.multitask"))
        for budget in config.budgets:
            models[family, budget] = match_budget(base, dataset.features, budget)
    return models


def run_scale(config: ScaleConfig, out_dir: str | Path, echo: Callable[[str], None] = print) -> dict:
    require("scipy.stats", "the significance tests of mldcn scale")  # before hours of training, not after
    if not available("matplotlib"):
        echo("matplotlib is not installed: the AUC-vs-FLOPs plot will be skipped (pip install 'mldcn[plot]')")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(to_dict(config), out_dir / "scale.yaml")
    dataset = load_data(config.data)
    models = sized_models(config, dataset)
    for (family, budget), model in models.items():
        width = get_family(model.family).width
        echo(f"{family} @ {budget:,.0f}: {width}={getattr(model.interaction, width)}")
    grid = list(itertools.product(config.grid.lr, config.grid.embedding_l2))

    def spec(family: str, budget: float, seed: int, lr: float, l2: float) -> RunSpec:
        train = _with(config.train, seed=seed, lr=lr, embedding_l2=l2)
        labels = {"family": family, "budget": budget, "seed": seed, "lr": lr, "embedding_l2": l2}
        return RunSpec(_key(family, budget, seed, lr, l2), models[family, budget], train, labels)

    first = config.seeds[0]
    tuning = [spec(f, b, first, lr, l2) for (f, b) in models for lr, l2 in grid]
    echo(f"tuning: {len(tuning)} runs (grid of {len(grid)} on seed {first})")
    results = run_study(tuning, dataset, config.data, out_dir, echo)
    chosen = {}
    for f, b in models:
        best = max(grid, key=lambda g: results[_key(f, b, first, *g)]["valid_auc"])
        chosen[f, b] = best
    rest = [spec(f, b, s, *chosen[f, b]) for (f, b) in models for s in config.seeds[1:]]
    echo(f"seeds: {len(rest)} runs")
    results = run_study(rest, dataset, config.data, out_dir, echo)

    latency = {}
    for (f, b), model_config in models.items():
        torch.manual_seed(0)
        model = create_model(model_config, dataset.features)
        latency[f, b] = {n: forward_latency_us(model, dataset, n) for n in config.latency_batches}
    summary = summarize(config, models, chosen, results, latency, out_dir, dataset.name, dataset.features.task_names)
    _write_csv(results, out_dir / "results.csv")
    return summary


def _with(train: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(train, **changes)


def task_auc(record: dict, task: str) -> float:
    """A run's test AUC of one task (records of sweeps made before tasks existed hold one, flat)."""
    return record["test"][task]["auc"] if "test" in record else record["test_auc"]


def _by_task(array: np.ndarray) -> np.ndarray:
    return array.reshape(len(array), -1)  # [N] (before tasks existed) or [N, T]


def summarize(config, models, chosen, results, latency, out_dir: Path, name: str | None = None, tasks=("click",)) -> dict:
    """Mean ± std per family and budget (means over the tasks, and each task's when there are
    several), and the reference family against each rival per budget and task."""
    rows, significance = [], []
    several = len(tasks) > 1
    for (family, budget), model_config in models.items():
        runs = _seed_runs(config, chosen, results, family, budget)
        aucs = [r["test_auc"] for r in runs]
        losses = [r["test_logloss"] for r in runs]
        row = {
            "family": family,
            "budget": budget,
            "interaction_flops": runs[0]["interaction_flops"],
            "total_flops": runs[0]["total_flops"],
            "dense_params": runs[0]["dense_params"],
            "lr": chosen[family, budget][0],
            "embedding_l2": chosen[family, budget][1],
            "seeds": len(runs),
            "auc_mean": statistics.fmean(aucs),
            "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "logloss_mean": statistics.fmean(losses),
            "logloss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "auc": mean_sd(aucs),
            "logloss": mean_sd(losses),
            **{f"latency_{n}": latency[family, budget][n] for n in config.latency_batches},
        }
        if several:
            for task in tasks:
                values = [task_auc(r, task) for r in runs]
                row[f"auc_{task}"] = mean_sd(values)
                row[f"auc_mean_{task}"] = statistics.fmean(values)
                row[f"auc_std_{task}"] = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"logloss_{task}"] = mean_sd([r["test"][task]["logloss"] for r in runs])
        rows.append(row)
    labels_file = out_dir / "predictions" / "labels.npy"
    labels = _by_task(np.load(labels_file)) if labels_file.exists() else None
    for budget in config.budgets:
        ref_runs = _seed_runs(config, chosen, results, config.reference, budget)
        for rival in config.families:
            if rival == config.reference:
                continue
            rival_runs = _seed_runs(config, chosen, results, rival, budget)
            for t, task in enumerate(tasks):
                paired = paired_t([task_auc(r, task) for r in ref_runs], [task_auc(r, task) for r in rival_runs])
                entry = {
                    "budget": budget,
                    "rival": rival,
                    "task": task,
                    "auc_difference": paired.mean_difference,
                    "ci": f"[{paired.ci_low:+.4f}, {paired.ci_high:+.4f}]",
                    "paired_p": paired.p_value,
                }
                # a run recorded without its predictions (a sweep resumed elsewhere): the paired t-test only
                files = [out_dir / ref_runs[0]["predictions"], out_dir / rival_runs[0]["predictions"]]
                if labels is not None and all(f.exists() for f in files):
                    test = delong(labels[:, t], *(_by_task(np.load(f))[:, t] for f in files))
                    entry.update(delong_difference=test.difference, delong_z=test.z, delong_p=test.p_value)
                entry["verdict"] = _verdict(config.reference, rival, entry)
                significance.append(entry)
    name = name or config.data.source
    laws = scaling_laws(config, models, chosen, results, out_dir, name)
    curves = learning_curves(config, chosen, results, out_dir, name)
    summary = {"rows": rows, "significance": significance, "reference": config.reference, "tasks": list(tasks), "scaling": laws, "curves": curves}
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    if several:
        plots = [
            plot_auc_vs_flops(
                [{**r, "auc_mean": r[f"auc_mean_{task}"], "auc_std": r[f"auc_std_{task}"]} for r in rows],
                out_dir / f"auc_vs_flops_{task}.png",
                title=f"{name}, task {task} — matched interaction FLOPs",
            )
            for task in tasks
        ]
    else:
        plots = [plot_auc_vs_flops(rows, out_dir / "auc_vs_flops.png", title=f"{name} — matched interaction FLOPs")]
    write_text_atomic(out_dir / "summary.md", render_summary(config, rows, significance, plots, name, tasks) + render_scaling(laws) + render_curves(curves))
    return summary


def scaling_laws(config, models, chosen, results, out_dir: Path, name: str) -> dict:
    """Each family's test logloss against interaction FLOPs, fitted as a scaling law (:mod:`mldcn.studies.scaling`).

    All families are fitted with one form — the one with the lower AIC summed over the
    families — so their rates compare; each family's rate is tested against the
    reference's. With one-pass runs (``train.examples``), each family's held-out
    logloss is also fitted against the examples seen, at the largest budget (is the
    family compute- or data-limited?). Needs 3 budgets (the power law's 3 parameters).
    """
    if len(config.budgets) < 3:
        return {}
    points = {}
    for family in config.families:
        runs = [(b, s, results[_key(family, b, s, *chosen[family, b])]) for b in config.budgets for s in config.seeds]
        points[family] = (
            np.array([r["interaction_flops"] for _, _, r in runs], dtype=float),
            np.array([r["test_logloss"] for _, _, r in runs]),
            np.array([s for _, s, _ in runs]),
        )
    laws = {"compute": _fit_families(points, config.reference)}
    plot = plot_scaling({f: p[:2] for f, p in points.items()}, laws["compute"]["fits"], out_dir / "loss_vs_flops.png",
                        title=f"{name} — test logloss against interaction FLOPs")  # fmt: skip
    laws["compute"]["plot"] = None if plot is None else plot.name
    curves = {}
    top = max(config.budgets)
    for family in config.families:
        runs = _seed_runs(config, chosen, results, family, top)
        if all("curve" in r for r in runs):
            x = [p["examples"] for r in runs for p in r["curve"]]
            y = [p["valid_logloss"] for r in runs for p in r["curve"]]
            seeds = [s for s, r in zip(config.seeds, runs) for _ in r["curve"]]
            curves[family] = (np.array(x, dtype=float), np.array(y), np.array(seeds))
    if curves:
        laws["examples"] = _fit_families(curves, config.reference)
        laws["examples"]["budget"] = top
        plot = plot_scaling({f: p[:2] for f, p in curves.items()}, laws["examples"]["fits"], out_dir / "loss_vs_examples.png",
                            title=f"{name} — held-out logloss against examples seen, at {top:,.0f} FLOPs", xlabel="examples seen")  # fmt: skip
        laws["examples"]["plot"] = None if plot is None else plot.name
    for law in laws.values():
        law["fits"] = {family: fit.to_dict() for family, fit in law["fits"].items()}
    return laws


def learning_curves(config, chosen, results, out_dir: Path, name: str) -> dict:
    """One-pass runs: is the held-out logloss still falling when the pass ends? Per family and
    budget, the logloss at the first and last points of the curve and its fall over the second
    half and the last tenth of the pass (mean ± std over seeds), and a plot of the curves
    (mean over seeds). Empty when the runs have no curves (epoch training)."""
    rows, plotted = [], {}
    for budget in config.budgets:
        for family in config.families:
            runs = _seed_runs(config, chosen, results, family, budget)
            if not all(r.get("curve") for r in runs):
                return {}
            losses = np.array([[p["valid_logloss"] for p in r["curve"]] for r in runs])  # seeds × points
            examples = np.array([p["examples"] for p in runs[0]["curve"]], dtype=float)
            half = int(np.searchsorted(examples, examples[-1] / 2))  # the first point at half the pass or later
            rows.append({"family": family, "budget": budget, "examples": int(examples[-1]),
                         "first": mean_sd(losses[:, 0]), "last": mean_sd(losses[:, -1]),
                         "fall_second_half": mean_sd(losses[:, half] - losses[:, -1], 5),
                         "fall_last_tenth": mean_sd(losses[:, -2] - losses[:, -1], 5)})  # fmt: skip
            plotted.setdefault(budget, {})[family] = (examples, losses.mean(axis=0))
    plot = plot_learning_curves(plotted, out_dir / "learning_curves.png", title=f"{name} — one pass: held-out logloss against examples seen")
    return {"rows": rows, "plot": None if plot is None else plot.name}


def render_curves(curves: dict) -> str:
    if not curves:
        return ""
    columns = [("family", "family"), ("budget", "budget"), ("examples", "examples"), ("first", "held-out logloss, first point"),
               ("last", "at the end"), ("fall_second_half", "fall over the second half"), ("fall_last_tenth", "fall over the last tenth")]  # fmt: skip
    lines = ["## Learning curves", "", "Held-out (validation) logloss along the one pass, mean ± std over seeds; a positive fall is a loss still falling.", "",
             format_table(curves["rows"], columns, markdown=True), ""]  # fmt: skip
    if curves.get("plot"):
        lines += [f"![learning curves]({curves['plot']})", ""]
    return "\n".join(lines)


def _fit_families(points: dict, reference: str) -> dict:
    """One common form for every family (lowest summed AIC among the forms proper for every
    family: a power law only where each family's loss falls to a floor), each family's fit
    and its rate against the reference's."""
    auto = {f: fit_scaling(x, y, s, resamples=0) for f, (x, y, s) in points.items()}
    # a power law needs 3 distinct x, and each family's to be proper
    possible = [f for f in FORMS if all(f in fit.fits and fit.fits[f].proper for fit in auto.values())]
    form = min(possible, key=lambda candidate: sum(fit.fits[candidate].aic for fit in auto.values()))
    fits = {f: fit_scaling(x, y, s, form=form, resamples=1000) for f, (x, y, s) in points.items()}
    rows = []
    for family, fit in fits.items():
        low, high = fit.rate_interval
        row = {"family": family, "form": form, "rate": fit.rate, "interval": f"[{low:.4g}, {high:.4g}]",
               "aic_power": fit.fits["power"].aic if "power" in fit.fits else float("nan"),
               "aic_loglinear": fit.fits["loglinear"].aic,
               "power_proper": "yes" if "power" in fit.fits and fit.fits["power"].proper else "no"}  # fmt: skip
        if form == "power":
            row["irreducible"] = fit.params["c"]
        if family != reference and reference in fits:
            comparison = compare_exponents(fits[reference], fit)
            row.update(vs_reference=comparison.difference, vs_reference_p=comparison.p_value)
        rows.append(row)
    return {"form": form, "rows": rows, "fits": fits}


def render_scaling(laws: dict) -> str:
    if not laws:
        return ""
    lines = []
    titles = {"compute": "test logloss against interaction FLOPs", "examples": "held-out logloss against examples seen"}
    for kind, law in laws.items():
        rate = "exponent b of c + a·x^-b" if law["form"] == "power" else "fall of the loss per decade of x (−q)"
        columns = [("family", "family"), ("rate", rate), ("interval", "95% interval (bootstrap over seeds)")]
        if law["form"] == "power":
            columns.append(("irreducible", "irreducible loss c"))
        columns += [("aic_power", "AIC power"), ("power_proper", "power law proper"), ("aic_loglinear", "AIC log-linear"),
                    ("vs_reference", "reference's rate − this"), ("vs_reference_p", "p")]  # fmt: skip
        where = f" at {law['budget']:,.0f} FLOPs" if "budget" in law else ""
        chosen = (f"One form for all families: {law['form']} (lower AIC summed over the families, among the forms that are "
                  "a law for every family: a power law only where each family's loss falls to a floor, a > 0 and c ≥ 0).")  # fmt: skip
        lines += [f"## Scaling law: {titles[kind]}{where}", "", chosen, "", format_table(law["rows"], columns, markdown=True), ""]
        if law.get("plot"):
            lines += [f"![{titles[kind]}]({law['plot']})", ""]
    return "\n".join(lines)


def _verdict(reference: str, rival: str, entry: dict) -> str:
    """Who has the higher mean AUC, and which test at 5% (agreeing in sign) says it is more than noise."""
    difference = entry["auc_difference"]
    if difference == 0:
        return "tie"
    winner = reference if difference > 0 else rival
    tests = []
    if entry["paired_p"] < 0.05:
        tests.append("paired t")
    if "delong_p" in entry and entry["delong_p"] < 0.05 and entry["delong_difference"] * difference > 0:
        tests.append("DeLong")
    return f"{winner} higher" + (f", significant ({' and '.join(tests)})" if tests else ", not significant")


def render_summary(config: ScaleConfig, rows, significance, plots, name: str | None = None, tasks=("click",)) -> str:
    columns = [
        ("family", "family"),
        ("budget", "budget"),
        ("interaction_flops", "interaction FLOPs"),
        ("total_flops", "total FLOPs"),
        ("dense_params", "dense params"),
        ("lr", "lr"),
        ("embedding_l2", "emb. L2"),
        ("auc", "test AUC (mean ± std)" + (" over tasks" if len(tasks) > 1 else "")),
        ("logloss", "test logloss (mean ± std)" + (" over tasks" if len(tasks) > 1 else "")),
    ]
    if len(tasks) > 1:
        columns += [column for task in tasks for column in ((f"auc_{task}", f"{task} AUC"), (f"logloss_{task}", f"{task} logloss"))]
    columns += [(f"latency_{n}", f"µs/ex @ batch {n}") for n in config.latency_batches]
    sig_columns = [
        ("budget", "budget"),
        ("rival", f"{config.reference} vs"),
        *([("task", "task")] if len(tasks) > 1 else []),
        ("auc_difference", "mean AUC diff (seeds)"),
        ("ci", "95% CI"),
        ("paired_p", "paired t p"),
    ]
    if any("delong_p" in entry for entry in significance):  # blank where a run's predictions are missing
        sig_columns += [("delong_difference", "AUC diff (first seed)"), ("delong_z", "DeLong z"), ("delong_p", "DeLong p")]
    sig_columns.append(("verdict", "verdict"))
    lines = [
        f"# matched-FLOPs sweep: {name or config.data.source}",
        "",
        f"Families {list(config.families)}, budgets {list(config.budgets)}, seeds {list(config.seeds)}; "
        f"tuning grid lr {list(config.grid.lr)} × embedding L2 {list(config.grid.embedding_l2)} on seed "
        f"{config.seeds[0]}, chosen on validation AUC" + (" (the mean over the tasks)." if len(tasks) > 1 else "."),
        "",
        format_table(rows, columns, markdown=True),
        "",
    ]
    if significance:
        lines += [f"## {config.reference} against each rival", "", format_table(significance, sig_columns, markdown=True), ""]
    if all(plot is not None for plot in plots):
        lines += [f"![test AUC vs interaction FLOPs]({Path(plot).name})" for plot in plots] + [""]
    else:
        lines += ["No plot: matplotlib is not installed (`pip install 'mldcn[plot]'`).", ""]
    return "\n".join(lines)


def _flat(record: dict) -> dict:
    """A record with its per-task ``test`` / ``valid`` metrics as ``test_<task>_<metric>`` columns."""
    flat = {k: v for k, v in record.items() if k not in ("test", "valid")}
    for split in ("test", "valid"):
        for task, metrics in record.get(split, {}).items():
            flat.update({f"{split}_{task}_{name}": value for name, value in metrics.items()})
    return flat


def _write_csv(results: dict, path: Path) -> None:
    records = [_flat(r) for r in results.values()]
    if not records:
        return
    keys = list(dict.fromkeys(k for r in records for k in r))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
