"""Write an in-memory data set as a prepared directory (the arrays and feature map `load_prepared` reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mldcn.data.dataset import Dataset
from mldcn.data.encode import FORMAT_VERSION


def write_prepared(dataset: Dataset, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in ("train", "valid", "test"):
        split = getattr(dataset, name)
        (out / name).mkdir(exist_ok=True)
        for column in ("categorical", "numeric", "labels", "sequence"):
            value = getattr(split, column)
            if value is not None:
                dtype = "<i4" if column in ("categorical", "sequence") else "<f4"
                np.ascontiguousarray(value.numpy(), dtype=dtype).tofile(out / name / f"{column}.bin")
        rows[name] = len(split)
    feature_map = {
        "format_version": FORMAT_VERSION,
        "schema": {"name": "written_by_a_test", "weight": None},
        "features": dataset.features.to_dict(),
        "rows": rows,
    }
    (out / "feature_map.json").write_text(json.dumps(feature_map))
    return out
