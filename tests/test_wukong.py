"""WuKong (arXiv 2403.02545): golden tests by hand, a naive reference, exact FLOPs, budget matching."""

from __future__ import annotations

import pytest
import torch
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch.utils.flop_counter import FlopCounterMode

from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers import (
    FactorizationMachineBlock,
    LinearCompressBlock,
    WuKong,
    WuKongLayer,
)
from mldcn.layers.wukong import wukong_flops
from mldcn.models import create_model, get_family, get_preset, model_config_from_dict
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.wukong import WuKongConfig, staged_width

# --------------------------------------------------------------------------- golden by hand

X = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # [B=1, n=2, D=2]: x_1 = [1, 2], x_2 = [3, 0]


def _golden_fmb(fmb: FactorizationMachineBlock) -> None:
    _set(fmb.projection, [[1.0], [1.0]])  # Y = [1, 1]^T  (n=2, k=1)
    fmb.norm.eps = 0.0
    _set(fmb.output.weight, [[1.0, 0.0], [2.0, 1.0]])  # [n_F·D=2, n·k=2]
    _set(fmb.output.bias, [0.5, 0.0])


def test_fmb_golden():
    fmb = FactorizationMachineBlock(num_inputs=2, dim=2, num_outputs=1, rank=1)  # no hidden layer
    _golden_fmb(fmb)
    # X^T Y = x_1 + x_2 = [4, 2];  X (X^T Y) = [<x_1, [4, 2]>, <x_2, [4, 2]>] = [8, 12]
    #   (= (X X^T) Y: X X^T = [[5, 3], [3, 9]], row sums [8, 12])
    # LN([8, 12]) (eps 0): mean 10, std 2 -> [-1, 1]
    # output: [[1, 0], [2, 1]] [-1, 1] + [0.5, 0] = [-0.5, -1] -> one embedding [-0.5, -1]
    _assert_close(fmb(X), [[[-0.5, -1.0]]])


def test_fmb_golden_with_hidden_layer():
    fmb = FactorizationMachineBlock(num_inputs=2, dim=2, num_outputs=1, rank=1, hidden=(2,))
    _set(fmb.projection, [[1.0], [1.0]])
    fmb.norm.eps = 0.0
    hidden = fmb.mlp.layers[0]
    _set(hidden.weight, [[1.0, 0.0], [0.0, 3.0]])
    _set(hidden.bias, [0.0, 1.0])
    _set(fmb.output.weight, [[1.0, 1.0], [0.0, -1.0]])
    _set(fmb.output.bias, [0.0, 0.0])
    # LN(FM) = [-1, 1] as above; hidden: relu([-1, 3 + 1]) = [0, 4]; output [0 + 4, -4] = [4, -4]
    _assert_close(fmb(X), [[[4.0, -4.0]]])


def test_lcb_golden():
    lcb = LinearCompressBlock(num_inputs=2, num_outputs=3)
    _set(lcb.weight, [[1.0, 0.0], [1.0, 1.0], [0.5, -1.0]])  # W_L [n_L=3, n=2]
    # rows: x_1 = [1, 2]; x_1 + x_2 = [4, 2]; 0.5 x_1 - x_2 = [-2.5, 1]
    _assert_close(lcb(X), [[[1.0, 2.0], [4.0, 2.0], [-2.5, 1.0]]])


def test_wukong_layer_golden_identity_residual():
    layer = WuKongLayer(num_inputs=2, dim=2, num_fm_outputs=1, num_lcb_outputs=1, rank=1)
    assert layer.residual is None  # n_F + n_L = 2 = n
    _golden_fmb(layer.fmb)
    _set(layer.lcb.weight, [[1.0, 1.0]])  # LCB: x_1 + x_2 = [4, 2]
    layer.norm.eps = 0.0
    _set(layer.norm.weight, [2.0, 1.0])
    _set(layer.norm.bias, [0.0, 0.5])
    # concat(FMB, LCB) = [[-0.5, -1], [4, 2]]; + X = [[0.5, 1], [7, 2]]
    # LN per embedding over D: [0.5, 1] -> [-1, 1]; [7, 2] -> [1, -1]
    # scale [2, 1], shift [0, 0.5]: [-2, 1.5] and [2, -0.5]
    _assert_close(layer(X), [[[-2.0, 1.5], [2.0, -0.5]]])


