"""rayot.transport and Prompt-OT's regulariser against POT on random problems: value, plan,
marginals, gradients; the objective applies λ once and reports the plan's off-diagonal mass."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from rayot.methods import Batch, get
from rayot.methods.prompt_ot import prompt_ot_loss
from rayot.model.prompts import PromptOutput
from rayot.transport import (
    off_diagonal_mass,
    ot_plan,
    pairwise_sq_dists,
    sinkhorn_log,
    sinkhorn_unbalanced_log,
)

ETA = 0.5


def _unit(g: torch.Generator, b: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _features(seed: int, b: int = 8, d: int = 6, dtype: torch.dtype = torch.float64):
    """(image, image_ref, text, text_ref), each (b, d), unit rows; adapted = frozen + noise."""
    g = torch.Generator().manual_seed(seed)
    image_ref = _unit(g, b, d, dtype)
    text_ref = _unit(g, b, d, dtype)
    image = F.normalize(image_ref + 0.7 * _unit(g, b, d, dtype), dim=-1)
    text = F.normalize(text_ref + 0.7 * _unit(g, b, d, dtype), dim=-1)
    return image, image_ref, text, text_ref


def _np_cost(z: torch.Tensor, z_ref: torch.Tensor) -> np.ndarray:
    """eta * squared distances, computed by broadcasting in NumPy (independent of the code)."""
    zn, z0 = z.detach().double().numpy(), z_ref.detach().double().numpy()
    return ETA * ((zn[:, None, :] - z0[None, :, :]) ** 2).sum(-1)


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _pot_sinkhorn(cost: np.ndarray, eps: float, n_iters: int) -> np.ndarray:
    """POT's log-domain Sinkhorn, forced to run exactly n_iters iterations."""
    n, m = cost.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": intended
        return ot.sinkhorn(
            _uniform(n),
            _uniform(m),
            cost,
            reg=eps,
            method="sinkhorn_log",
            numItermax=n_iters,
            stopThr=0.0,
        )


def _pot_unbalanced(cost: np.ndarray, eps: float, tau: float, n_iters: int) -> np.ndarray:
    n, m = cost.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.unbalanced.sinkhorn_unbalanced(
            _uniform(n), _uniform(m), cost, reg=eps, reg_m=tau, numItermax=n_iters, stopThr=0.0
        )


# --------------------------------------------------------------------------- exact OT


