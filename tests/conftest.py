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


def assert_a_step_trains_only_the_learned_tensors(m, loss_of) -> None:
    """One SGD step on ``loss_of(m)``: the frozen CLIP stays in eval mode, gets no gradient and is
    unchanged; every learned tensor (and only those) gets a gradient and moves."""
    m.train()
    assert m.training and not m.clip.training
    before = {k: v.clone() for k, v in m.clip.state_dict().items()}
    learned_before = m.prompt_state_dict()
    params = m.trainable_parameters()
    assert {id(p) for p in params} == {id(p) for p in m.parameters() if p.requires_grad}
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    loss_of(m).backward()
    for name, p in m.clip.named_parameters():
        assert p.grad is None, name
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    opt.step()
    after = m.clip.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    for key, value in m.prompt_state_dict().items():
        assert not torch.equal(value, learned_before[key]), key
