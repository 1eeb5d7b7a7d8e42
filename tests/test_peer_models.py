"""CoCoOpCLIP and MaPLeCLIP against computations written here from open_clip's own modules.

The exactness checks use a float64 tiny CLIP whose text width (32), vision width (48) and
embedding width (40) all differ and whose towers have 3 layers, so a transposed map or a prompt
left in after its last layer cannot go unnoticed. Training, state and precision checks use
``rayot-tiny`` in float32. CPU, seconds.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_a_step_trains_only_the_learned_tensors
from torch import Tensor
from torch.testing import assert_close

from rayot.errors import ConfigError, ModelError
from rayot.methods.cocoop import CoCoOpCLIP
from rayot.methods.maple import MaPLeCLIP
from rayot.model import LoadedCLIP, PromptedCLIP, PromptOutput, load_clip

torch.set_num_threads(1)

CLASSES = ["dog", "sea_lion", "golden retriever", "airplane", "x"]
NAMES = [c.replace("_", " ") for c in CLASSES]
TEXT_W, VISION_W, EMBED = 32, 48, 40


@pytest.fixture(scope="module")
def uneven() -> LoadedCLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=EMBED,
        vision_cfg=dict(image_size=32, layers=3, width=VISION_W, head_width=16, patch_size=8),
        text_cfg=dict(context_length=32, vocab_size=49408, width=TEXT_W, heads=2, layers=3),
    )
    model = model.to(torch.float64).eval().requires_grad_(False)
    assert model.transformer.batch_first and model.visual.transformer.batch_first
    return LoadedCLIP(
        model=model,
        tokenizer=open_clip.get_tokenizer("rayot-tiny"),  # context length 32, as the model
        image_size=32,
        model_name="uneven",
        pretrained=None,
    )


@pytest.fixture(scope="module")
def tiny() -> LoadedCLIP:
    torch.manual_seed(0)
    return load_clip("rayot-tiny", None)


def _images(clip: LoadedCLIP, n: int = 3, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, clip.image_size, clip.image_size, generator=g)
    return images.to(clip.model.visual.conv1.weight.dtype)


def _maple(clip: LoadedCLIP, seed: int = 0, **kw) -> MaPLeCLIP:
    torch.manual_seed(seed)
    kw.setdefault("depth", 2)  # the tiny towers have 2 or 3 layers, the default is 9
    return MaPLeCLIP(clip, CLASSES, **kw)


def _cocoop(clip: LoadedCLIP, seed: int = 0, **kw) -> CoCoOpCLIP:
    torch.manual_seed(seed)
    return CoCoOpCLIP(clip, CLASSES, **kw)


def _shake(module: torch.nn.Module, std: float = 0.3, seed: int = 5) -> None:
    """Move every learned tensor away from its initial value (a trained-looking state)."""
    g = torch.Generator().manual_seed(seed)
    state = module.prompt_state_dict()
    module.load_prompt_state_dict(
        {k: v + std * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}
    )


# ----- independent computations from open_clip's modules -----


def _ref_text(model: open_clip.CLIP, texts: list[str], first: Tensor, deep: list[Tensor]) -> Tensor:
    """Normalised features (N, D) of ``texts`` with positions 1..n replaced by ``first`` (N, n, W)
    before the positional embedding and by ``deep[i - 1]`` (n, W) before block i; full length."""
    tokens = open_clip.get_tokenizer("rayot-tiny")(texts)  # (N, 32)
    n = first.shape[1]
    x = model.token_embedding(tokens)  # (N, L, W)
    x = torch.cat([x[:, :1], first, x[:, 1 + n :]], dim=1) + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # EOT has the largest id
    return F.normalize(pooled @ model.text_projection, dim=-1)  # (N, D)


def _ref_image(model: open_clip.CLIP, images: Tensor, prompts: list[Tensor]) -> Tensor:
    """Normalised image features (B, D); prompts[0] (n, W) appended before ln_pre, prompts[i]
    replacing the last n tokens before block i."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, g*g, W)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    n = prompts[0].shape[0] if prompts else 0
    if prompts:
        x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i < len(prompts):
            x = torch.cat([x[:, :-n], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)


# ----- MaPLe -----


def test_maple_initial_state(uneven: LoadedCLIP) -> None:
    m = _maple(uneven, depth=3)
    state = m.prompt_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "text_prompts": (3, 2, TEXT_W),
        "proj_weight": (3, VISION_W, TEXT_W),
        "proj_bias": (3, VISION_W),
    }
    assert all(v.dtype == torch.float64 for v in state.values())
    photo = uneven.model.token_embedding(torch.tensor(uneven.tokenizer.encode("a photo")))
    assert torch.equal(state["text_prompts"][0], photo)  # first 2 tokens of "a photo of a"
    assert state["text_prompts"][1:].std().item() == pytest.approx(0.02, rel=0.3)
    # the deep maps start as copies of one Linear, F_0 is another draw
    for name in ("proj_weight", "proj_bias"):
        assert torch.equal(state[name][1], state[name][2])
        assert not torch.equal(state[name][0], state[name][1])
    # "[P_0] of a {c}.": the whole init phrase is tokenised, positions 1-2 are replaced
    want = uneven.tokenizer([f"a photo of a {c}." for c in NAMES])
    assert torch.equal(m.text_tokens, want)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_maple_forward_equals_independent_computation(uneven: LoadedCLIP, depth: int) -> None:
    m = _maple(uneven, depth=depth)
    _shake(m)
    state = m.prompt_state_dict()
    prompts, weight, bias = state["text_prompts"], state["proj_weight"], state["proj_bias"]
    vision = [prompts[j] @ weight[j].T + bias[j] for j in range(depth)]  # V_j = F_j(P_j)
    images = _images(uneven)
    texts = [f"a photo of a {c}." for c in NAMES]
    first = prompts[0].expand(len(texts), -1, -1)
    want_text = _ref_text(uneven.model, texts, first, list(prompts[1:]))
    want_image = _ref_image(uneven.model, images, vision)
    want_logits = uneven.model.logit_scale.exp() * want_image @ want_text.T

    out = m(images)
    assert isinstance(out, PromptOutput)
    assert out.logits.shape == (3, len(CLASSES)) and out.text.shape == (len(CLASSES), EMBED)
    assert_close(out.text, want_text)
    assert_close(out.image, want_image)
    assert_close(out.logits, want_logits)
    # the prompts do change the features (the check above is not vacuous)
    plain = uneven.model.encode_image(images, normalize=True)
    assert (out.image - plain).abs().max() > 1e-3


