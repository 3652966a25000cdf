"""AutoInt / AutoInt+ (arXiv 1810.11921): golden tests by hand, a naive reference,
exact FLOPs, budget matching, presets."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import math
from pathlib import Path

import pytest
import torch
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch.utils.flop_counter import FlopCounterMode

import mldcn.layers.autoint
import mldcn.models.autoint  # noqa: F401  (registers the family and presets)
from mldcn.config import ConfigError, load_yaml
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers.autoint import AutoInt, MultiHeadSelfAttention, autoint_flops
from mldcn.models import create_model, get_family, get_preset, model_config_from_dict, model_cost
from mldcn.models.autoint import AutoIntConfig
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.train.run import run_config_from_dict

LN3 = math.log(3.0)
X = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, F=2, D=2]: e_1 = [1, 0], e_2 = [0, 1]


def _golden(layer: MultiHeadSelfAttention, key_scale: float = LN3) -> None:
    # nn.Linear computes e W^T, so each weight below is the matrix applied to a column e
    _set(layer.query.weight, [[1.0, 0.0], [0.0, 1.0]])  # q_m = e_m
    _set(layer.key.weight, [[key_scale, 0.0], [0.0, key_scale]])  # k_k = c e_k
    _set(layer.value.weight, [[2.0, 0.0], [0.0, -4.0]])  # v_1 = [2, 0], v_2 = [0, -4]


# --------------------------------------------------------------------------- golden by hand


def test_one_head_golden():
    layer = MultiHeadSelfAttention(num_fields=2, in_dim=2, attention_dim=2, num_heads=1)
    assert layer.residual is None  # i = a: the residual is e_m itself
    _golden(layer)
    # scores <q_m, k_k> = ln3 · <e_m, e_k>: [[ln3, 0], [0, ln3]]
    # softmax rows: [3/4, 1/4] and [1/4, 3/4]   (e^{ln3} = 3)
    # ẽ_1 = 3/4 [2, 0] + 1/4 [0, -4] = [1.5, -1];  ẽ_2 = 1/4 [2, 0] + 3/4 [0, -4] = [0.5, -3]
    # + e_m: [2.5, -1] and [0.5, -2]; ReLU: [2.5, 0] and [0.5, 0]
    _assert_close(layer(X), [[[2.5, 0.0], [0.5, 0.0]]])


def test_two_heads_golden():
    layer = MultiHeadSelfAttention(num_fields=2, in_dim=2, attention_dim=2, num_heads=2)  # h = 1
    _golden(layer)
    # head 1 reads coordinate 1: q = [1, 0], k = ln3 · [1, 0], v = [2, 0] (fields 1, 2)
    #   scores [[ln3, 0], [0, 0]] -> rows [3/4, 1/4], [1/2, 1/2] -> ẽ^1 = [1.5, 1]
    # head 2 reads coordinate 2: q = [0, 1], k = ln3 · [0, 1], v = [0, -4]
    #   scores [[0, 0], [0, ln3]] -> rows [1/2, 1/2], [1/4, 3/4] -> ẽ^2 = [-2, -3]
    # ẽ_1 = [1.5, -2], ẽ_2 = [1, -3]; + e_m: [2.5, -2], [1, -2]; ReLU: [2.5, 0], [1, 0]
    _assert_close(layer(X), [[[2.5, 0.0], [1.0, 0.0]]])


def test_scaled_scores_golden():
    layer = MultiHeadSelfAttention(num_fields=2, in_dim=2, attention_dim=2, num_heads=1, use_scale=True)
    _golden(layer, key_scale=math.sqrt(2.0) * LN3)
    # h = 2: scores sqrt(2)·ln3·δ_mk / sqrt(2) = ln3·δ_mk: as in the one-head test
    _assert_close(layer(X), [[[2.5, 0.0], [0.5, 0.0]]], atol=1e-5)
    unscaled = MultiHeadSelfAttention(num_fields=2, in_dim=2, attention_dim=2, num_heads=1)
    _golden(unscaled, key_scale=math.sqrt(2.0) * LN3)
    assert not torch.allclose(unscaled(X), layer(X))  # the scaling is really applied


def test_layer_norm_golden():
    layer = MultiHeadSelfAttention(num_fields=2, in_dim=2, attention_dim=2, num_heads=1, layer_norm=True)
    _golden(layer)
    layer.norm.eps = 0.0
    _set(layer.norm.weight, [2.0, 1.0])
    _set(layer.norm.bias, [0.0, 1.5])
    # before the norm (one-head test): [2.5, -1] and [0.5, -2]; LN over a = 2: each -> [1, -1]
    # scale [2, 1], shift [0, 1.5]: [2, 0.5]; ReLU keeps it (LN comes before the ReLU)
    _assert_close(layer(X), [[[2.0, 0.5], [2.0, 0.5]]])


def _uniform_attention(layer: MultiHeadSelfAttention) -> None:
    _set(layer.query.weight, [[0.0], [0.0]])  # scores 0: α = 1/2 everywhere
    _set(layer.key.weight, [[1.0], [1.0]])
    _set(layer.value.weight, [[1.0], [-1.0]])  # v_m = [e_m, -e_m]


def test_projected_residual_golden():
    layer = MultiHeadSelfAttention(num_fields=2, in_dim=1, attention_dim=2, num_heads=1)
    assert layer.residual is not None  # i = 1 != a = 2: W_Res [a, i]
    _uniform_attention(layer)
    _set(layer.residual.weight, [[1.0], [1.0]])  # W_Res e = [e, e]
    x = torch.tensor([[[1.0], [3.0]]])  # e_1 = 1, e_2 = 3
    # v_1 = [1, -1], v_2 = [3, -3]; ẽ_m = mean = [2, -2] for both fields
    # + W_Res e: [2 + 1, -2 + 1] = [3, -1] and [2 + 3, -2 + 3] = [5, 1]; ReLU: [3, 0], [5, 1]
    _assert_close(layer(x), [[[3.0, 0.0], [5.0, 1.0]]])


def test_no_residual_golden():
    layer = MultiHeadSelfAttention(num_fields=2, in_dim=1, attention_dim=2, num_heads=1, use_residual=False)
    assert layer.residual is None
    _uniform_attention(layer)
    # ẽ_m = [2, -2] for both fields (above), nothing added; ReLU: [2, 0]
    _assert_close(layer(torch.tensor([[[1.0], [3.0]]])), [[[2.0, 0.0], [2.0, 0.0]]])


def test_stack_golden_and_flatten():
    net = AutoInt(num_fields=2, dim=2, num_layers=1, attention_dim=2, num_heads=1)
    _golden(net.layers[0])
    # the one-head test's output [[2.5, 0], [0.5, 0]], flattened field by field
    _assert_close(net(X), [[2.5, 0.0, 0.5, 0.0]])
    assert net.out_dim == 4


# --------------------------------------------------------------------------- naive reference


def _reference_layer(layer: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """One example ``x [F, i]`` with loops, from the paper's equations (5)-(8)."""
    fields, heads, h = layer.num_fields, layer.num_heads, layer.head_dim
    w_q, w_k, w_v = layer.query.weight, layer.key.weight, layer.value.weight  # [a, i]
    out = []
    for m in range(fields):
        per_head = []
        for head in range(heads):
            rows = slice(head * h, (head + 1) * h)  # W^η: the head's rows
            q = w_q[rows] @ x[m]
            psi = torch.stack([torch.dot(q, w_k[rows] @ x[k]) for k in range(fields)])
            if layer.use_scale:
                psi = psi / math.sqrt(h)
            alpha = torch.exp(psi) / torch.exp(psi).sum()
            per_head.append(sum(alpha[k] * (w_v[rows] @ x[k]) for k in range(fields)))
        e = torch.cat(per_head)  # ẽ_m = ẽ^1 ⊕ ... ⊕ ẽ^H
        if layer.use_residual:
            e = e + (x[m] if layer.residual is None else layer.residual.weight @ x[m])
        if layer.norm is not None:
            mean, var = e.mean(), ((e - e.mean()) ** 2).mean()
            e = (e - mean) / torch.sqrt(var + layer.norm.eps) * layer.norm.weight + layer.norm.bias
        out.append(torch.relu(e))
    return torch.stack(out)


