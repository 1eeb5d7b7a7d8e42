"""A trial on two ranks (torch.distributed, gloo, no Ray; the session's pair of rank processes,
the conformance kit's): resumed, it ends as the uninterrupted two-rank run; the gathered features
give POT's plan of the global batch and the single-process gradients; a batch size the workers
cannot share is refused at load time. That every built-in ends on two ranks where it ends on one
is the conformance kit's ``two_workers_equal_one``."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from conftest import tiny_overrides

from rayot import config as C
from rayot.distributed import shard_sizes
from rayot.errors import ConfigError
from rayot.methods.prompt_ot import prompt_ot_loss
from rayot.train import DistributedHooks
from rayot.transport import ot_plan, pairwise_sq_dists

WORLD = 2


def _overrides(synth_root, tmp_path):
    return tiny_overrides(synth_root, tmp_path, method="prompt_ot", **{"optim.log_every": 1})


def _ot_check(hooks: DistributedHooks) -> dict:
    """On each of two ranks: gather each rank's rows of a seeded (8, 6) batch of features with the
    library's collective; return the global plan, loss and this rank's rows of the gradient."""
    full = torch.nn.functional.normalize(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    ref = torch.nn.functional.normalize(torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    sizes = shard_sizes(8, WORLD)
    start = sum(sizes[:hooks.rank])
    mine = full[start:start + sizes[hooks.rank]].clone().requires_grad_(True)  # (4, 6): this rank's rows
    image = hooks.gather(mine, sizes)  # (8, 6)
    ref_mine = ref[start:start + sizes[hooks.rank]]
    image_ref = hooks.gather(ref_mine, sizes)  # (8, 6)
    plan = ot_plan(0.5 * pairwise_sq_dists(image, image_ref).detach())  # (8, 8)
    loss = prompt_ot_loss(image, image_ref, image, image_ref, modality="vision")
    loss.backward()
    return {"plan": plan, "loss": loss.detach(), "grad": mine.grad, "start": start}


@pytest.fixture(scope="module")
def two_ranks(kit, synth_root, tmp_path_factory):
    """On the session's pair of rank processes (the kit's): Prompt-OT's tiny trial, the same trial
    resumed from each rank's checkpoint of epoch 1 (as after a worker failure in epoch 2), and the
    global plan of :func:`_ot_check`."""
    cfg = C.load_config(None, _overrides(synth_root, tmp_path_factory.mktemp("sharding")))
    whole = [members[0] for members in kit.on_two_ranks([cfg])]
    resumed = [members[0] for members in kit.on_two_ranks([cfg], resume=[run.saved[0][1] for run in whole])]
    return whole, resumed, kit.call_on_two_ranks("test_sharding:_ot_check")


def test_two_ranks_resumed_after_epoch_one_end_as_the_uninterrupted_run(two_ranks):
    wholes, resumeds, _ = two_ranks
    for whole, resumed in zip(wholes, resumeds, strict=True):
        assert [e for e, _, _ in resumed.saved] == [1]
        assert all(torch.equal(resumed.prompt[k], whole.prompt[k]) for k in whole.prompt)
        assert resumed.correct == whole.correct
        assert resumed.losses == whole.losses[len(whole.losses) // 2:]  # epoch 2's steps only


def test_the_global_plan_is_pots_plan_of_the_gathered_batch(two_ranks):
    _, _, ranks = two_ranks
    full = torch.nn.functional.normalize(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    ref = torch.nn.functional.normalize(torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    cost = 0.5 * pairwise_sq_dists(full, ref)  # (8, 8): the global cost
    pot = torch.from_numpy(ot.emd(np.full(8, 1 / 8), np.full(8, 1 / 8), cost.double().numpy())).float()
    whole = full.clone().requires_grad_(True)
    loss = prompt_ot_loss(whole, ref, whole, ref, modality="vision")
    loss.backward()
    for got in ranks:
        assert torch.allclose(got["plan"], pot, atol=1e-7)
        assert pot[:4, 4:].sum() > 0  # the plan couples samples of both ranks
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        start = got["start"]  # each rank's rows of the one-process gradient, no more (not N times)
        assert torch.allclose(got["grad"], whole.grad[start:start + 4], atol=1e-7)


def test_a_batch_the_workers_cannot_share_is_refused_at_load_time(synth_root, tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size.*\b6\b.*\b4\b workers"):
        C.load_config(None, tiny_overrides(synth_root, tmp_path, **{"optim.batch_size": 6, "world_size": 4}))
    assert C.load_config(None, tiny_overrides(synth_root, tmp_path, **{"optim.batch_size": 6,
                                                                       "world_size": 3})).world_size == 3


def test_the_trial_id_does_not_depend_on_the_worker_count(synth_root, tmp_path):
    one = C.load_config(None, tiny_overrides(synth_root, tmp_path))
    two = C.load_config(None, tiny_overrides(synth_root, tmp_path, world_size=2))
    assert C.trial_id(one) == C.trial_id(two)
