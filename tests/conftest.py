"""Shared pytest fixtures: deterministic seeding and CPU-only defaults."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

# One thread: on a shared 2-core machine, two threads per process make tiny-model steps 100x slower.
torch.set_num_threads(1)
# Tests pin fp32 (tools default to bf16 autocast on CPUs with native bf16): the same numbers on
# every machine. Set at import so module-scoped fixtures and subprocesses see it too.
os.environ["MTLORA_PRECISION"] = "fp32"


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Make every test start from the same random state, on one torch thread."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # also after a test (or a tool it ran) changed the thread count


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
