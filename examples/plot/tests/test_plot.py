"""rayot's PLOT against the reference's computation (the oracle of plot_reference.py, written from
the reference code on open_clip's modules), its Sinkhorn against POT, and the conformance kit.

The exactness checks use a float64 CLIP whose text width (32), vision width (48) and embedding
width (40) all differ and whose towers have 3 layers, with 2 and 3 prompts and views of their own
widths, so a transposed map or a mixed-up prompt cannot go unnoticed. CPU, seconds.
"""

from __future__ import annotations

import numpy as np
import open_clip
import ot
import pytest
import torch
import torch.nn.functional as F
from plot_reference import plot_logits, plot_loss, prompt_tokens, sinkhorn_reference
from rayot_plot import PLOTCLIP, plan_kl_from_uniform, sinkhorn_plans
from torch.testing import assert_close

from rayot import methods
from rayot.methods import Batch, LoadedCLIP, from_reference, load_reference_file
from rayot.testing import PROPERTIES, Kit, parametrize_with_checks

CLASSES = ["dog", "sea_lion", "golden retriever", "airplane", "x"]
TEMPLATES = ("a photo of a", "this is a photo of", "one picture of")  # 4, 5 and 3 tokens


@pytest.fixture(scope="module")
def uneven() -> LoadedCLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=40,
        vision_cfg=dict(image_size=32, layers=3, width=48, head_width=16, patch_size=8),
        text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=3),
    ).to(torch.float64).eval().requires_grad_(False)
    return LoadedCLIP(model=model, tokenizer=open_clip.get_tokenizer("rayot-tiny"), image_size=32,
                      model_name="uneven", pretrained=None)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _shaken(model: PLOTCLIP) -> PLOTCLIP:
    """Move the learned tensors away from their initial values (a trained-looking model)."""
    g = torch.Generator().manual_seed(5)
    model.load_prompt_state_dict({k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                                  for k, v in model.prompt_state_dict().items()})
    return model


def _oracle(model: PLOTCLIP, clip: LoadedCLIP, images: torch.Tensor, **kw) -> torch.Tensor:
    prefixes = [TEMPLATES[n % len(TEMPLATES)] if model.templates else " ".join(["X"] * model.n_ctx)
                for n in range(model.n_prompts)]
    tokens = prompt_tokens(prefixes, CLASSES, clip.model.context_length)  # (N, C, L)
    return plot_logits(clip.model, images, model.ctx.detach(), tokens,
                       vision_ctx=None if model.ctx_vision is None else model.ctx_vision.detach(),
                       eps=model.epsilon, max_iter=model.max_iter, add_global=model.global_term, **kw)


@pytest.mark.parametrize(("templates", "views", "global_term"), [
    (TEMPLATES, 3, False),  # PLOT++: contexts from templates, 3 prompted views, stage 2 / evaluation
    ((), 3, True),  # random contexts, with the global term (PLOT++ stage 1)
    (TEMPLATES, 0, False),  # no visual prompts: one plain view of each image
])
def test_forward_and_loss_equal_the_reference_computation(uneven, templates, views, global_term):
    torch.manual_seed(3)
    model = _shaken(PLOTCLIP(uneven, CLASSES, n_prompts=2, n_ctx=3, n_views=views, n_ctx_vision=2,
                             templates=templates, thresh=0.0, global_term=global_term))
    images = _images()
    out = model(images)
    # the reference stops all problems of a batch at once: with no threshold both run every iteration
    want = _oracle(model, uneven, images, thresh=0.0)
    assert out.logits.dtype == torch.float64 and out.logits.shape == (4, len(CLASSES))
    assert_close(out.logits, want, rtol=1e-10, atol=1e-10)
    labels = torch.tensor([0, 3, 1, 4])
    objective = methods.get("plot").loss(
        Batch(out, labels, None, None, model.logit_scale, 0), methods.get("plot").Settings())
    prefixes = [TEMPLATES[n % 3] if templates else "X X X" for n in range(2)]
    reference = plot_loss(uneven.model, images, labels, model.ctx.detach(),
                          prompt_tokens(prefixes, CLASSES, 32),
                          vision_ctx=None if model.ctx_vision is None else model.ctx_vision.detach(),
                          thresh=0.0, add_global=global_term)
    assert_close(objective.loss, reference, rtol=1e-10, atol=1e-10)
    if views > 1:  # the plans matter (with one view, the only plan is the uniform one)
        uniform = _oracle(model, uneven, images, thresh=0.0, plan="uniform")
        assert (uniform - want).abs().max() > 1e-3