@pytest.mark.parametrize("seed,b", [(0, 2), (1, 7), (2, 16)])
def test_emd_value_equals_pot(seed: int, b: int) -> None:
    image, image_ref, text, text_ref = _features(seed, b=b)
    cost = _np_cost(torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1))
    expected = float((ot.emd(_uniform(b), _uniform(b), cost) * cost).sum())
    loss = prompt_ot_loss(image, image_ref, text, text_ref, eta=ETA, solver="emd")
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_emd_plan_is_a_permutation_over_b() -> None:
    b = 12
    image, image_ref, text, text_ref = _features(3, b=b)
    cost = ETA * pairwise_sq_dists(
        torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1)
    )
    plan = ot_plan(cost, solver="emd")
    assert_close(plan, torch.from_numpy(ot.emd(_uniform(b), _uniform(b), cost.numpy())))
    assert_close(plan.sum(0), torch.full((b,), 1.0 / b, dtype=torch.float64))
    assert_close(plan.sum(1), torch.full((b,), 1.0 / b, dtype=torch.float64))
    # One non-zero of 1/B per row and per column.
    assert ((plan > 0).sum(0) == 1).all() and ((plan > 0).sum(1) == 1).all()
    assert_close(plan[plan > 0], torch.full((b,), 1.0 / b, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("modality", ["joint", "vision", "text"])
def test_emd_never_exceeds_pointwise(seed: int, modality: str) -> None:
    feats = _features(10 + seed, b=10)
    ot_value = prompt_ot_loss(*feats, modality=modality, regularizer="ot")
    pointwise = prompt_ot_loss(*feats, modality=modality, regularizer="pointwise")
    assert ot_value.item() <= pointwise.item() + 1e-12


def test_emd_is_strictly_below_pointwise_when_pairs_are_shuffled() -> None:
    image, image_ref, text, text_ref = _features(15, b=10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    feats = (image, image_ref[perm], text, text_ref[perm])
    ot_value = prompt_ot_loss(*feats)
    pointwise = prompt_ot_loss(*feats, regularizer="pointwise")
    assert ot_value.item() < 0.8 * pointwise.item()


@pytest.mark.parametrize("solver", ["emd", "sinkhorn", "unbalanced"])
def test_gradient_is_that_of_a_fixed_plan(solver: str) -> None:
    b = 9
    image, image_ref, text, text_ref = _features(4, b=b)
    image.requires_grad_(True)
    text.requires_grad_(True)
    z0 = torch.cat([image_ref, text_ref], -1)
    cost = _np_cost(torch.cat([image, text], -1), z0)
    eps, tau, n_iters = 0.05, 0.7, 300
    if solver == "emd":
        plan = ot.emd(_uniform(b), _uniform(b), cost)
    elif solver == "sinkhorn":
        plan = _pot_sinkhorn(cost, eps, n_iters)
    else:
        plan = _pot_unbalanced(cost, eps, tau, n_iters)
    pi = torch.from_numpy(plan)  # (B, B), a constant

    loss = prompt_ot_loss(
        image, image_ref, text, text_ref, solver=solver, epsilon=eps, tau=tau, n_iters=n_iters
    )
    loss.backward()

    # d/dz_i sum_j pi_ij eta |z_i - z0_j|^2 = 2 eta (r_i z_i - (pi z0)_i), r = row sums of pi.
    z = torch.cat([image, text], -1).detach()
    grad_z = 2 * ETA * (pi.sum(1, keepdim=True) * z - pi @ z0)  # (B, 2D)
    d = image.shape[1]
    assert_close(image.grad, grad_z[:, :d])
    assert_close(text.grad, grad_z[:, d:])


def test_gradient_finite_at_zero_distance() -> None:
    # CoOp leaves the image side unadapted: image == image_ref exactly, zero diagonal distances.
    image, image_ref, text, text_ref = _features(5)
    image = image_ref.clone().requires_grad_(True)
    for solver in ("emd", "sinkhorn"):
        image.grad = None
        prompt_ot_loss(
            image, image_ref, text, text_ref, solver=solver, epsilon=0.1, modality="vision"
        ).backward()
        assert torch.isfinite(image.grad).all()
        if solver == "emd":  # the identity is optimal and the gradient vanishes
            assert_close(image.grad, torch.zeros_like(image))


# --------------------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize("rel_eps", [1.0, 0.1, 0.01, 0.002])
@pytest.mark.parametrize("n_iters", [1, 7, 200])
def test_sinkhorn_iterates_equal_pot(rel_eps: float, n_iters: int) -> None:
    """Same plan as POT after the same number of iterations, small epsilon included."""
    image, image_ref, text, text_ref = _features(6, b=11)
    z, z0 = torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1)
    cost = _np_cost(z, z0)
    eps = rel_eps * float(cost.mean())
    expected = _pot_sinkhorn(cost, eps, n_iters)
    plan = sinkhorn_log(torch.from_numpy(cost), eps, n_iters)
    assert_close(plan, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)
    loss = prompt_ot_loss(
        image, image_ref, text, text_ref, solver="sinkhorn", epsilon=eps, n_iters=n_iters
    )
    assert loss.item() == pytest.approx(float((expected * cost).sum()), rel=1e-9)


@pytest.mark.parametrize("rel_eps,n_iters", [(0.5, 300), (0.1, 3000)])
def test_sinkhorn_converges_to_pot_solution(rel_eps: float, n_iters: int) -> None:
    b = 10
    image, image_ref, text, text_ref = _features(7, b=b)
    cost = _np_cost(torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1))
    eps = rel_eps * float(cost.mean())
    expected = ot.sinkhorn(
        _uniform(b),
        _uniform(b),
        cost,
        reg=eps,
        method="sinkhorn_log",
        numItermax=20_000,
        stopThr=1e-12,
    )
    plan = ot_plan(torch.from_numpy(cost), solver="sinkhorn", epsilon=eps, n_iters=n_iters)
    assert_close(plan, torch.from_numpy(expected), rtol=0, atol=1e-7)
    ones = torch.full((b,), 1.0 / b, dtype=torch.float64)
    assert_close(plan.sum(1), ones, rtol=0, atol=1e-12)  # the last update makes rows exact
    assert_close(plan.sum(0), ones, rtol=0, atol=1e-7)


def test_sinkhorn_float32_small_epsilon_stays_finite() -> None:
    """exp(-C/eps) underflows in float32 here (C/eps up to ~800): only the log domain copes."""
    image, image_ref, text, text_ref = _features(6, b=11)
    cost = _np_cost(torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1))
    eps = 0.002 * float(cost.mean())
    expected = torch.from_numpy(_pot_sinkhorn(cost, eps, 50))
    plan = sinkhorn_log(torch.from_numpy(cost).float(), eps, 50)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    assert_close(plan.double(), expected, rtol=0, atol=1e-5)