def test_wukong_layer_golden_projected_residual():
    layer = WuKongLayer(num_inputs=2, dim=2, num_fm_outputs=1, num_lcb_outputs=2, rank=1)
    assert layer.residual is not None  # n_F + n_L = 3 != 2: W_R [3, 2]
    _golden_fmb(layer.fmb)
    _set(layer.lcb.weight, [[1.0, 0.0], [0.0, 1.0]])  # LCB = [x_1, x_2]
    _set(layer.residual.weight, [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # W_R X = [x_2, x_1, 0]
    layer.norm.eps = 0.0
    # concat = [[-0.5, -1], [1, 2], [3, 0]]; + [[3, 0], [1, 2], [0, 0]] = [[2.5, -1], [2, 4], [3, 0]]
    # LN over D of 2-vectors: [a, b] -> sign(a - b)·[1, -1]: [1, -1], [-1, 1], [1, -1]
    _assert_close(layer(X), [[[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]]])


def test_wukong_stack_golden_and_flatten():
    net = WuKong(num_fields=2, dim=2, num_layers=1, num_fm_outputs=1, num_lcb_outputs=1, rank=1)
    layer = net.layers[0]
    _golden_fmb(layer.fmb)
    _set(layer.lcb.weight, [[1.0, 1.0]])
    layer.norm.eps = 0.0
    # as in the identity-residual test with LN scale 1, shift 0: [[-1, 1], [1, -1]], flattened
    out = net(X)
    _assert_close(out, [[-1.0, 1.0, 1.0, -1.0]])
    assert net.out_dim == 4


# --------------------------------------------------------------------------- naive reference


def _layer_norm(v: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = sum(v) / len(v)
    var = sum((e - mean) ** 2 for e in v) / len(v)
    return torch.stack([(e - mean) / torch.sqrt(var + norm.eps) for e in v]) * norm.weight + norm.bias


def _reference_layer(layer: WuKongLayer, x: torch.Tensor) -> torch.Tensor:
    """One example ``x [n, D]``, straight from the equations, with loops."""
    n, dim, k = layer.num_inputs, layer.dim, layer.rank
    y = layer.fmb.projection
    # FM(X) = (X X^T) Y: fm[i, j] = Σ_l <x_i, x_l> Y[l, j]
    fm = torch.stack(
        [
            torch.stack([sum(torch.dot(x[i], x[m]) * y[m, j] for m in range(n)) for j in range(k)])
            for i in range(n)
        ]
    )
    h = _layer_norm(fm.flatten(), layer.fmb.norm)
    for linear in layer.fmb.mlp.layers:
        if isinstance(linear, torch.nn.Linear):
            h = torch.relu(torch.stack([torch.dot(w, h) for w in linear.weight]) + linear.bias)
    out = layer.fmb.output
    h = torch.stack([torch.dot(w, h) for w in out.weight]) + out.bias  # [n_F·D]
    fmb = h.reshape(layer.num_fm_outputs, dim)
    w_l = layer.lcb.weight
    lcb = torch.stack([sum(w_l[i, j] * x[j] for j in range(n)) for i in range(layer.num_lcb_outputs)])
    if layer.residual is None:
        residual = x
    else:
        w_r = layer.residual.weight
        residual = torch.stack([sum(w_r[i, j] * x[j] for j in range(n)) for i in range(layer.num_outputs)])
    z = torch.cat([fmb, lcb]) + residual
    return torch.stack([_layer_norm(row, layer.norm) for row in z])


@pytest.mark.parametrize(
    "fields, fm_out, lcb_out, rank, hidden",
    [(4, 2, 2, 3, (5,)), (5, 2, 1, 2, ()), (3, 3, 2, 1, (4, 3))],
)
def test_matches_naive_reference(fields, fm_out, lcb_out, rank, hidden):
    torch.manual_seed(0)
    net = WuKong(fields, dim=3, num_layers=2, num_fm_outputs=fm_out, num_lcb_outputs=lcb_out, rank=rank,
                 hidden=hidden)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters too
        for layer in net.layers:
            for norm in (layer.norm, layer.fmb.norm):
                norm.weight.normal_()
                norm.bias.normal_()
    x = torch.randn(3, fields, 3)
    expected = []
    for example in x:
        h = example
        for layer in net.layers:
            h = _reference_layer(layer, h)
        expected.append(h.flatten())
    torch.testing.assert_close(net(x), torch.stack(expected), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- shapes, gradients


def test_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = WuKong(num_fields=7, dim=4, num_layers=3, num_fm_outputs=3, num_lcb_outputs=2, rank=2, hidden=(6,))
    assert [layer.num_inputs for layer in net.layers] == [7, 5, 5]
    assert net.layers[0].residual is not None and net.layers[1].residual is None
    out = net(torch.randn(4, 7, 4))
    assert out.shape == (4, 5 * 4) and net.out_dim == 20
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "factory",
    [
        lambda: WuKong(4, 3, num_layers=0, num_fm_outputs=1, num_lcb_outputs=1, rank=1),
        lambda: WuKong(4, 3, num_layers=1, num_fm_outputs=0, num_lcb_outputs=1, rank=1),
        lambda: WuKong(4, 3, num_layers=1, num_fm_outputs=1, num_lcb_outputs=0, rank=1),
        lambda: WuKong(4, 3, num_layers=1, num_fm_outputs=1, num_lcb_outputs=1, rank=0),
    ],
)
def test_invalid_sizes(factory):
    with pytest.raises(ValueError):
        factory()


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    net = WuKong(num_fields=4, dim=3, num_layers=2, num_fm_outputs=2, num_lcb_outputs=1, rank=2, hidden=(5,))
    # layer 1 (n=4 -> 3): FM 4nDk = 96; MLP 2·8·5 = 80; output 2·5·6 = 60; LCB 2·4·1·3 = 24;
    #   residual projection 2·4·3·3 = 72                                   matmul 332
    #   LN(FM) 5·8 = 40; MLP bias + ReLU 10; output bias 6; + X and LN 6·9 = 54   elementwise 110
    # layer 2 (n=3 -> 3): FM 72; MLP 2·6·5 = 60; output 60; LCB 18           matmul 210
    #   LN(FM) 5·6 = 30; 10; 6; 54                                          elementwise 100
    flops = net.flops()
    assert (flops.matmul, flops.elementwise) == (332 + 210, 110 + 100)


@pytest.mark.parametrize(
    "fields, layers, fm_out, lcb_out, rank, hidden, batch",
    [
        (6, 3, 2, 2, 3, (8,), 4),  # residual projected in layer 1 only
        (4, 2, 2, 2, 1, (), 3),  # n_F + n_L = F: identity residual everywhere; no hidden layer
        (5, 1, 1, 1, 2, (4, 3), 1),  # batch 1, two hidden layers
    ],
)
def test_matmul_flops_match_flop_counter(fields, layers, fm_out, lcb_out, rank, hidden, batch):
    torch.manual_seed(0)
    net = WuKong(fields, 3, layers, fm_out, lcb_out, rank, hidden)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, fields, 3))
    assert counter.get_total_flops() == net.flops().matmul * batch


# --------------------------------------------------------------------------- config and family


def test_config_validation():
    with pytest.raises(ConfigError, match="fm_rank"):
        WuKongConfig(fm_rank=0)
    with pytest.raises(ConfigError, match="dropout"):
        WuKongConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="mlp_dim"):
        model_config_from_dict({"preset": "wukong", "interaction": {"mlp_dim": 0}})
    with pytest.raises(ConfigError, match="num_fm_output"):
        model_config_from_dict({"preset": "wukong", "interaction": {"num_fm_output": 4}})


