"""The PLOT oracle (plot_reference.py) checked against independent computations."""

from __future__ import annotations

import numpy as np
import open_clip
import ot
import pytest
import torch
import torch.nn.functional as F
from plot_reference import (
    ctx_from_templates,
    encode_image_views,
    plot_logits,
    plot_loss,
    prompt_tokens,
    sinkhorn_reference,
)

import rayot.methods  # noqa: F401  (registers the tiny open_clip configurations)

CLASSES = ["red circle", "blue square", "green_triangle", "yellow star", "black cross"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = open_clip.create_model("rayot-tiny").double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def images(model):
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def test_one_view_one_prompt_reduces_to_clip(model, images):
    """N = 1, M = 1: the plan is the scalar 1 and the logit is CLIP's own logit."""
    tokens = prompt_tokens(["a photo of a"], CLASSES, model.context_length)  # (1, C, L)
    ctx = ctx_from_templates(model, ["a photo of a"])  # (1, 4, W): the words themselves
    logits, parts = plot_logits(model, images, ctx, tokens, return_parts=True)

    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens[0]), dim=-1)
        expected = model.logit_scale.exp() * img @ txt.t()
    assert logits.shape == (4, len(CLASSES))
    torch.testing.assert_close(parts["T"], torch.ones_like(parts["T"]), rtol=0, atol=1e-12)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    # The global term is the same cosine here, so adding it doubles the logit.
    both = plot_logits(model, images, ctx, tokens, add_global=True)
    torch.testing.assert_close(both, 2 * expected, rtol=1e-10, atol=1e-10)

    # Patch path with a uniform plan: the mean patch/prompt cosine, with the patch tokens
    # taken from open_clip's own forward (output_tokens) instead of the oracle's.
    model.visual.output_tokens = True
    try:
        with torch.no_grad():
            _, toks = model.visual(images)  # (B, G, Wv) after ln_post, not projected
    finally:
        model.visual.output_tokens = False
    patches = F.normalize(toks @ model.visual.proj, dim=-1)
    mean_cos = torch.einsum("bgd,cd->bc", patches, txt) / patches.shape[1]
    uniform = plot_logits(model, images, ctx, tokens, local="patches", plan="uniform")
    torch.testing.assert_close(uniform, model.logit_scale.exp() * mean_cos,
                               rtol=1e-10, atol=1e-10)


def test_plan_matches_pot_and_has_the_right_marginals(model, images):
    """The plan inside the logit is POT's entropic plan on cost 1 - cos with reg = eps."""
    torch.manual_seed(2)
    width = model.token_embedding.weight.shape[1]
    n_prompts, n_views, eps = 3, 4, 0.1
    ctx = 0.02 * torch.randn(n_prompts, 4, width, dtype=torch.float64)
    vctx = 0.5 * torch.randn(n_views, 2, model.visual.conv1.out_channels, dtype=torch.float64)
    tokens = prompt_tokens(["X X X X"] * n_prompts, CLASSES, model.context_length)

    # Converged Sinkhorn (no early stop) against POT, problem by problem.
    _, parts = plot_logits(model, images, ctx, tokens, vision_ctx=vctx, eps=eps,
                           max_iter=5000, thresh=0.0, return_parts=True)
    a = np.full(n_views, 1.0 / n_views)
    b = np.full(n_prompts, 1.0 / n_prompts)
    cost = (1.0 - parts["sim"]).detach().numpy()
    for i in range(cost.shape[0]):
        for j in range(cost.shape[1]):
            ref = ot.sinkhorn(a, b, cost[i, j], reg=eps, numItermax=20000, stopThr=1e-15)
            np.testing.assert_allclose(parts["T"][i, j].numpy(), ref, rtol=1e-8, atol=1e-12)

    # Reference settings (100 iterations, threshold 1e-2 on r): columns exact, rows close.
    _, parts = plot_logits(model, images, ctx, tokens, vision_ctx=vctx, return_parts=True)
    T = parts["T"]
    torch.testing.assert_close(T.sum(dim=2), torch.full_like(T.sum(dim=2), 1.0 / n_prompts),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(T.sum(dim=3), torch.full_like(T.sum(dim=3), 1.0 / n_views),
                               rtol=0, atol=1e-3)

    # The Sinkhorn helper alone, on a random cost, against POT.
    cost = torch.rand(6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u = torch.full((6, 5), 1 / 5, dtype=torch.float64)
    v = torch.full((6, 7), 1 / 7, dtype=torch.float64)
    T = sinkhorn_reference(torch.exp(-cost / 0.05), u, v, max_iter=20000, thresh=0.0)
    for k in range(6):
        ref = ot.sinkhorn(u[k].numpy(), v[k].numpy(), cost[k].numpy(), reg=0.05,
                          numItermax=20000, stopThr=1e-15)
        np.testing.assert_allclose(T[k].numpy(), ref, rtol=1e-8, atol=1e-12)


def test_plotpp_views_shapes_order_and_gradients(model, images):
    """PLOT++ path: shapes, class/batch ordering, empty prompts, gradients through sim only."""
    torch.manual_seed(4)
    width = model.token_embedding.weight.shape[1]
    vwidth = model.visual.conv1.out_channels
    n_prompts, n_views, n_cls = 2, 3, len(CLASSES)
    tokens = prompt_tokens(["a photo of a", "this is a"], CLASSES, model.context_length)
    ctx = ctx_from_templates(model, ["a photo of a", "this is a"]).requires_grad_(True)
    assert ctx.shape == (n_prompts, 4, width)
    vctx = (0.5 * torch.randn(n_views, 2, vwidth, dtype=torch.float64)).requires_grad_(True)
    labels = torch.tensor([0, 3, 1, 4])

    logits, parts = plot_logits(model, images, ctx, tokens, vision_ctx=vctx, add_global=True,
                                return_parts=True)
    assert logits.shape == (4, n_cls)
    assert parts["T"].shape == parts["sim"].shape == (4, n_cls, n_views, n_prompts)
    assert parts["local"].shape == (n_views, 4, model.visual.proj.shape[1])
    assert parts["text"].shape == (n_prompts, n_cls, model.text_projection.shape[1])
    assert not parts["T"].requires_grad

    # Permuting classes permutes columns; permuting images permutes rows.
    perm_c, perm_b = torch.tensor([3, 0, 4, 1, 2]), torch.tensor([2, 0, 3, 1])
    shuffled = plot_logits(model, images[perm_b], ctx, tokens[:, perm_c], vision_ctx=vctx,
                           add_global=True)
    torch.testing.assert_close(shuffled, logits.detach()[perm_b][:, perm_c],
                               rtol=1e-10, atol=1e-10)

    # Zero prompt tokens: every view is the plain CLIP image feature.
    local, glob = encode_image_views(model, images, vctx[:, :0].detach())
    with torch.no_grad():
        plain = model.encode_image(images)
    torch.testing.assert_close(local, plain.expand(n_views, -1, -1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(glob, plain, rtol=1e-10, atol=1e-10)

    # The loss is cross-entropy and reaches both prompt sets.
    loss = plot_loss(model, images, labels, ctx, tokens, vision_ctx=vctx, add_global=True)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    loss.backward()
    for grad in (ctx.grad, vctx.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
