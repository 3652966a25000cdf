"""The main job: ML-DCN vs DCNv2 (low-rank) vs MaskNet at matched FLOPs on the synthetic log.

Each family's interaction module is resized to the same FLOPs budget (±3%), all
share one head and one training recipe, and the table is printed beside the
ceiling: the AUC of the true click probabilities, which no model can beat.
Logistic regression is trained too, as the floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mldcn.config import Config
from mldcn.files import write_text_atomic
from mldcn.data.synthetic import SyntheticConfig, make_synthetic
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import get_preset
from mldcn.studies.table import format_table
from mldcn.train.loop import TrainConfig
from mldcn.data.source import DataConfig
from mldcn.train.run import RunConfig, run

DEMO_FAMILIES = ("mldcn", "dcnv2_lowrank", "masknet_parallel")


@dataclass(frozen=True)
class DemoConfig(Config):
    """What ``mldcn demo`` runs; the defaults finish in about 3 minutes on 2 CPU cores."""

    budget: float = 150_000
    families: tuple[str, ...] = DEMO_FAMILIES
    reference: bool = True
    embedding_dim: int = 16
    head: HeadConfig = field(default_factory=lambda: HeadConfig(structure="parallel", hidden=(256, 128)))
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=6, batch_size=2048, patience=1, seed=0)
    )

    _positive = ("budget", "embedding_dim")


def demo_models(config: DemoConfig, features) -> list[tuple[str, ModelConfig]]:
    """(label, config) of each model: the families at the budget, then LR as reference."""
    models = []
    for preset in config.families:
        base = get_preset(preset).replace(embedding_dim=config.embedding_dim, head=config.head)
        models.append((preset, match_budget(base, features, config.budget)))
    if config.reference:
        models.append(("lr (reference)", get_preset("lr")))
    return models


COLUMNS = [
    ("model", "model"),
    ("width", "width"),
    ("interaction_flops", "FLOPs/ex (interaction)"),
    ("total_flops", "FLOPs/ex (total)"),
    ("params", "dense params"),
]


def columns(tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    """The table's columns: a test AUC and logloss per task (named when there are several)."""
    named = len(tasks) > 1
    per_task = [
        column
        for task in tasks
        for column in (
            (f"auc_{task}", f"{task} test AUC" if named else "test AUC"),
            (f"logloss_{task}", f"{task} test logloss" if named else "test logloss"),
        )
    ]
    return [*COLUMNS, *per_task, ("examples_per_second", "train ex/s")]


def run_demo(config: DemoConfig, out_dir: str | Path | None = None, echo=print) -> list[dict]:
    """Train each model, print and return the table rows (and write them under ``out_dir``)."""
    dataset = make_synthetic(config.data)
    info = dataset.info
    echo(
        f"synthetic click log: {len(dataset.train):,} train / {len(dataset.valid):,} valid / "
        f"{len(dataset.test):,} test rows, {dataset.features.num_fields} fields, test positive rate "
        + ", ".join(f"{task} {rate:.3f}" for task, rate in info["positive_rate"]["test"].items())
    )
    tasks = dataset.features.task_names
    rows = []
    for label, model_config in demo_models(config, dataset.features):
        width = _width(model_config)
        echo(f"training {label} ({width}) ...")
        run_config = RunConfig(model=model_config, data=DataConfig(synthetic=config.data), train=config.train)
        run_dir = Path(out_dir) / label.split()[0] if out_dir is not None else None
        result = run(run_config, run_dir, dataset=dataset)
        rows.append(
            {
                "model": label,
                "width": width,
                "interaction_flops": result.cost["interaction_flops"],
                "total_flops": result.cost["total_flops"],
                "params": result.cost["dense_params"],
                **{f"auc_{task}": result.test[task]["auc"] for task in tasks},
                **{f"logloss_{task}": result.test[task]["logloss"] for task in tasks},
                "examples_per_second": result.fit.train_examples_per_second,
            }
        )
    ceiling = info["ceiling"]["test"]
    rows.append(
        {
            "model": "ceiling (true probabilities)",
            **{f"auc_{task}": ceiling[task]["auc"] for task in tasks},
            **{f"logloss_{task}": ceiling[task]["logloss"] for task in tasks},
        }
    )
    table = format_table(rows, columns(tasks))
    echo("")
    echo(f"matched interaction budget: {config.budget:,.0f} FLOPs/example (±3%)")
    echo(table)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(out_dir) / "demo.json", json.dumps({"rows": rows, "data": info}, indent=2))
        write_text_atomic(Path(out_dir) / "demo.txt", table + "\n")
    return rows


def _width(config: ModelConfig) -> str:
    from mldcn.models.registry import get_family

    family = get_family(config.family)
    if family.width is None:
        return "-"
    return f"{family.width}={getattr(config.interaction, family.width)}"


__all__ = ["DemoConfig", "demo_models", "run_demo"]
