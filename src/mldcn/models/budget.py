"""Matched FLOPs: resize a model's interaction module to a FLOPs budget.

Each family meets a budget with its own width (rank, block width, ...; see
``Family.scale``), keeping everything else, the head included, as configured.
The budget is on the **interaction module's** forward FLOPs per example, so that
a comparison at matched FLOPs is about the interaction module; the head is
identical across families in a comparison (its input width may differ).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mldcn.config import ConfigError
from mldcn.features import FeatureSpec
from mldcn.layers.flops import Flops
from mldcn.models.config import ModelConfig
from mldcn.models.registry import build_interaction, get_family

DEFAULT_TOLERANCE = 0.03


class BudgetError(ConfigError):
    """No width of the family lands within the tolerance of the budget."""


def interaction_flops(config: ModelConfig, features: FeatureSpec) -> Flops:
    """Interaction FLOPs per example (all experts and gates of a multi-task
    structure), without allocating any weights."""
    with torch.device("meta"):
        module = build_interaction(config, features)
    return module.flops()


def staged_width(
    width: int, cost: Callable[[int, int], int], fine_max: Callable[[int], int]
) -> tuple[int, int]:
    """Map one integer width ``w >= 1`` to ``(stage, fine)`` with cost non-decreasing in ``w``.

    For families with a coarse size (a stage m: embeddings per layer, token width ...)
    and a fine one (an MLP or FFN width f, cost step small), stage m covers
    ``f = f_lo(m) .. fine_max(m)`` and the next stage starts at the smallest f whose
    cost reaches the last cost of the stage before:

        w = 1, 2, ...  ->  (1, 1), (1, 2), ..., (1, fine_max(1)), (2, f_lo(2)), ...

    So the cost never decreases with w, and between stages it steps by about one
    fine step (when ``cost(m + 1, 1)`` is already above the end of stage m, by the
    difference). Requires cost non-decreasing in each argument and ``fine_max``
    non-decreasing.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    stage, low = 1, 1
    remaining = width
    while True:
        high = fine_max(stage)
        if remaining <= high - low + 1:
            return stage, low + remaining - 1
        remaining -= high - low + 1
        ceiling = cost(stage, high)
        stage += 1
        low, top = 1, fine_max(stage)  # smallest f in [1, top] with cost(stage, f) >= ceiling
        while low < top:
            mid = (low + top) // 2
            if cost(stage, mid) >= ceiling:
                top = mid
            else:
                low = mid + 1


MAX_DEPTH = 8


def match_budget(
    config: ModelConfig,
    features: FeatureSpec,
    budget: float,
    tolerance: float = DEFAULT_TOLERANCE,
    max_width: int = 1 << 14,
) -> ModelConfig:
    """``config`` resized so its interaction FLOPs are within ±tolerance of ``budget``.

    The family's width (rank, block width, ...) is found by bisection (cost is
    non-decreasing in width) and the closer of the two neighbours of the budget
    is taken. If no width lands within the tolerance at the configured depth
    (layers, blocks), the nearest depths are tried in turn (d+1, d−1, d+2, ...,
    from 1 to 8): steps in width are coarse when a family is narrow.

    Raises:
        BudgetError: if no depth and width land within the tolerance (the message
            says what the family can reach).
    """
    if budget <= 0:
        raise BudgetError(f"the FLOPs budget must be > 0, got {budget}")
    family = get_family(config.family)
    num_fields, dim = features.num_fields, config.embedding_dim
    if family.width is None and family.scale is None:  # e.g. DeepFM's FM: nothing to resize
        fixed = interaction_flops(config, features).total
        raise BudgetError(f"{config.family} has no width to match a FLOPs budget with: its interaction costs {fixed:,} FLOPs/example")

    def closest(interaction) -> tuple[ModelConfig, int]:
        def sized(width: int) -> ModelConfig:
            return config.replace(interaction=family.with_width(interaction, width, num_fields, dim))

        def cost(width: int) -> int:
            return interaction_flops(sized(width), features).total

        lo, hi = 1, 1
        while hi < max_width and cost(hi) < budget:  # gallop: probe no module much past the budget
            lo, hi = hi + 1, min(2 * hi, max_width)
        while lo < hi:  # smallest width with cost >= budget
            mid = (lo + hi) // 2
            if cost(mid) >= budget:
                hi = mid
            else:
                lo = mid + 1
        best = min({max(1, lo - 1), lo}, key=lambda w: abs(cost(w) - budget))
        return sized(best), cost(best)

    depth = family.depth_of(config.interaction)
    depths = [depth]
    if depth is not None:
        for step in range(1, MAX_DEPTH):
            depths += [d for d in (depth + step, depth - step) if 1 <= d <= MAX_DEPTH]
    attempts = []
    for d in depths:
        interaction = config.interaction if d == depth else family.with_depth(config.interaction, d)
        sized, flops = closest(interaction)
        if abs(flops / budget - 1) <= tolerance:
            return sized
        attempts.append((sized, flops))
    sized, flops = min(attempts, key=lambda a: abs(a[1] - budget))
    raise BudgetError(
        f"{config.family}: no {family.width}"
        + (f" or {family.depth}" if family.depth else "")
        + f" lands within ±{tolerance:.0%} of {budget:,.0f} FLOPs; the closest gives {flops:,} "
        f"({flops / budget - 1:+.1%})"
    )
