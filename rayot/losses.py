"""The Prompt-OT regularizer and the total training loss.

The regularizer keeps the *distribution* of adapted features close to that of the frozen CLIP
features of the same batch (method.md, "Loss"):

    z_i  = [v_i ; t_{y_i}]            adapted joint vector (or v_i / t_{y_i} alone, per ``modality``)
    z0_j = [v0_j ; t0_{y_j}]          frozen joint vector
    C_ij = eta * ||z_i - z0_j||^2     (B, B) cost
    L_OT = sum_ij pi_ij C_ij          pi: OT plan between uniform weights 1/B, computed on the
                                      detached cost, so gradients flow through C only

Solvers for pi: ``emd`` (exact network simplex, POT, on the host in float64), ``sinkhorn`` and
``unbalanced`` (log-domain torch iterations on the features' device, a fixed iteration count and no
host synchronisation, so a training step never waits on the CPU). The Sinkhorn solvers follow
POT's definitions exactly (``ot.sinkhorn`` and ``ot.unbalanced.sinkhorn_unbalanced`` with its
default ``reg_type="kl"``): ``epsilon`` is POT's ``reg`` and ``tau`` is POT's ``reg_m``, both in
the units of C. The cost is never rescaled internally.

Every OT computation runs in float32 at least (float64 stays float64), outside any autocast
region: squared distances between unit vectors in bf16/fp16 lose most of their digits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers

import numpy as np
import ot
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "MODALITIES",
    "REGULARIZERS",
    "SOLVERS",
    "ot_plan",
    "pairwise_sq_dists",
    "prompt_ot_loss",
    "sinkhorn_log",
    "sinkhorn_unbalanced_log",
    "kgcoop_loss",
    "l1_consistency",
    "logit_kl",
    "total_loss",
]

SOLVERS: tuple[str, ...] = ("emd", "sinkhorn", "unbalanced")
MODALITIES: tuple[str, ...] = ("joint", "vision", "text")
REGULARIZERS: tuple[str, ...] = ("ot", "pointwise", "none")

# Network simplex pivots; POT's default (1e5) is too small for B in the hundreds.
_EMD_MAX_ITER = 10_000_000


# --------------------------------------------------------------------------- validation


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_solver_args(solver: str, epsilon: float, tau: float, n_iters: int) -> None:
    _check_choice("solver", solver, SOLVERS)
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


def _check_features(image: Tensor, image_ref: Tensor, text: Tensor, text_ref: Tensor) -> None:
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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
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
        square root is taken, so the gradient stays finite where a distance is zero (CoOp leaves
        the image side unadapted: ``image == image_ref``).
    """
    sq = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2.0 * (x @ y.T)  # (N, M)
    return sq.clamp_min(0.0)