@pytest.mark.parametrize(
    "heads, use_residual, use_scale, layer_norm",
    [(1, True, False, False), (2, True, True, True), (4, False, True, False), (2, True, False, True)],
)
def test_matches_naive_reference(heads, use_residual, use_scale, layer_norm):
    torch.manual_seed(0)
    net = AutoInt(4, dim=3, num_layers=2, attention_dim=8, num_heads=heads, use_residual=use_residual,
                  use_scale=use_scale, layer_norm=layer_norm)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for layer in net.layers:
            if layer.norm is not None:
                layer.norm.weight.normal_()
                layer.norm.bias.normal_()
    x = torch.randn(3, 4, 3)
    expected = []
    for example in x:
        h = example
        for layer in net.layers:
            h = _reference_layer(layer, h)
        expected.append(h.flatten())
    torch.testing.assert_close(net(x), torch.stack(expected), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- shapes, gradients, errors


def test_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = AutoInt(num_fields=5, dim=4, num_layers=3, attention_dim=6, num_heads=3, layer_norm=True)
    assert [layer.in_dim for layer in net.layers] == [4, 6, 6]
    assert net.layers[0].residual is not None and net.layers[1].residual is None
    out = net(torch.randn(3, 5, 4))
    assert out.shape == (3, 30) and net.out_dim == 30 and net.in_dim == 20
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_on_attention_weights_only_in_training():
    torch.manual_seed(0)
    net = AutoInt(num_fields=4, dim=3, num_layers=1, attention_dim=4, num_heads=2, dropout=0.5)
    x = torch.randn(2, 4, 3)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_layers=0), "num_layers"),
        (dict(attention_dim=6, num_heads=4), "multiple of num_heads"),
        (dict(num_heads=0), "num_heads"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoInt(num_fields=3, dim=2, **kwargs)


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    net = AutoInt(num_fields=3, dim=2, num_layers=2, attention_dim=4, num_heads=2, use_scale=True, layer_norm=True)
    # layer 1 (i = 2 -> a = 4): Q, K, V 3·2·F·i·a = 144; W_Res 2·3·2·4 = 48;
    #   Q K^T 2·F²·a = 72; A V 72                                                 matmul 336
    #   H·F² = 18 scores: / sqrt(h) 18, softmax (exp 4 + sum + divide) 6·18 = 108;
    #   + residual 12, LayerNorm 5·12 = 60, ReLU 12                               elementwise 210
    # layer 2 (i = 4 -> 4, residual not projected): Q, K, V 3·2·3·4·4 = 288; 72; 72  matmul 432
    #   as layer 1                                                                elementwise 210
    flops = net.flops()
    assert (flops.matmul, flops.elementwise) == (336 + 432, 210 + 210)


@pytest.mark.parametrize(
    "fields, dim, layers, attention_dim, heads, use_residual, batch",
    [
        (6, 4, 3, 8, 2, True, 4),  # residual projected in layer 1 only
        (5, 8, 2, 8, 4, True, 3),  # D = a: identity residual everywhere
        (3, 2, 1, 6, 3, False, 1),  # no residual, batch 1
    ],
)
def test_matmul_flops_match_flop_counter(fields, dim, layers, attention_dim, heads, use_residual, batch):
    torch.manual_seed(0)
    net = AutoInt(fields, dim, layers, attention_dim, heads, use_residual=use_residual, use_scale=True, layer_norm=True)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, fields, dim))
    assert counter.get_total_flops() == net.flops().matmul * batch


