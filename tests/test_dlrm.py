"""DLRM's dot interaction (arXiv 1906.00091): golden tests by hand, a naive reference,
parity with TorchRec's InteractionArch, exact FLOPs, budget matching, presets."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
from pathlib import Path

import pytest
import torch
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mldcn.layers.dot
import mldcn.models.dlrm  # noqa: F401  (registers the family and presets)
from mldcn.config import ConfigError, load_yaml
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers.dot import DLRMInteraction, DotInteraction, dlrm_interaction_flops
from mldcn.models import create_model, get_preset, model_config_from_dict, model_cost
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.dlrm import DLRMConfig
from mldcn.train.run import run_config_from_dict

# --------------------------------------------------------------------------- golden by hand


def test_dot_interaction_golden_and_pair_order():
    x = torch.tensor(
        [
            [[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.0]],
            [[1.0, 1.0], [1.0, -1.0], [2.0, 2.0], [0.0, 0.0]],
        ]
    )  # [B=2, F=4, D=2]
    # pairs in the order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    # example 1: <x0,x1> = 2, <x0,x2> = 0, <x0,x3> = 1, <x1,x2> = 3, <x1,x3> = 3, <x2,x3> = 3
    # example 2: 1 - 1 = 0, 2 + 2 = 4, 0, 2 - 2 = 0, 0, 0
    dot = DotInteraction(num_fields=4, dim=2)
    _assert_close(dot(x), [[2.0, 0.0, 1.0, 3.0, 3.0, 3.0], [0.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
    assert dot.out_dim == 6
    assert dot.pair_index.tolist() == [1, 2, 3, 6, 7, 11]  # i·F + j for i < j
    assert "pair_index" not in dot.state_dict()


def _golden_dlrm(concat_embeddings: bool) -> DLRMInteraction:
    return DLRMInteraction(num_fields=2, dim=2, top_mlp_dim=2, concat_embeddings=concat_embeddings)


X = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])  # [B=1, F=2, D=2]: one pair, <x0, x1> = 3 - 2 = 1


def test_dlrm_interaction_golden_with_embeddings():
    net = _golden_dlrm(concat_embeddings=True)
    linear = net.top.layers[0]
    _set(linear.weight, [[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, -2.0]])  # on z = [x0 (4) ; p (1)]
    _set(linear.bias, [0.0, 0.5])
    # z = [1, 2, 3, -1, 1]; W z + b = [1 + 1, -1 - 2 + 0.5] = [2, -2.5]; ReLU: [2, 0]
    _assert_close(net(X), [[2.0, 0.0]])
    assert (net.top.in_dim, net.out_dim) == (5, 2)


def test_dlrm_interaction_golden_dot_products_only():
    net = _golden_dlrm(concat_embeddings=False)
    linear = net.top.layers[0]
    _set(linear.weight, [[2.0], [-1.0]])  # on z = p = [1]
    _set(linear.bias, [0.5, 0.0])
    # [2 + 0.5, -1]; ReLU: [2.5, 0]
    _assert_close(net(X), [[2.5, 0.0]])
    assert net.top.in_dim == 1


# --------------------------------------------------------------------------- naive reference


def _reference(net: DLRMInteraction, x: torch.Tensor) -> torch.Tensor:
    """One example ``x [F, D]`` with loops: the pairs i < j, then each layer of the top MLP
    (Linear, batch norm at inference, ReLU)."""
    fields = net.num_fields
    pairs = [torch.dot(x[i], x[j]) for i in range(fields) for j in range(i + 1, fields)]
    z = torch.stack(([*x.flatten()] if net.concat_embeddings else []) + pairs)
    for module in net.top.layers:
        if isinstance(module, nn.Linear):
            z = torch.stack([torch.dot(w, z) for w in module.weight]) + module.bias
        elif isinstance(module, nn.BatchNorm1d):
            z = (z - module.running_mean) / torch.sqrt(module.running_var + module.eps) * module.weight + module.bias
        elif isinstance(module, nn.ReLU):
            z = torch.clamp(z, min=0.0)
    return z


@pytest.mark.parametrize(
    "fields, layers, concat_embeddings, batch_norm",
    [(5, 1, True, False), (4, 2, False, True), (2, 3, True, True)],
)
def test_matches_naive_reference(fields, layers, concat_embeddings, batch_norm):
    torch.manual_seed(0)
    net = DLRMInteraction(fields, dim=3, top_mlp_dim=6, top_mlp_layers=layers,
                          concat_embeddings=concat_embeddings, batch_norm=batch_norm).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics and affine parameters
        for module in net.top.layers:
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    x = torch.randn(4, fields, 3)
    expected = torch.stack([_reference(net, example) for example in x])
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- TorchRec parity


@pytest.mark.parametrize("fields, dim", [(2, 3), (5, 4), (10, 16)])
def test_dot_interaction_matches_torchrec(fields, dim):
    """TorchRec's ``InteractionArch(F')`` takes the dense vector ``[B, D]`` and the sparse
    features ``[B, F', D]`` and returns ``[dense ; pairs of [dense, sparse...]]``. Mapping:
    its dense vector is our field 0, its sparse features our fields 1 .. F-1, so its F' + 1
    stacked vectors are our F fields and its pairs (row-major upper triangle) are ours, in
    the same order."""
    dlrm = pytest.importorskip("torchrec.models.dlrm")
    torch.manual_seed(0)
    x = torch.randn(3, fields, dim)
    theirs = dlrm.InteractionArch(num_sparse_features=fields - 1)(x[:, 0], x[:, 1:])  # [B, D + P]
    ours = DotInteraction(fields, dim)(x)  # [B, P]
    assert theirs.shape == (3, dim + ours.shape[1])
    torch.testing.assert_close(ours, theirs[:, dim:], atol=0, rtol=0)
    # and DLRMInteraction's top-MLP input is [flatten(X) ; the same pairs]
    net = DLRMInteraction(fields, dim, top_mlp_dim=4)
    z = torch.cat([x.flatten(1), net.dot(x)], dim=1)
    torch.testing.assert_close(z[:, :dim], theirs[:, :dim], atol=0, rtol=0)
    torch.testing.assert_close(z[:, fields * dim :], theirs[:, dim:], atol=0, rtol=0)


# --------------------------------------------------------------------------- shapes, gradients, errors


def test_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = DLRMInteraction(num_fields=6, dim=4, top_mlp_dim=8, top_mlp_layers=2, batch_norm=True, dropout=0.2)
    out = net(torch.randn(5, 6, 4))
    assert out.shape == (5, 8) and net.out_dim == 8 and net.in_dim == 24
    assert net.top.in_dim == 24 + 15
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: DotInteraction(num_fields=1, dim=4), "num_fields"),
        (lambda: DotInteraction(num_fields=3, dim=0), "dim"),
        (lambda: DLRMInteraction(num_fields=3, dim=2, top_mlp_dim=0), "top_mlp_dim"),
        (lambda: DLRMInteraction(num_fields=3, dim=2, top_mlp_layers=0), "top_mlp_layers"),
    ],
)
def test_invalid_sizes(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    net = DLRMInteraction(num_fields=4, dim=3, top_mlp_dim=5, top_mlp_layers=2, batch_norm=True)
    # X X^T 2·F²·D = 96; z = [12 ; 6 pairs] = 18 wide; Linear 2·18·5 = 180; Linear 2·5·5 = 50
    #                                                              matmul 96 + 180 + 50 = 326
    # per layer: bias 5, batch norm 2·5, ReLU 5 = 20                elementwise 40
    flops = net.flops()
    assert (flops.matmul, flops.elementwise) == (326, 40)
    assert net.dot.flops().matmul == 96
    no_x0 = DLRMInteraction(num_fields=4, dim=3, top_mlp_dim=5, concat_embeddings=False)
    assert no_x0.flops().matmul == 96 + 2 * 6 * 5  # the first layer reads the 6 pairs only


@pytest.mark.parametrize(
    "fields, dim, layers, concat_embeddings, batch",
    [(6, 4, 1, True, 4), (3, 8, 2, False, 3), (2, 2, 3, True, 1)],
)
def test_matmul_flops_match_flop_counter(fields, dim, layers, concat_embeddings, batch):
    torch.manual_seed(0)
    net = DLRMInteraction(fields, dim, top_mlp_dim=7, top_mlp_layers=layers, concat_embeddings=concat_embeddings,
                          batch_norm=True).eval()  # eval: batch norm takes a batch of 1
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, fields, dim))
    assert counter.get_total_flops() == net.flops().matmul * batch


# --------------------------------------------------------------------------- config, family, presets


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


def test_config_validation():
    with pytest.raises(ConfigError, match="top_mlp_dim"):
        DLRMConfig(top_mlp_dim=0)
    with pytest.raises(ConfigError, match="top_mlp_layers"):
        DLRMConfig(top_mlp_layers=0)
    with pytest.raises(ConfigError, match="dropout"):
        DLRMConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="top_mlp_dim"):
        model_config_from_dict({"preset": "dlrm", "interaction": {"top_mlp_dim": -4}})
    with pytest.raises(ConfigError, match="interaction_op"):
        model_config_from_dict({"preset": "dlrm", "interaction": {"interaction_op": "dot"}})


def test_config_fields_are_the_layers_arguments():
    parameters = inspect.signature(DLRMInteraction.__init__).parameters
    for field in dataclasses.fields(DLRMConfig):
        assert parameters[field.name].default == field.default, field.name


def test_dlrm_preset_is_stacked():
    config = get_preset("dlrm")
    model = create_model(config, _spec(5))
    assert isinstance(model.interaction, DLRMInteraction)
    assert config.head.structure == "stacked"  # the head finishes DLRM's top MLP
    assert model.interaction.top_mlp_dim == config.interaction.top_mlp_dim


def test_frappe_bars_preset_is_fuxictrs_top_mlp():
    # BARS DLRM_frappe_x1: top MLP 400-400-400 with BN on the 100-wide concatenated embedding
    # (interaction_op "cat"): (100·400 + 400 + 800) + 2·(400·400 + 400 + 800) + 401 = 364,001
    # dense parameters (417,891 logged, with the 53,890 of the embedding table). Here the
    # first layer reads the 45 dot products too: 45·400 more.
    config = get_preset("dlrm_frappe_bars")
    assert (config.interaction.top_mlp_dim,) + config.head.hidden == (400, 400, 400)
    model = create_model(config, _spec(10))
    assert model_cost(model).dense_params == 364_001 + 45 * 400 == 417_891 - 53_890 + 45 * 400


def test_bars_yaml():
    config = Path(__file__).parents[1] / "configs" / "frappe" / "dlrm_bars.yaml"
    run = run_config_from_dict(load_yaml(config))
    assert run.model == get_preset("dlrm_frappe_bars")
    train = run.train
    assert (train.lr, train.batch_size, train.embedding_l2, train.patience, train.seed) == (1e-3, 4096, 0.1, 2, 2021)


# --------------------------------------------------------------------------- matched FLOPs


@pytest.mark.parametrize("fields, dim", [(10, 10), (39, 16)])
@pytest.mark.parametrize("budget", [100_000, 1_000_000])
def test_match_budget(fields, dim, budget):
    base = get_preset("dlrm").replace(embedding_dim=dim)
    spec = _spec(fields)
    config = match_budget(base, spec, budget)
    flops = interaction_flops(config, spec).total
    assert abs(flops / budget - 1) <= 0.03, (config.interaction, flops)
    assert config.interaction.top_mlp_layers == base.interaction.top_mlp_layers  # met by the width
    assert config.head == base.head
    # the cost formula the family is sized with is the built module's
    cfg = config.interaction
    assert flops == dlrm_interaction_flops(fields, dim, cfg.top_mlp_dim, cfg.top_mlp_layers, cfg.concat_embeddings,
                                           cfg.batch_norm).total


# --------------------------------------------------------------------------- docstrings


def test_docstring_examples():
    torch.manual_seed(0)
    result = doctest.testmod(mldcn.layers.dot, verbose=False, report=False)
    assert result.attempted >= 4 and result.failed == 0
