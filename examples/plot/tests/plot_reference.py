"""Test-side oracle for PLOT / PLOT++ logits and training loss on an open_clip ``CLIP``.

Written step by step from the semantics of the reference code (github CHENGY12/PLOT at commit
728539feac3f8471a1663ce79020b236880e5e7b: ``plot-coop/trainers/plot.py`` for PLOT,
``plot-pp/trainers/plotpp.py`` and ``plot-pp/clip/model.py`` for PLOT++); see ../REFERENCE.md.
It uses only the model's public submodules, works in any float dtype (float64 included) and
imports nothing from rayot.

Shapes used throughout::

    B  images in the batch               C  classes
    N  prompts per class (text set)      n_ctx  learned context tokens per prompt
    M  local visual features per image   W  text width, Wv vision width, D embedding dim
    L  text context length

The logit, as the reference forms it (T is the entropic OT plan, computed without gradient)::

    sim[b, c, m, n] = <u_m(b), t_n(c)>              (both L2-normalised)
    K               = exp(-(1 - sim) / eps)
    T[b, c]         = Sinkhorn(K[b, c], a = 1/M, b = 1/N)     (under torch.no_grad)
    logit[b, c]     = s * sum_{m,n} T[b, c, m, n] * sim[b, c, m, n]
                      (+ s * <g(b), tbar(c)> when the global term is on)

with ``s = logit_scale.exp()``, ``g(b)`` the normalised global image feature and ``tbar(c)`` the
normalised mean over the N (unnormalised) prompt features. The loss is plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.tokenizer import tokenize

__all__ = [
    "ctx_from_templates",
    "encode_image_patches",
    "encode_image_views",
    "encode_prompted_text",
    "plot_logits",
    "plot_loss",
    "prompt_tokens",
    "sinkhorn_reference",
]


# --------------------------------------------------------------------------------------------
# Sinkhorn, as the reference runs it
# --------------------------------------------------------------------------------------------


def sinkhorn_reference(
    K: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    max_iter: int = 100,
    thresh: float = 1e-2,
) -> torch.Tensor:
    """Plain (not log-domain) Sinkhorn scaling of the reference ``CustomCLIP.Sinkhorn``.

    K: (P, M, N) Gibbs kernels ``exp(-cost / eps)``; a: (P, M) and b: (P, N) marginals.
    Starts from r = 1, c = 1; each iteration sets ``r = a / (K c)`` then ``c = b / (K^T r)``
    and stops once the mean over *all* P problems of ``|r - r_prev|`` is below ``thresh``
    (one shared test for the whole batch), or after ``max_iter`` iterations.
    Returns T: (P, M, N) = diag(r) K diag(c); its column sums equal b exactly (the last
    update is on c), its row sums equal a only approximately.
    """
    r = torch.ones_like(a)
    c = torch.ones_like(b)
    for _ in range(max_iter):
        r_prev = r
        r = a / torch.matmul(K, c.unsqueeze(-1)).squeeze(-1)
        c = b / torch.matmul(K.transpose(1, 2), r.unsqueeze(-1)).squeeze(-1)
        if (r - r_prev).abs().mean().item() < thresh:
            break
    return r.unsqueeze(-1) * K * c.unsqueeze(-2)


# --------------------------------------------------------------------------------------------
# Text side
# --------------------------------------------------------------------------------------------


def prompt_tokens(
    prefixes: Sequence[str], classnames: Sequence[str], context_length: int
) -> torch.Tensor:
    """Token ids (N, C, L) of ``"<prefix_n> <classname_c>."`` (reference prompt strings).

    ``prefixes`` has one string per prompt n: ``"X X X X"`` (n_ctx placeholders, random init)
    or the n-th hand-written template (PLOT++ CTX_INIT). Underscores in class names become
    spaces, as in the reference.
    """
    rows = []
    for prefix in prefixes:
        texts = [f"{prefix} {name.replace('_', ' ')}." for name in classnames]
        rows.append(tokenize(texts, context_length=context_length))
    return torch.stack(rows)


@torch.no_grad()
def ctx_from_templates(model, templates: Sequence[str], n_ctx: int | None = None) -> torch.Tensor:
    """PLOT++ context initialisation: (N, n_ctx, W) token embeddings of each template.

    As in the reference, n_ctx defaults to the number of space-separated words of the
    *first* template, and template n contributes the embeddings at positions 1 .. n_ctx of its
    own tokenisation (so a shorter template contributes its end-of-text embedding).
    """
    if n_ctx is None:
        n_ctx = len(templates[0].split())
    ids = tokenize([t.replace("_", " ") for t in templates], context_length=model.context_length)
    emb = model.token_embedding(ids.to(model.token_embedding.weight.device))
    return emb[:, 1 : 1 + n_ctx, :].clone()


def _run_text_blocks(model, x: torch.Tensor) -> torch.Tensor:
    """x: (P, L, W) -> (P, L, W) through model.transformer.resblocks with the causal mask."""
    batch_first = getattr(model.transformer, "batch_first", True)
    mask = model.attn_mask
    if mask is not None:
        mask = mask.to(dtype=x.dtype, device=x.device)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in model.transformer.resblocks:
        x = block(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    return x


def encode_prompted_text(model, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Features (N, C, D) of the N x C prompts ``[SOS] ctx_n [rest of prompt n for class c]``.

    ctx: (N, n_ctx, W) context shared by all classes (the reference's only working layout),
    or (N, C, n_ctx, W). tokens: (C, L) or (N, C, L) ids of the prompt strings (see
    ``prompt_tokens``); positions 1 .. n_ctx of each are replaced by ctx, as the reference
    replaces them (token_prefix = position 0, token_suffix = positions 1 + n_ctx onwards).
    All N x C sequences go through the text transformer as one batch, n-major (row n * C + c).
    Not normalised.
    """
    if ctx.dim() not in (3, 4):
        raise ValueError(f"ctx must be (N, n_ctx, W) or (N, C, n_ctx, W), got {tuple(ctx.shape)}")
    n_prompts, n_ctx = ctx.shape[0], ctx.shape[-2]
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0).expand(n_prompts, -1, -1)
    if tokens.shape[0] != n_prompts:
        raise ValueError("tokens and ctx disagree on N")
    n_cls, length = tokens.shape[1], tokens.shape[2]
    if ctx.dim() == 3:
        ctx = ctx.unsqueeze(1).expand(-1, n_cls, -1, -1)
    tokens = tokens.to(model.token_embedding.weight.device)

    emb = model.token_embedding(tokens).to(ctx.dtype)  # (N, C, L, W)
    x = torch.cat([emb[:, :, :1], ctx, emb[:, :, 1 + n_ctx :]], dim=2)
    x = x.reshape(n_prompts * n_cls, length, x.shape[-1])
    x = x + model.positional_embedding.to(x.dtype)
    x = _run_text_blocks(model, x)
    x = model.ln_final(x)
    flat_tokens = tokens.reshape(n_prompts * n_cls, length)
    x = x[torch.arange(x.shape[0], device=x.device), flat_tokens.argmax(dim=-1)]
    proj = model.text_projection
    if isinstance(proj, torch.nn.Linear):
        x = proj(x)
    elif proj is not None:
        x = x @ proj
    return x.reshape(n_prompts, n_cls, -1)


