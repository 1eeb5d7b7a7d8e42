"""The one place that runs open_clip's CLIP towers layer by layer, to insert deep prompts.

open_clip's ``encode_text``/``encode_image`` run a whole transformer in one call; deep prompts must
overwrite the prompt positions of the residual stream before each of the first layers. These
functions rebuild the two forward passes from open_clip's public submodules (token and patch
embeddings, ``resblocks``, ``ln_final``/``ln_post``, projections, ``attn_mask``) so that, with no
prompts, they compute exactly what ``encode_text``/``encode_image`` compute.

Prompt tensors have shape ``(depth, n_ctx, width)``: row 0 enters at the input, row ``i`` replaces
the prompt positions before layer ``i``. A packed run (several trials in one computation,
:mod:`rayot.model.packed`) gives every sequence its own prompts: ``(depth, N, n_ctx, width)``. Only the standard ``open_clip.CLIP`` with a ViT image
tower, class-token pooling and argmax (EOT) text pooling is supported.
"""

from __future__ import annotations

from collections.abc import Callable

import open_clip
import torch
from open_clip.transformer import Transformer, VisionTransformer
from torch import Tensor

from rayot.errors import ModelError

Inject = Callable[[int, Tensor], Tensor]


def check_supported(clip: torch.nn.Module, model_name: str = "model") -> None:
    """Raise ModelError unless ``clip`` has the layout the adapter rebuilds."""
    problems = []
    if not isinstance(clip, open_clip.CLIP):
        problems.append(f"{type(clip).__name__} is not open_clip.CLIP (custom text towers)")
    else:
        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            problems.append(f"image tower {type(visual).__name__} is not a ViT")
        elif (
            visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool
        ):
            problems.append("the ViT does not pool its class token")
        if clip.text_pool_type != "argmax":
            problems.append(f"text pooling {clip.text_pool_type!r} is not at the EOT token")
        if clip.attn_mask is None:
            problems.append("the text tower has no causal mask")
    if problems:
        raise ModelError(f"{model_name} cannot take deep prompts: {'; '.join(problems)}")


def _run_blocks(
    transformer: Transformer, x: Tensor, attn_mask: Tensor | None, inject: Inject | None
) -> Tensor:
    """Run ``transformer.resblocks`` on ``x`` (N, L, W), calling ``inject(i, x)`` before block i."""
    for i, block in enumerate(transformer.resblocks):
        if inject is not None:
            x = inject(i, x)
        if transformer.batch_first:
            x = block(x, attn_mask=attn_mask)
        else:  # (L, N, W) blocks
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def _layer_prompt(prompts: Tensor, i: int, h: Tensor) -> Tensor:
    """Layer ``i``'s prompts for the batch ``h`` (N, L, W): shared (depth, n_ctx, W) prompts
    expanded over the batch, or per-sequence (depth, N, n_ctx, W) ones as they are."""
    p = prompts[i].to(h.dtype)
    return p.expand(h.shape[0], -1, -1) if p.dim() == 2 else p  # (N, n_ctx, W)


def eot_positions(tokens: Tensor, eot_token_id: int) -> Tensor:
    """Index of the first end-of-text token of each row of ``tokens`` (N, L) -> (N,)."""
    return (tokens == eot_token_id).int().argmax(dim=-1)


