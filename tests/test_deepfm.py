"""DeepFM (arXiv 1703.04247): golden tests by hand, a naive reference, TorchRec parity, exact FLOPs."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
import yaml
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch.utils.flop_counter import FlopCounterMode

import mldcn.layers.fm
import mldcn.models.deepfm  # noqa: F401  (registers the family and presets)
from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers.fm import FactorizationMachine, FirstOrderTerm, fm_second_order
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.config import HeadConfig, model_config_from_dict
from mldcn.models.deepfm import DeepFMConfig
from mldcn.models.registry import create_model, get_family, get_preset
from mldcn.train.run import run_config_from_dict

ROOT = Path(__file__).resolve().parent.parent

# two examples, F = 3 fields, D = 2
X = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]],
        [[1.0, -1.0], [2.0, 2.0], [-1.0, 0.0]],
    ]
)

# --------------------------------------------------------------------------- golden by hand


def test_second_order_golden():
    # example 1: <e1,e2> = 3, <e1,e3> = 2, <e2,e3> = 0                        -> 5
    #   by the O(FD) form: Σ_f e = [4, 3], squared [16, 9]; Σ_f e² = [10, 5];
    #   0.5 · ((16 - 10) + (9 - 5)) = 5
    # example 2: <e1,e2> = 2 - 2 = 0, <e1,e3> = -1, <e2,e3> = -2              -> -3
    #   Σ_f e = [2, 1], squared [4, 1]; Σ_f e² = [6, 5]; 0.5 · ((4 - 6) + (1 - 5)) = -3
    _assert_close(fm_second_order(X), [[5.0], [-3.0]])


def test_first_order_golden():
    term = FirstOrderTerm(num_fields=3, dim=2)
    _set(term.linear.weight, [[1.0, 0.0, 0.0, 2.0, -1.0, 0.5]])  # w over x0 = [e1 ; e2 ; e3]
    # example 1: x0 = [1, 2, 3, 0, 0, 1]:   1 + 0 + 0 + 0 + 0 + 0.5 = 1.5
    # example 2: x0 = [1, -1, 2, 2, -1, 0]: 1 + 0 + 0 + 4 + 1 + 0   = 6
    _assert_close(term(X), [[1.5], [6.0]])


def test_factorization_machine_golden():
    fm = FactorizationMachine(num_fields=3, dim=2)
    _set(fm.first_order.linear.weight, [[1.0, 0.0, 0.0, 2.0, -1.0, 0.5]])
    # [first order, second order] per example, from the two tests above
    _assert_close(fm(X), [[1.5, 5.0], [6.0, -3.0]])
    assert fm.out_dim == 2


def test_deepfm_model_golden_is_fm_plus_dnn():
    # The paper's logit y_FM + y_DNN: the parallel head with output weights [1, 1 | v].
    spec = FeatureSpec(categorical=(CategoricalField("user", 2), CategoricalField("item", 2)))
    config = get_preset("deepfm").replace(embedding_dim=2, head=HeadConfig(structure="parallel", hidden=(1,)))
    model = create_model(config, spec)
    _set(model.embedding.categorical_table, [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [3.0, -1.0]])
    _set(model.interaction.first_order.linear.weight, [[1.0, 1.0, 0.0, 2.0]])
    hidden = model.head.deep.layers[0]
    _set(hidden.weight, [[1.0, 0.0, 0.0, 1.0]])
    _set(hidden.bias, [0.0])
    _set(model.head.output.weight, [[1.0, 1.0, 2.0]])  # [first, second | DNN]
    _set(model.head.output.bias, [0.5])
    # user 0 -> e1 = [1, 2]; item 1 -> row 3, e2 = [3, -1]; x0 = [1, 2, 3, -1]
    # first order: 1 + 2 + 0 - 2 = 1;  second order: <e1, e2> = 3 - 2 = 1
    # DNN: relu(1·1 + 1·(-1)) = relu(0) = 0
    # logit = 1 + 1 + 2·0 + 0.5 = 2.5
    logits = model(torch.tensor([[0, 1]]), torch.zeros(1, 0))
    _assert_close(logits, [[2.5]])


# --------------------------------------------------------------------------- naive reference


def _reference(fm: FactorizationMachine, x: torch.Tensor) -> torch.Tensor:
    """One example ``x [F, D]`` straight from y_FM's definition, with loops."""
    w = fm.first_order.linear.weight[0].view(fm.num_fields, fm.dim)  # w_f per field
    first = sum(torch.dot(w[f], x[f]) for f in range(fm.num_fields))
    second = sum(
        torch.dot(x[f], x[g]) for f in range(fm.num_fields) for g in range(f + 1, fm.num_fields)
    )
    return torch.stack([first, second])


