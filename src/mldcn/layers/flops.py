"""The FLOPs convention, stated once.

Every layer in :mod:`mldcn.layers` reports its forward cost **per example** with a
``flops()`` method returning :class:`Flops`:

* ``matmul``: 2 FLOPs per multiply-add of every matrix product (``nn.Linear``,
  ``einsum``, ``bmm``). Bias adds are *not* part of it. This is exactly what
  ``torch.utils.flop_counter.FlopCounterMode`` counts, and a test checks it for
  every registered model.
* ``elementwise``: everything else, per output element:

  =========================================  ======================
  add, multiply, ReLU, max, residual, bias   ``ELEMENTWISE`` = 1
  sigmoid, tanh, softplus, GELU, exp         ``TRANSCENDENTAL`` = 4
  LayerNorm (mean, variance, scale, shift)   ``LAYER_NORM`` = 5
  BatchNorm at inference (folded affine)     ``BATCH_NORM`` = 2
  =========================================  ======================

* Embedding lookups are 0 FLOPs; their bytes read are reported separately.
* Dropout is free (identity at inference).
"""

from __future__ import annotations

from dataclasses import dataclass

ELEMENTWISE = 1
TRANSCENDENTAL = 4
LAYER_NORM = 5
BATCH_NORM = 2

#: Elementwise cost per element of each activation by name.
ACTIVATION_FLOPS = {
    "identity": 0,
    "relu": ELEMENTWISE,
    "sigmoid": TRANSCENDENTAL,
    "2sigmoid": TRANSCENDENTAL + ELEMENTWISE,
    "softplus": TRANSCENDENTAL,
    "tanh": TRANSCENDENTAL,
    "gelu": TRANSCENDENTAL,
}


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs per example, split into matrix products and elementwise work."""

    matmul: int = 0
    elementwise: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.matmul + other.matmul, self.elementwise + other.elementwise)

    def __mul__(self, times: int) -> "Flops":
        return Flops(self.matmul * times, self.elementwise * times)

    __rmul__ = __mul__


def linear_flops(in_dim: int, out_dim: int, bias: bool = True) -> Flops:
    """``y = W x (+ b)`` with ``W`` of shape ``[out_dim, in_dim]``."""
    return Flops(matmul=2 * in_dim * out_dim, elementwise=out_dim if bias else 0)


def activation_flops(name: str, size: int) -> Flops:
    return Flops(elementwise=ACTIVATION_FLOPS[name] * size)


def sum_flops(parts) -> Flops:
    total = Flops()
    for part in parts:
        total = total + part
    return total