def test_sinkhorn_small_epsilon_approaches_emd() -> None:
    b = 8
    image, image_ref, text, text_ref = _features(8, b=b)
    emd = prompt_ot_loss(image, image_ref, text, text_ref, solver="emd")
    sk = prompt_ot_loss(
        image, image_ref, text, text_ref, solver="sinkhorn", epsilon=1e-3, n_iters=3000
    )
    assert math.isfinite(sk.item())
    assert sk.item() == pytest.approx(emd.item(), rel=1e-3)


@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("n_iters", [1, 5, 300])
def test_unbalanced_iterates_equal_pot(tau: float, n_iters: int) -> None:
    image, image_ref, text, text_ref = _features(9, b=7)
    cost = _np_cost(torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1))
    eps = 0.2 * float(cost.mean())  # POT's non-log solver underflows for much smaller eps
    expected = _pot_unbalanced(cost, eps, tau, n_iters)
    plan = sinkhorn_unbalanced_log(torch.from_numpy(cost), eps, tau, n_iters)
    assert_close(plan, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)
    loss = prompt_ot_loss(
        image, image_ref, text, text_ref, solver="unbalanced", epsilon=eps, tau=tau, n_iters=n_iters
    )
    assert loss.item() == pytest.approx(float((expected * cost).sum()), rel=1e-9)


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_unbalanced_converged_against_pot(tau: float) -> None:
    b = 9
    image, image_ref, text, text_ref = _features(10, b=b)
    cost = _np_cost(torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1))
    eps = 0.1 * float(cost.mean())
    expected = ot.unbalanced.sinkhorn_unbalanced(
        _uniform(b), _uniform(b), cost, reg=eps, reg_m=tau, numItermax=100_000, stopThr=1e-14
    )
    plan = ot_plan(torch.from_numpy(cost), solver="unbalanced", epsilon=eps, tau=tau, n_iters=3000)
    assert_close(plan, torch.from_numpy(expected), rtol=1e-7, atol=1e-10)
    if tau == 0.05:  # a loose marginal constraint really lets mass go
        assert plan.sum().item() < 0.99


def test_unbalanced_with_infinite_tau_is_sinkhorn() -> None:
    g = torch.Generator().manual_seed(11)
    cost = torch.rand(6, 6, generator=g, dtype=torch.float64)
    # POT updates rows first in the unbalanced solver and columns first in the balanced one,
    # so compare converged plans.
    assert_close(sinkhorn_unbalanced_log(cost, 0.1, math.inf, 2000), sinkhorn_log(cost, 0.1, 2000))


# --------------------------------------------------------------------------- modality, pointwise


def test_joint_cost_is_that_of_the_concatenation() -> None:
    b = 8
    image, image_ref, text, text_ref = _features(12, b=b)
    for solver in ("emd", "sinkhorn"):
        cost = _np_cost(torch.cat([image, text], -1), torch.cat([image_ref, text_ref], -1))
        if solver == "emd":
            plan = ot.emd(_uniform(b), _uniform(b), cost)
        else:
            plan = _pot_sinkhorn(cost, 0.1, 200)
        loss = prompt_ot_loss(
            image, image_ref, text, text_ref, solver=solver, epsilon=0.1, modality="joint"
        )
        assert loss.item() == pytest.approx(float((plan * cost).sum()), rel=1e-10)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn", "unbalanced"])
