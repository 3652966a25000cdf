"""Multi-task structures: golden tests by hand, the registry, the budget over all experts."""

from __future__ import annotations

import math

import pytest
import torch
from golden import assert_close, set_weights
from torch import nn

from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec, NumericField, TaskSpec
from mldcn.layers import StackedHead
from mldcn.layers.flops import Flops
from mldcn.layers.multitask import CustomizedGateControl, MultiGateMixture, TaskTowers
from mldcn.models import create_model, get_preset, list_families, measured_matmul_flops, model_cost
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.config import model_config_from_dict
from mldcn.models.multitask import list_structures


class Scale(nn.Module):
    """A stand-in expert: ``h = c · x0``, easy to follow by hand."""

    def __init__(self, factor: float, width: int) -> None:
        super().__init__()
        self.factor, self.out_dim = factor, width

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.factor * emb.flatten(1)

    def flops(self) -> Flops:
        return Flops(elementwise=self.out_dim)


EMB = torch.tensor([[[1.0, 2.0]]])  # [B=1, F=1, D=2]: x0 = [1, 2]
LN3 = math.log(3.0)


def test_mmoe_mixes_the_experts_with_each_tasks_softmax_gate():
    moe = MultiGateMixture([Scale(1.0, 2), Scale(3.0, 2)], input_dim=2, num_tasks=2)
    set_weights(moe.gates.weight, torch.zeros(4, 2))
    set_weights(moe.gates.bias, [0.0, 0.0, LN3, 0.0])  # task 0: gate (1/2, 1/2); task 1: (3/4, 1/4)
    # experts: [1, 2] and [3, 6]; task 0: ([1, 2] + [3, 6]) / 2 = [2, 4];
    # task 1: 0.75 · [1, 2] + 0.25 · [3, 6] = [1.5, 3]
    assert_close(moe(EMB), [[[2.0, 4.0], [1.5, 3.0]]])


def test_cgc_gates_see_their_own_experts_and_the_shared_ones():
    factors = iter([1.0, 2.0, 3.0])  # built in order: the shared expert, task 0's, task 1's
    cgc = CustomizedGateControl(lambda: Scale(next(factors), 2), 2, num_tasks=2, shared_experts=1, task_experts=1)
    set_weights(cgc.gates.weight, torch.zeros(4, 2))
    set_weights(cgc.gates.bias, [0.0, 0.0, LN3, 0.0])  # per task: (own, shared)
    # task 0: (2 x0 + 1 x0) / 2 = 1.5 x0 = [1.5, 3]; task 1: 0.75 · 3 x0 + 0.25 · x0 = 2.5 x0 = [2.5, 5]
    assert_close(cgc(EMB), [[[1.5, 3.0], [2.5, 5.0]]])


def test_towers_read_their_tasks_representation():
    first, second = StackedHead(2), StackedHead(2)
    set_weights(first.output.weight, [[1.0, 1.0]])
    set_weights(first.output.bias, [0.0])
    set_weights(second.output.weight, [[1.0, -1.0]])
    set_weights(second.output.bias, [1.0])
    towers = TaskTowers([first, second])
    per_task = torch.tensor([[[2.0, 4.0], [1.5, 3.0]]])  # [B, T, h]: the MMoE output above
    assert_close(towers(per_task, None), [[6.0, -0.5]])  # 2 + 4; 1.5 - 3 + 1
    shared = torch.tensor([[2.0, 4.0]])  # [B, h]: a shared bottom
    assert_close(towers(shared, None), [[6.0, -1.0]])  # 2 + 4; 2 - 4 + 1


SPEC = FeatureSpec(
    categorical=(CategoricalField("user", 11), CategoricalField("ad", 7)),
    numeric=(NumericField("bid"),),
    tasks=(TaskSpec("click"), TaskSpec("good_click"), TaskSpec("conversion", weight=2.0)),
)


#: one preset of each interaction family (a discovery test below keeps it complete)
FAMILY_PRESETS = [
    "mldcn", "dcnv2", "dcnv2_lowrank", "dcnv2_mixture", "masknet_parallel", "masknet_serial", "wukong", "rankmixer",
    "rankmixer_moe", "dnn", "deepfm", "xdeepfm", "autoint_plus", "dlrm", "finalmlp", "gdcn",
]  # fmt: skip


def test_every_family_is_tried_as_an_expert():
    assert sorted(get_preset(p).family for p in FAMILY_PRESETS) == sorted(set(list_families()) - {"lr"})


@pytest.mark.parametrize("family", FAMILY_PRESETS)
@pytest.mark.parametrize("multitask", ["shared_bottom", {"kind": "mmoe", "num_experts": 3}, {"kind": "ple", "shared_experts": 1, "task_experts": 2}])
def test_any_family_is_the_expert_of_any_structure(family, multitask):
    config = model_config_from_dict({"preset": family, "multitask": multitask, "embedding_dim": 4, "head": {"hidden": [8]}})
    torch.manual_seed(0)
    model = create_model(config, SPEC)
    inputs = (torch.randint(0, 7, (5, 2)), torch.randn(5, 1), None)
    logits = model(*inputs)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    cost = model_cost(model)
    assert cost.total.matmul == measured_matmul_flops(model, inputs)  # exact, experts and gates included
    assert cost.interaction == interaction_flops(config, SPEC)  # the budget solver counts the same


def test_budget_is_matched_on_the_total_over_all_experts():
    single = match_budget(get_preset("mldcn").replace(embedding_dim=4), SPEC, 60_000)
    mmoe = match_budget(get_preset("mldcn_mmoe").replace(embedding_dim=4), SPEC, 60_000)
    for config in (single, mmoe):
        assert abs(interaction_flops(config, SPEC).total / 60_000 - 1) <= 0.03
    assert mmoe.interaction.rank < single.interaction.rank  # four experts share the budget


def test_structures_are_registered_and_validated():
    assert list_structures() == ["mmoe", "ple", "shared_bottom", "single"]
    with pytest.raises(ConfigError, match="unknown multitask kind 'moe'"):
        model_config_from_dict({"preset": "mldcn", "multitask": {"kind": "moe"}})
    with pytest.raises(ConfigError, match="num_experts"):
        model_config_from_dict({"preset": "mldcn", "multitask": {"kind": "mmoe", "num_experts": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        model_config_from_dict({"preset": "mldcn", "multitask": {"kind": "mmoe", "experts": 4}})
    config = model_config_from_dict({"preset": "mldcn", "multitask": {"kind": "ple", "task_experts": 2}})
    assert model_config_from_dict(config.to_dict()) == config  # round trip through YAML form
    assert config.to_dict()["multitask"] == {"kind": "ple", "shared_experts": 1, "task_experts": 2}
    assert get_preset("mldcn").to_dict()["multitask"] == {"kind": "single"}
