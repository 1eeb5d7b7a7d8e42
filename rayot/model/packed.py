"""Several prompt modules of one class around one frozen CLIP, run as one computation.

A pack of trials (:func:`rayot.train.run_pack`) keeps one prompt module per trial, all around the
same frozen CLIP model. For modules whose learned tensors enter CLIP only as deep prompts
(``packs_fused``: :class:`~rayot.model.prompts.PromptedCLIP` and the like) the images of every
member go through the image encoder in one call, each image with its own member's deep prompts,
and the class prompts of every member go through the text encoder in one call, each sequence
with its member's prompts. Nothing mixes across sequences (attention, layer norms and pooling act
per sequence), so each member's rows are what its module alone computes, and the gradient of a
member's loss reaches only its own tensors.

A module class may fuse its members its own way with the class methods
``encode_images_together(models, images)``, ``encode_texts_together(models)`` and, for class
features conditioned on each image (``text_per_image``),
``conditioned_texts_together(models, image_features)``. Otherwise each member runs its own module:
a pack is then one loop over its members, still each exactly as alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.model.adapter import encode_image_prompted, encode_text_tokens
from rayot.model.prompts import frozen_image_features


def _one_clip(models: list[nn.Module]) -> bool:
    """Two or more modules of one class around one frozen CLIP."""
    first = models[0]
    return len(models) > 1 and all(type(m) is type(first) and m.clip is first.clip for m in models)


def fused(models: list[nn.Module]) -> bool:
    """Whether ``models`` run their deep prompts as one computation."""
    return _one_clip(models) and models[0].packs_fused


def _together(models: list[nn.Module], name: str) -> Callable | None:
    """The class's own way to run ``models`` as one computation, if it has one."""
    return getattr(type(models[0]), name, None) if _one_clip(models) else None


def per_row(prompts: list[Tensor | None], counts: list[int]) -> Tensor | None:
    """Member m's prompts (depth, n_ctx, W) repeated for its ``counts[m]`` sequences:
    (depth, sum(counts), n_ctx, W), differentiable back to each member's tensor."""
    if prompts[0] is None:
        return None
    stacked = torch.stack(prompts, dim=1)  # (depth, K, n_ctx, W)
    owner = torch.repeat_interleave(torch.arange(len(prompts), device=stacked.device),
                                    torch.tensor(counts, device=stacked.device))  # (N,)
    return stacked[:, owner]  # (depth, N, n_ctx, W)


def encode_images(models: list[nn.Module], images: list[Tensor]) -> list[Tensor]:
    """Each member's prompted image features of its images (b_m, 3, H, W): (b_m, D) normalised
    for the deep-prompt modules, whatever ``encode_image`` returns for the others."""
    if not fused(models):
        together = _together(models, "encode_images_together")
        if together is not None:
            return together(models, images)
        return [m.encode_image(x) for m, x in zip(models, images, strict=True)]
    counts = [len(x) for x in images]
    prompts = per_row([m.deep_prompts()[1] for m in models], counts)
    feats = encode_image_prompted(models[0].clip.visual, torch.cat(images), prompts)  # (N, D)
    return list(F.normalize(feats, dim=-1).split(counts))


def encode_texts(models: list[nn.Module]) -> list[Tensor]:
    """Each member's prompted class features of its current classes ((n_cls_m, D) normalised for the
    deep-prompt modules, whatever ``encode_text`` returns for the others)."""
    if not fused(models):
        together = _together(models, "encode_texts_together")
        if together is not None:
            return together(models)
        return [m.encode_text() for m in models]
    counts = [len(m.text_tokens) for m in models]
    tokens = torch.cat([m.text_tokens for m in models])  # (N, L)
    eot = torch.cat([m.text_eot for m in models])  # (N,)
    prompts = per_row([m.deep_prompts()[0] for m in models], counts)
    feats = encode_text_tokens(models[0].clip, tokens, eot, prompts, truncate=True,
                               length=max(m.text_length for m in models))  # (N, D)
    return list(F.normalize(feats, dim=-1).split(counts))


def frozen_images(models: list[nn.Module], images: list[Tensor]) -> list[Tensor]:
    """The frozen CLIP's normalised features (b_m, D) of each member's images, in one call."""
    if len(models) == 1 or any(m.clip is not models[0].clip for m in models):
        return [m.frozen_image_features(x) for m, x in zip(models, images, strict=True)]
    counts = [len(x) for x in images]
    return list(frozen_image_features(models[0].clip, torch.cat(images)).split(counts))


def encode_conditioned_texts(models: list[nn.Module], images: list[Tensor]) -> list[Tensor]:
    """Each member's class features (b_m, n_cls, D) conditioned on its normalised frozen image
    features ``images[m]`` (b_m, D) (modules with ``text_per_image``)."""
    together = _together(models, "conditioned_texts_together")
    if together is not None:
        return together(models, images)
    return [m.encode_text(x) for m, x in zip(models, images, strict=True)]
