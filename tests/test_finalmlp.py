"""FinalMLP (arXiv 2304.00902): golden tests by hand, a naive reference, the gates' start,
exact FLOPs, the width scaling, budget matching, presets and the BARS config."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch.utils.flop_counter import FlopCounterMode

import mldcn.layers.finalmlp
import mldcn.models.finalmlp  # noqa: F401  (registers the family)
from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers.finalmlp import BilinearFusion, FeatureGate, FinalMLP
from mldcn.layers.head import StackedHead
from mldcn.models import create_model, get_family, get_preset, model_config_from_dict
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.finalmlp import FinalMLPConfig
from mldcn.train.run import run_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
LN3 = math.log(3.0)  # 2σ(ln 3) = 2 · 3/4 = 1.5

# --------------------------------------------------------------------------- golden by hand

X = torch.tensor([[[1.0], [2.0]]])  # [B=1, F=2, D=1]: e = [1, 2]


def test_feature_gate_golden_field_context():
    gate = FeatureGate(num_fields=2, dim=1, context_fields=(0,))  # no hidden layer
    assert gate.context is None
    _set(gate.output.weight, [[0.0], [LN3]])  # [d=2, D=1]
    _set(gate.output.bias, [0.0, 0.0])
    # s = e_0 = [1]; g = [0, ln 3]; 2σ(g) = [1, 1.5]; h = [1, 2] ⊙ [1, 1.5] = [1, 3]
    _assert_close(gate(X), [[1.0, 3.0]])


def test_feature_gate_golden_hidden_layer():
    gate = FeatureGate(num_fields=2, dim=1, hidden=(2,), context_fields=(1,))
    hidden = gate.mlp.layers[0]
    _set(hidden.weight, [[1.0], [-1.0]])
    _set(hidden.bias, [0.0, 0.5])
    _set(gate.output.weight, [[0.0, 5.0], [LN3 / 2, 7.0]])
    _set(gate.output.bias, [0.0, 0.0])
    # s = e_1 = [2]; hidden relu([2, -2 + 0.5]) = [2, 0]; g = [0, ln 3 / 2 · 2] = [0, ln 3]
    # 2σ(g) = [1, 1.5]; h = [1, 3]
    _assert_close(gate(X), [[1.0, 3.0]])


def test_feature_gate_golden_learned_context_is_global():
    gate = FeatureGate(num_fields=2, dim=1)
    assert gate.context is not None
    _set(gate.context, [LN3])
    _set(gate.output.weight, [[1.0], [0.0]])
    _set(gate.output.bias, [0.0, 0.0])
    # g = [ln 3, 0] for every example: 2σ(g) = [1.5, 1]
    x = torch.tensor([[[1.0], [2.0]], [[-2.0], [4.0]]])
    _assert_close(gate(x), [[1.5, 2.0], [-3.0, 4.0]])


def test_bilinear_fusion_golden_one_head():
    fusion = BilinearFusion(in_dim1=2, in_dim2=2, num_heads=1)
    _set(fusion.w1, [1.0, 0.0])
    _set(fusion.w2, [0.0, 1.0])
    _set(fusion.w3, [[1.0, 0.0], [0.0, 2.0]])
    # o1 = [1, 2], o2 = [3, 1]: w1^T o1 = 1; w2^T o2 = 1; o1^T W3 o2 = 1·3 + 2·2·1 = 7; BF = 9
    _assert_close(fusion(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]])), [[9.0]])


def test_bilinear_fusion_golden_two_heads():
    fusion = BilinearFusion(in_dim1=2, in_dim2=4, num_heads=2)  # a = 1, c = 2
    _set(fusion.w1, [[1.0], [-1.0]])
    _set(fusion.w2, [[1.0, 1.0], [1.0, 0.0]])
    _set(fusion.w3, [[[1.0, 0.0]], [[0.5, 1.0]]])
    # head 1: o11 = [1], o21 = [3, 1]: 1·1 + (3 + 1) + 1·(1·3 + 0·1) = 1 + 4 + 3 = 8
    # head 2: o12 = [2], o22 = [0, 2]: -1·2 + (0 + 0) + 2·(0.5·0 + 1·2) = -2 + 0 + 4 = 2
    out = fusion(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0, 0.0, 2.0]]))
    _assert_close(out, [[8.0, 2.0]])


def test_finalmlp_golden():
    net = FinalMLP(
        num_fields=2, dim=1, mlp1_hidden=(2,), mlp2_hidden=(1,), gate_hidden=(), gate1_context=(0,), num_heads=1
    )
    _set(net.gate1.output.weight, [[0.0], [0.0]])
    _set(net.gate1.output.bias, [0.0, LN3])  # gate 1 = [1, 1.5]: h1 = [1, 3]
    _set(net.gate2.output.weight, [[0.0], [0.0]])
    _set(net.gate2.output.bias, [0.0, 0.0])  # gate 2 = [1, 1]: h2 = e = [1, 2]
    _set(net.mlp1.layers[0].weight, [[1.0, 0.0], [0.0, 1.0]])
    _set(net.mlp1.layers[0].bias, [0.0, 0.0])  # o1 = relu(h1) = [1, 3]
    _set(net.mlp2.layers[0].weight, [[1.0, 1.0]])
    _set(net.mlp2.layers[0].bias, [0.0])  # o2 = relu(1 + 2) = [3]
    _set(net.fusion.w1, [1.0, 1.0])  # 1 + 3 = 4
    _set(net.fusion.w2, [2.0])  # 2·3 = 6
    _set(net.fusion.w3, [[1.0], [0.0]])  # o1^T W3 o2 = 1·1·3 = 3
    _assert_close(net(X), [[13.0]])  # 4 + 6 + 3


def test_model_logit_is_the_sum_of_the_heads_plus_a_bias():
    # the presets' head is a linear read-out of the k head values: with a_j = 1 the logit is
    # FinalMLP's own, b + Σ_j BF_j
    torch.manual_seed(0)
    model = create_model("finalmlp_frappe_bars", FRAPPE).eval()
    assert isinstance(model.head, StackedHead) and not model.head.deep.hidden
    assert model.head.output.in_features == 5  # one weight per head
    _set(model.head.output.weight, torch.ones(1, 5))
    _set(model.head.output.bias, [0.25])
    categorical = torch.tensor([[3, 7, 1, 2, 1, 1, 1, 4, 5, 6], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    numeric = torch.zeros(2, 0)
    with torch.no_grad():
        heads = model.interaction(model.embedding(categorical, numeric))
        torch.testing.assert_close(model(categorical, numeric), heads.sum(-1, keepdim=True) + 0.25)


# --------------------------------------------------------------------------- naive reference


def _linear(linear: torch.nn.Linear, v: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.dot(w, v) for w in linear.weight]) + linear.bias


def _reference_gate(gate: FeatureGate, x: torch.Tensor) -> torch.Tensor:
    """One example ``x [F, D]``: h = 2σ(W_out relu(...) + b_out) ⊙ e."""
    if gate.context is None:
        s = torch.cat([x[f] for f in gate.context_fields])
    else:
        s = gate.context
    for layer in gate.mlp.layers:
        if isinstance(layer, torch.nn.Linear):
            s = torch.relu(_linear(layer, s))
    g = _linear(gate.output, s)
    return torch.stack([2.0 / (1.0 + torch.exp(-gi)) for gi in g]) * x.flatten()


def _reference(net: FinalMLP, x: torch.Tensor) -> torch.Tensor:
    """One example, straight from the paper's equations (streams without BN or dropout)."""
    h1 = _reference_gate(net.gate1, x) if net.feature_gating else x.flatten()
    h2 = _reference_gate(net.gate2, x) if net.feature_gating else x.flatten()
    outs = []
    for mlp, h in ((net.mlp1, h1), (net.mlp2, h2)):
        for layer in mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                h = torch.relu(_linear(layer, h))
        outs.append(h)
    o1, o2 = outs
    k, fusion = net.num_heads, net.fusion
    a, c = len(o1) // k, len(o2) // k
    heads = []
    for j in range(k):  # BF_j = w_1j^T o_1j + w_2j^T o_2j + o_1j^T W_3j o_2j
        o1j, o2j = o1[j * a : (j + 1) * a], o2[j * c : (j + 1) * c]
        linear = sum(fusion.w1[j, p, 0] * o1j[p] for p in range(a))
        linear = linear + sum(fusion.w2[j, 0, q] * o2j[q] for q in range(c))
        bilinear = sum(o1j[p] * fusion.w3[j, p, q] * o2j[q] for p in range(a) for q in range(c))
        heads.append(linear + bilinear)
    return torch.stack(heads)


