"""xDeepFM (arXiv 1803.05170): CIN golden tests by hand, a naive reference, exact FLOPs, budget matching."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
import yaml
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch.utils.flop_counter import FlopCounterMode

import mldcn.layers.cin
import mldcn.models.xdeepfm  # noqa: F401  (registers the family and presets)
from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers.cin import CompressedInteractionNet, XDeepFMInteraction, cin_flops, cin_output_dim
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.config import HeadConfig, model_config_from_dict
from mldcn.models.registry import create_model, get_family, get_preset
from mldcn.models.xdeepfm import XDeepFMConfig
from mldcn.train.run import run_config_from_dict

ROOT = Path(__file__).resolve().parent.parent

X = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # [B=1, F=2, D=2]: e1 = [1, 2], e2 = [3, 0]

# Layer 1 sees the F·F = 4 products X^0_i ∘ X^0_j, column i·F + j of its weight:
#   (1,1) e1∘e1 = [1, 4]   (1,2) e1∘e2 = [3, 0]   (2,1) e2∘e1 = [3, 0]   (2,2) e2∘e2 = [9, 0]

# --------------------------------------------------------------------------- golden by hand


def test_cin_one_layer_golden():
    cin = CompressedInteractionNet(num_fields=2, dim=2, layer_sizes=(2,))
    _set(cin.compress[0].weight, [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    _set(cin.compress[0].bias, [1.0, 0.0])
    # map 1: e1∘e2 + 1 = [4, 1]               -> sum over D: 5
    # map 2: e1∘e1 + e2∘e2 = [10, 4]          -> 14
    _assert_close(cin(X), [[5.0, 14.0]])


def test_cin_two_layers_golden():
    cin = CompressedInteractionNet(num_fields=2, dim=2, layer_sizes=(1, 1))
    _set(cin.compress[0].weight, [[0.0, 1.0, 0.0, 0.0]])
    _set(cin.compress[0].bias, [1.0])
    _set(cin.compress[1].weight, [[1.0, 0.5]])  # over X^1∘e1, X^1∘e2
    _set(cin.compress[1].bias, [0.0])
    # X^1 = e1∘e2 + 1 = [4, 1]                             p^1 = 5
    # X^1∘e1 = [4, 2], X^1∘e2 = [12, 0]; X^2 = [4, 2] + 0.5·[12, 0] = [10, 2]   p^2 = 12
    _assert_close(cin(X), [[5.0, 12.0]])


def test_cin_split_half_golden():
    cin = CompressedInteractionNet(num_fields=2, dim=2, layer_sizes=(2, 1), split_half=True)
    assert cin.out_dim == 1 + 1  # H_1/2 pooled + H_2
    _set(cin.compress[0].weight, [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    _set(cin.compress[0].bias, [1.0, 0.0])
    _set(cin.compress[1].weight, [[1.0, 0.5]])  # layer 2 sees only the first map of layer 1
    _set(cin.compress[1].bias, [0.0])
    # layer 1: map 1 = [4, 1] goes on to layer 2 (not pooled); map 2 = e2∘e2 = [9, 0] pooled: 9
    # layer 2: from [4, 1] as in the two-layer test: [10, 2] -> 12
    _assert_close(cin(X), [[9.0, 12.0]])


def test_xdeepfm_interaction_golden():
    net = XDeepFMInteraction(num_fields=2, dim=2, layer_sizes=(1,))
    _set(net.cin.compress[0].weight, [[0.0, 1.0, 0.0, 0.0]])
    _set(net.cin.compress[0].bias, [1.0])
    _set(net.first_order.linear.weight, [[1.0, 0.0, -1.0, 2.0]])
    # [p+ ; w^T x0]: p^1 = 5 as above; x0 = [1, 2, 3, 0]: 1 - 3 = -2
    _assert_close(net(X), [[5.0, -2.0]])
    assert net.out_dim == 2


def test_xdeepfm_model_golden_is_the_papers_output_unit():
    # the paper's output: logit = w_linear·a + w_dnn·x_dnn + w_cin·p+ + b, the parallel head's one unit
    spec = FeatureSpec(categorical=(CategoricalField("user", 1), CategoricalField("item", 1)))
    config = get_preset("xdeepfm").replace(
        embedding_dim=2,
        interaction=XDeepFMConfig(layer_sizes=(1,)),
        head=HeadConfig(structure="parallel", hidden=(1,)),
    )
    model = create_model(config, spec)
    _set(model.embedding.categorical_table, [[1.0, 2.0], [3.0, 0.0]])  # e1, e2 as in X
    _set(model.interaction.cin.compress[0].weight, [[0.0, 1.0, 0.0, 0.0]])
    _set(model.interaction.cin.compress[0].bias, [1.0])
    _set(model.interaction.first_order.linear.weight, [[1.0, 0.0, -1.0, 2.0]])
    hidden = model.head.deep.layers[0]
    _set(hidden.weight, [[0.0, 1.0, 1.0, 0.0]])
    _set(hidden.bias, [0.0])
    _set(model.head.output.weight, [[2.0, 1.0, -1.0]])  # [p+ | linear | DNN]
    _set(model.head.output.bias, [0.25])
    # p+ = 5, linear = -2 (as above); DNN: relu(2 + 3) = 5
    # logit = 2·5 + 1·(-2) - 1·5 + 0.25 = 3.25
    _assert_close(model(torch.tensor([[0, 0]]), torch.zeros(1, 0)), [[3.25]])


# --------------------------------------------------------------------------- naive reference


def _reference_cin(cin: CompressedInteractionNet, x0: torch.Tensor) -> torch.Tensor:
    """One example ``x0 [F, D]``, straight from the paper's equation, with loops."""
    f = cin.num_fields
    prev = [x0[j] for j in range(f)]  # X^0 rows
    pooled = []
    for k, linear in enumerate(cin.compress):
        rows = []
        for h in range(linear.out_features):
            # X^k_h = Σ_i Σ_j W^{k,h}_{ij} (X^{k-1}_i ∘ X^0_j) + b^k_h
            acc = sum(
                linear.weight[h, i * f + j] * (prev[i] * x0[j]) for i in range(len(prev)) for j in range(f)
            )
            rows.append(acc + linear.bias[h])
        last = k == len(cin.compress) - 1
        if cin.split_half and not last:
            half = len(rows) // 2
            pooled += [r.sum() for r in rows[half:]]
            prev = rows[:half]
        else:
            pooled += [r.sum() for r in rows]
            prev = rows
    return torch.stack(pooled)


