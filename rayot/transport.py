"""Optimal transport between two sets of features of a batch: costs, plans, solvers.

For adapted vectors z_i and frozen vectors z0_j of one batch (or any two sets of N and M vectors):

    C_ij = eta * ||z_i - z0_j||^2      (N, M) cost
    pi = argmin <pi, C>  (+ entropy)   the plan between uniform weights 1/N and 1/M,
                                       computed on the detached cost: gradients flow through C only

Solvers for pi: ``emd`` (exact network simplex, POT, on the host in float64), ``sinkhorn`` and
``unbalanced`` (log-domain torch iterations on the features' device, a fixed iteration count and no
host synchronisation, so a training step never waits on the CPU). The Sinkhorn solvers follow
POT's definitions exactly (``ot.sinkhorn`` and ``ot.unbalanced.sinkhorn_unbalanced`` with its
default ``reg_type="kl"``): ``epsilon`` is POT's ``reg`` and ``tau`` is POT's ``reg_m``, both in
the units of C. The cost is never rescaled internally.

Every OT computation runs in float32 at least (float64 stays float64), outside any autocast
region: squared distances between unit vectors in bf16/fp16 lose most of their digits. A method
builds its loss from these pieces (docs/method.md describes the one rayot is named after).
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers

import numpy as np
import ot
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "MODALITIES",
    "SOLVERS",
    "check_choice",
    "check_features",
    "check_solver_args",
    "compute_dtype",
    "feature_vectors",
    "no_autocast",
    "off_diagonal_mass",
    "ot_plan",
    "pairwise_sq_dists",
    "sinkhorn_log",
    "sinkhorn_unbalanced_log",
]

SOLVERS: tuple[str, ...] = ("emd", "sinkhorn", "unbalanced")
MODALITIES: tuple[str, ...] = ("joint", "vision", "text")

# Network simplex pivots; POT's default (1e5) is too small for B in the hundreds.
_EMD_MAX_ITER = 10_000_000


# --------------------------------------------------------------------------- validation


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_solver_args(solver: str, epsilon: float, tau: float, n_iters: int) -> None:
    check_choice("solver", solver, SOLVERS)
    if solver == "emd":
        return
    if not (isinstance(epsilon, numbers.Real) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(
            f"epsilon must be a finite number > 0 for solver {solver!r}, got {epsilon!r}"
        )
    if not (
        isinstance(n_iters, numbers.Integral) and not isinstance(n_iters, bool) and n_iters >= 1
    ):
        raise ValueError(f"n_iters must be an integer >= 1, got {n_iters!r}")
    if solver == "unbalanced" and not (isinstance(tau, numbers.Real) and tau > 0):
        # tau = inf is allowed: it is balanced Sinkhorn, as in POT.
        raise ValueError(f"tau must be a number > 0 for solver 'unbalanced', got {tau!r}")


def check_features(image: Tensor, image_ref: Tensor, text: Tensor, text_ref: Tensor) -> None:
    for name, t in (
        ("image", image),
        ("image_ref", image_ref),
        ("text", text),
        ("text_ref", text_ref),
    ):
        if t.ndim != 2:
            raise ValueError(f"{name} must have shape (B, D), got {tuple(t.shape)}")
    if image.shape != image_ref.shape:
        raise ValueError(
            f"image and image_ref must have the same shape, got {tuple(image.shape)} and {tuple(image_ref.shape)}"
        )
    if text.shape != text_ref.shape:
        raise ValueError(
            f"text and text_ref must have the same shape, got {tuple(text.shape)} and {tuple(text_ref.shape)}"
        )
    if image.shape[0] != text.shape[0]:
        raise ValueError(
            f"image and text must have the same batch size B, got {image.shape[0]} and {text.shape[0]}"
        )


# --------------------------------------------------------------------------- helpers


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # Inside an autocast region a matmul would run in half precision again despite the upcast.
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances ``||x_i - y_j||^2``.

    Args:
        x: (N, D). y: (M, D), same dtype and device.

    Returns:
        (N, M), clamped at 0 against rounding. Expanded as ``|x|^2 + |y|^2 - 2 x.y``: memory is
        O(N·M) rather than O(N·M·D) for broadcast differences, one matmul does the work, and no
        square root is taken, so the gradient stays finite where a distance is zero (a text-only
        prompt leaves the image side unadapted: ``image == image_ref``).
    """
    sq = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2.0 * (x @ y.T)  # (N, M)
    return sq.clamp_min(0.0)