@pytest.mark.parametrize(
    "mlp1, mlp2, gate_hidden, ctx1, ctx2, heads, gating",
    [
        ((6,), (4,), (5,), (0,), (1, 2), 2, True),  # field contexts, one of two fields
        ((8, 6), (3,), (), (), (), 3, True),  # learned contexts, no gate hidden layer
        ((4,), (4, 2), (3, 2), (2,), (), 1, True),  # mixed; two gate hidden layers
        ((6,), (6,), (5,), (), (), 2, False),  # DualMLP with bilinear fusion
    ],
)
def test_matches_naive_reference(mlp1, mlp2, gate_hidden, ctx1, ctx2, heads, gating):
    torch.manual_seed(0)
    net = FinalMLP(3, 2, mlp1_hidden=mlp1, mlp2_hidden=mlp2, gate_hidden=gate_hidden, gate1_context=ctx1,
                   gate2_context=ctx2, num_heads=heads, feature_gating=gating)
    with torch.no_grad():  # away from the init: biases and learned contexts non-zero, gates not ≈ 1
        for name, param in net.named_parameters():
            if name.endswith("bias") or name.endswith("context"):
                param.normal_()
    x = torch.randn(4, 3, 2)
    expected = torch.stack([_reference(net, example) for example in x])
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- init, shapes, gradients