def test_a_plan_stops_on_its_own_not_with_the_batch(uneven):
    """Each (image, class) problem stops when it converges; the reference stops a whole batch at
    once, when the mean change over all its problems is small. Ours is the reference's plan of
    each problem on its own, and an image's logits do not depend on the rest of its batch."""
    g = torch.Generator().manual_seed(3)
    sim = torch.rand(6, 3, 4, generator=g, dtype=torch.float64) * 2 - 1  # (P, M, N) cosines
    sim[:3] *= 0.05  # three easy problems (nearly uniform costs) and three hard ones
    eps, iters, thresh = 0.05, 100, 1e-2
    ours = sinkhorn_plans(sim, eps, iters, thresh)
    kernel = torch.exp(-(1 - sim) / eps)
    a, b = torch.full((6, 3), 1 / 3, dtype=torch.float64), torch.full((6, 4), 1 / 4, dtype=torch.float64)
    one_by_one = torch.cat([sinkhorn_reference(kernel[p:p + 1], a[p:p + 1], b[p:p + 1], max_iter=iters,
                                               thresh=thresh) for p in range(6)])
    assert_close(ours, one_by_one, rtol=0, atol=1e-12)
    batched = sinkhorn_reference(kernel, a, b, max_iter=iters, thresh=thresh)
    # the reference's plans depend on the batch: here by 7e-8 (measured), small but enough to move
    # an argmax between batch sizes or worker counts, which ours never does
    assert (batched - one_by_one).abs().max() > 1e-9

    torch.manual_seed(4)
    model = _shaken(PLOTCLIP(uneven, CLASSES, n_prompts=2, n_ctx=3, n_views=3, templates=TEMPLATES))
    images = _images(6)
    alone = torch.cat([model(images[i:i + 1]).logits for i in range(6)])
    assert_close(model(images).logits, alone, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")  # stopThr 0: every iteration runs
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_plans_are_pots(seed):
    """Many iterations, no early stop: POT's Sinkhorn plan between uniform weights on 1 - cos."""
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(3, 4, 5, generator=g, dtype=torch.float64) * 2 - 1  # (P, M, N) cosines
    plans = sinkhorn_plans(sim, 0.1, 2000, 0.0)
    for p in range(3):
        cost = (1 - sim[p]).numpy()
        pot = ot.sinkhorn(np.full(4, 1 / 4), np.full(5, 1 / 5), cost, reg=0.1, numItermax=2000, stopThr=0)
        assert_close(plans[p], torch.from_numpy(pot), rtol=0, atol=1e-9)
    assert_close(plans.sum(-1), torch.full((3, 4), 1 / 4, dtype=torch.float64), rtol=0, atol=1e-9)
    assert_close(plans.sum(-2), torch.full((3, 5), 1 / 5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(plan_kl_from_uniform(torch.full((2, 4, 5), 1 / 20))) == pytest.approx(0.0, abs=1e-12)
    assert float(plan_kl_from_uniform(torch.eye(4)[None] / 4)) == pytest.approx(np.log(4))


def test_only_the_prompts_train_and_the_plan_carries_no_gradient(uneven):
    torch.manual_seed(2)
    model = PLOTCLIP(uneven, CLASSES, n_prompts=2, n_ctx=3, n_views=2, templates=TEMPLATES)
    out = model(_images(2))
    assert not out.extras["plan"].requires_grad
    F.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    assert model.ctx.grad.abs().sum() > 0 and model.ctx_vision.grad.abs().sum() > 0
    assert all(p.grad is None for p in uneven.model.parameters())


def test_a_reference_checkpoint_imports_with_its_key_names(uneven, tmp_path):
    """A PLOT++ checkpoint written key by key (the whole model, frozen weights and class buffers
    included, fp16 contexts), read as the reference's file and imported: the reference's logits."""
    g = torch.Generator().manual_seed(7)
    ctx = (0.3 * torch.randn(4, 4, 32, generator=g)).half()
    ctx_vision = (0.3 * torch.randn(4, 2, 48, generator=g)).half()
    state = {"prompt_learner.ctx": ctx, "prompt_learner.ctx_vision": ctx_vision,
             "prompt_learner.token_prefix": torch.zeros(20, 1, 32), "image_encoder.conv1.weight": torch.zeros(1),
             "logit_scale": torch.tensor(4.6)}
    torch.save({"state_dict": state, "epoch": 200, "scheduler": torch.optim.lr_scheduler.StepLR(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), 1)}, tmp_path / "model.pth.tar-200")
    assert set(load_reference_file(tmp_path / "model.pth.tar-200")) >= {"state_dict", "scheduler"}
    model = from_reference("plot", tmp_path / "model.pth.tar-200", uneven, CLASSES, n_ctx_text=4)
    images = _images()
    tokens = prompt_tokens(["a photo of a", "this is a photo", "this is picture of", "one picture of a"],
                           CLASSES, 32)
    want = plot_logits(uneven.model, images, ctx.double(), tokens, vision_ctx=ctx_vision.double())
    assert_close(model(images).logits, want, rtol=0, atol=0.05)  # batch-wide against per-problem stop
    with pytest.raises(Exception, match="prompt_learner.ctx_vision"):
        from_reference("plot", {"prompt_learner.ctx": ctx}, uneven, CLASSES, n_ctx_text=4)


@pytest.fixture(scope="session")
def kit():
    with Kit() as shared:  # PLOT's properties share its runs and one pair of rank processes
        yield shared


#: the properties that run the trial on the pair of rank processes, which take seconds to start:
#: with the slow tests (CI runs them), the rest in the fast loop
ON_TWO_RANKS = ("two_workers_equal_one", "deterministic_every_way")


@parametrize_with_checks(["plot"], properties=[p for p in PROPERTIES if p not in ON_TWO_RANKS])
def test_plot_keeps_every_contract(method, check, kit):
    check(method, kit)


@pytest.mark.slow
@parametrize_with_checks(["plot"], properties=ON_TWO_RANKS)
def test_plot_keeps_every_contract_on_two_ranks(method, check, kit):
    check(method, kit)
