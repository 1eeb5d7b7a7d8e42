"""A method whose step is not the gradient of one loss: ProGrad's projection (Zhu et al., ICCV 2023),
written on rayot's method API to show it can be (tests/test_kit.py). Importable by dotted path.

The cross-entropy gradient G_d is kept where it agrees with the gradient G_g of the KL divergence
to the frozen zero-shot model's predictions; where they conflict (G_d · G_g < 0), the part of G_d
along G_g is removed: G = G_d - (G_d · G_g / |G_g|²) G_g, over all learned tensors at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.data.specs import DEFAULT_TEMPLATE
from rayot.methods import Batch, Objective, References, StepHooks, cross_entropy
from rayot.methods.ivlp import IVLP


class Projection(StepHooks):
    """Projects the cross-entropy gradient off the KL gradient where the two conflict."""

    aux_gradients = ("kl",)

    def __init__(self) -> None:
        self.projected = 0  # steps whose gradient was changed (kept in the epoch checkpoints)

    def gradients(self, params: list[nn.Parameter], aux: Mapping[str, list[Tensor | None]]) -> None:
        g_d = torch.cat([p.grad.reshape(-1) for p in params])
        g_g = torch.cat([g.reshape(-1) for g in aux["kl"]])
        dot = torch.dot(g_d, g_g)
        if dot < 0:
            g_d = g_d - dot / g_g.pow(2).sum().clamp_min(1e-30) * g_g
            self.projected += 1
        offset = 0
        for p in params:
            p.grad.copy_(g_d[offset: offset + p.numel()].view_as(p))
            offset += p.numel()

    def state_dict(self) -> dict[str, Any]:
        return {"projected": self.projected}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.projected = int(state.get("projected", 0))


def kl_to_frozen(logits: Tensor, frozen_logits: Tensor) -> Tensor:
    """KL(softmax(frozen) ‖ softmax(logits)), the batch mean."""
    return F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(frozen_logits.float(), -1),
                    reduction="batchmean", log_target=True)


class ProjectedGradient(IVLP):
    name = "projected_gradient"
    display = "Projected gradient"

    def references(self, settings: Any, dataset: str) -> References:
        return References(image=True, templates=(DEFAULT_TEMPLATE,))

    def loss(self, batch: Batch, settings: Any) -> Objective:
        frozen = batch.logit_scale * batch.image_ref.float() @ batch.text_ref.T  # (B, n_cls)
        return Objective(cross_entropy(batch.output.logits, batch.labels),
                         aux={"kl": kl_to_frozen(batch.output.logits, frozen)})

    def step_hooks(self, settings: Any, epochs: int) -> StepHooks:
        return Projection()