@pytest.mark.parametrize("fields, dim", [(2, 1), (5, 3), (9, 8)])
def test_matches_naive_reference(fields, dim):
    torch.manual_seed(0)
    fm = FactorizationMachine(fields, dim)
    x = torch.randn(4, fields, dim)
    expected = torch.stack([_reference(fm, example) for example in x])
    torch.testing.assert_close(fm(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- TorchRec parity


def test_second_order_matches_torchrec():
    torchrec_deepfm = pytest.importorskip("torchrec.modules.deepfm")
    torch.manual_seed(0)
    tr_fm = torchrec_deepfm.FactorizationMachine()
    # TorchRec flattens its inputs to [B, N·D] and takes the FM of those N·D scalars. With
    # D = 1 that is the FM of the N field embeddings:
    x = torch.randn(5, 7, 1)
    torch.testing.assert_close(fm_second_order(x), tr_fm([x]))
    # With D > 1 it would pair coordinates d != d' too; the field-embedding FM is the sum of
    # its per-coordinate FMs, each a TorchRec FM on [B, F, 1]:
    x = torch.randn(5, 7, 4)
    per_coordinate = sum(tr_fm([x[:, :, d : d + 1]]) for d in range(x.shape[2]))
    torch.testing.assert_close(fm_second_order(x), per_coordinate, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fm_second_order(x), tr_fm([x]), atol=1e-3)  # the [B, F, D] input is not that


# --------------------------------------------------------------------------- shapes, gradients, errors


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    fm = FactorizationMachine(num_fields=4, dim=3)
    x = torch.randn(5, 4, 3, requires_grad=True)
    out = fm(x)
    assert out.shape == (5, 2)
    out.sum().backward()
    assert fm.first_order.linear.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "factory",
    [lambda: FactorizationMachine(0, 3), lambda: FactorizationMachine(3, 0), lambda: FirstOrderTerm(2, 0)],
)
def test_invalid_sizes(factory):
    with pytest.raises(ValueError, match="num_fields and dim"):
        factory()


def test_config_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="rank"):
        model_config_from_dict({"preset": "deepfm", "interaction": {"rank": 4}})
    with pytest.raises(ConfigError, match="dropout"):
        model_config_from_dict({"preset": "deepfm", "head": {"dropout": 1.0}})


def test_docstring_examples():
    result = doctest.testmod(mldcn.layers.fm, verbose=False, report=False)
    assert result.attempted >= 3 and result.failed == 0


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    fm = FactorizationMachine(num_fields=3, dim=2)
    # first order: w^T x0 over F·D = 6: 2·6 = 12 matmul
    # second order: Σ_f 6, square 2, e² 6, Σ_f e² 6, difference 2, Σ_d 2, × 0.5 1 = 25 elementwise
    assert (fm.flops().matmul, fm.flops().elementwise) == (12, 25)


@pytest.mark.parametrize("fields, dim, batch", [(3, 2, 4), (10, 10, 1), (39, 16, 3)])
def test_matmul_flops_match_flop_counter(fields, dim, batch):
    torch.manual_seed(0)
    fm = FactorizationMachine(fields, dim)
    with FlopCounterMode(display=False) as counter:
        fm(torch.randn(batch, fields, dim))
    assert counter.get_total_flops() == fm.flops().matmul * batch


# --------------------------------------------------------------------------- family, presets, budget


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


def test_family_has_no_width_and_a_fixed_cost():
    family = get_family("deepfm")
    assert family.width is None and family.layer is FactorizationMachine
    config = get_preset("deepfm_frappe_bars")
    flops = interaction_flops(config, _spec(10))
    assert (flops.matmul, flops.elementwise) == (2 * 100, 3 * 100 + 3 * 10 + 1)  # F = D = 10
    # there is nothing to resize: match_budget refuses, naming why
    with pytest.raises(ConfigError, match="no width"):
        match_budget(config, _spec(10), 10_000)


def test_presets():
    default = get_preset("deepfm")
    assert isinstance(default.interaction, DeepFMConfig)
    assert default.head.structure == "parallel"  # the paper's DNN beside the FM
    bars = get_preset("deepfm_frappe_bars")
    assert bars.embedding_dim == 10
    assert bars.head == HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.2, batch_norm=True)


def test_bars_yaml():
    data = yaml.safe_load((ROOT / "configs" / "frappe" / "deepfm_bars.yaml").read_text())
    run = run_config_from_dict(data)
    assert run.model == get_preset("deepfm_frappe_bars")
    train = run.train
    assert (train.lr, train.batch_size, train.embedding_l2, train.patience, train.seed) == (1e-3, 4096, 0.05, 2, 2021)