# --------------------------------------------------------------------------------------------
# Image side
# --------------------------------------------------------------------------------------------


def _check_plain_vit(visual) -> None:
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("the oracle assumes a ViT without attentional pooling")
    if getattr(visual, "final_ln_after_pool", False):
        raise ValueError("the oracle assumes ln_post before pooling (CLIP's layout)")


def _patch_embeds(visual, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1 + G, Wv): conv1 patches, class token first, positional embedding."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    return x + visual.positional_embedding.to(x.dtype)


def encode_image_views(model, images: torch.Tensor, vision_ctx: torch.Tensor | None = None):
    """PLOT++ local features: one projected CLS feature per visual prompt set.

    images: (B, 3, H, W). vision_ctx: (M, n_ctx_v, Wv) visual prompts, or None for a single
    unprompted view (M = 1, the plain CLIP image feature). For each m, the n_ctx_v prompt tokens
    are appended *after* the patch tokens, after the positional embedding (they get none) and
    before ln_pre; the sequence goes through the whole frozen transformer; the feature is
    ``ln_post(x[:, 0]) @ proj`` (CLS token only, patch and prompt outputs are discarded).
    Returns (local (M, B, D), global (B, D)), global = mean over m of the unnormalised local
    features, as in the reference. Neither is normalised here.
    """
    visual = model.visual
    _check_plain_vit(visual)
    x = _patch_embeds(visual, images)  # (B, 1 + G, Wv)
    n_img = x.shape[0]
    if vision_ctx is None:
        views = x.unsqueeze(0)  # (1, B, 1 + G, Wv)
    else:
        if vision_ctx.dim() != 3:
            raise ValueError("vision_ctx must be (M, n_ctx_v, Wv)")
        prompts = vision_ctx.to(x.dtype).unsqueeze(1).expand(-1, n_img, -1, -1)
        views = torch.cat([x.unsqueeze(0).expand(prompts.shape[0], -1, -1, -1), prompts], dim=2)
    n_views = views.shape[0]
    x = views.reshape(n_views * n_img, views.shape[2], views.shape[3])
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    x = visual.ln_post(x[:, 0])
    if visual.proj is not None:
        x = x @ visual.proj
    local = x.reshape(n_views, n_img, -1)
    return local, local.mean(dim=0)


def encode_image_patches(model, images: torch.Tensor):
    """ViT analogue of PLOT's ResNet local features (NOT in the reference code; see REFERENCE.md).

    All output tokens go through ``ln_post`` and ``proj``; the class token is the global
    feature, the G patch tokens are the local ones (the reference's ResNet path likewise takes
    the attention-pool output at the mean token as global and at the 7 x 7 positions as local).
    Returns (local (G, B, D), global (B, D)), not normalised.
    """
    visual = model.visual
    _check_plain_vit(visual)
    x = visual.ln_pre(_patch_embeds(visual, images))
    x = visual.transformer(x)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    return x[:, 1:].transpose(0, 1), x[:, 0]