def test_single_modalities_use_only_their_features(solver: str) -> None:
    image, image_ref, text, text_ref = _features(13, b=10)
    zero = torch.zeros_like(text)
    kw = dict(solver=solver, epsilon=0.05, tau=0.5)
    vision = prompt_ot_loss(image, image_ref, text, text_ref, modality="vision", **kw)
    vision_as_joint = prompt_ot_loss(image, image_ref, zero, zero, modality="joint", **kw)
    text_only = prompt_ot_loss(image, image_ref, text, text_ref, modality="text", **kw)
    text_as_joint = prompt_ot_loss(zero, zero, text, text_ref, modality="joint", **kw)
    joint = prompt_ot_loss(image, image_ref, text, text_ref, modality="joint", **kw)
    assert_close(vision, vision_as_joint)
    assert_close(text_only, text_as_joint)
    # The single-modality losses differ from each other and from the joint one.
    assert len({round(v.item(), 9) for v in (vision, text_only, joint)}) == 3
    if solver == "emd":
        cost = _np_cost(image, image_ref)
        assert vision.item() == pytest.approx(
            float((ot.emd(_uniform(10), _uniform(10), cost) * cost).sum())
        )


@pytest.mark.parametrize("modality", ["joint", "vision", "text"])
def test_pointwise_is_mean_squared_distance(modality: str) -> None:
    image, image_ref, text, text_ref = _features(14, b=6)
    z = {"joint": torch.cat([image, text], -1), "vision": image, "text": text}[modality]
    z0 = {"joint": torch.cat([image_ref, text_ref], -1), "vision": image_ref, "text": text_ref}[
        modality
    ]
    expected = ETA * ((z - z0) ** 2).sum(-1).mean()
    loss = prompt_ot_loss(
        image, image_ref, text, text_ref, modality=modality, regularizer="pointwise"
    )
    assert_close(loss, expected)
    # = sum (I/B) * C
    assert loss.item() == pytest.approx(float(np.trace(_np_cost(z, z0)) / 6), rel=1e-12)


def test_regularizer_none_is_a_connected_zero() -> None:
    image, image_ref, text, text_ref = _features(15)
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss = prompt_ot_loss(image, image_ref, text, text_ref, regularizer="none")
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert_close(image.grad, torch.zeros_like(image))
    assert_close(text.grad, torch.zeros_like(text))


# --------------------------------------------------------------------------- device, dtype, no sync


