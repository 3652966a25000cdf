"""Training and inference throughput of each family at one interaction FLOPs budget, and MFU.

    .venv/bin/python benchmarks/throughput.py --budget 150000 --threads 2
    .venv/bin/python benchmarks/throughput.py --budget 2000000 --precision bf16 --mfu
    .venv/bin/python benchmarks/throughput.py --models wukong rankmixer   (+ dcnv2_lowrank, the baseline)
    python benchmarks/throughput.py --device cuda --budget 150000 2000000 20000000 \
        --precision fp32 bf16 --compile --jsonl OUT/rows.jsonl         (benchmarks/gpu.sh)

Every family is resized to the same interaction budget (±3%) and given the same
head, then timed on the same synthetic batches in one process, one after the
other. Absolute examples/s depend on the machine and its load; the ratio to
DCNv2 low-rank (measured in the same run) is the figure to compare.

Timed: a training step (forward, BCE, backward, Adam step, gradient clipping) at
the training batch size, and a forward pass under ``torch.inference_mode`` at
the inference batch size. Each figure is the median of ``--repeats`` timings of
``--steps`` steps after warm-up.

With ``--mfu`` the run first measures the machine's matrix-multiply peak in
each precision (a square GEMM, 2048 on CPU and 8192 on a GPU, best of 5) and
reports each family's achieved training FLOP/s (3 × forward FLOPs per example ×
examples/s) as a fraction of it: model FLOPs utilisation.

Several budgets and precisions, ``--compile`` (each model also through
``torch.compile``; compilation happens in the warm-up and is not timed) and
``--device cuda`` (the batches are drawn on the device; a step is timed to its
``torch.cuda.synchronize``) make one table per budget, precision and mode. With
``--jsonl PATH`` each row is appended to PATH as soon as it is measured, so a run
cut short by a time limit keeps what it measured; rows already in PATH are
skipped when the same command is run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig
from mldcn.models import create_model, get_preset, model_cost
from mldcn.models.budget import BudgetError, match_budget
from mldcn.models.config import HeadConfig
from mldcn.studies.table import format_table
from mldcn.train.loop import TrainConfig
from mldcn.train.optim import dense_optimizer

FAMILIES = ("mldcn", "dcnv2_lowrank", "dcnv2_mixture", "masknet_parallel", "masknet_serial", "wukong", "rankmixer")
REFERENCES = ("dnn", "lr")
BASELINE = "dcnv2_lowrank"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, repeats: int, device: torch.device, warmup: int = 3) -> float:
    """Median seconds per step (to the device's last kernel)."""
    for _ in range(warmup):
        step()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        timings.append((time.perf_counter() - start) / steps)
    return statistics.median(timings)


def matmul_peak(precision: str, device: torch.device) -> float:
    """Best-of-5 FLOP/s of one square GEMM in ``precision`` (2048 on CPU, 8192 on a GPU)."""
    size = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_step(model: nn.Module, optimizer, pool, batch_size: int, precision: str, net: nn.Module | None = None, seed: int = 0):
    """One timed training step as a closure: a random batch of ``batch_size`` rows drawn from
    ``pool`` (on its device), forward through ``net`` (``model``, or ``model`` compiled) under
    bf16 autocast for ``bf16``, BCE, backward, gradient clipping at 10, ``optimizer.step()``.
    Shared by the benchmarks that time training steps."""
    net = model if net is None else net
    device = pool.categorical.device
    generator = torch.Generator(device=device).manual_seed(seed)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        batch = pool.take(torch.randint(0, len(pool), (batch_size,), generator=generator, device=device))
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits = net(*batch.inputs())
        loss = loss_fn(logits.float(), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    return step


def measure(name, config, features, pool, args, device, precision: str, compiled: bool) -> dict:
    """One model's training and inference rates (``pool``: batches are drawn from it, on ``device``)."""
    bf16 = precision == "bf16"
    torch.manual_seed(0)
    model = create_model(config, features).to(device)
    cost = model_cost(model)
    net = torch.compile(model) if compiled else model
    optimizer = dense_optimizer(list(model.parameters()), TrainConfig())  # the library's Adam (fused)
    train_step = training_step(model, optimizer, pool, args.batch_size, precision, net)

    infer_batch = pool.rows(0, args.infer_batch_size)

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            net(*infer_batch.inputs())

    warmup = 5 if compiled else 3  # compiled: the first calls compile (train and eval graphs)
    model.train()
    train_s = time_steps(train_step, args.steps, args.repeats, device, warmup)
    model.eval()
    infer_s = time_steps(infer_step, args.steps, args.repeats, device, warmup)
    train_eps = args.batch_size / train_s
    infer_eps = args.infer_batch_size / infer_s
    return {
        "model": name,
        "interaction_flops": cost.interaction.total,
        "total_flops": cost.total.total,
        "train_eps": train_eps,
        "infer_eps": infer_eps,
        # a training step costs ~3x the forward FLOPs (forward + two backward matmuls)
        "train_gflops": 3 * cost.total.total * train_eps / 1e9,
        "infer_gflops": cost.total.total * infer_eps / 1e9,
    }


def configs_at(budget: float, names: list[str], features) -> dict:
    head = HeadConfig(structure="parallel", hidden=(256, 128))
    configs = {}
    for name in names:
        config = get_preset(name)
        if name in FAMILIES:
            try:
                config = match_budget(config.replace(head=head), features, budget)
            except BudgetError as error:  # a budget a family cannot reach: say so, time the others
                print(f"skipped {name} at {budget:,.0f}: {error}", flush=True)
                continue
        elif name == "dnn":
            config = config.replace(head=HeadConfig(structure="stacked", hidden=(256, 128)))
        configs[name] = config
    return configs


def table(rows: list[dict], args, budget: float, precision: str, mode: str, features, device, peak) -> str:
    base = next((r for r in rows if r["model"] == BASELINE), None)
    for row in rows:
        row["train_ratio"] = row["train_eps"] / base["train_eps"] if base else float("nan")
        row["infer_ratio"] = row["infer_eps"] / base["infer_eps"] if base else float("nan")
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
    threads = f"{args.threads} threads" if device.type == "cpu" else rows[0]["device_name"]
    heading = (
        f"interaction budget {budget:,.0f} FLOPs/example, head parallel (256, 128), "
        f"{features.num_fields} fields x D=16, {threads}, {precision}, {mode}, torch {torch.__version__}"
    )
    if peak:
        heading += f"; matmul peak {peak / 1e9:,.0f} GFLOP/s"
    return heading + "\n\n" + format_table(rows, columns, markdown=args.markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, nargs="+", default=[150_000])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--infer-batch-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--compile", action="store_true", help="also time every model through torch.compile")
    parser.add_argument("--mfu", action="store_true", help="measure the matmul peak and report MFU")
    parser.add_argument("--jsonl", type=Path, help="append each measured row here; rows already there are skipped")
    parser.add_argument("--report", action="store_true", help="measure nothing: print the tables of the rows in --jsonl")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--models", nargs="+", choices=FAMILIES + REFERENCES, help=f"a subset to time (always with {BASELINE})"
    )
    args = parser.parse_args()
    names = [n for n in FAMILIES + REFERENCES if not args.models or n in args.models or n == BASELINE]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    done = {}
    if args.report and not args.jsonl:
        parser.error("--report reads the rows of --jsonl")
    if args.jsonl and args.jsonl.exists():
        for line in args.jsonl.read_text().splitlines():
            row = json.loads(line)
            done[(row["budget"], row["precision"], row["mode"], row["model"])] = row

    log = SyntheticClickLog(SyntheticConfig())
    train, _ = log.split(0, 4 * args.infer_batch_size)
    pool = None if args.report else train.rows(0, len(train)).to(device)  # batches are drawn on the device
    features = log.features
    modes = ("eager", "compiled") if args.compile else ("eager",)
    for precision in args.precision:
        peak = matmul_peak(precision, device) if args.mfu and not args.report else None
        for mode in modes:  # all eager tables first: a run cut short has them
            for budget in args.budget:
                rows = []
                for name, config in configs_at(budget, names, features).items():
                    key = (budget, precision, mode, name)
                    if key not in done and args.report:
                        continue
                    if key not in done:
                        row = measure(name, config, features, pool, args, device, precision, mode == "compiled")
                        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
                        row.update(budget=budget, precision=precision, mode=mode, device=args.device, device_name=gpu)
                        if peak:
                            row["mfu"] = 3 * row["total_flops"] * row["train_eps"] / peak
                        print(f"{budget:,.0f} {precision} {mode} {name}: train {row['train_eps']:,.0f} ex/s, "
                              f"inference {row['infer_eps']:,.0f} ex/s", flush=True)  # fmt: skip
                        if args.jsonl:
                            with args.jsonl.open("a") as f:
                                f.write(json.dumps(row) + "\n")
                        done[key] = row
                    rows.append(done[key])
                if rows:
                    peak_used = peak or (rows[0]["train_gflops"] * 1e9 / rows[0]["mfu"] if "mfu" in rows[0] else None)
                    print()
                    print(table(rows, args, budget, precision, mode, features, device, peak_used), flush=True)


if __name__ == "__main__":
    main()
