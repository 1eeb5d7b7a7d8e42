"""Methods that each break one contract on purpose, for the conformance kit's own tests
(tests/test_kit.py). Importable by dotted path, as a researcher's method is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from rayot.methods.base import Method, NoSettings
from rayot.methods.ivlp import IVLP
from rayot.model.prompts import PromptedCLIP


class MixedUpPack(PromptedCLIP):
    """Deep prompts whose packed text pass hands each member another member's class features."""

    packs_fused = False

    @classmethod
    def encode_texts_together(cls, models: list[MixedUpPack]) -> list[Tensor]:
        feats = [m.encode_text() for m in models]
        return feats[::-1]


class WrongPackedStep(IVLP):
    """IVLP with a packed step that mixes up its members (alone it is IVLP)."""

    name = "wrong_packed_step"
    display = "Wrong packed step"
    id_constants = None

    def build(self, clip: Any, classnames: list[str], prompt: Any, settings: Any) -> nn.Module:
        return MixedUpPack(clip, classnames, n_ctx_text=prompt.n_ctx_text, n_ctx_vision=prompt.n_ctx_vision,
                           depth_text=prompt.depth_text, depth_vision=prompt.depth_vision, ctx_init=prompt.ctx_init)

    def architecture(self, prompt: Any, settings: Any) -> Any:
        return ["MixedUpPack", super().architecture(prompt, settings)]


class TrainsTheCLIP(IVLP):
    """IVLP that lets the frozen CLIP's final layer norm train as well."""

    name = "trains_the_clip"
    display = "Trains the CLIP"
    id_constants = None

    def build(self, clip: Any, classnames: list[str], prompt: Any, settings: Any) -> nn.Module:
        model = super().build(clip, classnames, prompt, settings)
        model.clip.ln_final.requires_grad_(True)
        return model


@dataclass
class NotFrozen:
    weight: float = 1.0


class MutableSettings(IVLP):
    name = "mutable_settings"
    display = "Mutable settings"
    Settings = NotFrozen


class NoBuild(Method):
    name = "no_build"
    display = "No build"
    Settings = NoSettings


class BadName(IVLP):
    name = "Bad-Name"
    display = "Bad name"


NOT_A_METHOD = object()


class CalledCoOp(IVLP):
    """A method that takes a built-in's name."""

    name = "coop"
    display = "Not CoOp"