def test_maple_eval_text_features_and_classnames(uneven: LoadedCLIP) -> None:
    m = _maple(uneven, depth=2)
    _shake(m)
    images = _images(uneven)
    text = m.eval_text_features()
    assert text.shape == (len(CLASSES), EMBED)
    assert_close(m(images, text_features=text).logits, m(images).logits)
    m.set_classnames(["airplane", "sea_lion", "zebra"])
    assert_close(m.eval_text_features()[:2], text[[3, 1]])  # same class, same prompts
    with pytest.raises(ModelError, match="empty"):
        m.set_classnames([])


def test_maple_settings(uneven: LoadedCLIP) -> None:
    with pytest.raises(ConfigError, match="depth=4: model 'uneven' has only 3"):
        _maple(uneven, depth=4)
    with pytest.raises(ConfigError, match="ctx_init 'a photo' is 2 tokens but n_ctx=3"):
        _maple(uneven, n_ctx=3, ctx_init="a photo", depth=2)
    random = _maple(uneven, n_ctx=3, ctx_init=None, depth=2)
    assert random.text_prompts.shape == (2, 3, TEXT_W)
    assert torch.equal(random.text_tokens, uneven.tokenizer([f"X X X {c}." for c in NAMES]))


# ----- CoCoOp -----


def test_cocoop_forward_equals_per_image_computation(uneven: LoadedCLIP) -> None:
    m = _cocoop(uneven)
    assert m.meta_net.linear1.weight.shape == (EMBED // 16, EMBED)  # D -> D // 16
    assert m.meta_net.linear2.weight.shape == (TEXT_W, EMBED // 16)  # -> text width
    _shake(m, std=0.5)
    state = m.prompt_state_dict()
    images = _images(uneven)
    texts = [f"a photo of a {c}." for c in NAMES]
    image = uneven.model.encode_image(images, normalize=True)  # (B, D)
    hidden = F.relu(image @ state["meta_net.linear1.weight"].T + state["meta_net.linear1.bias"])
    pi = hidden @ state["meta_net.linear2.weight"].T + state["meta_net.linear2.bias"]  # (B, W)
    scale = uneven.model.logit_scale.exp()
    want_text = []
    for i in range(images.shape[0]):  # the reference's loop over the batch
        first = (state["ctx"] + pi[i]).expand(len(texts), -1, -1)  # (C, M, W)
        want_text.append(_ref_text(uneven.model, texts, first, []))
    want_text = torch.stack(want_text)  # (B, C, D)
    want_logits = scale * torch.einsum("bd,bcd->bc", image, want_text)

    out = m(images)
    assert out.text.shape == (3, len(CLASSES), EMBED)
    assert_close(out.image, image)
    assert_close(out.text, want_text)
    assert_close(out.logits, want_logits)
    # the meta-token matters: without it the logits are CoOp's
    coop = torch.stack(
        [_ref_text(uneven.model, texts, state["ctx"].expand(len(texts), -1, -1), [])] * 3
    )
    assert (want_logits - scale * torch.einsum("bd,bcd->bc", image, coop)).abs().max() > 1e-3


def test_cocoop_batched_equals_one_image_at_a_time(tiny: LoadedCLIP) -> None:
    m = _cocoop(tiny)
    _shake(m)
    images = _images(tiny, n=4)
    batched = m(images)
    single = [m(images[i : i + 1]) for i in range(4)]
    assert_close(batched.logits, torch.cat([s.logits for s in single]), rtol=1e-5, atol=1e-5)
    assert_close(batched.text, torch.cat([s.text for s in single]), rtol=1e-5, atol=1e-6)
    assert m.eval_text_features() is None
    # text features from an earlier call on the same images skip the text encoder
    assert_close(m(images, text_features=batched.text).logits, batched.logits)
    with pytest.raises(ModelError, match=r"\(B, n_cls, D\)"):
        m(images, text_features=batched.text[0])


def test_cocoop_classnames_and_settings(tiny: LoadedCLIP) -> None:
    m = _cocoop(tiny)
    _shake(m)
    images = _images(tiny)
    base = m(images).text  # (B, 5, D)
    m.set_classnames(["airplane", "sea_lion", "zebra"])
    assert_close(m(images).text[:, :2], base[:, [3, 1]], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="ctx_init 'a photo of a' is 4 tokens but n_ctx=2"):
        _cocoop(tiny, n_ctx=2)
    random = _cocoop(tiny, n_ctx=2, ctx_init="")
    assert random.ctx.shape == (2, 64)
    assert torch.equal(random.text_tokens, tiny.tokenizer([f"X X {c}." for c in NAMES]))


# ----- training touches only the method's tensors -----


@pytest.mark.parametrize("build", [_maple, _cocoop], ids=["maple", "cocoop"])
def test_only_method_parameters_get_gradients(tiny: LoadedCLIP, build) -> None:
    m = build(tiny)
    assert all(p.dtype == torch.float32 for p in m.trainable_parameters())
    images = _images(tiny, n=4)
    assert_a_step_trains_only_the_learned_tensors(
        m, lambda m: F.cross_entropy(m(images).logits, torch.tensor([0, 1, 2, 3])))


# ----- saved state -----


@pytest.mark.parametrize("build", [_maple, _cocoop], ids=["maple", "cocoop"])
def test_prompt_state_dict_round_trip(tiny: LoadedCLIP, build) -> None:
    a, b = build(tiny, seed=1), build(tiny, seed=2)
    _shake(a)
    images = _images(tiny)
    b.load_prompt_state_dict(a.prompt_state_dict())
    assert_close(b(images).logits, a(images).logits)

    state = a.prompt_state_dict()
    first = next(iter(state))
    with pytest.raises(ModelError, match=f"missing key '{first}'"):
        b.load_prompt_state_dict({k: v for k, v in state.items() if k != first})
    with pytest.raises(ModelError, match=f"key '{first}' has shape"):
        b.load_prompt_state_dict({**state, first: state[first][:1]})
    with pytest.raises(ModelError, match="unexpected key 'extra'"):
        b.load_prompt_state_dict({**state, "extra": torch.zeros(1)})


def test_maple_reference_round_trip(uneven: LoadedCLIP) -> None:
    a, b = _maple(uneven, seed=1, depth=3), _maple(uneven, seed=2, depth=3)
    _shake(a)
    ref = a.reference_state()
    p = "prompt_learner."
    assert {k: tuple(v.shape) for k, v in ref.items()} == {
        f"{p}ctx": (2, TEXT_W),
        f"{p}proj.weight": (VISION_W, TEXT_W),
        f"{p}proj.bias": (VISION_W,),
        **{f"{p}compound_prompts_text.{i}": (2, TEXT_W) for i in range(2)},
        **{f"{p}compound_prompt_projections.{i}.weight": (VISION_W, TEXT_W) for i in range(2)},
        **{f"{p}compound_prompt_projections.{i}.bias": (VISION_W,) for i in range(2)},
    }
    assert torch.equal(ref[f"{p}compound_prompts_text.1"], a.text_prompts[2])
    # the whole-model checkpoint also holds frozen CLIP weights and the class buffers: ignored
    extra = {
        f"{p}token_prefix": torch.zeros(7, 1, TEXT_W),
        f"{p}token_suffix": torch.zeros(7, 29, TEXT_W),
        "image_encoder.conv1.weight": torch.zeros(1),
        "text_encoder.positional_embedding": torch.zeros(1),
    }
    images = _images(uneven)
    b.load_reference({**ref, **extra})
    assert torch.equal(b(images).logits, a(images).logits)

    # published checkpoints hold fp16 tensors: cast to the parameters' dtype
    c = _maple(uneven, seed=3, depth=3)
    c.load_reference({k: v.half() for k, v in ref.items()})
    assert c.proj_weight.dtype == torch.float64
    assert torch.equal(c.proj_weight[1], ref[f"{p}compound_prompt_projections.0.weight"].half())

    missing = {k: v for k, v in ref.items() if k != f"{p}compound_prompts_text.1"}
    with pytest.raises(ModelError, match="missing key 'prompt_learner.compound_prompts_text.1'"):
        b.load_reference(missing)
    bad = {**ref, f"{p}proj.weight": ref[f"{p}proj.weight"].T}
    with pytest.raises(ModelError, match=r"'prompt_learner.proj.weight' has shape \(32, 48\)"):
        b.load_reference(bad)
    with pytest.raises(ModelError, match="deeper prompt than this model's depth=2"):
        _maple(uneven, depth=2).load_reference(ref)


def test_cocoop_reference_round_trip(tiny: LoadedCLIP) -> None:
    a, b = _cocoop(tiny, seed=1), _cocoop(tiny, seed=2)
    _shake(a)
    ref = a.reference_state()
    assert {k: tuple(v.shape) for k, v in ref.items()} == {
        "ctx": (4, 64),
        "meta_net.linear1.weight": (4, 64),
        "meta_net.linear1.bias": (4,),
        "meta_net.linear2.weight": (64, 4),
        "meta_net.linear2.bias": (64,),
    }
    images = _images(tiny)
    want = a(images).logits
    buffers = {"token_prefix": torch.zeros(7, 1, 64), "token_suffix": torch.zeros(7, 27, 64)}
    b.load_reference({**ref, **buffers})  # the trainer saves the prompt learner alone
    assert torch.equal(b(images).logits, want)
    c = _cocoop(tiny, seed=3)
    c.load_reference({f"prompt_learner.{k}": v.half() for k, v in ref.items()})  # whole model
    assert c.ctx.dtype == torch.float32 and torch.equal(c.ctx, ref["ctx"].half().float())
    assert_close(c(images).logits, want, rtol=0.02, atol=0.05)

    missing = {k: v for k, v in ref.items() if k != "meta_net.linear2.bias"}
    with pytest.raises(ModelError, match="missing key 'meta_net.linear2.bias' or 'prompt_learner"):
        b.load_reference(missing)
    with pytest.raises(ModelError, match=r"key 'ctx' has shape \(16, 64\)"):
        b.load_reference({**ref, "ctx": torch.zeros(16, 64)})


# ----- precision -----


@pytest.mark.parametrize("build", [_maple, _cocoop], ids=["maple", "cocoop"])
def test_autocast_bf16_trains_float32_parameters(tiny: LoadedCLIP, build) -> None:
    m = build(tiny)
    images = _images(tiny)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(images)
        loss = F.cross_entropy(out.logits.float(), torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(out.logits).all()
    for p in m.trainable_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
    assert_close(out.logits.float(), m(images).logits, rtol=0.1, atol=0.3)


@pytest.mark.parametrize("cls", [MaPLeCLIP, CoCoOpCLIP])
def test_bf16_model_runs(cls) -> None:
    torch.manual_seed(0)
    clip = load_clip("rayot-tiny", None, dtype=torch.bfloat16)
    m = cls(clip, CLASSES, **({"depth": 2} if cls is MaPLeCLIP else {}))
    assert all(p.dtype == torch.float32 for p in m.trainable_parameters())
    out = m(_images(clip))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()


# ----- shared interface -----


def test_prompted_clip_eval_text_features(tiny: LoadedCLIP) -> None:
    m = PromptedCLIP(tiny, CLASSES, depth_text=2, depth_vision=2)
    assert_close(m.eval_text_features(), m.encode_text())


@pytest.mark.parametrize("build", [_maple, _cocoop], ids=["maple", "cocoop"])
def test_frozen_features_are_clips(uneven: LoadedCLIP, build) -> None:
    m = build(uneven)
    images = _images(uneven)
    assert_close(m.frozen_image_features(images), uneven.model.encode_image(images, normalize=True))
    tokens = uneven.tokenizer([f"itap of a {c}." for c in NAMES])
    want = uneven.model.encode_text(tokens, normalize=True)
    assert_close(m.frozen_text_features(CLASSES, "itap of a {}."), want)
    assert_close(m.logit_scale, uneven.model.logit_scale.exp())


def test_vit_b16_parameter_counts() -> None:
    """The learned-tensor counts of docs/peers.md (CoCoOp §3.1, MaPLe §5.1) for ViT-B/16."""
    clip = load_clip("ViT-B-16", None)  # random weights: only the shapes matter
    counts = {
        cls: sum(p.numel() for p in cls(clip, ["dog"]).trainable_parameters())
        for cls in (CoCoOpCLIP, MaPLeCLIP)
    }
    assert counts == {CoCoOpCLIP: 35_360, MaPLeCLIP: 3_555_072}