# --------------------------------------------------------------------------- config, family, presets


def _spec(num_fields: int, vocab: int = 3) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", vocab) for i in range(num_fields)))


def test_config_validation():
    with pytest.raises(ConfigError, match="attention_dim"):
        AutoIntConfig(attention_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="num_heads"):
        AutoIntConfig(num_heads=0)
    with pytest.raises(ConfigError, match="dropout"):
        AutoIntConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="num_layers"):
        model_config_from_dict({"preset": "autoint_plus", "interaction": {"num_layers": 0}})
    with pytest.raises(ConfigError, match="num_head"):
        model_config_from_dict({"preset": "autoint_plus", "interaction": {"num_head": 4}})


def test_config_fields_are_the_layers_arguments():
    parameters = inspect.signature(AutoInt.__init__).parameters
    for field in dataclasses.fields(AutoIntConfig):
        assert parameters[field.name].default == field.default, field.name


def test_autoint_plus_preset_is_parallel():
    config = get_preset("autoint_plus")
    model = create_model(config, _spec(5))
    assert isinstance(model.interaction, AutoInt)
    assert config.head.structure == "parallel"  # AutoInt+: [h ; DNN(x0)] -> logit
    net, cfg = model.interaction, config.interaction
    assert (net.num_layers, net.attention_dim, net.num_heads) == (cfg.num_layers, cfg.attention_dim, cfg.num_heads)


