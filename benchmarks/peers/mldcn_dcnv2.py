"""mldcn's side of the FuxiCTR peer benchmark: the same DCNv2, data and recipe.

Runs in mldcn's environment (``benchmarks/peer_fuxictr.py`` calls it in a fresh
process); prints one JSON line with the same fields as ``fuxictr_dcnv2.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from mldcn.data.prepare import prepare
from mldcn.data.prepared import load_prepared
from mldcn.data.schema import load_schema
from mldcn.models import create_model
from mldcn.train.loop import TrainConfig, evaluate, fit, predict, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder with the train CSV, valid.csv, test.csv")
    parser.add_argument("--train-file", default="train_rebuilt.csv")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--model", default="dcnv2_frappe_bars")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mldcn-"))
    data = Path(args.data)

    start = time.perf_counter()
    report = prepare(
        load_schema("frappe"),
        workdir / "frappe_x1",
        train=data / args.train_file,
        valid=data / "valid.csv",
        test=data / "test.csv",
        force=True,
    )
    prepare_seconds = time.perf_counter() - start
    dataset = load_prepared(workdir / "frappe_x1")

    config = TrainConfig(
        batch_size=4096, lr=1e-3, embedding_l2=0.05, grad_clip_norm=10.0, patience=2,
        seed=args.seed, progress=False, precision=args.precision,
    )
    seed_everything(args.seed)
    model = create_model(args.model, dataset.features)
    start = time.perf_counter()
    result = fit(model, dataset.train, dataset.valid, config)
    fit_seconds = time.perf_counter() - start
    step_seconds = sum(h["train_seconds"] for h in result.history)

    start = time.perf_counter()
    task = dataset.features.task_names[0]  # Frappe's one task
    valid = evaluate(model, dataset.valid, precision=args.precision)[task]
    eval_seconds = time.perf_counter() - start
    test = evaluate(model, dataset.test, precision=args.precision)[task]
    start = time.perf_counter()
    probabilities = predict(model, dataset.test, precision=args.precision)
    predict_seconds = time.perf_counter() - start

    model.eval()
    batches = [b.inputs() for b in dataset.test.batches(4096)]
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16"):
        start = time.perf_counter()
        for inputs in batches:
            model(*inputs)
        forward_seconds = time.perf_counter() - start

    epochs = len(result.history)
    print(json.dumps({
        "library": f"mldcn ({args.precision})",
        "seed": args.seed,
        "prepare_seconds": prepare_seconds,
        "prepare_rows": report["rows_read"],
        "fit_seconds": fit_seconds,
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "train_examples_per_second": epochs * len(dataset.train) / fit_seconds,
        "step_examples_per_second": epochs * len(dataset.train) / step_seconds,
        "eval_examples_per_second": len(dataset.valid) / eval_seconds,
        "predict_examples_per_second": len(probabilities) / predict_seconds,
        "forward_examples_per_second": len(probabilities) / forward_seconds,
        "valid_auc": valid["auc"], "valid_logloss": valid["logloss"],
        "test_auc": test["auc"], "test_logloss": test["logloss"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
