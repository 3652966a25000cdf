"""Do seeds trained together pay on this machine? K models stacked with torch.func against K separate steps.

    .venv/bin/python benchmarks/stacked_seeds.py --budgets 25000 400000 --families dcnv2_lowrank mldcn

K copies of one family (seeds 0..K-1; the default synthetic schema, the parallel
head 256-128, no dropout or batch norm, as in the industrial one-pass sweep) take
a training step on the same batch of 2,048 rows, either **stacked** — their
parameters stacked with ``torch.func.stack_module_state``, the loss's gradient of
all K by ``vmap(grad(...))``, one fused Adam step over the stacked tensors: the
same updates as K separate runs, to float rounding — or **separately**, one
forward, backward and Adam step per model. The two take turns; each figure is the
best of 3 timings of ``--steps`` steps, one intra-op thread. A gain above 1 would
mean a sweep runs more runs per hour by stacking its seeds.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig
from mldcn.models import create_model, get_preset
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig
from mldcn.train.loop import TrainConfig
from mldcn.train.optim import dense_optimizer


def measure(family: str, budget: float, seeds: int, steps: int, features, batch) -> dict:
    config = match_budget(get_preset(family).replace(head=HeadConfig(structure="parallel", hidden=(256, 128))), features, budget)
    models = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        models.append(create_model(config, features))
    params, buffers = stack_module_state(models)  # {name: [K, ...]}
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    stacked_adam = dense_optimizer(list(params.values()), TrainConfig())

    def loss(p, b, categorical, numeric, labels):
        logits = functional_call(skeleton, (p, b), (categorical, numeric))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)

    gradients = vmap(grad(loss), in_dims=(0, 0, None, None, None), randomness="different")

    def stacked() -> None:
        g = gradients(params, buffers, batch.categorical, batch.numeric, batch.labels)
        for name, value in params.items():
            value.grad = g[name]
        stacked_adam.step()

    adams = [dense_optimizer(list(m.parameters()), TrainConfig()) for m in models]

    def separate() -> None:
        for model, adam in zip(models, adams):
            value = torch.nn.functional.binary_cross_entropy_with_logits(model(batch.categorical, batch.numeric), batch.labels)
            adam.zero_grad()
            value.backward()
            adam.step()

    for step in (stacked, separate, stacked, separate):  # warm-up
        step()
    best = {"stacked": float("inf"), "separate": float("inf")}
    for _ in range(3):
        for name, step in (("stacked", stacked), ("separate", separate)):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return {"family": family, "budget": budget, **{k: 1000 * v for k, v in best.items()}, "gain": best["separate"] / best["stacked"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[25_000, 400_000])
    parser.add_argument("--families", nargs="+", default=["dcnv2_lowrank", "mldcn"])
    parser.add_argument("--seeds", type=int, default=3, help="K, models trained together")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = SyntheticClickLog(SyntheticConfig())
    train, _ = log.split(0, 2048)
    batch = train.rows(0, 2048)
    print(f"torch {torch.__version__}, 1 thread, {args.seeds} models per step, batch 2048")
    print("family          budget  stacked ms/step  separate ms/step  gain (separate / stacked)")
    for family in args.families:
        for budget in args.budgets:
            r = measure(family, budget, args.seeds, args.steps, log.features, batch)
            print(f"{family:14s} {budget:8,.0f}  {r['stacked']:15.1f}  {r['separate']:16.1f}  {r['gain']:.2f}", flush=True)


if __name__ == "__main__":
    main()