def _vectors(
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
    _check_solver_args("sinkhorn", epsilon, math.inf, n_iters)
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
    _check_solver_args("unbalanced", epsilon, tau, n_iters)
    exponent = 1.0 if math.isinf(tau) else tau / (tau + epsilon)
    return _sinkhorn_generic(cost, epsilon, exponent, n_iters, rows_first=True)


def _sinkhorn_generic(
    cost: Tensor, epsilon: float, exponent: float, n_iters: int, *, rows_first: bool
) -> Tensor:
    n, m = cost.shape
    log_a, log_b = -math.log(n), -math.log(m)
    with torch.no_grad(), _no_autocast(cost.device):
        scaled = cost.detach().to(_compute_dtype(cost.dtype)) / -epsilon  # (N, M)
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
    return torch.from_numpy(plan).to(device=cost.device, dtype=_compute_dtype(cost.dtype))  # (N, M)


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
    _check_solver_args(solver, epsilon, tau, n_iters)
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


# --------------------------------------------------------------------------- losses


def prompt_ot_loss(
    image: Tensor,
    image_ref: Tensor,
    text: Tensor,
    text_ref: Tensor,
    *,
    eta: float = 0.5,
    solver: str = "emd",
    epsilon: float = 0.0,
    tau: float = 1.0,
    n_iters: int = 200,
    modality: str = "joint",
    regularizer: str = "ot",
) -> Tensor:
    """The Prompt-OT regularizer ``sum_ij pi_ij C_ij`` of a batch.

    Args:
        image: (B, Dv) L2-normalised adapted (prompted) image features.
        image_ref: (B, Dv) L2-normalised frozen-CLIP image features of the same images.
        text: (B, Dt) L2-normalised adapted text features of each sample's ground-truth class.
        text_ref: (B, Dt) L2-normalised frozen text features of each sample's ground-truth class.
        eta: scale of the cost, ``C = eta * ||z_i - z0_j||^2`` (0.5 in the reference code).
        solver: ``"emd"`` | ``"sinkhorn"`` | ``"unbalanced"``, see :func:`ot_plan`.
        epsilon: entropic regularization of the Sinkhorn solvers, > 0, units of C.
        tau: marginal relaxation of ``"unbalanced"`` (POT's ``reg_m``), units of C.
        n_iters: Sinkhorn iterations.
        modality: ``"joint"`` (z = [v; t], (B, Dv+Dt)) | ``"vision"`` (z = v) | ``"text"`` (z = t).
        regularizer: ``"ot"`` (the plan of ``solver``) | ``"pointwise"`` (identity pairing
            ``pi = I/B``, i.e. ``eta * mean_i ||z_i - z0_i||^2``, PromptSRC-style) | ``"none"``
            (a zero that is still connected to ``image`` and ``text`` in the autograd graph).

    Returns:
        Scalar () tensor in float32 (float64 for float64 inputs), computed outside autocast.
        Gradients flow through C only; the plan is a constant. Solver arguments are checked only
        when a plan is computed (``regularizer="ot"``); the three names are always checked.

    Raises:
        ValueError: an unknown name, a non-positive epsilon for a Sinkhorn solver, or feature
            shapes that do not match.
    """
    _check_choice("regularizer", regularizer, REGULARIZERS)
    _check_choice("modality", modality, MODALITIES)
    _check_choice("solver", solver, SOLVERS)
    if not (isinstance(eta, numbers.Real) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if regularizer == "ot":
        _check_solver_args(solver, epsilon, tau, n_iters)
    _check_features(image, image_ref, text, text_ref)

    dtype = _compute_dtype(image.dtype)
    with _no_autocast(image.device):
        if regularizer == "none":
            # Sums of empty slices: exactly 0 even for non-finite features, yet in the graph.
            return (image[:0].sum() + text[:0].sum()).to(dtype)
        z, z_ref = _vectors(image, image_ref, text, text_ref, modality, dtype)  # (B, D') each
        if regularizer == "pointwise":
            return eta * (z - z_ref).pow(2).sum(-1).mean()
        cost = eta * pairwise_sq_dists(z, z_ref)  # (B, B)
        plan = ot_plan(cost, solver=solver, epsilon=epsilon, tau=tau, n_iters=n_iters)  # (B, B)
        return (plan * cost).sum()


def kgcoop_loss(text: Tensor, text_ref: Tensor) -> Tensor:
    """KgCoOp's knowledge-guided term as its code computes it: ``1 - mean_c cos(t_c, w_c)``.

    Args:
        text: (n_cls, D) learned class text features (every training class, every step).
        text_ref: (n_cls, D) hand-made class text features of the frozen CLIP.

    Returns:
        Scalar () tensor; for unit vectors it is half the mean squared distance.
    """
    dtype = _compute_dtype(text.dtype)
    cos = F.cosine_similarity(text.to(dtype), text_ref.to(dtype), dim=-1, eps=1e-7)  # (n_cls,)
    return 1.0 - cos.mean()


def l1_consistency(features: Tensor, frozen: Tensor) -> Tensor:
    """PromptSRC's self-consistency term: the mean absolute difference over every element.

    Args:
        features: (N, D) adapted features (N = B images or n_cls classes), normalised.
        frozen: (N, D) the frozen CLIP's features of the same images or classes, normalised.
    """
    dtype = _compute_dtype(features.dtype)
    return F.l1_loss(features.to(dtype), frozen.to(dtype), reduction="mean")


def logit_kl(logits: Tensor, frozen_logits: Tensor) -> Tensor:
    """PromptSRC's logit distillation: ``sum_b KL(softmax(z0_b) || softmax(z_b)) / (B * n_cls)``.

    The division by every element (not by B) is the reference's; with many classes the term is
    small, and it is reproduced as written (peers.md §6.2).

    Args:
        logits: (B, n_cls) adapted logits z.
        frozen_logits: (B, n_cls) the frozen CLIP's logits z0 of the same images.
    """
    dtype = _compute_dtype(logits.dtype)
    log_p = F.log_softmax(logits.to(dtype), dim=-1)  # (B, n_cls)
    log_q = F.log_softmax(frozen_logits.to(dtype), dim=-1)  # (B, n_cls)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()


def total_loss(
    logits: Tensor,
    labels: Tensor,
    reg: Tensor,
    lambda_ot: float,
    terms: tuple[tuple[float, Tensor], ...] = (),
) -> Tensor:
    """Training objective ``CrossEntropy(logits, labels) + lambda_ot * reg + sum_k w_k * term_k``.

    The one place where ``lambda_ot`` and the peers' loss weights are applied.

    Args:
        logits: (B, n_cls) class logits (any float dtype; the cross-entropy runs in float32 at least).
        labels: (B,) int64 class indices.
        reg: () regularizer, e.g. from :func:`prompt_ot_loss`.
        lambda_ot: weight of the regularizer (10 in the reference code).
        terms: (weight, () tensor) pairs of further terms (KgCoOp's, PromptSRC's); a zero weight
            leaves its term out.

    Returns:
        Scalar () tensor.
    """
    loss = F.cross_entropy(logits.to(_compute_dtype(logits.dtype)), labels) + lambda_ot * reg  # ()
    for weight, term in terms:
        if weight:
            loss = loss + weight * term
    return loss
