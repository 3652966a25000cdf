"""Shared test set-up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# shared test modules (toy data, distributed workers) live in tests/helpers
sys.path.insert(0, str(Path(__file__).parent / "helpers"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tests use tiny tensors that gain nothing from intra-op threads, and on a busy
    # 2-core machine OpenMP threads waiting for each other make every op ~100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
