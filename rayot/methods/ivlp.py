"""Independent vision-language deep prompts, cross-entropy only: the baseline of the
self-regulating prompts paper (muzairkhattak/PromptSRC, docs/peers.md §6.6), and the deep prompts
the optimal-transport regulariser is applied to.

4 + 4 context tokens, depth 9 on both towers, the text context from "a photo of a"; no
regulariser, no prompt averaging.
"""

from __future__ import annotations

from rayot.methods.base import NoSettings, Preset
from rayot.methods.family import DASSL_WARMUP, DeepPromptMethod


class IVLP(DeepPromptMethod[NoSettings]):
    name = "ivlp"
    display = "IVLP"
    summary = "independent deep prompts on both towers, 4 + 4 tokens, depth 9, cross-entropy only"
    order = 60

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        return Preset(
            reference={**DASSL_WARMUP, "optim.lr": 0.0025, "optim.batch_size": 4, "optim.epochs": 20,
                       "prompt.n_ctx_text": 4, "prompt.n_ctx_vision": 4, "prompt.depth_text": 9,
                       "prompt.depth_vision": 9},
            source="configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml of "
                   "muzairkhattak/PromptSRC@bb95c77b; docs/peers.md §6.6",
        )
