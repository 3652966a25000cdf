"""Training and inference throughput of each family at one interaction FLOPs budget, and MFU.

    .venv/bin/python benchmarks/throughput.py --budget 150000 --threads 2
    .venv/bin/python benchmarks/throughput.py --budget 2000000 --precision bf16 --mfu
    .venv/bin/python benchmarks/throughput.py --models wukong rankmixer   (+ dcnv2_lowrank, the baseline)

Every family is resized to the same interaction budget (±3%) and given the same
head, then timed on the same synthetic batches in one process, one after the
other. Absolute examples/s depend on the machine and its load; the ratio to
DCNv2 low-rank (measured in the same run) is the figure to compare.

Timed: a training step (forward, BCE, backward, Adam step, gradient clipping) at
the training batch size, and a forward pass under ``torch.inference_mode`` at
the inference batch size. Each figure is the median of ``--repeats`` timings of
``--steps`` steps after warm-up.

With ``--mfu`` the run first measures the machine's matrix-multiply peak in the
chosen precision (a square 2048 × 2048 GEMM, best of 5) and reports each
family's achieved training FLOP/s (3 × forward FLOPs per example × examples/s)
as a fraction of it: model FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig
from mldcn.models import create_model, get_preset, model_cost
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig
from mldcn.studies.table import format_table

FAMILIES = ("mldcn", "dcnv2_lowrank", "dcnv2_mixture", "masknet_parallel", "masknet_serial", "wukong", "rankmixer")
REFERENCES = ("dnn", "lr")
BASELINE = "dcnv2_lowrank"


def time_steps(step, steps: int, repeats: int) -> float:
    """Median seconds per step."""
    for _ in range(3):
        step()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        timings.append((time.perf_counter() - start) / steps)
    return statistics.median(timings)


def matmul_peak(precision: str, size: int = 2048) -> float:
    """Best-of-5 FLOP/s of one square GEMM in ``precision``."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=150_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--infer-batch-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--mfu", action="store_true", help="measure the matmul peak and report MFU")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--models", nargs="+", choices=FAMILIES + REFERENCES, help=f"a subset to time (always with {BASELINE})"
    )
    args = parser.parse_args()
    names = [n for n in FAMILIES + REFERENCES if not args.models or n in args.models or n == BASELINE]
    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.precision) if args.mfu else None
    if peak:
        print(f"matmul peak ({args.precision}, 2048^3 GEMM, {args.threads} threads): {peak / 1e9:,.0f} GFLOP/s")
    bf16 = args.precision == "bf16"

    log = SyntheticClickLog(SyntheticConfig())
    train, _ = log.split(0, 4 * args.infer_batch_size)
    features = log.features
    head = HeadConfig(structure="parallel", hidden=(256, 128))
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name in names:
        config = get_preset(name)
        if name in FAMILIES:
            config = match_budget(config.replace(head=head), features, args.budget)
        elif name == "dnn":
            config = config.replace(head=HeadConfig(structure="stacked", hidden=(256, 128)))
        torch.manual_seed(0)
        model = create_model(config, features)
        cost = model_cost(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.BCEWithLogitsLoss()

        def train_step() -> None:
            index = torch.randint(0, len(train), (args.batch_size,), generator=generator)
            batch = train.take(index)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = model(*batch.inputs())
            loss = loss_fn(logits.float(), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()

        infer_batch = train.rows(0, args.infer_batch_size)

        def infer_step() -> None:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model(*infer_batch.inputs())

        model.train()
        train_s = time_steps(train_step, args.steps, args.repeats)
        model.eval()
        infer_s = time_steps(infer_step, args.steps, args.repeats)
        train_eps = args.batch_size / train_s
        infer_eps = args.infer_batch_size / infer_s
        rows.append(
            {
                "model": name,
                "interaction_flops": cost.interaction.total,
                "total_flops": cost.total.total,
                "train_eps": train_eps,
                "infer_eps": infer_eps,
                # a training step costs ~3x the forward FLOPs (forward + two backward matmuls)
                "train_gflops": 3 * cost.total.total * train_eps / 1e9,
                "infer_gflops": cost.total.total * infer_eps / 1e9,
            }
        )
        if peak:
            rows[-1]["mfu"] = 3 * cost.total.total * train_eps / peak
        print(f"{name}: train {train_eps:,.0f} ex/s, inference {infer_eps:,.0f} ex/s", flush=True)
    base = next(r for r in rows if r["model"] == BASELINE)
    for row in rows:
        row["train_ratio"] = row["train_eps"] / base["train_eps"]
        row["infer_ratio"] = row["infer_eps"] / base["infer_eps"]
    columns = [
        ("model", "model"),
        ("interaction_flops", "interaction FLOPs/ex"),
        ("total_flops", "total FLOPs/ex"),
        ("train_eps", f"train ex/s (batch {args.batch_size})"),
        ("train_ratio", f"train vs {BASELINE}"),
        ("train_gflops", "train GFLOP/s"),
        ("infer_eps", f"inference ex/s (batch {args.infer_batch_size})"),
        ("infer_ratio", f"inference vs {BASELINE}"),
        ("infer_gflops", "inference GFLOP/s"),
    ]
    if peak:
        columns.append(("mfu", "train MFU"))
    print()
    print(
        f"interaction budget {args.budget:,.0f} FLOPs/example, head parallel (256, 128), "
        f"{features.num_fields} fields x D=16, {args.threads} threads, {args.precision}, torch {torch.__version__}"
    )
    print(format_table(rows, columns, markdown=args.markdown))


if __name__ == "__main__":
    main()
