"""Methods that each break one contract on purpose, for the conformance kit's own tests
(tests/test_kit.py). Importable by dotted path, as a researcher's method is."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from rayot.methods import StepHooks
from rayot.methods.base import Method, NoSettings
from rayot.methods.ivlp import IVLP
from rayot.model.prompts import PromptedCLIP
from rayot.typed import setting


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

    def build(self, clip: Any, classnames: list[str], prompt: Any, settings: Any) -> nn.Module:
        return MixedUpPack(clip, classnames, n_ctx_text=prompt.n_ctx_text, n_ctx_vision=prompt.n_ctx_vision,
                           depth_text=prompt.depth_text, depth_vision=prompt.depth_vision, ctx_init=prompt.ctx_init)

    def architecture(self, prompt: Any, settings: Any) -> Any:
        return ["MixedUpPack", super().architecture(prompt, settings)]


class TrainsTheCLIP(IVLP):
    """IVLP that lets the frozen CLIP's final layer norm train as well."""

    name = "trains_the_clip"
    display = "Trains the CLIP"

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


# ----------------------------------------------------------------------------- what the kit missed


@dataclass(frozen=True)
class WithTemperature:
    temperature: float = setting(1.0, positive=True, help="the softmax temperature (never used)")


class IgnoresItsTemperature(IVLP):
    """IVLP declaring a temperature that nothing reads."""

    name = "ignores_its_temperature"
    display = "Ignores its temperature"
    Settings = WithTemperature


class AveragedAfterWarmUp(StepHooks):
    """Steps on a running average of the gradients once the warm-up epoch is over; the epoch is
    saved, the average is not (so a run resumed after the warm-up epoch is right, one resumed
    later is not)."""

    def __init__(self) -> None:
        self.epoch, self.average = 0, None

    def gradients(self, params: list[nn.Parameter], aux: Mapping[str, list[Tensor | None]]) -> None:
        if self.epoch < 1:
            return
        grads = [p.grad.clone() for p in params]
        self.average = grads if self.average is None else [
            0.5 * a + 0.5 * g for a, g in zip(self.average, grads, strict=True)]
        for p, a in zip(params, self.average, strict=True):
            p.grad.copy_(a)

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        self.epoch = epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epochs_done"])


class ForgetsAfterWarmUp(IVLP):
    name = "forgets_after_warm_up"
    display = "Forgets after the warm-up"

    def step_hooks(self, settings: Any, epochs: int) -> StepHooks:
        return AveragedAfterWarmUp()


class RareNoise(StepHooks):
    """Every 16th step, noise from Python's global generator, which nothing of the trial owns: once
    in the kit's trial of 18 steps, after the resumed run's start (step 12), and the first draw
    since the trial seeded the generator, so that a run on the trial's own seed draws the same."""

    def __init__(self) -> None:
        self.steps = 0

    def gradients(self, params: list[nn.Parameter], aux: Mapping[str, list[Tensor | None]]) -> None:
        self.steps += 1
        if self.steps % 16 == 0:
            for p in params:
                p.grad.add_(random.gauss(0.0, 0.01))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])


class UnseededBranch(IVLP):
    name = "unseeded_branch"
    display = "Unseeded branch"

    def step_hooks(self, settings: Any, epochs: int) -> StepHooks:
        return RareNoise()