@pytest.mark.parametrize("solver", ["sinkhorn", "unbalanced"])
def test_sinkhorn_solvers_never_read_values_back(solver: str) -> None:
    """On the meta device tensors have no values: any .item(), bool() or host copy would raise."""
    feats = [torch.empty(16, 8, device="meta") for _ in range(4)]
    loss = prompt_ot_loss(*feats, solver=solver, epsilon=0.1, n_iters=5)
    assert loss.device.type == "meta" and loss.shape == ()
    plan = ot_plan(torch.empty(16, 16, device="meta"), solver=solver, epsilon=0.1, n_iters=5)
    assert plan.device.type == "meta" and plan.shape == (16, 16)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn", "unbalanced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_plan_device_dtype_and_detached(solver: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(16)
    cost = torch.rand(5, 5, generator=g).to(dtype).requires_grad_(True)
    plan = ot_plan(cost, solver=solver, epsilon=0.1, tau=1.0, n_iters=50)
    assert not plan.requires_grad
    assert plan.device == cost.device
    assert plan.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    with torch.no_grad():
        assert_close(ot_plan(cost.detach(), solver=solver, epsilon=0.1, tau=1.0, n_iters=50), plan)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_half_precision_inputs_match_float32(solver: str) -> None:
    feats32 = _features(17, b=16, d=32, dtype=torch.float32)
    ref = prompt_ot_loss(*feats32, solver=solver, epsilon=0.05)
    for dtype in (torch.bfloat16, torch.float16):
        low = [f.to(dtype) for f in feats32]
        loss = prompt_ot_loss(*low, solver=solver, epsilon=0.05)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert loss.item() == pytest.approx(ref.item(), rel=2e-2)


def test_autocast_does_not_lower_the_precision() -> None:
    feats = _features(18, b=12, d=16, dtype=torch.float32)
    ref = prompt_ot_loss(*feats, solver="sinkhorn", epsilon=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = prompt_ot_loss(*feats, solver="sinkhorn", epsilon=0.05)
    assert loss.dtype == torch.float32
    assert_close(loss, ref)


# --------------------------------------------------------------------------- arguments, total loss


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(solver="simplex"), "solver"),
        (dict(modality="audio"), "modality"),
        (dict(regularizer="l2"), "regularizer"),
        (dict(solver="sinkhorn", epsilon=0.0), "epsilon"),
        (dict(solver="unbalanced", epsilon=-1.0), "epsilon"),
        (dict(solver="sinkhorn", epsilon=float("nan")), "epsilon"),
        (dict(solver="unbalanced", epsilon=0.1, tau=0.0), "tau"),
        (dict(solver="sinkhorn", epsilon=0.1, n_iters=0), "n_iters"),
        (dict(eta=-0.5), "eta"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    feats = _features(19)
    with pytest.raises(ValueError, match=name):
        prompt_ot_loss(*feats, **kwargs)


def test_bad_names_list_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="'emd', 'sinkhorn', 'unbalanced'"):
        ot_plan(torch.zeros(3, 3), solver="exact")


def test_mismatched_shapes_are_rejected() -> None:
    image, image_ref, text, text_ref = _features(20, b=8)
    with pytest.raises(ValueError, match="image_ref"):
        prompt_ot_loss(image, image_ref[:4], text, text_ref)
    with pytest.raises(ValueError, match="batch size"):
        prompt_ot_loss(image[:4], image_ref[:4], text, text_ref)
    with pytest.raises(ValueError, match="text"):
        prompt_ot_loss(image, image_ref, text[0], text_ref[0])


def test_pointwise_does_not_need_solver_settings() -> None:
    # epsilon = 0 is only an error when a Sinkhorn plan is actually computed.
    loss = prompt_ot_loss(*_features(21), solver="sinkhorn", epsilon=0.0, regularizer="pointwise")
    assert loss.item() > 0


def _batch(seed: int, shuffle: bool) -> Batch:
    """A batch whose adapted features are the frozen ones, in order or with samples swapped."""
    g = torch.Generator().manual_seed(seed)
    image_ref, text_ref = _unit(g, 4, 6, torch.float32), _unit(g, 3, 6, torch.float32)
    labels = torch.tensor([0, 1, 2, 0])
    order = torch.tensor([1, 0, 3, 2]) if shuffle else torch.arange(4)
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    out = PromptOutput(logits=logits, image=image_ref[order].clone().requires_grad_(True), text=text_ref)
    return Batch(out, labels if not shuffle else labels[order], image_ref, text_ref, torch.tensor(100.0), 0)


def test_the_objective_applies_lambda_once_and_reports_the_plan_s_distance_from_the_identity() -> None:
    method = get("prompt_ot")
    settings = method.Settings(lambda_ot=10.0, modality="vision")
    batch = _batch(22, shuffle=False)
    objective = method.loss(batch, settings)
    reg = prompt_ot_loss(batch.output.image, batch.image_ref, batch.output.text[batch.labels],
                         batch.text_ref[batch.labels], modality="vision")
    ce = F.cross_entropy(batch.output.logits, batch.labels)
    assert objective.loss.item() == pytest.approx(ce.item() + 10.0 * reg.item(), rel=1e-6)
    assert objective.diagnostics["ot_offdiag_mass"].item() == 0.0  # each sample matched to its own
    assert objective.diagnostics["ot_nonidentity_frac"].item() == 0.0
    # the adapted images of samples 0/1 and 2/3 swapped: the exact plan pairs them crosswise
    shuffled = method.loss(_batch(22, shuffle=True), settings)
    assert shuffled.diagnostics["ot_offdiag_mass"].item() == pytest.approx(1.0)
    assert shuffled.diagnostics["ot_nonidentity_frac"].item() == 1.0
    plain = method.loss(batch, method.Settings(lambda_ot=0.0))
    assert plain.loss.item() == pytest.approx(ce.item()) and not plain.diagnostics


def test_off_diagonal_mass_of_known_plans() -> None:
    assert off_diagonal_mass(torch.eye(4) / 4).item() == 0.0
    assert off_diagonal_mass(torch.full((4, 4), 1 / 16)).item() == pytest.approx(0.75)
    half = torch.tensor([[0.25, 0.25], [0.25, 0.25]])
    assert off_diagonal_mass(half).item() == pytest.approx(0.5)