def encode_text_tokens(
    clip: open_clip.CLIP,
    tokens: Tensor,
    eot: Tensor,
    prompts: Tensor | None = None,
    *,
    truncate: bool = True,
    length: int | None = None,
) -> Tensor:
    """Text features (N, D), not normalised, of token ids ``tokens`` (N, L) pooled at ``eot`` (N,).

    ``prompts`` (depth, n_ctx, width), or (depth, N, n_ctx, width) for one set per sequence, when
    given, overwrites positions ``1 .. n_ctx`` (right after SOS): row 0 before the positional
    embedding is added, row ``i`` before layer ``i``.
    ``truncate`` drops the positions after the last EOT: the causal mask keeps them from
    influencing any earlier position, so the pooled features are exactly the same. ``length``,
    when given, is that cut (last EOT index + 1), computed once by the caller.
    """
    if truncate:
        # callers that encode the same prompts every step pass ``length`` (no device sync)
        length = length if length is not None else int(eot.max()) + 1
        tokens = tokens[:, :length]  # (N, L')
    length = tokens.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)  # (N, L, W)

    inject: Inject | None = None
    if prompts is not None and prompts.shape[0] > 0:
        n_ctx = prompts.shape[-2]

        def inject(i: int, h: Tensor) -> Tensor:
            if i >= prompts.shape[0]:
                return h
            ctx = _layer_prompt(prompts, i, h)  # (N, n_ctx, W)
            return torch.cat([h[:, :1], ctx, h[:, 1 + n_ctx :]], dim=1)

        x = inject(0, x)

    # Layer 0's prompt went in with the embedding; later layers replace their own.
    def deep(i: int, h: Tensor) -> Tensor:
        return inject(i, h) if inject is not None and i > 0 else h

    return encode_text_embeddings(clip, x, eot, deep)


def encode_text_embeddings(
    clip: open_clip.CLIP, x: Tensor, eot: Tensor, inject: Inject | None = None
) -> Tensor:
    """Text features (N, D), not normalised, of input embeddings ``x`` (N, L, W) pooled at ``eot``.

    ``x`` holds the token embeddings with any prompt vectors already in place (for example
    a context shifted per image); the positional embedding of the first L positions is added here.
    ``inject(i, h)``, when given, is called before every layer i. ``L`` may be shorter than the
    context length (truncated after the last EOT, see ``encode_text_tokens``).
    """
    length = x.shape[1]
    x = x + clip.positional_embedding[:length].to(x.dtype)
    attn_mask = clip.attn_mask[:length, :length]  # causal (L, L)
    x = _run_blocks(clip.transformer, x, attn_mask, inject)
    x = clip.ln_final(x)  # (N, L, W)
    x = x[torch.arange(x.shape[0], device=x.device), eot]  # (N, W)
    projection = clip.text_projection
    if projection is None:
        return x
    if isinstance(projection, torch.nn.Linear):
        return projection(x)
    return x @ projection  # (N, D)


def encode_image_prompted(
    visual: VisionTransformer, images: Tensor, prompts: Tensor | None = None
) -> Tensor:
    """Image features (B, D), not normalised, of ``images`` (B, 3, H, W).

    ``prompts`` (depth, n_ctx, width), or (depth, B, n_ctx, width) for one set per image, when
    given, appends ``n_ctx`` tokens after the class and patch tokens (after the positional embedding, before ``ln_pre``, as the reference trainers do);
    row ``i`` replaces them before layer ``i``; they are dropped before pooling.
    """
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, g, g)
    x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+g*g, W)
    x = visual.patch_dropout(x)

    n_ctx = 0 if prompts is None or prompts.shape[0] == 0 else prompts.shape[-2]

    def prompt(i: int, h: Tensor) -> Tensor:
        return _layer_prompt(prompts, i, h)  # (B, n_ctx, W)

    inject: Inject | None = None
    if n_ctx:
        x = torch.cat([x, prompt(0, x)], dim=1)  # (B, 1+g*g+n_ctx, W)

        def inject(i: int, h: Tensor) -> Tensor:
            if i == 0 or i >= prompts.shape[0]:
                return h
            return torch.cat([h[:, :-n_ctx], prompt(i, h)], dim=1)

    x = visual.ln_pre(x)
    x = _run_blocks(visual.transformer, x, None, inject)
    pooled = visual.ln_post(x[:, 0])  # (B, W); the prompt tokens are dropped here
    if visual.proj is None:
        return pooled
    return pooled @ visual.proj  # (B, D)
