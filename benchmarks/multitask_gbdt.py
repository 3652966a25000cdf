"""A non-deep reference per task: scikit-learn's HistGradientBoostingClassifier on a prepared split.

It reads the same prepared arrays the models train on (``mldcn prepare``: same rows in
train / valid / test, categorical ids as native categorical features, the transformed
numeric values), fits one classifier per task on train with its default settings
(early stopping on an internal 10% of train, seeded by ``--seeds``), and prints each
task's test AUC and logloss, mean ± std over the seeds, as markdown.

    python benchmarks/multitask_gbdt.py --data data/adult --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from mldcn.data.prepared import load_prepared
from mldcn.metrics import auc, logloss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    data = load_prepared(args.data)
    features = data.features

    def table(split):
        return np.hstack([split.categorical.numpy().astype(np.float64), split.numeric.numpy().astype(np.float64)])

    x_train, x_test = table(data.train), table(data.test)
    categorical = [True] * len(features.categorical) + [False] * len(features.numeric)
    print(f"HistGradientBoostingClassifier on {args.data}: {len(data.train):,} train / {len(data.test):,} test rows, "
          f"{len(features.categorical)} categorical + {len(features.numeric)} numeric features, seeds {args.seeds}")  # fmt: skip
    print("\n| task | test AUC | test logloss |\n|---|---|---|")
    for t, task in enumerate(features.task_names):
        aucs, losses = [], []
        for seed in args.seeds:
            model = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed)
            model.fit(x_train, data.train.labels[:, t].numpy())
            p = model.predict_proba(x_test)[:, 1]
            y = data.test.labels[:, t].numpy()
            aucs.append(auc(y, p))
            losses.append(logloss(y, p))
        print(f"| {task} | {statistics.fmean(aucs):.4f} ± {statistics.stdev(aucs):.4f} | "
              f"{statistics.fmean(losses):.4f} ± {statistics.stdev(losses):.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
