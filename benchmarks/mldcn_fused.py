"""ML-DCN against DCNv2 low-rank at matched FLOPs: training step rate and bare forward latency.

    .venv/bin/python benchmarks/mldcn_fused.py --budget 2000000 --precision fp32 bf16
    .venv/bin/python benchmarks/mldcn_fused.py --part forward --batches 1 512
    .venv/bin/python benchmarks/mldcn_fused.py --part train --precision fp32 --compile

Both families are resized to the same interaction budget (±3%, ``match_budget``)
with the same head (parallel, DNN 256-128) on the default synthetic schema, as in
``benchmarks/throughput.py``. Unlike that script, the two models take turns
(training: ``--steps`` steps of one, then of the other, ``--repeats`` times;
forward: call by call), so a change in the machine's load hits both alike; each
figure is a median, and the ratio ML-DCN / DCNv2 low-rank measured in the same run
is the figure to read.

* ``train``: forward, BCE, backward, gradient clipping, Adam, at ``--batch-size``,
  per precision (bf16: autocast, as the training loop runs it); with ``--compile``
  both models also run through ``torch.compile`` (CPU inductor; compilation is in
  the warm-up, not timed).
* ``forward``: µs per call of :class:`~mldcn.serve.export.ProbabilityModel` at each
  of ``--batches``, fp32, eager PyTorch under ``inference_mode`` and ONNX Runtime
  (the ``mldcn export`` graph, CPU provider, ``--infer-threads`` intra-op threads;
  ``--ort-levels`` picks graph optimisation levels, ``all`` is ONNX Runtime's default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig
from mldcn.models import create_model, get_preset, model_cost
from mldcn.models.budget import match_budget
from mldcn.models.config import HeadConfig
from mldcn.serve.export import ProbabilityModel, example_inputs, export_onnx
from mldcn.studies.table import format_table
from mldcn.train.loop import TrainConfig
from mldcn.train.optim import dense_optimizer
from throughput import training_step  # benchmarks/throughput.py, beside this script

MODELS = ("mldcn", "dcnv2_lowrank")
BASELINE = "dcnv2_lowrank"
ORT_LEVELS = ("disable", "basic", "extended", "all")


def build(budget: float, features) -> dict:
    head = HeadConfig(structure="parallel", hidden=(256, 128))
    models = {}
    for name in MODELS:
        config = match_budget(get_preset(name).replace(head=head), features, budget)
        torch.manual_seed(0)
        models[name] = create_model(config, features)
    return models


def alternating(steps: dict, calls: int, repeats: int, warmup: int) -> dict:
    """Median seconds per call of each step; the steps take turns, ``calls`` calls at a time."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    timings: dict = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            timings[key].append((time.perf_counter() - start) / calls)
    return {key: statistics.median(values) for key, values in timings.items()}


def train_rates(models: dict, train, args, precision: str, compiled: bool) -> dict:
    steps = {}
    for seed, (name, model) in enumerate(models.items()):
        model.train()
        net = torch.compile(model) if compiled else model
        optimizer = dense_optimizer(list(model.parameters()), TrainConfig())  # the library's Adam (fused)
        steps[name] = training_step(model, optimizer, train, args.batch_size, precision, net, seed=seed)
    seconds = alternating(steps, args.steps, args.repeats, warmup=5 if compiled else 3)
    return {name: args.batch_size / s for name, s in seconds.items()}


def ort_session(path: Path, threads: int, level: str):
    import onnxruntime as ort  # noqa: PLC0415  (the export extra)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def forward_times(models: dict, features, args, work: Path) -> list[dict]:
    rows = []
    wrappers = {name: ProbabilityModel(model).eval() for name, model in models.items()}
    paths = {name: export_onnx(model.eval(), work / f"{name}.onnx") for name, model in models.items()}
    for batch in args.batches:
        inputs = example_inputs(features, batch=batch, seed=batch)
        steps = {}
        for name, wrapper in wrappers.items():
            tensors = [inputs[n] for n in wrapper.input_names]

            def eager(wrapper=wrapper, tensors=tensors) -> None:
                with torch.inference_mode():
                    wrapper(*tensors)

            steps[(name, "torch")] = eager
            feed = {n: x.numpy() for n, x in zip(wrapper.input_names, tensors)}
            for level in args.ort_levels:
                session = ort_session(paths[name], args.infer_threads, level)
                steps[(name, f"onnx ({level})")] = lambda session=session, feed=feed: session.run(None, feed)
        seconds = alternating(steps, 1, args.calls, warmup=10)
        for (name, backend), s in seconds.items():
            rows.append({"batch": batch, "backend": backend, "model": name, "us": 1e6 * s})
    for row in rows:
        base = next(r for r in rows if r["batch"] == row["batch"] and r["backend"] == row["backend"] and r["model"] == BASELINE)
        row["ratio"] = row["us"] / base["us"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=2_000_000)
    parser.add_argument("--part", choices=["train", "forward", "both"], default="both")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="also time training through torch.compile")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="training steps per turn")
    parser.add_argument("--repeats", type=int, default=5, help="turns per model")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for training")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 512])
    parser.add_argument("--calls", type=int, default=300, help="forward calls per model and backend")
    parser.add_argument("--infer-threads", type=int, default=1, help="threads of the forward passes (both backends)")
    parser.add_argument("--ort-levels", nargs="+", choices=ORT_LEVELS, default=["all"])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    log = SyntheticClickLog(SyntheticConfig())
    train, _ = log.split(0, 32_768)
    features = log.features
    models = build(args.budget, features)
    for name, model in models.items():
        cost = model_cost(model)
        width = {k: v for k, v in vars(model.interaction).items() if k in ("rank", "hidden_dim", "num_layers")}
        print(f"{name}: interaction {cost.interaction.total:,} FLOPs/ex, total {cost.total.total:,}, {width}")
    print(f"torch {torch.__version__}, {features.num_fields} fields x D=16, budget {args.budget:,.0f}")

    if args.part in ("train", "both"):
        torch.set_num_threads(args.threads)
        rows = []
        for precision in args.precision:
            for compiled in (False, True) if args.compile else (False,):
                rates = train_rates(models, train, args, precision, compiled)
                for name, rate in rates.items():
                    rows.append(
                        {
                            "model": name,
                            "precision": precision,
                            "mode": "compiled" if compiled else "eager",
                            "eps": rate,
                            "ratio": rate / rates[BASELINE],
                        }
                    )
                mldcn = next(r for r in rows[-2:] if r["model"] == "mldcn")
                print(f"train {precision} {mldcn['mode']}: ML-DCN / DCNv2 low-rank = {mldcn['ratio']:.3f}", flush=True)
        print(f"\ntraining step, batch {args.batch_size}, {args.threads} threads, {args.repeats} x {args.steps} steps per model")
        columns = [
            ("model", "model"),
            ("precision", "precision"),
            ("mode", "mode"),
            ("eps", "train ex/s"),
            ("ratio", f"vs {BASELINE}"),
        ]
        print(format_table(rows, columns, markdown=args.markdown))

    if args.part in ("forward", "both"):
        torch.set_num_threads(args.infer_threads)
        with tempfile.TemporaryDirectory() as work:
            rows = forward_times(models, features, args, Path(work))
        print(f"\nbare forward (ProbabilityModel), fp32, {args.infer_threads} thread(s), median of {args.calls} calls")
        columns = [
            ("batch", "batch"),
            ("backend", "backend"),
            ("model", "model"),
            ("us", "µs/call"),
            ("ratio", f"vs {BASELINE}"),
        ]
        print(format_table(rows, columns, markdown=args.markdown))


if __name__ == "__main__":
    main()