# --------------------------------------------------------------------------------------------
# Logits and loss
# --------------------------------------------------------------------------------------------


def plot_logits(
    model,
    images: torch.Tensor,
    ctx: torch.Tensor,
    tokens: torch.Tensor,
    *,
    vision_ctx: torch.Tensor | None = None,
    local: str = "views",
    eps: float = 0.1,
    max_iter: int = 100,
    thresh: float = 1e-2,
    add_global: bool = False,
    plan: str = "sinkhorn",
    logit_scale: float | torch.Tensor | None = None,
    return_parts: bool = False,
):
    """PLOT / PLOT++ logits (B, C) of a batch, following the reference forward pass.

    images: (B, 3, H, W). ctx: (N, n_ctx, W) (or (N, C, n_ctx, W)). tokens: (C, L) or (N, C, L)
    prompt ids. vision_ctx: (M, n_ctx_v, Wv) PLOT++ visual prompts (``local="views"`` only).
    local: "views" = PLOT++ (M prompted CLS features; M = 1 when vision_ctx is None);
    "patches" = ViT patch tokens (an adaptation, see ``encode_image_patches``).
    eps, max_iter, thresh: Sinkhorn settings (reference: 0.1, 100, 1e-2).
    add_global: add ``s * <g, tbar>`` (PLOT++ TRADE_OFF: True in stage 1, False in stage 2 and
    at evaluation; PLOT-CoOp: True only for ImageNet). plan: "sinkhorn", or "uniform" for
    T = 1 / (M N) (an ablation; not in the reference). logit_scale: the multiplier s
    (default ``model.logit_scale.exp()``).

    Returns logits (B, C); with return_parts, also a dict with ``T`` and ``sim`` (B, C, M, N),
    ``ot_sim`` (B, C), ``global_logits`` (B, C), ``local`` (M, B, D), ``text`` (N, C, D).
    Raises FloatingPointError where the reference would return None (a NaN in the plan).
    """
    text = encode_prompted_text(model, ctx, tokens)  # (N, C, D)
    if local == "views":
        local_feats, global_feat = encode_image_views(model, images, vision_ctx)
    elif local == "patches":
        if vision_ctx is not None:
            raise ValueError("vision_ctx is only defined for the PLOT++ 'views' path")
        local_feats, global_feat = encode_image_patches(model, images)
    else:
        raise ValueError(f"unknown local feature path {local!r}")
    text_global = text.mean(dim=0)  # mean of unnormalised prompt features, (C, D)

    local_feats = F.normalize(local_feats, dim=-1)
    global_feat = F.normalize(global_feat, dim=-1)
    text = F.normalize(text, dim=-1)
    text_global = F.normalize(text_global, dim=-1)

    n_local, n_img = local_feats.shape[0], local_feats.shape[1]
    n_prompts, n_cls = text.shape[0], text.shape[1]
    sim = torch.einsum("mbd,ncd->bcmn", local_feats, text)  # (B, C, M, N)
    flat = sim.reshape(n_img * n_cls, n_local, n_prompts)  # row b * C + c, as the reference

    with torch.no_grad():
        if plan == "sinkhorn":
            kernel = torch.exp(-(1.0 - flat) / eps)
            a = torch.full((flat.shape[0], n_local), 1.0 / n_local, dtype=flat.dtype,
                           device=flat.device)
            b = torch.full((flat.shape[0], n_prompts), 1.0 / n_prompts, dtype=flat.dtype,
                           device=flat.device)
            T = sinkhorn_reference(kernel, a, b, max_iter=max_iter, thresh=thresh)
        elif plan == "uniform":
            T = torch.full_like(flat, 1.0 / (n_local * n_prompts))
        else:
            raise ValueError(f"unknown plan {plan!r}")
    if torch.isnan(T).any():
        raise FloatingPointError("NaN in the transport plan (the reference returns None here)")

    ot_sim = (T * flat).sum(dim=(1, 2)).reshape(n_img, n_cls)
    scale = model.logit_scale.exp() if logit_scale is None else logit_scale
    global_logits = scale * global_feat @ text_global.t()
    logits = scale * ot_sim
    if add_global:
        logits = logits + global_logits
    if not return_parts:
        return logits
    parts = {
        "T": T.reshape(n_img, n_cls, n_local, n_prompts),
        "sim": sim,
        "ot_sim": ot_sim,
        "global_logits": global_logits,
        "local": local_feats,
        "text": text,
    }
    return logits, parts


def plot_loss(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    ctx: torch.Tensor,
    tokens: torch.Tensor,
    **kwargs,
) -> torch.Tensor:
    """PLOT / PLOT++ training loss: ``F.cross_entropy(plot_logits(...), labels)`` (mean over B).

    labels: (B,) class indices. kwargs go to ``plot_logits``. The reference adds no other term.
    """
    return F.cross_entropy(plot_logits(model, images, ctx, tokens, **kwargs), labels)
