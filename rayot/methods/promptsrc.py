"""PromptSRC: deep prompts regularised toward the frozen CLIP, with Gaussian prompt aggregation
(docs/peers.md §6).

Khattak et al., ICCV 2023; reference code muzairkhattak/PromptSRC@bb95c77b. The prompts are
independent deep prompts (4 + 4 tokens, depth 9); the loss is

    L = CE + 25 · mean|t − t̄| + 10 · mean|f − f0| + KL(softmax(z0) ‖ softmax(z)) / (B · C)

with t̄ the frozen class text features averaged over 60 templates, f0 the frozen image features of
the same augmented batch and z0 = s f0 t̄ᵀ. After training, the evaluated prompts are the
Gaussian-weighted average of the end-of-epoch prompts (GPA, weights N(e; μ, σ) over the epochs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.data.specs import DEFAULT_TEMPLATE
from rayot.methods.base import Batch, Objective, Preset, References, StepHooks, cross_entropy
from rayot.methods.family import (
    DASSL_WARMUP,
    TRANSFER_PROTOCOLS,
    DeepPromptMethod,
    named_templates,
    template_setting,
)
from rayot.transport import compute_dtype
from rayot.typed import setting

#: The few-shot GPA (mean, std) by dataset (docs/peers.md §6.4); (30, 30) for the others.
FEW_SHOT_GPA = {d: (45.0, 5.0) for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")}


@dataclass(frozen=True)
class Settings:
    text_l1: float = setting(25.0, minimum=0, id_key="loss.text_l1",
                             help="weight of the L1 distance of the class text features to the frozen ones")
    image_l1: float = setting(10.0, minimum=0, id_key="loss.image_l1",
                              help="weight of the L1 distance of the image features to the frozen ones")
    logit_kl: float = setting(1.0, minimum=0, id_key="loss.logit_kl",
                              help="weight of the logit KL to the frozen model's (divided by B·C)")
    gpa_mean: float = setting(15.0, minimum=0, id_key="optim.gpa_mean", tiny=1.0,  # inside a tiny trial
                              help="μ of the Gaussian prompt aggregation over the 1-based epochs")
    gpa_std: float = setting(1.0, minimum=0, id_key="optim.gpa_std", tiny=1.0,
                             help="σ of the Gaussian prompt aggregation (0: off, the last epoch's prompts)")
    template: str = template_setting("ensemble", "frozen class text features: ensemble (its 60), default, dataset, "
                                     "or a template", ("ensemble",))


class PromptSRC(DeepPromptMethod[Settings]):
    name = "promptsrc"
    display = "PromptSRC"
    summary = ("deep prompts + L1 to frozen text (25) and image (10) features + logit KL / (B·C) + "
               "60-template anchor + Gaussian prompt aggregation")
    order = 50

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        transfer, few_shot = protocol in TRANSFER_PROTOCOLS, protocol == "few_shot"
        depth = 3 if transfer else 9
        if few_shot:
            mean, std = FEW_SHOT_GPA.get(dataset, (30.0, 30.0))
        else:
            mean, std = (6.0, 10.0) if transfer else (15.0, 1.0)
        return Preset(
            reference={**DASSL_WARMUP, "optim.lr": 0.0025, "optim.batch_size": 4,
                       "optim.epochs": 50 if few_shot else 20, "prompt.n_ctx_text": 4,
                       "prompt.n_ctx_vision": 4, "prompt.depth_text": depth, "prompt.depth_vision": depth},
            settings={"text_l1": 25.0, "image_l1": 10.0, "logit_kl": 1.0, "gpa_mean": mean, "gpa_std": std,
                      "template": "ensemble"},
            source="PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml (base-to-novel), "
                   "..._cross_datasets.yaml (transfer), ..._ep50_..._few_shot.yaml (few-shot), "
                   "muzairkhattak/PromptSRC@bb95c77b; docs/peers.md §6.4",
        )

    def references(self, settings: Settings, dataset: str) -> References:
        s = settings
        image = s.image_l1 > 0 or s.logit_kl > 0
        text = s.text_l1 > 0 or s.logit_kl > 0
        templates = named_templates(s.template, dataset, {"ensemble": ensemble_templates()}) if text else ()
        return References(image=image, templates=templates)

    def loss(self, batch: Batch, settings: Settings) -> Objective:
        out, s = batch.output, settings
        loss = cross_entropy(out.logits, batch.labels)
        if s.text_l1:
            loss = loss + s.text_l1 * l1_consistency(out.text, batch.text_ref)
        if s.image_l1:
            loss = loss + s.image_l1 * l1_consistency(out.image, batch.image_ref)
        if s.logit_kl:
            assert batch.image_ref is not None and batch.text_ref is not None  # references() asked for both
            frozen_logits = batch.logit_scale * batch.image_ref.float() @ batch.text_ref.T  # (B, n_cls)
            loss = loss + s.logit_kl * logit_kl(out.logits, frozen_logits)
        return Objective(loss)

    def step_hooks(self, settings: Settings, epochs: int) -> StepHooks:
        if settings.gpa_std <= 0:
            return StepHooks()
        return GaussianPromptAggregation(gpa_weights(settings.gpa_mean, settings.gpa_std, epochs))


class GaussianPromptAggregation(StepHooks):
    """A running sum of the end-of-epoch learned tensors weighted by ``weights[epoch]``, loaded
    into the model after the last epoch (the reference averages the whole state dict, frozen
    weights included; the learned tensors alone are the same up to fp16 rounding, docs/peers.md §6.7).
    Resumable: the sum is part of every epoch checkpoint."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights
        self.sum: dict[str, Tensor] | None = None

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        snapshot, w, before = model.prompt_state_dict(), self.weights[epoch], self.sum
        self.sum = {k: w * v.detach().clone() + (before[k] if before else 0) for k, v in snapshot.items()}

    def finish(self, model: nn.Module) -> None:
        if self.sum is not None:
            model.load_prompt_state_dict(self.sum)  # the aggregate is the model that is evaluated

    def state_dict(self) -> dict[str, Any]:
        return {} if self.sum is None else {"gpa": self.sum}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sum = state.get("gpa")


