"""CLIP zero-shot: the frozen model as a classifier, each class described by a hand-written
template (docs/peers.md §1). Nothing trains; the trial evaluates the model as built.

The reference (``ZeroshotCLIP`` of KaiyangZhou/CoOp@ff61507c ``trainers/zsclip.py``) uses one
template per dataset, the table of docs/protocol.md §7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from rayot.data.specs import DEFAULT_TEMPLATE
from rayot.methods.base import Method, Preset
from rayot.methods.family import named_templates, template_setting
from rayot.model.loading import LoadedCLIP
from rayot.model.prompts import FrozenCLIPPrompts

if TYPE_CHECKING:
    from rayot.config import PromptConfig


@dataclass(frozen=True)
class Settings:
    template: str = template_setting("dataset", "the class prompts: dataset (its own template), default, or a "
                                     "template with {}")


class ZeroShotCLIP(FrozenCLIPPrompts):
    """The frozen CLIP as a classifier of the current classes: class features from ``templates``
    (raw features averaged over several, then normalised), image features the frozen ones.
    Nothing is learned. Several of them around one CLIP share their image features."""

    def __init__(self, clip: LoadedCLIP, classnames: list[str], templates: tuple[str, ...]) -> None:
        super().__init__()
        self.adopt_clip(clip)
        self.templates = tuple(templates)
        self.init_classes(classnames)

    def prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        return [self.tokenizer.encode(self.templates[0].format(n)) for n in names]

    def learned(self) -> dict[str, nn.Parameter]:
        return {}

    def encode_text(self) -> Tensor:
        """The frozen features (n_cls, D) of the current classes' prompts, float32."""
        return self.template_text_features(self.classnames, self.templates)

    def encode_image(self, images: Tensor) -> Tensor:
        """The frozen CLIP's normalised features (B, D) of ``images``, float32."""
        return self.frozen_image_features(images).float()

    @classmethod
    def encode_images_together(cls, models: list[ZeroShotCLIP], images: list[Tensor]) -> list[Tensor]:
        """One frozen pass per distinct batch: members given the same images share the features."""
        done: dict[int, Tensor] = {}
        for m, x in zip(models, images, strict=True):
            if id(x) not in done:
                done[id(x)] = m.encode_image(x)
        return [done[id(x)] for x in images]

    @classmethod
    def encode_texts_together(cls, models: list[ZeroShotCLIP]) -> list[Tensor]:
        """One frozen text pass per distinct template set and class list."""
        done: dict[tuple, Tensor] = {}
        for m in models:
            key = (m.templates, tuple(m.classnames))
            if key not in done:
                done[key] = m.encode_text()
        return [done[(m.templates, tuple(m.classnames))] for m in models]


class ZeroShot(Method[Settings]):
    name = "zeroshot"
    display = "CLIP"
    label = "zero-shot"
    summary = "the frozen CLIP with the per-dataset template; nothing trains"
    order = 0
    trains = False

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        return Preset(
            settings={"template": "dataset"},
            defines={"optim.epochs": 0, "optim.stop_epoch": None},
            source="trainers/zsclip.py (ZeroshotCLIP, CUSTOM_TEMPLATES) of KaiyangZhou/CoOp@ff61507c; "
                   "docs/peers.md §1",
        )

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: PromptConfig, settings: Settings) -> nn.Module:
        # the templates follow the dataset evaluated (for_dataset); until then "a photo of a {}."
        return ZeroShotCLIP(clip, classnames, (DEFAULT_TEMPLATE,))

    def for_dataset(self, model: nn.Module, settings: Settings, dataset: str) -> None:
        model.templates = named_templates(settings.template, dataset)

    def architecture(self, prompt: PromptConfig, settings: Settings) -> list[Any]:
        return ["ZeroShotCLIP"]
