"""Several prompt modules of one architecture around one frozen CLIP, run as one computation.

A pack of trials (:func:`rayot.train.run_pack`) keeps one prompt module per trial, all around the
same frozen CLIP model. Here the images of every member go through the image encoder in one call,
each image with its own member's deep prompts, and the class prompts of every member go through
the text encoder in one call, each sequence with its member's prompts. Nothing mixes across
sequences (attention, layer norms and pooling act per sequence), so each member's rows are what
its module alone computes, and the gradient of a member's loss reaches only its own tensors.

CoCoOp's class features depend on each image: the frozen image features of every member's images
come from one call, and every member's image-conditioned class prompts go through the text
encoder in one call (:func:`encode_conditioned_texts`). One member runs its module's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.model.adapter import encode_image_prompted, encode_text_embeddings, encode_text_tokens
from rayot.model.prompts import frozen_image_features


def fused(models: list[nn.Module]) -> bool:
    """Whether ``models`` run as one computation: two or more of one class that allows it, around
    one frozen CLIP."""
    first = models[0]
    return (len(models) > 1 and first.packs_fused and all(type(m) is type(first) for m in models)
            and all(m.clip is first.clip for m in models))


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
    """Each member's normalised prompted image features (b_m, D) of its images (b_m, 3, H, W)."""
    if not fused(models):
        return [m.encode_image(x) for m, x in zip(models, images, strict=True)]
    counts = [len(x) for x in images]
    prompts = per_row([m.deep_prompts()[1] for m in models], counts)
    feats = encode_image_prompted(models[0].clip.visual, torch.cat(images), prompts)  # (N, D)
    return list(F.normalize(feats, dim=-1).split(counts))


def encode_texts(models: list[nn.Module]) -> list[Tensor]:
    """Each member's normalised prompted features (n_cls_m, D) of its current classes."""
    if not fused(models):
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
    """CoCoOp: each member's normalised class features (b_m, n_cls, D) conditioned on its
    normalised image features ``images[m]`` (b_m, D), in one text-encoder call for all members."""
    first = models[0]
    if len(models) == 1 or any(type(m) is not type(first) or m.clip is not first.clip
                               or m.text_length != first.text_length for m in models):
        return [m.encode_text(x) for m, x in zip(models, images, strict=True)]
    x = torch.cat([m.prompt_embeddings(f) for m, f in zip(models, images, strict=True)])  # (N, L, W)
    eot = torch.cat([m.text_eot.repeat(len(f)) for m, f in zip(models, images, strict=True)])  # (N,)
    feats = F.normalize(encode_text_embeddings(first.clip, x, eot), dim=-1)  # (N, D)
    counts = [len(f) * len(m.text_tokens) for m, f in zip(models, images, strict=True)]
    return [t.reshape(len(f), len(m.text_tokens), -1)  # (b_m, C, D)
            for m, f, t in zip(models, images, feats.split(counts), strict=True)]