def test_preset_builds_the_configured_stack():
    config = get_preset("wukong")
    spec = _spec(5)
    model = create_model(config, spec)
    net = model.interaction
    assert isinstance(net, WuKong)
    cfg = config.interaction
    assert (net.num_layers, net.num_fm_outputs, net.num_lcb_outputs, net.rank) == (
        cfg.num_layers, cfg.num_fm_outputs, cfg.num_lcb_outputs, cfg.fm_rank
    )
    assert net.hidden == (cfg.mlp_dim,) * cfg.mlp_layers
    assert config.head.structure == "stacked"  # the paper's final MLP on the last layer


# --------------------------------------------------------------------------- matched FLOPs


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


def test_staged_width_by_hand():
    # cost m·f, fine width up to 4: stage 1 costs 1..4; stage 2 starts at the smallest f with
    # 2f >= 4, f = 2 (costs 4, 6, 8); stage 3 at 3f >= 8, f = 3 (costs 9, 12); stage 4 at 4f >= 12
    walk = [staged_width(w, lambda m, f: m * f, lambda m: 4) for w in range(1, 12)]
    assert walk == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4), (4, 3), (4, 4)]
    # a stage whose cheapest point is above the last one starts at f = 1 (a gap in cost)
    walk = [staged_width(w, lambda m, f: 10 * m + f, lambda m: 2) for w in range(1, 6)]
    assert walk == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
    with pytest.raises(ValueError):
        staged_width(0, lambda m, f: f, lambda m: 1)


@pytest.mark.parametrize("fields, dim", [(10, 10), (39, 16)])
def test_cost_is_non_decreasing_in_width_with_small_steps(fields, dim):
    family = get_family("wukong")
    base = get_preset("wukong").interaction
    costs = []
    for width in range(1, 300):
        config = family.with_width(base, width, fields, dim)
        costs.append(build_cost(config, fields, dim))
        if width % 50 == 0:  # resizing a resized config gives the same config
            assert family.with_width(config, width, fields, dim) == config
    assert costs == sorted(costs)
    steps = [b / a - 1 for a, b in zip(costs, costs[1:]) if a >= 30_000]
    assert steps and max(steps) < 0.03  # every budget above 30k within ±1.5% by width alone


def build_cost(config: WuKongConfig, fields: int, dim: int) -> int:
    # the formula the built module's flops() returns (test_flops_by_hand), without building it
    hidden = (config.mlp_dim,) * config.mlp_layers
    return wukong_flops(
        fields, dim, config.num_layers, config.num_fm_outputs, config.num_lcb_outputs, config.fm_rank, hidden
    ).total


@pytest.mark.parametrize("fields, dim", [(10, 10), (39, 16)])
@pytest.mark.parametrize("budget", [50_000, 200_000, 1_000_000, 3_000_000])
def test_match_budget(fields, dim, budget):
    base = get_preset("wukong").replace(embedding_dim=dim)
    spec = _spec(fields)
    config = match_budget(base, spec, budget)
    flops = interaction_flops(config, spec).total
    assert abs(flops / budget - 1) <= 0.03, (config.interaction, flops)
    # met by the width alone: depth, MLP depth and the head are as configured
    assert config.interaction.num_layers == base.interaction.num_layers
    assert config.interaction.mlp_layers == base.interaction.mlp_layers
    assert config.head == base.head
