"""Fixtures shared by the training and sweep tests: a small synthetic world and a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread: the tiny models gain nothing from more, and on a 2-core machine shared
# with Ray workers, two threads per process oversubscribe the cores (100x slower steps).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A data root holding a small rendering of the synthetic world (24 classes)."""
    from rayot.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, seed=0, n_train=6, n_val=2, n_test=6)
    return root


def tiny_overrides(root: Path, tmp: Path, **extra: object) -> list[str]:
    """Overrides for a seconds-long trial: tiny random model, 2 shots, 2 epochs."""
    base = {
        "data.dataset": "synthetic",
        "data.root": str(root),
        "data.shots": 2,
        "data.num_workers": 0,
        "model.name": "rayot-tiny",
        "model.pretrained": "null",
        "prompt.depth_text": 2,
        "prompt.depth_vision": 2,
        "optim.epochs": 2,
        "optim.batch_size": 4,
        "optim.eval_batch_size": 64,
        "output.results": str(tmp / "results"),
        "output.checkpoints": str(tmp / "checkpoints"),
        "device": "cpu",
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
