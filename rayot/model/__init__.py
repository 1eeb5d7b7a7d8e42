"""Frozen open_clip models and the deep prompts that adapt them.

Importing this package registers the configurations in ``rayot/model/configs`` (the tiny test
and demo models) with open_clip, so ``open_clip.create_model("rayot-tiny")`` works too.
"""

from __future__ import annotations

from rayot.model.cocoop import CoCoOpCLIP
from rayot.model.loading import TINY_MODELS, LoadedCLIP, load_clip, register_model_configs
from rayot.model.maple import MaPLeCLIP
from rayot.model.prompts import PromptedCLIP, PromptOutput, prompt_classname
from rayot.model.reference import (
    REFERENCE_METHODS,
    from_reference,
    load_reference_file,
    load_reference_into,
    to_reference,
)

register_model_configs()

__all__ = [
    "REFERENCE_METHODS",
    "TINY_MODELS",
    "CoCoOpCLIP",
    "LoadedCLIP",
    "MaPLeCLIP",
    "PromptOutput",
    "PromptedCLIP",
    "from_reference",
    "load_clip",
    "load_reference_file",
    "load_reference_into",
    "prompt_classname",
    "register_model_configs",
    "to_reference",
]
