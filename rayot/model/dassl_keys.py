"""Deep prompts under the key names of the Dassl-based reference trainers (docs/peers.md §0.5, §6.1).

The reference trainers of the deep-prompt methods save the whole model: ``prompt_learner.ctx``
(text, layer 0: the context vectors after SOS, positional embedding added),
``text_encoder.transformer.resblocks.N.VPT_shallow`` (text, replaces the context positions before
block N >= 1), ``image_encoder.VPT`` (vision, layer 0: appended after the class and patch tokens,
no positional embedding, through ``ln_pre``) and ``image_encoder.transformer.resblocks.N.VPT_shallow``
(vision, replaces the last tokens before block N >= 1). That is :class:`PromptedCLIP`, row N of
its prompt tensors. The text-context-only trainers save their prompt learner alone: ``ctx``.

A method module chooses its layout (:class:`Layout`); :func:`export_state` and
:func:`import_state` do the rest. Everything else in a checkpoint is ignored: the frozen CLIP
weights, frozen teachers, and the class buffers ``token_prefix`` / ``token_suffix``, which belong
to the classes the checkpoint was trained on. The reference loads with ``strict=False``; here
every tensor the model needs must be present with its shape, and a learned prompt tensor the
model would not use (a deeper layer, another method's tensor) is refused, each error naming the
key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rayot.errors import ModelError
from rayot.model.prompts import PromptedCLIP

logger = logging.getLogger(__name__)

WHOLE_MODEL_CTX = "prompt_learner.ctx"
_TEXT_DEEP = "text_encoder.transformer.resblocks.{}.VPT_shallow"
_VISION_CTX = "image_encoder.VPT"
_VISION_DEEP = "image_encoder.transformer.resblocks.{}.VPT_shallow"
_DEEP_RE = re.compile(r"^(text|image)_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
# Learned tensors of other prompt learners: a checkpoint holding one is not this method's.
_FOREIGN_RE = re.compile(
    r"(^|\.)(compound_prompts_text|compound_prompt_projections|proj|meta_net)\.|VPT"
)


@dataclass(frozen=True)
class Layout:
    """How one method's reference saves a :class:`PromptedCLIP`'s prompts.

    ``what``: the method's display name, for messages. ``text_only``: the reference has the text
    context alone (text depth 1, no vision prompts) and saves its prompt learner alone, key
    ``ctx`` (a whole-model file's ``prompt_learner.ctx`` is accepted too). ``ignore``: keys of
    learned tensors the reference saves but never uses (accepted and ignored).
    """

    what: str
    text_only: bool = False
    ignore: re.Pattern[str] | None = None


def _views(model: nn.Module, layout: Layout) -> dict[str, Tensor]:
    """Reference key -> the row of the model's prompt tensor it is (detached views)."""
    if not isinstance(model, PromptedCLIP):
        raise ModelError(f"{layout.what}: expected a PromptedCLIP, got {type(model).__name__}")
    if layout.text_only and (model.vision_prompts is not None or model.depth_text > 1):
        raise ModelError(
            f"{layout.what}: the reference model has text context only (text depth 1, no vision "
            f"prompts); this one has text depth {model.depth_text}, vision depth {model.depth_vision}"
        )
    text_ctx = "ctx" if layout.text_only else WHOLE_MODEL_CTX
    views: dict[str, Tensor] = {}
    if model.text_prompts is not None:
        text = model.text_prompts.detach()  # (depth_text, n_ctx_text, W_text)
        for i in range(text.shape[0]):
            views[text_ctx if i == 0 else _TEXT_DEEP.format(i)] = text[i]
    if model.vision_prompts is not None:
        vision = model.vision_prompts.detach()  # (depth_vision, n_ctx_vision, W_vision)
        for i in range(vision.shape[0]):
            views[_VISION_CTX if i == 0 else _VISION_DEEP.format(i)] = vision[i]
    return views


def export_state(model: nn.Module, layout: Layout) -> dict[str, Tensor]:
    """The model's prompts under the reference key names (detached copies, the prompts' dtype)."""
    return {key: tensor.clone() for key, tensor in _views(model, layout).items()}


def import_state(model: nn.Module, sd: Mapping[str, Any], layout: Layout) -> None:
    """Load the prompts of a reference state dict into ``model``; nothing changes on an error."""
    views = _views(model, layout)
    if not views:
        raise ModelError(f"{layout.what}: this model has no prompts to load ({_describe(model)})")
    if layout.text_only and "ctx" in views and "ctx" not in sd and WHOLE_MODEL_CTX in sd:
        views = {WHOLE_MODEL_CTX: views.pop("ctx"), **views}  # a whole-model file
    used = set(views)

    taken: dict[str, Tensor] = {}
    for key, target in views.items():
        if key not in sd:
            alt = f" (or {WHOLE_MODEL_CTX!r})" if key == "ctx" else ""
            raise ModelError(
                f"{layout.what} reference checkpoint: missing key {key!r}{alt} (this model: "
                f"{_describe(model)})"
            )
        value = sd[key]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(f"{layout.what} reference checkpoint: key {key!r} is {kind}, not weights")
        if value.shape != target.shape:
            raise ModelError(
                f"{layout.what} reference checkpoint: key {key!r} has shape {tuple(value.shape)}, "
                f"this model expects {tuple(target.shape)} ({_describe(model)})"
            )
        # Published checkpoints hold fp16 context vectors: cast to the prompt dtype.
        taken[key] = value.to(device=target.device, dtype=target.dtype)

    for key in sd:
        if key in used or (layout.ignore is not None and layout.ignore.match(key)):
            continue
        deep = _DEEP_RE.match(key)
        if deep is not None or _FOREIGN_RE.search(key) or (key == "ctx" and not layout.text_only):
            raise ModelError(
                f"{layout.what} reference checkpoint: key {key!r} is a learned prompt tensor this "
                f"model would not use ({_describe(model)}{_depth_hint(sd)}); is it a checkpoint "
                "of another method or depth?"
            )
    logger.debug(
        "%s reference checkpoint: %d tensors loaded, %d keys ignored (frozen CLIP weights, "
        "class buffers token_prefix/token_suffix, teachers)", layout.what, len(used), len(sd) - len(used),
    )
    with torch.no_grad():
        for key, value in taken.items():
            views[key].copy_(value)  # the views share storage with the parameters


def _describe(model: PromptedCLIP) -> str:
    return (
        f"text n_ctx {model.n_ctx_text} depth {model.depth_text}, "
        f"vision n_ctx {model.n_ctx_vision} depth {model.depth_vision}"
    )


def _depth_hint(sd: Mapping[str, Any]) -> str:
    """The depths the checkpoint's deep prompts imply, for an error message."""
    depths = {"text": 0, "image": 0}
    for key in sd:
        m = _DEEP_RE.match(key)
        if m is not None:
            depths[m.group(1)] = max(depths[m.group(1)], int(m.group(2)) + 1)
    if not any(depths.values()):
        return ""
    return f"; the checkpoint's depths: text {depths['text']}, vision {depths['image']}"