def gpa_weights(mean: float, std: float, epochs: int) -> list[float]:
    """Gaussian prompt aggregation: N(e; mean, std) at the 1-based epochs 1..epochs, normalised to
    sum to 1 (computed in log space, so far-off means do not underflow)."""
    logs = torch.tensor([-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)], dtype=torch.float64)
    return torch.softmax(logs, dim=0).tolist()


def ensemble_templates() -> tuple[str, ...]:
    """The 60 templates of the text anchor: "a photo of a {}." and the first 60 of OpenAI's 80
    ImageNet templates without it (docs/peers.md §6.1)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    openai = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES][:60]
    return (DEFAULT_TEMPLATE, *(t for t in openai if t != DEFAULT_TEMPLATE))


def l1_consistency(features: Tensor, frozen: Tensor) -> Tensor:
    """The self-consistency term: the mean absolute difference over every element.

    Args:
        features: (N, D) adapted features (N = B images or n_cls classes), normalised.
        frozen: (N, D) the frozen CLIP's features of the same images or classes, normalised.
    """
    dtype = compute_dtype(features.dtype)
    return F.l1_loss(features.to(dtype), frozen.to(dtype), reduction="mean")


def logit_kl(logits: Tensor, frozen_logits: Tensor) -> Tensor:
    """Logit distillation: ``sum_b KL(softmax(z0_b) || softmax(z_b)) / (B * n_cls)``.

    The division by every element (not by B) is the reference's; with many classes the term is
    small, and it is reproduced as written (docs/peers.md §6.2).

    Args:
        logits: (B, n_cls) adapted logits z.
        frozen_logits: (B, n_cls) the frozen CLIP's logits z0 of the same images.
    """
    dtype = compute_dtype(logits.dtype)
    log_p = F.log_softmax(logits.to(dtype), dim=-1)  # (B, n_cls)
    log_q = F.log_softmax(frozen_logits.to(dtype), dim=-1)  # (B, n_cls)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()