def test_gates_start_at_one():
    # embeddings start at ~1e-4 (and so does the learned context): every gate starts at 2σ(≈0) ≈ 1
    torch.manual_seed(0)
    net = FinalMLP(4, 3, gate_hidden=(16,), gate1_context=(0,))
    x = torch.randn(5, 4, 3) * 1e-4
    for gate in (net.gate1, net.gate2):
        torch.testing.assert_close(gate.gate(x), torch.ones(5, 12), atol=1e-3, rtol=0)


def test_learned_context_trains_every_gate_parameter():
    # FuxiCTR starts the learned context at 0, where the ReLU's gradient is 0: only the gate's
    # output bias would train. Here it starts like an embedding row, and everything trains.
    torch.manual_seed(0)
    gate = FeatureGate(num_fields=3, dim=4, hidden=(16,))
    x = torch.randn(6, 3, 4)
    gate(x).square().sum().backward()
    for name, param in gate.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    gate.zero_grad()
    with torch.no_grad():
        gate.context.zero_()  # FuxiCTR's start
    gate(x).square().sum().backward()
    trained = {name for name, param in gate.named_parameters() if param.grad.abs().sum() > 0}
    assert trained == {"output.bias"}


def test_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = FinalMLP(5, 3, mlp1_hidden=(12, 10), mlp2_hidden=(5,), mlp1_batch_norm=True, mlp2_dropout=0.2,
                   gate_hidden=(7,), gate1_context=(0, 4), num_heads=5)
    net.train()
    out = net(torch.randn(8, 5, 3))
    assert out.shape == (8, 5) and net.out_dim == 5 and net.in_dim == 15
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mlp1_hidden=(6,), mlp2_hidden=(4,), num_heads=3), "num_heads"),
        (dict(gate1_context=(3,)), "gate1_context"),
        (dict(gate2_context=(1, 1)), "gate2_context"),
        (dict(mlp2_hidden=()), "mlp1_hidden and mlp2_hidden"),
    ],
)
def test_invalid_layer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinalMLP(3, 2, **kwargs)


def test_docstring_examples_run():
    result = doctest.testmod(mldcn.layers.finalmlp, verbose=False, report=False)
    assert result.attempted >= 6 and result.failed == 0


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    net = FinalMLP(2, 3, mlp1_hidden=(4,), mlp2_hidden=(2,), gate_hidden=(5,), gate1_context=(0,), num_heads=2)
    # d = 6. Each gate (context width 3 either way): hidden 2·3·5 = 30 matmul, bias + ReLU 10;
    #   output 2·5·6 = 60 matmul, bias 6; 2σ 5·6 = 30; ⊙ e 6          -> 90 matmul, 52 elementwise
    # streams: 2·6·4 = 48, bias + ReLU 8; 2·6·2 = 24, 4                -> 72 matmul, 12 elementwise
    # fusion (a = 2, c = 1): o1^T W3 2·4·1 = 8; (· + w2) o2 2·2 = 4; w1^T o1 2·4 = 8
    #   + w2 2, + w1^T o1 2                                           -> 20 matmul, 4 elementwise
    flops = net.flops()
    assert (flops.matmul, flops.elementwise) == (2 * 90 + 72 + 20, 2 * 52 + 12 + 4)
    bn = FinalMLP(2, 3, mlp1_hidden=(4,), mlp2_hidden=(2,), mlp1_batch_norm=True, mlp2_batch_norm=True,
                  gate_hidden=(5,), gate1_context=(0,), num_heads=2)
    assert bn.flops().elementwise == flops.elementwise + 2 * (4 + 2)  # folded BN, 2 per element
    plain = FinalMLP(2, 3, mlp1_hidden=(4,), mlp2_hidden=(2,), feature_gating=False, num_heads=2)
    assert (plain.flops().matmul, plain.flops().elementwise) == (72 + 20, 12 + 4)


