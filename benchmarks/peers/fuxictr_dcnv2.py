"""Peer run: FuxiCTR 2.3.10 training DCNv2 with the BARS Frappe_x1 settings.

Runs inside FuxiCTR's own virtual environment (``benchmarks/peer_fuxictr.py``
creates it and calls this script); never imported by mldcn. The model is
assembled here from FuxiCTR's own public building blocks (``BaseModel``,
``FeatureEmbedding``, ``CrossNetV2``, ``MLP_Block``) in the parallel structure
of FuxiCTR's model-zoo DCNv2 (which is not part of the PyPI package); data
preparation, the training loop, early stopping, evaluation and prediction are
FuxiCTR's. Prints one JSON line with timings and metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time

import torch
from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor, build_dataset
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.pytorch.layers import CrossNetV2, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything
from torch import nn

FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


class ParallelDCNv2(BaseModel):
    """logit = fc([CrossNetV2(e) ; MLP(e)]) — FuxiCTR's DCNv2 with model_structure=parallel."""

    def __init__(self, feature_map, embedding_dim, num_cross_layers, hidden_units, net_dropout,
                 batch_norm, learning_rate, **kwargs):
        super().__init__(feature_map, model_id="DCNv2_frappe", **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        width = feature_map.sum_emb_out_dim()
        self.crossnet = CrossNetV2(width, num_cross_layers)
        self.parallel_dnn = MLP_Block(input_dim=width, hidden_units=hidden_units, hidden_activations="ReLU",
                                      dropout_rates=net_dropout, batch_norm=batch_norm)
        self.fc = nn.Linear(width + hidden_units[-1], 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        emb = self.embedding_layer(self.get_inputs(inputs), flatten_emb=True)
        logit = self.fc(torch.cat([self.crossnet(emb), self.parallel_dnn(emb)], dim=-1))
        return {"y_pred": self.output_activation(logit)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder with train CSV, valid.csv, test.csv")
    parser.add_argument("--train-file", default="train_rebuilt.csv")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or tempfile.mkdtemp(prefix="fuxictr-")
    params = {
        "dataset_id": "frappe_x1",
        "data_root": workdir,
        "data_format": "csv",
        "train_data": os.path.join(args.data, args.train_file),
        "valid_data": os.path.join(args.data, "valid.csv"),
        "test_data": os.path.join(args.data, "test.csv"),
        "min_categr_count": 1,
        "feature_cols": [{"active": True, "dtype": "float", "name": FIELDS, "type": "categorical"}],
        "label_col": {"dtype": "float", "name": "label"},
        # BARS DCNv2_frappe_x1_007_c207b717
        "model_root": os.path.join(workdir, "checkpoints"),
        "gpu": -1, "metrics": ["AUC", "logloss"], "monitor": "AUC", "monitor_mode": "max",
        "early_stop_patience": 2, "verbose": 0, "optimizer": "adam", "loss": "binary_crossentropy",
        "learning_rate": 1e-3, "embedding_regularizer": 0.05, "net_regularizer": 0,
        "batch_size": 4096, "epochs": 100, "shuffle": True, "seed": args.seed, "num_workers": 0,
        "embedding_dim": 10, "num_cross_layers": 4, "hidden_units": [400, 400, 400],
        "net_dropout": 0.4, "batch_norm": True,
    }
    seed_everything(seed=args.seed)

    start = time.perf_counter()
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(encoder, **params)
    prepare_seconds = time.perf_counter() - start
    params["data_format"] = "parquet"

    feature_map = FeatureMap(params["dataset_id"], os.path.join(workdir, params["dataset_id"]))
    feature_map.load(os.path.join(workdir, params["dataset_id"], "feature_map.json"), params)
    model = ParallelDCNv2(feature_map, **params)
    os.makedirs(model.model_dir, exist_ok=True)

    step_seconds = [0.0]
    steps = [0]
    train_step = model.train_step

    def timed_step(batch):
        t = time.perf_counter()
        loss = train_step(batch)
        step_seconds[0] += time.perf_counter() - t
        steps[0] += 1
        return loss

    model.train_step = timed_step
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)
    start = time.perf_counter()
    model.fit(train_gen, validation_data=valid_gen, **params)
    fit_seconds = time.perf_counter() - start
    epochs = model._epoch_index + 1
    train_rows = train_gen.num_samples

    start = time.perf_counter()
    valid = model.evaluate(valid_gen)
    eval_seconds = time.perf_counter() - start
    test_gen = RankDataLoader(feature_map, stage="test", **params)
    test = model.evaluate(test_gen)
    start = time.perf_counter()
    predictions = model.predict(test_gen)
    predict_seconds = time.perf_counter() - start

    batches = list(test_gen)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for batch in batches:
            model.forward(batch)
        forward_seconds = time.perf_counter() - start

    print(json.dumps({
        "library": "fuxictr 2.3.10",
        "seed": args.seed,
        "prepare_seconds": prepare_seconds,
        "prepare_rows": train_rows + valid_gen.num_samples + test_gen.num_samples,
        "fit_seconds": fit_seconds,
        "epochs": epochs,
        "train_examples_per_second": epochs * train_rows / fit_seconds,
        "step_examples_per_second": steps[0] * params["batch_size"] / step_seconds[0] if steps[0] else None,
        "eval_examples_per_second": valid_gen.num_samples / eval_seconds,
        "predict_examples_per_second": len(predictions) / predict_seconds,
        "forward_examples_per_second": len(predictions) / forward_seconds,
        "valid_auc": valid["AUC"], "valid_logloss": valid["logloss"],
        "test_auc": test["AUC"], "test_logloss": test["logloss"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    sys.exit(main())