@pytest.mark.parametrize(
    "fields, dim, sizes, split",
    [(3, 4, (5,), False), (4, 3, (6, 4, 3), False), (5, 2, (4, 6, 3), True), (2, 5, (2, 2), True)],
)
def test_cin_matches_naive_reference(fields, dim, sizes, split):
    torch.manual_seed(0)
    cin = CompressedInteractionNet(fields, dim, sizes, split_half=split)
    with torch.no_grad():  # non-zero biases too
        for linear in cin.compress:
            linear.bias.normal_()
    x = torch.randn(3, fields, dim)
    expected = torch.stack([_reference_cin(cin, example) for example in x])
    out = cin(x)
    assert out.shape == (3, cin_output_dim(sizes, split)) == (3, cin.out_dim)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_layer_k_has_interactions_of_order_k_plus_one():
    # without biases, layer k is homogeneous of degree k+1 in the embeddings: p^k(t·E) = t^(k+1) p^k(E)
    torch.manual_seed(0)
    cin = CompressedInteractionNet(num_fields=4, dim=3, layer_sizes=(2, 3, 1))
    with torch.no_grad():
        for linear in cin.compress:
            linear.bias.zero_()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    cin = cin.double()
    scaled, base = cin(2.0 * x), cin(x)
    powers = torch.tensor([4.0, 4.0, 8.0, 8.0, 8.0, 16.0], dtype=torch.float64)  # 2^2, 2^3, 2^4
    torch.testing.assert_close(scaled, base * powers)