@pytest.mark.parametrize(
    "kwargs, batch",
    [
        (dict(mlp1_hidden=(8,), mlp2_hidden=(4,), gate_hidden=(6,), gate1_context=(0,), gate2_context=(1, 2)), 3),
        (dict(mlp1_hidden=(10, 5), mlp2_hidden=(5,), gate_hidden=(), num_heads=5), 1),  # learned contexts, batch 1
        (dict(mlp1_hidden=(6,), mlp2_hidden=(6, 3), feature_gating=False, num_heads=3), 4),
        (dict(mlp1_hidden=(4,), mlp2_hidden=(4,), gate_hidden=(3, 2), num_heads=1, mlp1_batch_norm=True), 2),
    ],
)
def test_matmul_flops_match_flop_counter(kwargs, batch):
    torch.manual_seed(0)
    net = FinalMLP(4, 3, **kwargs).eval()
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, 4, 3))
    assert counter.get_total_flops() == net.flops().matmul * batch


# --------------------------------------------------------------------------- config and family


def test_config_validation():
    with pytest.raises(ConfigError, match="mlp2_hidden"):
        FinalMLPConfig(mlp2_hidden=(101,), num_heads=5)  # not a multiple of the heads
    with pytest.raises(ConfigError, match="mlp1_hidden"):
        FinalMLPConfig(mlp1_hidden=())
    with pytest.raises(ConfigError, match="mlp1_dropout"):
        FinalMLPConfig(mlp1_dropout=1.0)
    with pytest.raises(ConfigError, match="gate2_context"):
        FinalMLPConfig(gate2_context=(-1,))
    with pytest.raises(ConfigError, match="num_heads"):
        FinalMLPConfig(num_heads=0)
    with pytest.raises(ConfigError, match="gate_hidden"):
        model_config_from_dict({"preset": "finalmlp", "interaction": {"gate_hidden": [0]}})
    with pytest.raises(ConfigError, match="fs_hidden_units"):  # FuxiCTR's name is not a key here
        model_config_from_dict({"preset": "finalmlp", "interaction": {"fs_hidden_units": [64]}})
    with pytest.raises(ValueError, match="gate1_context"):  # an index past the spec's fields
        create_model(get_preset("finalmlp").with_interaction(gate1_context=(5,)), _spec(5))


def test_config_options_are_the_layers_arguments():
    parameters = inspect.signature(FinalMLP.__init__).parameters
    for field in dataclasses.fields(FinalMLPConfig):
        assert parameters[field.name].default == field.default, field.name
    assert get_family("finalmlp").layer is FinalMLP


# --------------------------------------------------------------------------- presets, BARS


# Frappe_x1's ten categorical fields with FuxiCTR's vocabulary sizes (BARS run log)
FRAPPE = FeatureSpec(
    categorical=tuple(
        CategoricalField(name, size)
        for name, size in [
            ("user", 956), ("item", 4084), ("daytime", 9), ("weekday", 9), ("isweekend", 4),
            ("homework", 5), ("cost", 4), ("weather", 11), ("country", 82), ("city", 235),
        ]
    )
)


def test_bars_preset():
    config = get_preset("finalmlp_frappe_bars")
    cfg = config.interaction
    assert (cfg.mlp1_hidden, cfg.mlp2_hidden, cfg.gate_hidden, cfg.num_heads) == ((400,), (100,), (400,), 5)
    assert (cfg.mlp1_dropout, cfg.mlp2_dropout, cfg.mlp1_batch_norm, cfg.mlp2_batch_norm) == (0.4, 0.4, True, True)
    assert cfg.feature_gating and config.embedding_dim == 10
    assert (FRAPPE.names[cfg.gate1_context[0]], FRAPPE.names[cfg.gate2_context[0]]) == ("user", "item")
    assert config.head.structure == "stacked" and config.head.hidden == ()