def feature_vectors(
    image: Tensor,
    image_ref: Tensor,
    text: Tensor,
    text_ref: Tensor,
    modality: str,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """The adapted and frozen vectors z, z0 of the chosen modality, each (B, D') in ``dtype``."""
    if modality == "vision":
        return image.to(dtype), image_ref.to(dtype)  # (B, D)
    if modality == "text":
        return text.to(dtype), text_ref.to(dtype)  # (B, D)
    z = torch.cat([image.to(dtype), text.to(dtype)], dim=-1)  # (B, 2D)
    z_ref = torch.cat([image_ref.to(dtype), text_ref.to(dtype)], dim=-1)  # (B, 2D)
    return z, z_ref


# --------------------------------------------------------------------------- solvers


def _row_update(scaled: Tensor, g: Tensor, log_b: float, exponent: float) -> Tensor:
    # f_i = -exponent * log sum_j b_j exp(g_j - C_ij / eps)
    return -exponent * torch.logsumexp(scaled + (g + log_b)[None, :], dim=1)  # (N,)


def _col_update(scaled: Tensor, f: Tensor, log_a: float, exponent: float) -> Tensor:
    # g_j = -exponent * log sum_i a_i exp(f_i - C_ij / eps)
    return -exponent * torch.logsumexp(scaled + (f + log_a)[:, None], dim=0)  # (M,)


def _plan(scaled: Tensor, f: Tensor, g: Tensor, log_a: float, log_b: float) -> Tensor:
    # pi_ij = a_i b_j exp(f_i + g_j - C_ij / eps)
    return torch.exp(scaled + f[:, None] + g[None, :] + (log_a + log_b))  # (N, M)


def sinkhorn_log(cost: Tensor, epsilon: float, n_iters: int) -> Tensor:
    """Entropic OT plan between uniform weights, log-domain Sinkhorn in torch.

    Solves ``min_pi <pi, C> + epsilon * KL(pi | a b^T)`` s.t. ``pi 1 = a``, ``pi^T 1 = b`` with
    ``a = 1/N``, ``b = 1/M`` — the plan of POT's ``ot.sinkhorn(a, b, C, reg=epsilon)``. Each
    iteration updates the column potential then the row potential, like POT, so after k
    iterations the plan equals POT's after k iterations; the row marginals are exact, the column
    marginals converge. A fixed ``n_iters`` and no convergence test: nothing is read back to the
    host, so on an accelerator the call never synchronises.

    Args:
        cost: (N, M) cost matrix; detached internally (no gradient flows through the plan).
        epsilon: entropic regularization, > 0, in the units of ``cost`` (not rescaled).
        n_iters: number of iterations, >= 1. Small ``epsilon`` relative to the spread of
            ``cost`` needs more iterations.

    Returns:
        (N, M) plan on ``cost``'s device, in float32 or float64 (float64 if ``cost`` is float64).
    """
    check_solver_args("sinkhorn", epsilon, math.inf, n_iters)
    return _sinkhorn_generic(cost, epsilon, 1.0, n_iters, rows_first=False)


def sinkhorn_unbalanced_log(cost: Tensor, epsilon: float, tau: float, n_iters: int) -> Tensor:
    """Unbalanced entropic OT plan between uniform weights, log-domain Sinkhorn in torch.

    Solves ``min_pi <pi, C> + epsilon * KL(pi | a b^T) + tau * KL(pi 1 | a) + tau * KL(pi^T 1 | b)``
    with ``a = 1/N``, ``b = 1/M`` — the plan of POT's
    ``ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg=epsilon, reg_m=tau)`` (``reg_type="kl"``,
    its default). The scaling updates are raised to the power ``tau / (tau + epsilon)``; each
    iteration updates the row potential then the column potential, like POT, so the plan after
    k iterations equals POT's. ``tau = inf`` is balanced Sinkhorn. Fixed ``n_iters``, no host
    synchronisation.

    Args:
        cost: (N, M) cost matrix; detached internally.
        epsilon: entropic regularization, > 0, in the units of ``cost``.
        tau: marginal relaxation (POT's ``reg_m``), > 0, in the units of ``cost``.
        n_iters: number of iterations, >= 1.

    Returns:
        (N, M) plan on ``cost``'s device, in float32 or float64. Its marginals are close to,
        not equal to, the uniform weights.
    """
    check_solver_args("unbalanced", epsilon, tau, n_iters)
    exponent = 1.0 if math.isinf(tau) else tau / (tau + epsilon)
    return _sinkhorn_generic(cost, epsilon, exponent, n_iters, rows_first=True)


def _sinkhorn_generic(
    cost: Tensor, epsilon: float, exponent: float, n_iters: int, *, rows_first: bool
) -> Tensor:
    n, m = cost.shape
    log_a, log_b = -math.log(n), -math.log(m)
    with torch.no_grad(), no_autocast(cost.device):
        scaled = cost.detach().to(compute_dtype(cost.dtype)) / -epsilon  # (N, M)
        f = scaled.new_zeros(n)  # (N,)
        g = scaled.new_zeros(m)  # (M,)
        for _ in range(n_iters):
            if rows_first:
                f = _row_update(scaled, g, log_b, exponent)
                g = _col_update(scaled, f, log_a, exponent)
            else:
                g = _col_update(scaled, f, log_a, exponent)
                f = _row_update(scaled, g, log_b, exponent)
        return _plan(scaled, f, g, log_a, log_b)  # (N, M)


def _emd(cost: Tensor) -> Tensor:
    """Exact OT plan between uniform weights by POT's network simplex, on the host in float64."""
    n, m = cost.shape
    c = cost.detach().to(device="cpu", dtype=torch.float64).numpy()  # (N, M)
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    plan, log = ot.emd(a, b, c, numItermax=_EMD_MAX_ITER, log=True)
    if log["result_code"] != 1:
        logger.warning(
            "ot.emd did not reach the optimum (%s); the plan is approximate", log["warning"]
        )
    return torch.from_numpy(plan).to(device=cost.device, dtype=compute_dtype(cost.dtype))  # (N, M)


def ot_plan(
    cost: Tensor, *, solver: str = "emd", epsilon: float = 0.0, tau: float = 1.0, n_iters: int = 200
) -> Tensor:
    """OT plan between uniform weights ``1/N`` and ``1/M`` for a cost matrix.

    Args:
        cost: (N, M) cost; the plan is computed on ``cost.detach()`` and never requires grad.
        solver: ``"emd"`` (exact, POT on the host), ``"sinkhorn"`` (:func:`sinkhorn_log`) or
            ``"unbalanced"`` (:func:`sinkhorn_unbalanced_log`).
        epsilon: entropic regularization for the Sinkhorn solvers (> 0, units of ``cost``);
            ignored by ``"emd"``.
        tau: marginal relaxation of ``"unbalanced"`` (POT's ``reg_m``); ignored otherwise.
        n_iters: Sinkhorn iterations; ignored by ``"emd"``.

    Returns:
        (N, M) plan on ``cost``'s device, float32 (or float64 for a float64 cost).
    """
    check_solver_args(solver, epsilon, tau, n_iters)
    if cost.ndim != 2:
        raise ValueError(f"cost must have shape (N, M), got {tuple(cost.shape)}")
    match solver:
        case "emd":
            return _emd(cost)
        case "sinkhorn":
            return _sinkhorn_generic(cost, epsilon, 1.0, n_iters, rows_first=False)
        case _:  # "unbalanced", validated above
            exponent = 1.0 if math.isinf(tau) else tau / (tau + epsilon)
            return _sinkhorn_generic(cost, epsilon, exponent, n_iters, rows_first=True)


def off_diagonal_mass(plan: Tensor) -> Tensor:
    """The share of a square plan's mass (B, B) that is off its diagonal: 0 when the plan pairs
    each sample with its own frozen features (the identity pairing), up to 1 - 1/B for a plan
    that mixes all of them. A float () tensor, no gradient."""
    with torch.no_grad():
        total = plan.sum()
        return (total - plan.diagonal().sum()) / total.clamp_min(torch.finfo(total.dtype).tiny)
