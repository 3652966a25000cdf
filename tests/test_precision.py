"""Fast CPU dropout and the bf16 autocast path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from mldcn.data.synthetic import SyntheticConfig, make_synthetic
from mldcn.layers.dropout import Dropout
from mldcn.models import HeadConfig, create_model, get_preset
from mldcn.train.loop import TrainConfig, evaluate, fit, predict, seed_everything


def test_dropout_keeps_each_element_with_probability_one_minus_p():
    torch.manual_seed(0)
    n = 200_000
    for p in (0.1, 0.4, 0.9):
        y = Dropout(p)(torch.ones(n))
        kept = y != 0
        # binomial standard deviation of the kept fraction: sqrt(p(1-p)/n) <= 0.0012; allow 5 sigma
        assert abs(kept.float().mean().item() - (1 - p)) < 0.006
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_dropout_is_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(64, 8)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_is_reproducible_under_manual_seed_and_scales_gradients_by_the_mask():
    x = torch.randn(32, 16, requires_grad=True)
    torch.manual_seed(3)
    y1 = Dropout(0.3)(x)
    torch.manual_seed(3)
    y2 = Dropout(0.3)(x)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    expected = (y1 != 0).float() / 0.7
    assert torch.allclose(x.grad, expected)


def test_dropout_rejects_invalid_probability():
    with pytest.raises(ValueError):
        Dropout(1.0)


DATA = SyntheticConfig(train_rows=8_000, valid_rows=2_000, test_rows=2_000, vocab_sizes=(8, 16, 32), num_numeric=1)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(DATA)


def small_model(features):
    seed_everything(0)
    config = (
        get_preset("mldcn")
        .replace(embedding_dim=4, head=HeadConfig(hidden=(16,), dropout=0.2, batch_norm=True))
        .with_interaction(rank=4, num_layers=2)
    )
    return create_model(config, features)


def test_bf16_training_learns_and_keeps_fp32_master_weights(data):
    model = small_model(data.features)
    config = TrainConfig(epochs=3, batch_size=256, lr=3e-3, progress=False, seed=0, precision="bf16")
    result = fit(model, data.train, data.valid, config)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert evaluate(model, data.valid, precision="bf16")["click"]["auc"] > 0.6


def test_bf16_predictions_are_close_to_fp32_for_the_same_weights(data):
    model = small_model(data.features)
    fit(model, data.train, data.valid, TrainConfig(epochs=1, batch_size=256, progress=False, seed=0))
    fp32 = torch.from_numpy(predict(model, data.test))
    bf16 = torch.from_numpy(predict(model, data.test, precision="bf16"))
    # bf16 keeps 8 mantissa bits: relative error ~0.4% per product, a few 1e-3 on probabilities
    assert (fp32 - bf16).abs().max() < 0.02
    assert not torch.equal(fp32, bf16)  # bf16 really ran


def test_bf16_loss_is_computed_in_fp32(data, monkeypatch):
    seen = []
    original = F.binary_cross_entropy_with_logits

    def spy(input, target, *args, **kwargs):
        seen.append(input.dtype)
        return original(input, target, *args, **kwargs)

    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", spy)
    model = small_model(data.features)
    fit(model, data.train, data.valid, replace(TrainConfig(epochs=1, progress=False), precision="bf16"))
    assert seen and set(seen) == {torch.float32}


def test_compiled_training_follows_the_eager_curve():
    # torch.compile on CPU (inductor): the GPU-readiness path, checked for correctness here
    import ddp_worker

    data = make_synthetic(replace(ddp_worker.DATA, train_rows=2048))
    curves = []
    for compiled in (False, True):
        seed_everything(0)
        model = create_model(ddp_worker.MODEL, data.features)
        result = fit(model, data.train, data.valid, replace(ddp_worker.TRAIN, epochs=1, compile=compiled))
        curves.append(result.history[0]["valid"]["click"]["auc"])
    assert curves[1] == pytest.approx(curves[0], abs=1e-4)
