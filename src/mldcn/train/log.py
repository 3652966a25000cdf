"""The metrics log of a run: ``metrics.jsonl`` (one JSON line per epoch, or per point of a
one-pass learning curve) and one printed line for each."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm


class MetricsLog:
    """Appends each epoch's record to ``run_dir/metrics.jsonl`` (rank 0) and prints its summary.

    A new run starts the file empty; a resumed run appends to it.
    """

    def __init__(self, run_dir: Path | None, writes: bool, show: bool, resume: bool) -> None:
        self.path = run_dir / "metrics.jsonl" if run_dir is not None and writes else None
        self.show = show
        if self.path is not None and not resume:
            self.path.write_text("")

    def epoch(self, record: dict) -> None:
        self._write(record, f"epoch {record['epoch']}", "" if record["improved"] else "  (no improvement)")

    def point(self, record: dict) -> None:
        """A point of a one-pass learning curve (``record["examples"]`` seen so far)."""
        self._write(record, f"{record['examples']:,} examples")

    def _write(self, record: dict, where: str, note: str = "") -> None:
        if self.path is not None:
            with open(self.path, "a") as out:
                out.write(json.dumps(record) + "\n")
        if self.show:
            tasks = record["valid"]
            shown = "  ".join(
                f"{task + ' ' if len(tasks) > 1 else ''}valid auc {m['auc']:.4f} logloss {m['logloss']:.4f}"
                for task, m in tasks.items()
            )
            tqdm.write(f"{where}: train loss {record['train_loss']:.4f}  {shown}{note}")