def test_frappe_bars_preset_has_fuxictrs_parameter_count():
    # BARS AutoInt+_frappe_x1 logs 622,180 parameters with a 5,389-row table of D = 10
    # (53,890; the DLRM_frappe_x1 log, 417,891 = 364,001 dense + 53,890, agrees). Dense part:
    #   layer 1: W_Q, W_K, W_V 3·10·128 + W_Res 10·128 + LN 2·128          =   5,376
    #   layers 2-5 (no W_Res, a = i): 4 · (3·128² + 2·128)                   = 197,632
    #   DNN 100-400-400-400 with BN: (100·400 + 400 + 800) + 2·(400·400 + 400 + 800) = 363,600
    #   output Linear([1,280 ; 400] -> 1): 1,681                             total 568,289
    # FuxiCTR has two output layers (fc(h) and the DNN's), so one bias more: 568,290 + 53,890.
    model = create_model(get_preset("autoint_plus_frappe_bars"), _spec(10))
    assert model_cost(model).dense_params == 568_289 == 622_180 - 53_890 - 1


def test_bars_yaml():
    config = Path(__file__).parents[1] / "configs" / "frappe" / "autoint_plus_bars.yaml"
    run = run_config_from_dict(load_yaml(config))
    assert run.model == get_preset("autoint_plus_frappe_bars")
    train = run.train
    assert (train.lr, train.batch_size, train.embedding_l2, train.patience, train.seed) == (1e-3, 4096, 0.1, 2, 2021)


# --------------------------------------------------------------------------- matched FLOPs


def test_width_is_the_head_width():
    family = get_family("autoint")
    base = get_preset("autoint_plus_frappe_bars").interaction  # 4 heads
    resized = family.with_width(base, 20, 10, 10)
    assert (resized.attention_dim, resized.num_heads) == (80, 4)
    assert family.with_width(resized, 20, 10, 10) == resized
    costs = [
        autoint_flops(10, 10, base.num_layers, family.with_width(base, w, 10, 10).attention_dim, 4,
                      use_scale=True, layer_norm=True).total
        for w in range(1, 60)
    ]
    assert costs == sorted(costs)


@pytest.mark.parametrize(
    "preset, dim, budget",
    [
        ("autoint_plus", 16, 300_000),
        ("autoint_plus", 16, 2_000_000),
        ("autoint_plus_frappe_bars", 10, 2_000_000),
        ("autoint_plus_frappe_bars", 10, 4_000_000),
    ],
)
def test_match_budget(preset, dim, budget):
    base = get_preset(preset).replace(embedding_dim=dim)
    spec = _spec(10)
    config = match_budget(base, spec, budget)
    flops = interaction_flops(config, spec).total
    assert abs(flops / budget - 1) <= 0.03, (config.interaction, flops)
    # met by the head width alone at these budgets: heads, layers and the head as configured
    # (with 4 heads the width moves a in steps of 4, and some budgets need another depth)
    assert config.interaction.num_heads == base.interaction.num_heads
    assert config.interaction.num_layers == base.interaction.num_layers
    assert config.interaction.attention_dim % config.interaction.num_heads == 0
    assert config.head == base.head


# --------------------------------------------------------------------------- docstrings


def test_docstring_examples():
    torch.manual_seed(0)
    result = doctest.testmod(mldcn.layers.autoint, verbose=False, report=False)
    assert result.attempted >= 5 and result.failed == 0
