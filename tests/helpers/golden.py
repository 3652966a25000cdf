"""Helpers for golden tests: set constant weights, compare with hand-worked values."""

from __future__ import annotations

import torch


def set_weights(param: torch.Tensor, value) -> None:
    """Overwrite ``param`` in place with ``value`` (any nesting that reshapes to it)."""
    with torch.no_grad():
        param.copy_(torch.as_tensor(value, dtype=param.dtype).reshape(param.shape))


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    """``actual`` equals the hand-worked ``expected`` in shape and to ``atol``."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