def test_bars_preset_has_fuxictrs_parameters_but_the_context_tables():
    # BARS's run log: 253,392 parameters. FuxiCTR embeds the gate contexts (user, item) in
    # tables of their own, (956 + 4084)·10 = 50,400 parameters, and its fusion has two biases
    # (w_x's and w_y's) where the head here has a weight per head and one bias (5 + 1)
    model = create_model("finalmlp_frappe_bars", FRAPPE)
    assert sum(p.numel() for p in model.parameters()) == 253_392 - 50_400 - 2 + 6


def test_default_preset_builds_on_any_spec():
    config = get_preset("finalmlp")
    assert config.interaction.gate1_context == config.interaction.gate2_context == ()  # global gates
    assert config.head.hidden == ()
    model = create_model(config, _spec(3))
    assert isinstance(model.interaction, FinalMLP) and model.interaction.out_dim == config.interaction.num_heads


def test_bars_config_file():
    data = yaml.safe_load((ROOT / "configs" / "frappe" / "finalmlp_bars.yaml").read_text())
    config = run_config_from_dict(data)
    assert config.model == get_preset("finalmlp_frappe_bars")
    train = config.train
    assert (train.lr, train.batch_size, train.embedding_l2, train.patience, train.seed) == (1e-3, 4096, 0.05, 2, 2021)
    assert train.weight_decay == 0.0  # BARS net_regularizer 0


# --------------------------------------------------------------------------- matched FLOPs


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


def test_scale_by_hand():
    family = get_family("finalmlp")
    base = get_preset("finalmlp_frappe_bars").interaction  # streams 400 and 100, gates 400, 5 heads
    wide = family.with_width(base, 800, 10, 10)
    assert (wide.mlp1_hidden, wide.mlp2_hidden, wide.gate_hidden) == ((800,), (200,), (800,))
    # 402: stream 1 to a multiple of 5 (400), stream 2 round(100.5 / 5)·5 = 100, gates 402
    odd = family.with_width(base, 402, 10, 10)
    assert (odd.mlp1_hidden, odd.mlp2_hidden, odd.gate_hidden) == ((400,), (100,), (402,))
    # tiny widths keep every stream at least num_heads wide and every layer at least 1
    tiny = family.with_width(base, 1, 10, 10)
    assert (tiny.mlp1_hidden, tiny.mlp2_hidden, tiny.gate_hidden) == ((5,), (5,), (1,))
    two_layers = dataclasses.replace(base, mlp1_hidden=(400, 200), mlp2_hidden=(100,), num_heads=2)
    scaled = family.with_width(two_layers, 100, 10, 10)
    assert (scaled.mlp1_hidden, scaled.mlp2_hidden, scaled.gate_hidden) == ((100, 50), (26,), (100,))
    kept = ("num_heads", "gate1_context", "gate2_context", "mlp1_dropout", "mlp1_batch_norm", "feature_gating")
    assert all(getattr(wide, name) == getattr(base, name) for name in kept)


def test_cost_is_non_decreasing_in_width_with_small_steps():
    family = get_family("finalmlp")
    base = get_preset("finalmlp_frappe_bars")
    spec = _spec(10)
    costs = [
        interaction_flops(base.replace(interaction=family.with_width(base.interaction, w, 10, 10)), spec).total
        for w in range(1, 400, 3)
    ]
    assert costs == sorted(costs)
    steps = [b / a - 1 for a, b in zip(costs, costs[1:]) if a >= 50_000]
    assert steps and max(steps) < 0.06  # width steps of 3: within ±3% of any budget above 50k


@pytest.mark.parametrize(
    "preset, fields, dim, budget",
    [
        ("finalmlp_frappe_bars", 10, 10, 100_000),
        ("finalmlp_frappe_bars", 10, 10, 1_000_000),
        ("finalmlp", 14, 16, 300_000),
    ],
)
def test_match_budget(preset, fields, dim, budget):
    base = get_preset(preset).replace(embedding_dim=dim)
    spec = _spec(fields)
    config = match_budget(base, spec, budget)
    flops = interaction_flops(config, spec).total
    assert abs(flops / budget - 1) <= 0.03, (config.interaction, flops)
    assert config.head == base.head and config.interaction.num_heads == base.interaction.num_heads
    # the streams keep their proportions (4:1 on Frappe)
    ratio = config.interaction.mlp1_hidden[0] / config.interaction.mlp2_hidden[0]
    assert ratio == pytest.approx(base.interaction.mlp1_hidden[0] / base.interaction.mlp2_hidden[0], rel=0.1)