# --------------------------------------------------------------------------- shapes, gradients, errors


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = XDeepFMInteraction(num_fields=5, dim=4, layer_sizes=(6, 4, 2), split_half=True)
    out = net(torch.randn(3, 5, 4))
    assert out.shape == (3, 3 + 2 + 2 + 1) and net.out_dim == 8
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: CompressedInteractionNet(0, 3, (4,)), "num_fields"),
        (lambda: CompressedInteractionNet(3, 2, ()), "layer_sizes"),
        (lambda: CompressedInteractionNet(3, 2, (4, 0)), "layer_sizes"),
        (lambda: CompressedInteractionNet(3, 2, (3, 4), split_half=True), "even"),
    ],
)
def test_invalid_sizes(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_config_validation():
    assert XDeepFMConfig(layer_sizes=(4, 3), split_half=True).layer_sizes == (4, 3)  # the last may be odd
    with pytest.raises(ConfigError, match="layer_sizes"):
        XDeepFMConfig(layer_sizes=(3, 4), split_half=True)
    with pytest.raises(ConfigError, match="layer_sizes"):
        XDeepFMConfig(layer_sizes=(64, 0))
    with pytest.raises(ConfigError, match="layer_sizes"):
        XDeepFMConfig(layer_sizes=())
    with pytest.raises(ConfigError, match="cin_layer_units"):
        model_config_from_dict({"preset": "xdeepfm", "interaction": {"cin_layer_units": [64]}})
    config = model_config_from_dict({"preset": "xdeepfm", "interaction": {"layer_sizes": [16, 8]}})
    assert config.interaction.layer_sizes == (16, 8)


def test_docstring_examples():
    result = doctest.testmod(mldcn.layers.cin, verbose=False, report=False)
    assert result.attempted >= 3 and result.failed == 0


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    net = XDeepFMInteraction(num_fields=3, dim=2, layer_sizes=(4, 2), split_half=True)
    # layer 1: 3 maps in, 3·3 = 9 products: matmul 2·4·9·2 = 144
    #          elementwise: products 9·2 = 18, bias 4·2 = 8, pooling 2 maps · 2 = 4        -> 30
    # layer 2: 2 maps in (half of 4), 2·3 = 6 products: matmul 2·2·6·2 = 48
    #          elementwise: 6·2 = 12, bias 2·2 = 4, pooling 2·2 = 4                        -> 20
    # first-order term: 2·F·D = 12 matmul
    assert (net.cin.flops().matmul, net.cin.flops().elementwise) == (192, 50)
    assert (net.flops().matmul, net.flops().elementwise) == (204, 50)


@pytest.mark.parametrize(
    "fields, dim, sizes, split, batch",
    [(3, 2, (4, 2), True, 4), (10, 10, (64,), False, 1), (6, 4, (5, 7, 3), False, 3), (5, 3, (8, 6, 5), True, 2)],
)
def test_matmul_flops_match_flop_counter(fields, dim, sizes, split, batch):
    torch.manual_seed(0)
    net = XDeepFMInteraction(fields, dim, sizes, split_half=split)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, fields, dim))
    assert counter.get_total_flops() == net.flops().matmul * batch
    assert net.cin.flops() == cin_flops(fields, dim, sizes, split)


# --------------------------------------------------------------------------- family, presets, budget


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


def test_width_resizes_every_layer_and_cost_grows():
    family = get_family("xdeepfm")
    assert (family.width, family.depth, family.layer) == ("layer_sizes", "layer_sizes", XDeepFMInteraction)
    base = get_preset("xdeepfm").interaction
    assert family.with_width(base, 20, 10, 10).layer_sizes == (20, 20, 20)
    split = XDeepFMConfig(layer_sizes=(8, 8), split_half=True)
    assert family.with_width(split, 5, 10, 10).layer_sizes == (10, 10)  # even, for the halves
    costs = [cin_flops(10, 10, family.with_width(base, w, 10, 10).layer_sizes).total for w in range(1, 200)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)


@pytest.mark.parametrize("budget", [600_000, 2_000_000])
@pytest.mark.parametrize("split", [False, True])
def test_match_budget(budget, split):
    base = get_preset("xdeepfm").replace(embedding_dim=10).with_interaction(split_half=split)
    spec = _spec(10)
    config = match_budget(base, spec, budget)
    flops = interaction_flops(config, spec).total
    assert abs(flops / budget - 1) <= 0.03, (config.interaction, flops)
    sizes = config.interaction.layer_sizes
    assert len(sizes) == len(base.interaction.layer_sizes)  # met by the width alone, at the configured depth
    assert len(set(sizes)) == 1  # every layer the same width
    assert not split or sizes[0] % 2 == 0
    assert config.head == base.head and config.embedding_dim == 10


def test_presets():
    default = get_preset("xdeepfm")
    assert default.interaction == XDeepFMConfig(layer_sizes=(32, 32, 32), split_half=False)
    assert default.head.structure == "parallel"  # the paper's DNN beside the CIN
    bars = get_preset("xdeepfm_frappe_bars")
    assert bars.interaction == XDeepFMConfig(layer_sizes=(64,), split_half=False)
    assert bars.embedding_dim == 10
    assert bars.head == HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.2, batch_norm=True)


def test_bars_yaml():
    data = yaml.safe_load((ROOT / "configs" / "frappe" / "xdeepfm_bars.yaml").read_text())
    run = run_config_from_dict(data)
    assert run.model == get_preset("xdeepfm_frappe_bars")
    train = run.train
    assert (train.lr, train.batch_size, train.embedding_l2, train.patience, train.seed) == (1e-3, 4096, 0.1, 2, 2021)
