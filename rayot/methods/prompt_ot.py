"""Prompt-OT: deep vision-language prompts regularised by optimal transport to the frozen features.

Chen et al., 2025, arXiv 2503.08906; reference code ChongQingNoSubway/Prompt-OT@f042f023
(docs/method.md, docs/peers.md §7). The prompts are independent deep prompts on both towers
(depth 12, 4 + 4 tokens). For a batch, the joint vectors of the adapted features
z_i = [v_i ; t_{y_i}] and of the frozen ones z0_j = [v0_j ; t0_{y_j}] are coupled by the exact OT
plan between uniform weights on the cost C_ij = eta * ||z_i - z0_j||^2 (computed on the detached
cost), and

    L = CrossEntropy(logits, y) + lambda * sum_ij pi_ij C_ij       (lambda 10, eta 0.5).

With equal batch sizes and uniform weights the exact plan is a permutation / B, so the term is
never larger than the point-wise one (the identity pairing): the "relaxation". Its diagnostics say
per epoch how far the plans were from the identity, that is, whether OT did anything the
point-wise pairing would not (at batch 4 it often does not).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import Tensor

from rayot.errors import ConfigError
from rayot.methods.base import Batch, Objective, Preset, References, class_rows, cross_entropy
from rayot.methods.family import DeepPromptMethod, named_templates, template_setting
from rayot.transport import (
    MODALITIES,
    SOLVERS,
    check_choice,
    check_features,
    check_solver_args,
    compute_dtype,
    feature_vectors,
    no_autocast,
    off_diagonal_mass,
    ot_plan,
    pairwise_sq_dists,
)
from rayot.typed import setting

if TYPE_CHECKING:
    from rayot.config import TrialConfig

#: the regulariser's pairings: the OT plan, the identity (the point-wise ablation), none
REGULARIZERS: tuple[str, ...] = ("ot", "pointwise", "none")
#: a plan whose off-diagonal mass is below this pairs each sample with its own frozen features
IDENTITY_TOLERANCE = 1e-6


#: why the solvers' own settings cannot show in the conformance kit's trial
_SINKHORN_ONLY = "used by the sinkhorn and unbalanced solvers only; the kit's trial solves with emd"


@dataclass(frozen=True)
class Settings:
    lambda_ot: float = setting(10.0, minimum=0, id_key="loss.lambda_ot",
                               help="λ, the weight of the regulariser (0: cross-entropy only)")
    regularizer: str = setting("ot", choices=REGULARIZERS, id_key="loss.regularizer",
                               help="the pairing: ot (the plan of the solver), pointwise (identity), none")
    eta: float = setting(0.5, minimum=0, id_key="loss.eta", help="η, the cost scale: C = η ||z - z0||²")
    modality: str = setting("joint", choices=MODALITIES, id_key="loss.modality",
                            help="z = [image; text] (joint), image (vision) or text features alone")
    solver: str = setting("emd", choices=SOLVERS, id_key="loss.solver",
                          help="emd (exact, POT), sinkhorn or unbalanced (log-domain, torch, on device)")
    epsilon: float = setting(0.05, minimum=0, id_key="loss.epsilon", inert=_SINKHORN_ONLY,
                             help="entropic regularisation of the Sinkhorn solvers, in units of the cost")
    tau: float = setting(1.0, positive=True, id_key="loss.tau", inert=_SINKHORN_ONLY,
                         help="marginal relaxation of the unbalanced solver")
    n_iters: int = setting(100, positive=True, id_key="loss.n_iters", inert=_SINKHORN_ONLY,
                           help="Sinkhorn iterations (fixed)")
    template: str = template_setting("default", "frozen class text features: default, dataset, or a template with {}")


class Regularised(Protocol):
    """What the regulariser reads of a method's settings: Prompt-OT's, and its ablation's."""

    @property
    def lambda_ot(self) -> float: ...
    @property
    def eta(self) -> float: ...
    @property
    def modality(self) -> str: ...
    @property
    def template(self) -> str: ...


R = TypeVar("R", bound=Regularised)


