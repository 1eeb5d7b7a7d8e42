"""Frozen open_clip models and the deep prompts that adapt them.

Importing this package registers the configurations in ``rayot/model/configs`` (the tiny test
and demo models) with open_clip, so ``open_clip.create_model("rayot-tiny")`` works too. A method's
own prompt module lives in its method's module (:mod:`rayot.methods`).
"""

from __future__ import annotations

from rayot.model.loading import TINY_MODELS, LoadedCLIP, load_clip, register_model_configs
from rayot.model.prompts import FrozenCLIPPrompts, PromptedCLIP, PromptOutput, prompt_classname

register_model_configs()

__all__ = [
    "TINY_MODELS",
    "FrozenCLIPPrompts",
    "LoadedCLIP",
    "PromptOutput",
    "PromptedCLIP",
    "load_clip",
    "prompt_classname",
    "register_model_configs",
]
