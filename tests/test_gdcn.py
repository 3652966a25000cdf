"""GDCN (arXiv 2311.04635): golden tests by hand, the reduction to DCNv2, a naive reference,
exact FLOPs, budget matching, presets and the BARS config."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest
import torch
import yaml
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch.utils.flop_counter import FlopCounterMode

import mldcn.layers.gdcn
import mldcn.models.gdcn  # noqa: F401  (registers the family)
from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers.cross import CrossNet
from mldcn.layers.gdcn import GatedCrossNet
from mldcn.models import create_model, get_family, get_preset, model_config_from_dict
from mldcn.models.budget import BudgetError, interaction_flops, match_budget
from mldcn.models.gdcn import GatedCrossConfig
from mldcn.train.run import run_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
LN3 = math.log(3.0)  # σ(ln 3) = 3 / (1 + 3) = 3/4

# --------------------------------------------------------------------------- golden by hand


def _golden_first_layer(net: GatedCrossNet) -> None:
    _set(net.weights[0].weight, [[1.0, 0.0], [1.0, 1.0]])  # W
    _set(net.weights[0].bias, [0.0, 1.0])  # b
    _set(net.gates[0].weight, [[0.0, 0.0], [LN3, 0.0]])  # W_g


def test_gated_cross_layer_golden():
    net = GatedCrossNet(in_dim=2, num_layers=1)
    _golden_first_layer(net)
    # c0 = [1, 2]; W c0 + b = [1, 1 + 2] + [0, 1] = [1, 4]; W_g c0 = [0, ln 3] -> gate [1/2, 3/4]
    # c1 = c0 ⊙ [1, 4] ⊙ [1/2, 3/4] + c0 = [0.5 + 1, 6 + 2] = [1.5, 8]
    _assert_close(net(torch.tensor([[1.0, 2.0]])), [[1.5, 8.0]])


def test_gated_cross_two_layers_golden_and_field_input():
    net = GatedCrossNet(in_dim=2, num_layers=2)
    _golden_first_layer(net)
    _set(net.weights[1].weight, [[1.0, 0.0], [0.0, 1.0]])  # W = I
    _set(net.weights[1].bias, [0.0, 0.0])
    _set(net.gates[1].weight, [[0.0, 0.0], [0.0, 0.0]])  # gate 1/2
    # c1 = [1.5, 8] as above; c2 = c0 ⊙ c1 ⊙ 1/2 + c1 = [0.75 + 1.5, 8 + 8] = [2.25, 16]
    x = torch.tensor([[[1.0], [2.0]]])  # [B=1, F=2, D=1], flattened to c0 = [1, 2]
    _assert_close(net(x), [[2.25, 16.0]])


# --------------------------------------------------------------------------- GDCN vs DCNv2


@pytest.mark.parametrize("layers", [1, 3])
def test_zero_gate_weights_reduce_to_dcnv2_exactly(layers):
    # W_g = 0 makes every gate σ(0) = 1/2, so a gated layer with (2W, 2b) is DCNv2's layer with
    # (W, b): c0 ⊙ (2W c + 2b) ⊙ 1/2 + c = c0 ⊙ (W c + b) + c. Scaling by 2 and 1/2 is exact in
    # floating point, so the outputs are equal bit for bit.
    torch.manual_seed(0)
    dcn = CrossNet(in_dim=12, num_layers=layers)
    with torch.no_grad():
        for linear in dcn.weights:
            linear.bias.normal_()
    gdcn = GatedCrossNet(in_dim=12, num_layers=layers)
    for cross, weight, gate in zip(dcn.weights, gdcn.weights, gdcn.gates):
        _set(weight.weight, 2.0 * cross.weight)
        _set(weight.bias, 2.0 * cross.bias)
        _set(gate.weight, torch.zeros(12, 12))
    x = torch.randn(5, 3, 4)
    assert torch.equal(gdcn(x), dcn(x))


def test_gate_changes_the_output():
    # the same (W, b) with a non-zero gate is no longer DCNv2's layer
    torch.manual_seed(0)
    gdcn = GatedCrossNet(in_dim=6, num_layers=2)
    x = torch.randn(4, 6)
    before = gdcn(x)
    with torch.no_grad():
        for gate in gdcn.gates:
            gate.weight.zero_()
    assert not torch.allclose(before, gdcn(x))


# --------------------------------------------------------------------------- naive reference


def _reference(net: GatedCrossNet, x0: torch.Tensor) -> torch.Tensor:
    """One example ``x0 [d]``, straight from the equation:

    c_{l+1}[i] = c0[i] · (Σ_j W[i,j] c[j] + b[i]) · σ(Σ_j Wg[i,j] c[j]) + c[i]
    """
    d = net.in_dim
    c = x0
    for weight, gate in zip(net.weights, net.gates):
        w, b, wg = weight.weight, weight.bias, gate.weight
        crossed = [sum(w[i, j] * c[j] for j in range(d)) + b[i] for i in range(d)]
        gated = [1.0 / (1.0 + torch.exp(-sum(wg[i, j] * c[j] for j in range(d)))) for i in range(d)]
        c = torch.stack([x0[i] * crossed[i] * gated[i] + c[i] for i in range(d)])
    return c


@pytest.mark.parametrize("d, layers", [(5, 1), (6, 3)])
def test_matches_naive_reference(d, layers):
    torch.manual_seed(1)
    net = GatedCrossNet(in_dim=d, num_layers=layers)
    x = torch.randn(3, d)
    expected = torch.stack([_reference(net, example) for example in x])
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- init, shapes, gradients


def test_init_as_the_paper_code():
    torch.manual_seed(0)
    net = GatedCrossNet(in_dim=50, num_layers=2)
    for weight, gate in zip(net.weights, net.gates):
        assert gate.bias is None  # the gate has no bias
        bias = weight.bias
        assert bias.min() >= 0 and bias.max() < 1 and bias.std() > 0.1  # U[0, 1)
        assert weight.weight.std() > 0 and gate.weight.std() > 0


def test_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = GatedCrossNet(in_dim=12, num_layers=3)
    out = net(torch.randn(4, 3, 4))
    assert out.shape == (4, 12) and net.out_dim == 12
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("in_dim, layers", [(0, 2), (4, 0)])
def test_invalid_sizes(in_dim, layers):
    with pytest.raises(ValueError, match="in_dim and num_layers"):
        GatedCrossNet(in_dim, layers)


def test_docstring_example_runs():
    result = doctest.testmod(mldcn.layers.gdcn, verbose=False, report=False)
    assert result.attempted >= 2 and result.failed == 0


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    net = GatedCrossNet(in_dim=6, num_layers=2)
    # per layer: W and W_g, 2·6·6 each = 144 matmul; + b, ⊙ c0, ⊙ gate, residual 4·6 = 24,
    # sigmoid 4·6 = 24: 48 elementwise
    flops = net.flops()
    assert (flops.matmul, flops.elementwise) == (2 * 144, 2 * 48)


@pytest.mark.parametrize("d, layers, batch", [(6, 2, 3), (10, 1, 1), (7, 4, 5)])
def test_matmul_flops_match_flop_counter(d, layers, batch):
    torch.manual_seed(0)
    net = GatedCrossNet(d, layers)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, d))
    assert counter.get_total_flops() == net.flops().matmul * batch


# --------------------------------------------------------------------------- config, family, presets


def test_config_validation():
    with pytest.raises(ConfigError, match="num_layers"):
        GatedCrossConfig(num_layers=0)
    with pytest.raises(ConfigError, match="num_layers"):
        model_config_from_dict({"preset": "gdcn", "interaction": {"num_layers": -1}})
    with pytest.raises(ConfigError, match="rank"):
        model_config_from_dict({"preset": "gdcn", "interaction": {"rank": 4}})  # full rank only


def test_family():
    family = get_family("gdcn")
    assert family.width == "num_layers" and family.layer is GatedCrossNet


def test_presets():
    spec = _spec(4)
    parallel, stacked = get_preset("gdcn"), get_preset("gdcn_stacked")
    assert parallel.head.structure == "parallel" and stacked.head.structure == "stacked"  # GDCN-P, GDCN-S
    assert parallel.interaction == stacked.interaction == GatedCrossConfig(num_layers=3)  # the paper's code
    model = create_model(parallel, spec)
    assert isinstance(model.interaction, GatedCrossNet) and model.interaction.num_layers == 3


def test_frappe_preset_is_dcnv2s_bars_recipe_with_the_gated_layer():
    gdcn, dcnv2 = get_preset("gdcn_frappe_bars"), get_preset("dcnv2_frappe_bars")
    assert gdcn.family == "gdcn" and dcnv2.family == "dcnv2"
    assert gdcn.interaction.num_layers == dcnv2.interaction.num_layers == 4
    assert gdcn.embedding_dim == dcnv2.embedding_dim == 10
    assert gdcn.head == dcnv2.head


def test_bars_config_file():
    data = yaml.safe_load((ROOT / "configs" / "frappe" / "gdcn_bars.yaml").read_text())
    config = run_config_from_dict(data)
    assert config.model == get_preset("gdcn_frappe_bars")
    dcnv2 = run_config_from_dict(yaml.safe_load((ROOT / "configs" / "frappe" / "dcnv2_bars.yaml").read_text()))
    assert config.train == dcnv2.train and config.data == dcnv2.data  # the same recipe


# --------------------------------------------------------------------------- matched FLOPs


# match_budget bisects the width from 1 to max_width (default 16,384) and builds every probe
# (on the meta device): with layers as the width that is up to 16k-layer modules, ~30 s a call.
MAX_LAYERS = 64


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


@pytest.mark.parametrize("budget, layers", [(120_000, 3), (330_000, 8)])
def test_match_budget(budget, layers):
    # Frappe's shape: d = 10·10 = 100; a layer costs 4d² + 8d = 40,800 FLOPs:
    # 3 layers 122,400 (+2.0% of 120k), 8 layers 326,400 (-1.1% of 330k)
    base = get_preset("gdcn_frappe_bars")
    spec = _spec(10)
    config = match_budget(base, spec, budget, max_width=MAX_LAYERS)
    assert config.interaction.num_layers == layers
    flops = interaction_flops(config, spec).total
    assert flops == layers * 40_800 and abs(flops / budget - 1) <= 0.03
    assert config.head == base.head


def test_budget_between_whole_layers_is_refused():
    # 60k lies between 1 layer (40,800, -32%) and 2 (81,600, +36%): the width is whole layers
    with pytest.raises(BudgetError, match="num_layers"):
        match_budget(get_preset("gdcn_frappe_bars"), _spec(10), 60_000, max_width=MAX_LAYERS)
