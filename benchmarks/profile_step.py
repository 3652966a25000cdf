"""Where a training step's time goes: torch.profiler over ML-DCN and DCNv2 low-rank at one budget.

    .venv/bin/python benchmarks/profile_step.py --budget 2000000 --precision bf16
    .venv/bin/python benchmarks/profile_step.py --precision bf16 --optimizer-impl for-loop --markdown

Both families are resized to the same interaction budget with the same head
(parallel, DNN 256-128) on the default synthetic schema, as in
``benchmarks/throughput.py``; each trains ``--steps`` steps (forward, BCE,
backward, gradient clipping, Adam: by default fused, as ``mldcn train`` runs it;
``--optimizer-impl`` for torch's per-tensor loop) under the profiler after a warm-up, and the
operators with the most self CPU time are listed with their share of the step.
Operators are grouped as the rows of docs/performance.md read them: matrix
products, casts (``aten::copy_`` / ``to``: autocast's), element-wise work,
the optimiser step, the embedding, the rest.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig
from mldcn.models import create_model, get_preset
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig
from mldcn.studies.table import format_table
from throughput import training_step  # benchmarks/throughput.py, beside this script

MODELS = ("mldcn", "dcnv2_lowrank")
GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "casts": ("aten::copy_", "aten::to", "aten::_to_copy"),
    "optimiser step": ("aten::_fused_adam_", "aten::_foreach_", "aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::sqrt"),
    "embedding": ("aten::embedding", "aten::index_select", "aten::embedding_dense_backward", "aten::index_add_", "aten::index"),
    "normalisation": ("aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::native_batch_norm"),
}


def group_of(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return group
    if name.startswith(("aten::mul", "aten::add", "aten::relu", "aten::threshold", "aten::sigmoid", "aten::sub", "aten::div")):
        return "element-wise"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=2_000_000)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizer-impl", choices=["for-loop", "foreach", "fused"], default="fused")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log = SyntheticClickLog(SyntheticConfig())
    train, _ = log.split(0, 32_768)
    features = log.features
    head = HeadConfig(structure="parallel", hidden=(256, 128))
    impl = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.optimizer_impl]
    print(f"torch {torch.__version__}, budget {args.budget:,.0f}, {args.precision}, batch {args.batch_size}, "
          f"Adam {args.optimizer_impl}, {args.steps} profiled steps")  # fmt: skip
    for name in MODELS:
        config = match_budget(get_preset(name).replace(head=head), features, args.budget)
        torch.manual_seed(0)
        model = create_model(config, features)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **impl)
        step = training_step(model, optimizer, train, args.batch_size, args.precision)

        for _ in range(5):
            step()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        seconds = (time.perf_counter() - start) / args.steps
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        groups: dict[str, float] = defaultdict(float)
        for e in events:
            groups[group_of(e.key)] += e.self_cpu_time_total
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        rows = [
            {"op": e.key, "group": group_of(e.key), "share": e.self_cpu_time_total / total,
             "ms": e.self_cpu_time_total / 1000 / args.steps, "calls": e.count / args.steps}
            for e in top
        ]  # fmt: skip
        print(f"\n{name} ({vars(model.interaction).get('rank')} rank): {1000 * seconds:.1f} ms/step under the profiler, "
              f"{args.batch_size / seconds:,.0f} ex/s")  # fmt: skip
        print(format_table(rows, [("op", "operator"), ("group", "group"), ("share", "share"), ("ms", "ms/step"), ("calls", "calls/step")], markdown=args.markdown))
        grouped = [{"group": g, "share": t / total, "ms": t / 1000 / args.steps} for g, t in sorted(groups.items(), key=lambda kv: -kv[1])]
        print(format_table(grouped, [("group", "group"), ("share", "share"), ("ms", "ms/step")], markdown=args.markdown))


if __name__ == "__main__":
    main()
