"""The point-wise ablation of Prompt-OT: each sample's adapted features pulled toward its own
frozen features (the identity pairing), as the point-wise regularisers of the peers do.

It is Prompt-OT with the plan fixed to the identity / B: ``L = CE + lambda * eta * mean_i
||z_i - z0_i||^2``, with Prompt-OT's prompts and schedule (docs/method.md, "Ablation settings").
"""

from __future__ import annotations

from dataclasses import dataclass

from rayot.methods.family import template_setting
from rayot.methods.prompt_ot import TransportRegularised
from rayot.transport import MODALITIES
from rayot.typed import setting


@dataclass(frozen=True)
class Settings:
    lambda_ot: float = setting(10.0, minimum=0, id_key="loss.lambda_ot", help="λ, the weight of the regulariser")
    eta: float = setting(0.5, minimum=0, id_key="loss.eta", help="η, the cost scale: η ||z - z0||²")
    modality: str = setting("joint", choices=MODALITIES, id_key="loss.modality",
                            help="z = [image; text] (joint), image (vision) or text features alone")
    template: str = template_setting("default", "frozen class text features: default, dataset, or a template with {}")


class PointWise(TransportRegularised[Settings]):
    name = "pointwise"
    display = "Point-wise"
    label = "identity pairing"
    summary = "Prompt-OT with the identity pairing: λ · η · mean ||z_i − z0_i||²"
    order = 80

    def pairing(self, settings: Settings) -> str:
        return "pointwise"
