"""KgCoOp: a learned text context kept close to the hand-made class text features (docs/peers.md §4).

Yao et al., CVPR 2023; reference code htyao89/KgCoOp@c43ccc32. The loss is cross-entropy plus
W · (1 − mean_c cos(t_c, w_c)) between every training class's learned text feature t_c and the
frozen CLIP's feature w_c of its hand-made prompt (KgCoOp's per-dataset table), W = 8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from rayot.data.specs import template_for
from rayot.methods.base import Batch, Objective, Preset, References, cross_entropy
from rayot.methods.family import DASSL_WARMUP, DeepPromptMethod, named_templates, template_setting
from rayot.transport import compute_dtype
from rayot.typed import setting

#: KgCoOp's hand-made prompts differ from the zero-shot table in one entry (docs/peers.md §4.1).
TEMPLATES = {"dtd": "a photo of a {}, a type of texture."}


@dataclass(frozen=True)
class Settings:
    kg_weight: float = setting(8.0, minimum=0, id_key="loss.kg_weight",
                               help="W, the weight of 1 - mean cos(t_c, w_c)")
    template: str = template_setting("kgcoop", "the hand-made prompts w_c: kgcoop (its table), default, dataset, "
                                     "or a template with {}", ("kgcoop",))


class KgCoOp(DeepPromptMethod[Settings]):
    name = "kgcoop"
    display = "KgCoOp"
    summary = "learned text context + W · (1 − mean cos(t_c, w_c)) to the hand-made class features, W = 8"
    order = 30
    text_only_reference = True
    #: its prompt learner saves a meta-net and bias vectors that its forward never uses
    unused_reference_keys = re.compile(r"^(prompt_learner\.)?(meta_net\.|bias_vectors$)")

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        return Preset(
            reference={**DASSL_WARMUP, "optim.lr": 0.002, "optim.batch_size": 128, "optim.epochs": 100,
                       "prompt.n_ctx_text": 4},
            settings={"kg_weight": 8.0},
            defines={"prompt.depth_text": 1, "prompt.depth_vision": 0},
            source="KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, scripts/base2new_train.sh "
                   "(W = 8.0), htyao89/KgCoOp@c43ccc32; docs/peers.md §4.3",
        )

    def references(self, settings: Settings, dataset: str) -> References:
        if not settings.kg_weight:
            return References()
        own = {"kgcoop": (TEMPLATES.get(dataset, template_for(dataset)),)}
        return References(templates=named_templates(settings.template, dataset, own))

    def loss(self, batch: Batch, settings: Settings) -> Objective:
        ce = cross_entropy(batch.output.logits, batch.labels)
        if not settings.kg_weight:
            return Objective(ce)
        return Objective(ce + settings.kg_weight * kgcoop_loss(batch.output.text, batch.text_ref))


def kgcoop_loss(text: Tensor, text_ref: Tensor) -> Tensor:
    """KgCoOp's knowledge-guided term as its code computes it: ``1 - mean_c cos(t_c, w_c)``.

    Args:
        text: (n_cls, D) learned class text features (every training class, every step).
        text_ref: (n_cls, D) hand-made class text features of the frozen CLIP.

    Returns:
        Scalar () tensor; for unit vectors it is half the mean squared distance.
    """
    dtype = compute_dtype(text.dtype)
    cos = F.cosine_similarity(text.to(dtype), text_ref.to(dtype), dim=-1, eps=1e-7)  # (n_cls,)
    return 1.0 - cos.mean()