class TransportRegularised(DeepPromptMethod[R]):
    """Deep prompts and ``CE + λ · Σ_ij π_ij C_ij`` with the pairing π of :meth:`pairing`: Prompt-OT
    and its point-wise ablation, with Prompt-OT's prompts and schedule."""

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        return Preset(
            reference={"optim.lr": 0.005, "optim.batch_size": 4, "optim.epochs": 40, "optim.stop_epoch": 30,
                       "optim.warmup_epochs": 1, "optim.warmup_lr": 1e-4, "prompt.n_ctx_text": 4,
                       "prompt.n_ctx_vision": 4, "prompt.depth_text": 12, "prompt.depth_vision": 12},
            settings={"lambda_ot": 10.0, "eta": 0.5},
            source="Prompt-OT configs/trainers/PromptOT/vit_b16_c2_ep20_batch4_4+4ctx-Copy3.yaml (E = 40), "
                   "scripts/promptot/reproduce_base2novel_setting.sh (LOADEP=30), my_script/run_all.sh "
                   "(--div 10), ChongQingNoSubway/Prompt-OT@f042f023; docs/method.md",
        )

    def pairing(self, settings: R) -> str:
        """How adapted and frozen features are paired: ``ot``, ``pointwise`` or ``none``."""
        raise NotImplementedError

    def solver(self, settings: R) -> dict[str, Any]:
        """The solver's arguments of :func:`transport_term` when the pairing is ``ot``."""
        return {}

    def _regularised(self, settings: R) -> bool:
        return self.pairing(settings) != "none" and settings.lambda_ot > 0

    def references(self, settings: R, dataset: str) -> References:
        if not self._regularised(settings):
            return References()
        return References(image=True, templates=named_templates(settings.template, dataset))

    def loss(self, batch: Batch, settings: R) -> Objective:
        ce = cross_entropy(batch.output.logits, batch.labels)
        if not self._regularised(settings):
            return Objective(ce)
        assert batch.image_ref is not None and batch.text_ref is not None  # references() asked for both
        out, s, pairing = batch.output, settings, self.pairing(settings)
        solver = self.solver(s) if pairing == "ot" else {}
        reg, plan = transport_term(
            out.image.float(), batch.image_ref.float(), class_rows(out.text, batch.labels).float(),  # (B, D)
            batch.text_ref[batch.labels], eta=s.eta, modality=s.modality, regularizer=pairing, **solver)
        offdiag = torch.zeros((), device=reg.device) if plan is None else off_diagonal_mass(plan)
        diagnostics = {"ot_offdiag_mass": offdiag, "ot_nonidentity_frac": (offdiag > IDENTITY_TOLERANCE).float()}
        return Objective(ce + s.lambda_ot * reg, diagnostics)


class PromptOT(TransportRegularised[Settings]):
    name = "prompt_ot"
    display = "Prompt-OT"
    summary = "deep prompts (depth 12) + λ · OT between adapted and frozen joint features, λ 10, η 0.5"
    order = 90

    def check(self, cfg: TrialConfig) -> None:
        super().check(cfg)
        s: Settings = cfg.settings
        if self.pairing(s) == "ot" and s.solver != "emd" and s.epsilon <= 0:
            raise ConfigError(f"config key '{self.name}.epsilon': solver {s.solver} needs epsilon > 0")

    def pairing(self, settings: Settings) -> str:
        return settings.regularizer

    def solver(self, settings: Settings) -> dict[str, Any]:
        s = settings
        return dict(solver=s.solver, epsilon=s.epsilon, tau=s.tau, n_iters=s.n_iters)


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
        solver: ``"emd"`` | ``"sinkhorn"`` | ``"unbalanced"``, see :func:`rayot.transport.ot_plan`.
        epsilon: entropic regularization of the Sinkhorn solvers, > 0, units of C.
        tau: marginal relaxation of ``"unbalanced"`` (POT's ``reg_m``), units of C.
        n_iters: Sinkhorn iterations.
        modality: ``"joint"`` (z = [v; t], (B, Dv+Dt)) | ``"vision"`` (z = v) | ``"text"`` (z = t).
        regularizer: ``"ot"`` (the plan of ``solver``) | ``"pointwise"`` (identity pairing
            ``pi = I/B``, i.e. ``eta * mean_i ||z_i - z0_i||^2``) | ``"none"`` (a zero that is
            still connected to ``image`` and ``text`` in the autograd graph).

    Returns:
        Scalar () tensor in float32 (float64 for float64 inputs), computed outside autocast.
        Gradients flow through C only; the plan is a constant. Solver arguments are checked only
        when a plan is computed (``regularizer="ot"``); the three names are always checked.

    Raises:
        ValueError: an unknown name, a non-positive epsilon for a Sinkhorn solver, or feature
            shapes that do not match.
    """
    return transport_term(image, image_ref, text, text_ref, eta=eta, solver=solver, epsilon=epsilon,
                          tau=tau, n_iters=n_iters, modality=modality, regularizer=regularizer)[0]


def transport_term(
    image: Tensor, image_ref: Tensor, text: Tensor, text_ref: Tensor, *, eta: float = 0.5,
    solver: str = "emd", epsilon: float = 0.0, tau: float = 1.0, n_iters: int = 200,
    modality: str = "joint", regularizer: str = "ot",
) -> tuple[Tensor, Tensor | None]:
    """:func:`prompt_ot_loss` and the plan (B, B) it used (``None`` for the point-wise and no pairing)."""
    check_choice("regularizer", regularizer, REGULARIZERS)
    check_choice("modality", modality, MODALITIES)
    check_choice("solver", solver, SOLVERS)
    if not (isinstance(eta, numbers.Real) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if regularizer == "ot":
        check_solver_args(solver, epsilon, tau, n_iters)
    check_features(image, image_ref, text, text_ref)

    dtype = compute_dtype(image.dtype)
    with no_autocast(image.device):
        if regularizer == "none":
            # Sums of empty slices: exactly 0 even for non-finite features, yet in the graph.
            return (image[:0].sum() + text[:0].sum()).to(dtype), None
        z, z_ref = feature_vectors(image, image_ref, text, text_ref, modality, dtype)  # (B, D') each
        if regularizer == "pointwise":
            return eta * (z - z_ref).pow(2).sum(-1).mean(), None
        cost = eta * pairwise_sq_dists(z, z_ref)  # (B, B)
        plan = ot_plan(cost, solver=solver, epsilon=epsilon, tau=tau, n_iters=n_iters)  # (B, B)
        return (plan * cost).sum(), plan
