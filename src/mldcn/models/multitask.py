"""Multi-task structures as a registry, like the interaction families.

A structure decides how the interaction modules and the towers are arranged for
the T tasks of the data (``FeatureSpec.tasks``); its config is ``model.multitask``:

    single          one interaction module, one tower with T outputs (T = 1: today's
                    single-task model)
    shared_bottom   one interaction module (the trunk), a tower per task
    mmoe            K experts of the family, a softmax gate per task, a tower per task
    ple             PLE's extraction level (CGC): S shared experts and E experts per
                    task, a gate per task, a tower per task

The experts and the trunk are the model's family (``model.family`` with
``model.interaction``), so ``{family: mldcn, multitask: {kind: mmoe}}`` is MMoE
with ML-DCN experts. A tower is the model's head (``model.head``: parallel or
stacked, its DNN). The FLOPs of experts and gates are interaction FLOPs, the
towers' are head FLOPs; ``match_budget`` sizes every expert's width together to
meet a budget on the total interaction FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from mldcn.config import Config, ConfigError, from_dict, to_dict
from mldcn.layers.multitask import CustomizedGateControl, MultiGateMixture, TaskTowers

MakeExpert = Callable[[], nn.Module]
MakeTower = Callable[[int, int], nn.Module]  # (input width, outputs) -> head


@dataclass(frozen=True)
class SingleTaskConfig(Config):
    """One interaction module and one tower; the tower's output layer has a row per task."""

    kind: ClassVar[str] = "single"


@dataclass(frozen=True)
class SharedBottomConfig(Config):
    """One interaction module shared by all tasks, a tower per task."""

    kind: ClassVar[str] = "shared_bottom"


@dataclass(frozen=True)
class MMoEConfig(Config):
    """MMoE (Ma et al., KDD 2018): ``num_experts`` experts, a softmax gate per task."""

    kind: ClassVar[str] = "mmoe"
    num_experts: int = 4

    _positive = ("num_experts",)


@dataclass(frozen=True)
class PLEConfig(Config):
    """PLE's extraction level, CGC (Tang et al., RecSys 2020): shared and per-task experts."""

    kind: ClassVar[str] = "ple"
    shared_experts: int = 1
    task_experts: int = 1

    _non_negative = ("shared_experts", "task_experts")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shared_experts + self.task_experts < 1:
            raise ConfigError("PLEConfig needs at least one expert per gate (shared_experts + task_experts >= 1)")


@dataclass(frozen=True)
class Structure:
    """A registered multi-task structure: its config class and how it builds the two parts."""

    kind: str
    config_cls: type
    interaction: Callable[[Any, MakeExpert, int, int], nn.Module]  # (config, make_expert, d, T)
    towers: Callable[[Any, MakeTower, int, int], nn.Module]  # (config, make_tower, width, T)
    description: str


_STRUCTURES: dict[str, Structure] = {}


def register_structure(structure: Structure) -> None:
    if structure.kind in _STRUCTURES:
        raise ValueError(f"multi-task structure {structure.kind!r} is registered twice")
    _STRUCTURES[structure.kind] = structure


def get_structure(kind: str) -> Structure:
    if kind not in _STRUCTURES:
        raise ConfigError(f"unknown multitask kind {kind!r}; known: {sorted(_STRUCTURES)}")
    return _STRUCTURES[kind]


def list_structures() -> list[str]:
    return sorted(_STRUCTURES)


def _per_task_towers(config, make_tower: MakeTower, width: int, num_tasks: int) -> nn.Module:
    return TaskTowers([make_tower(width, 1) for _ in range(num_tasks)])


register_structure(
    Structure(
        "single",
        SingleTaskConfig,
        interaction=lambda config, make_expert, d, num_tasks: make_expert(),
        towers=lambda config, make_tower, width, num_tasks: make_tower(width, num_tasks),
        description="one interaction module, one tower with a logit per task",
    )
)
register_structure(
    Structure(
        "shared_bottom",
        SharedBottomConfig,
        interaction=lambda config, make_expert, d, num_tasks: make_expert(),
        towers=_per_task_towers,
        description="one interaction module shared by all tasks, a tower per task",
    )
)
register_structure(
    Structure(
        "mmoe",
        MMoEConfig,
        interaction=lambda config, make_expert, d, num_tasks: MultiGateMixture(
            [make_expert() for _ in range(config.num_experts)], d, num_tasks
        ),
        towers=_per_task_towers,
        description="MMoE: experts of the family, a softmax gate per task, a tower per task",
    )
)
register_structure(
    Structure(
        "ple",
        PLEConfig,
        interaction=lambda config, make_expert, d, num_tasks: CustomizedGateControl(
            make_expert, d, num_tasks, config.shared_experts, config.task_experts
        ),
        towers=_per_task_towers,
        description="PLE/CGC: shared and per-task experts of the family, a gate per task, a tower per task",
    )
)


def multitask_to_dict(config) -> dict:
    return {"kind": config.kind, **to_dict(config)}


def multitask_from_dict(data: dict | str | None, where: str = "model.multitask"):
    """``{kind: mmoe, num_experts: 4}`` (or just the kind) → its config; missing → single task."""
    if data is None:
        return SingleTaskConfig()
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"{where}: expected a kind ({list_structures()}) or a mapping with 'kind'")
    options = dict(data)
    structure = get_structure(options.pop("kind"))
    return from_dict(structure.config_cls, options, where)
