"""CoOp: a learned text context, the image side the frozen CLIP's (docs/peers.md §2).

Zhou et al., IJCV 2022; reference code KaiyangZhou/CoOp@ff61507c. The prompt of class c is
"[ctx_1 .. ctx_4] c.", the context initialised from the embeddings of "a photo of a"; the loss is
cross-entropy. Its reference saves the prompt learner alone (key ``ctx``).
"""

from __future__ import annotations

from rayot.methods.base import NoSettings, Preset
from rayot.methods.family import DASSL_WARMUP, DeepPromptMethod


class CoOp(DeepPromptMethod[NoSettings]):
    name = "coop"
    display = "CoOp"
    summary = "learned text context, 4 tokens from 'a photo of a'"
    order = 10
    text_only_reference = True

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        return Preset(
            reference={**DASSL_WARMUP, "optim.lr": 0.002, "optim.batch_size": 32,
                       "optim.epochs": 50 if dataset == "imagenet" else 200, "prompt.n_ctx_text": 4},
            defines={"prompt.depth_text": 1, "prompt.depth_vision": 0},
            source="CoOp configs/trainers/CoOp/vit_b16_ctxv1.yaml (vit_b16_ep50_ctxv1 on imagenet), the "
                   "CoOp line of scripts/cocoop/base2new_train.sh, KaiyangZhou/CoOp@ff61507c; docs/peers.md §2.3",
        )
