"""Trial packing: several trials in one computation, each exactly as if alone (issue 13).

Packed members share the frozen CLIP's calls only: their prompts, logged losses and accuracies
must be those of the same trial run alone (float32 on CPU: prompts within 1e-5 after 2 epochs,
identical correct counts). A deliberately wrong pack (every member given the first member's
data) moves the prompts far beyond that, so the comparison bites.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from conftest import tiny_overrides

from rayot import config as C
from rayot.errors import ConfigError, TrainingError
from rayot.packing import check_packable, make_packs, pack_id, pack_key
from rayot.train import MemberResult, Progress, TrialHooks, run_pack, run_trial

#: measured: the largest prompt difference packed vs alone is ~1e-7 here (K = 3, 2 epochs)
PROMPT_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A fixed checkpoint of the tiny model: trials of different seeds then share their CLIP."""
    torch.manual_seed(0)
    model = open_clip.create_model("rayot-tiny", pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def _cfg(synth_root, tmp_path, weights, **extra):
    over = {"method": "prompt_ot", "model.checkpoint": str(weights), "optim.log_every": 1, **extra}
    return C.load_config(None, tiny_overrides(synth_root, tmp_path, **over))


class _Record(TrialHooks):
    """Keeps every epoch's state and metrics."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, dict, dict]] = []

    def save_epoch(self, epoch, state, metrics):
        self.saved.append((epoch, state, metrics))


def _alone(cfg):
    seen: list[Progress] = []
    hooks = _Record()
    outcome = run_trial(cfg, hooks=hooks, progress=seen.append)
    return outcome, [m for _, _, m in hooks.saved]


def _assert_same_as_alone(result: MemberResult, alone, pack_metrics: list[dict]) -> None:
    outcome, alone_metrics = alone
    assert result.error is None and result.outcome is not None
    got = result.outcome
    assert got.trial_id == outcome.trial_id
    for key, value in outcome.prompt_state.items():
        assert (got.prompt_state[key] - value).abs().max().item() < PROMPT_TOL, key
    assert [(e.split, e.n_correct, e.n_test) for e in got.evals] == \
           [(e.split, e.n_correct, e.n_test) for e in outcome.evals]
    mine = [m["members"][got.trial_id] for m in pack_metrics]
    assert [m["lr"] for m in mine] == [m["lr"] for m in alone_metrics]
    for a, b in zip(mine, alone_metrics, strict=True):
        for k in ("loss", "ce", "reg"):
            assert a[k] == pytest.approx(b[k], abs=1e-4), k


def test_a_pack_of_three_equals_each_trial_alone(synth_root, tmp_path, tiny_weights):
    cfgs = [
        _cfg(synth_root, tmp_path, tiny_weights, seed=1),
        _cfg(synth_root, tmp_path, tiny_weights, seed=2, **{"loss.lambda_ot": 1.0}),
        _cfg(synth_root, tmp_path, tiny_weights, seed=3, **{"loss.solver": "sinkhorn"}),
    ]
    hooks = _Record()
    packed = run_pack(cfgs, hooks=hooks)
    pack_metrics = [m for _, _, m in hooks.saved]
    assert [e for e, _, _ in hooks.saved] == [0, 1]
    for cfg, result in zip(cfgs, packed, strict=True):
        _assert_same_as_alone(result, _alone(cfg), pack_metrics)
