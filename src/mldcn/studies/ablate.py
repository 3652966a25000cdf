"""``mldcn ablate``: ML-DCN's open choices at one FLOPs budget, under the same seeds.

Every variant changes options of the ML-DCN preset (DESIGN.md's list: no mask,
static mask, mask source, mask site, mask activation, shared mask, LayerNorm,
mask width), is resized to the same interaction budget, and trains with the
same recipe and seeds. Each variant is compared with the ``baseline`` variant
by a paired t-test over seeds. Outputs ``results.jsonl``, ``ablation.md`` and
``ablation.json`` in the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mldcn.config import Config, ConfigError, from_dict, save_yaml, to_dict
from mldcn.extras import require
from mldcn.files import write_text_atomic
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig
from mldcn.models.registry import get_preset
from mldcn.studies.runner import RunSpec, run_study
from mldcn.studies.stats import paired_t
from mldcn.studies.table import format_table, mean_sd
from mldcn.train.loop import TrainConfig
from mldcn.data.source import DataConfig, load_data

#: DESIGN.md's options, each as a change to the ML-DCN preset.
VARIANTS: dict[str, dict] = {
    "default": {},
    "no_mask": {"mask_kind": "none"},
    "static_mask": {"mask_kind": "static"},
    "source_x0": {"mask_source": "x0"},
    "site_input": {"mask_site": "input"},
    "site_output": {"mask_site": "output"},
    "g_sigmoid": {"mask_activation": "sigmoid"},
    "g_2sigmoid": {"mask_activation": "2sigmoid"},
    "g_softplus": {"mask_activation": "softplus"},
    "shared_mask": {"share_mask": True},
    "hidden_ratio_0.5": {"hidden_ratio": 0.5},
    "hidden_ratio_2": {"hidden_ratio": 2.0},
    "layer_norm_none": {"layer_norm": "none"},
    "no_mask_layer_norm_none": {"mask_kind": "none", "layer_norm": "none"},
}


@dataclass(frozen=True)
class AblateConfig(Config):
    """An ablation of ML-DCN's options.

    Attributes:
        budget: interaction FLOPs per example every variant is resized to.
        variants: names from :data:`VARIANTS` (or keys of ``custom``).
        custom: extra variants, name → ML-DCN options to change.
        baseline: the variant every other is compared with.
        preset: the ML-DCN preset the variants start from.
    """

    budget: float = 150_000
    variants: tuple[str, ...] = tuple(VARIANTS)
    custom: dict = field(default_factory=dict)
    baseline: str = "default"
    preset: str = "mldcn"
    seeds: tuple[int, ...] = (0, 1, 2)
    embedding_dim: int = 16
    head: HeadConfig = field(default_factory=lambda: HeadConfig(structure="parallel", hidden=(256, 128)))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=2048, patience=1, progress=False))
    data: DataConfig = field(default_factory=DataConfig)

    _positive = ("budget", "embedding_dim")

    def __post_init__(self) -> None:
        super().__post_init__()
        known = {**VARIANTS, **self.custom}
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise ConfigError(f"unknown variant(s) {unknown}; known: {sorted(known)}")
        if self.baseline not in self.variants:
            raise ConfigError(f"baseline {self.baseline!r} is not among the variants")
        if get_preset(self.preset).family != "mldcn":
            raise ConfigError(f"preset {self.preset!r} is not an ML-DCN preset")


def ablate_config_from_dict(data: dict) -> AblateConfig:
    return from_dict(AblateConfig, data, "ablate")


def run_ablation(config: AblateConfig, out_dir: str | Path, echo: Callable[[str], None] = print) -> dict:
    require("scipy.stats", "the significance tests of mldcn ablate")  # before the runs, not after
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(to_dict(config), out_dir / "ablate.yaml")
    dataset = load_data(config.data)
    options = {**VARIANTS, **config.custom}
    base = get_preset(config.preset).replace(embedding_dim=config.embedding_dim, head=config.head)
    specs, models = [], {}
    for name in config.variants:
        try:
            model = match_budget(base.with_interaction(**options[name]), dataset.features, config.budget)
        except TypeError as error:
            raise ConfigError(f"variant {name!r}: {error}") from None
        models[name] = model
        for seed in config.seeds:
            train = dataclasses.replace(config.train, seed=seed)
            labels = {"variant": name, "seed": seed, "rank": model.interaction.rank}
            specs.append(RunSpec(f"{name}|seed={seed}", model, train, labels))
    results = run_study(specs, dataset, config.data, out_dir, echo)

    def aucs(name: str) -> list[float]:  # means over the tasks (one task: its AUC)
        return [results[f"{name}|seed={s}"]["test_auc"] for s in config.seeds]

    tasks = dataset.features.task_names

    rows = []
    for name in config.variants:
        values = aucs(name)
        losses = [results[f"{name}|seed={s}"]["test_logloss"] for s in config.seeds]
        paired = paired_t(values, aucs(config.baseline))
        rows.append(
            {
                "variant": name,
                "options": ", ".join(f"{k}={v}" for k, v in options[name].items()) or "(preset)",
                "rank": models[name].interaction.rank,
                "interaction_flops": results[f"{name}|seed={config.seeds[0]}"]["interaction_flops"],
                "auc_mean": statistics.fmean(values),
                "auc": mean_sd(values),
                "logloss": mean_sd(losses),
                "difference": paired.mean_difference,
                "p_value": paired.p_value,
                **(
                    {f"auc_{task}": mean_sd([results[f"{name}|seed={s}"]["test"][task]["auc"] for s in config.seeds]) for task in tasks}
                    if len(tasks) > 1
                    else {}
                ),
            }
        )
    columns = [
        ("variant", "variant"),
        ("options", "change"),
        ("rank", "rank"),
        ("interaction_flops", "interaction FLOPs"),
        ("auc", "test AUC (mean ± std)"),
        ("logloss", "test logloss"),
        ("difference", f"AUC − {config.baseline}"),
        ("p_value", "paired t p"),
        *([(f"auc_{task}", f"{task} AUC") for task in tasks] if len(tasks) > 1 else []),
    ]
    table = format_table(rows, columns, markdown=True)
    write_text_atomic(
        out_dir / "ablation.md",
        f"# ML-DCN ablation at {config.budget:,.0f} interaction FLOPs ({dataset.name})\n\n"
        f"Seeds {list(config.seeds)}; every variant resized to the budget.\n\n{table}\n"
    )
    summary = {"rows": rows, "baseline": config.baseline, "budget": config.budget}
    write_text_atomic(out_dir / "ablation.json", json.dumps(summary, indent=2))
    echo(table)
    return summary


# ---------------------------------------------------------------------------- the defaults rule


def cell_ranks(valid_auc: dict[str, list[float]]) -> dict[str, float]:
    """Ranks of the variants in one (data set, budget) cell, 1 = best, as docs/design-decisions.md's rule says.

    ``valid_auc`` maps each variant to its validation AUC per seed, the seeds in
    the same order for every variant (paired). Variants are ordered by mean AUC;
    walking down from the best, a variant joins the current group when its paired
    difference from the group's first member has a mean within one standard error
    (sd / √n) of zero, else it starts a new group. A group shares the mean of its
    positions.
    """
    lengths = {len(v) for v in valid_auc.values()}
    if len(lengths) != 1 or lengths.pop() < 2:
        raise ValueError("every variant needs the same seeds, at least two")
    order = sorted(valid_auc, key=lambda name: statistics.fmean(valid_auc[name]), reverse=True)
    groups: list[list[str]] = []
    for name in order:
        if groups:
            differences = [a - b for a, b in zip(valid_auc[groups[-1][0]], valid_auc[name])]
            error = statistics.stdev(differences) / len(differences) ** 0.5
            if abs(statistics.fmean(differences)) <= error:
                groups[-1].append(name)
                continue
        groups.append([name])
    ranks, position = {}, 1
    for group in groups:
        shared = position + (len(group) - 1) / 2
        ranks.update(dict.fromkeys(group, shared))
        position += len(group)
    return ranks


def rule_scores(votes: dict[str, list[dict[str, list[float]]]]) -> dict[str, dict]:
    """Each variant's score under the rule: the mean over votes of its vote's rank (the mean of the vote's cells).

    ``votes`` maps each vote (data set) to its cells (budgets), each cell as
    :func:`cell_ranks` takes it. Per variant: ``score``, and per vote ``rank`` and
    ``auc`` (the mean over the vote's cells of the mean validation AUC).
    """
    scores: dict[str, dict] = {}
    for vote, cells in votes.items():
        ranked = [cell_ranks(cell) for cell in cells]
        for name in cells[0]:
            entry = scores.setdefault(name, {"votes": {}})
            entry["votes"][vote] = {
                "rank": statistics.fmean(r[name] for r in ranked),
                "auc": statistics.fmean(statistics.fmean(cell[name]) for cell in cells),
            }
    for entry in scores.values():
        entry["score"] = statistics.fmean(v["rank"] for v in entry["votes"].values())
    return scores
