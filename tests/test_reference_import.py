"""Reference-code checkpoints: safe reading, import, export, and the reference IVLP forward.

Tiny random-weight open_clip models on the CPU; nothing is downloaded. The reference semantics
checked here are docs/peers.md §0.2, §2.1, §6.1 and §10.8-9 (IVLP/PromptSRC/Prompt-OT share them).
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from rayot import methods
from rayot.checkpoints import (
    PickledObject,
    _reference_config,
    from_reference,
    load_reference_file,
    load_reference_into,
    to_reference,
)
from rayot.errors import ConfigError, ModelError
from rayot.model import LoadedCLIP, load_clip

#: every built-in method that declares a reference checkpoint format
REFERENCE_METHODS = [m.name for m in methods.available() if m.reference_format and m.origin == "built-in"]

torch.set_num_threads(1)

CLASSES = ["dog", "sea_lion", "golden retriever", "airplane", "x"]

# Shapes that fit the tiny models (2 text layers; rayot-demo has 3 vision layers).
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "coop": {},
    "kgcoop": {},
    "ivlp": dict(n_ctx_vision=2, depth_text=2, depth_vision=2),
    "promptsrc": dict(depth_text=2, depth_vision=2),
    "prompt_ot": dict(n_ctx_text=3, ctx_init="", depth_text=2, depth_vision=1),
    "pointwise": dict(depth_text=1, depth_vision=2),
    "maple": dict(depth_text=2),
    "cocoop": {},
}


def _clip(name: str = "rayot-tiny", dtype: torch.dtype = torch.float32) -> LoadedCLIP:
    torch.manual_seed(0)
    return load_clip(name, None, dtype=dtype)


@pytest.fixture(scope="module")
def tiny() -> LoadedCLIP:
    return _clip()


@pytest.fixture(scope="module")
def demo64() -> LoadedCLIP:
    return _clip("rayot-demo", torch.float64)


def build_model(method: str, clip: LoadedCLIP, classnames: list[str], **shapes: Any) -> torch.nn.Module:
    """The method's module with its reference shapes, ``shapes`` (prompt keys) over them."""
    cfg = _reference_config(method, shapes)
    return methods.get(method).build(clip, classnames, cfg.prompt, cfg.settings)


def load_reference_state(model: torch.nn.Module, method: str, state: dict[str, Any]) -> None:
    methods.get(method).import_reference(model, state, _reference_config(method, {}).settings)


def _images(clip: LoadedCLIP, n: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=g, dtype=dtype)


def _trained(method: str, clip: LoadedCLIP, seed: int = 1) -> torch.nn.Module:
    """The method's model with every learned tensor moved away from its initial value."""
    torch.manual_seed(seed)
    model = build_model(method, clip, CLASSES, **TINY_SETTINGS[method])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p), alpha=0.3)
    return model


def _frozen_and_buffers(clip: LoadedCLIP, n_classes: int = 7) -> dict[str, Tensor]:
    """Keys a reference whole-model checkpoint also holds: frozen CLIP, teachers, class buffers."""
    torch.manual_seed(5)  # other values than the model's own frozen weights
    other = load_clip(clip.model_name, None).model
    out: dict[str, Tensor] = {}
    for key, value in other.state_dict().items():
        if key.startswith("visual."):
            out["image_encoder." + key.removeprefix("visual.")] = value.half()
            out["prompt_learner.ZS_image_encoder." + key.removeprefix("visual.")] = value.half()
        else:
            out["text_encoder." + key] = value.half()
    width = clip.model.transformer.width
    out["prompt_learner.token_prefix"] = torch.randn(n_classes, 1, width).half()
    out["prompt_learner.token_suffix"] = torch.randn(n_classes, 27, width).half()
    out["logit_scale"] = torch.tensor(1.0)
    return out


def _dassl_file(path: Path, state_dict: dict[str, Tensor]) -> Path:
    """A checkpoint shaped like Dassl's save_checkpoint: optimizer state and a scheduler object."""
    params = [torch.nn.Parameter(v.detach().float().clone()) for v in state_dict.values()][:2]
    optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=5e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)
    torch.save(
        {
            "state_dict": state_dict,
            "epoch": 20,
            "optimizer": optimizer.state_dict(),
            # Dassl's warm-up scheduler state keeps its successor, a scheduler object.
            "scheduler": {"last_epoch": 20, "successor": cosine},
            "val_result": None,
        },
        path,
    )
    return path


# ----- reading files without running them -----


def test_dassl_file_loads_with_scheduler_as_placeholder(tiny: LoadedCLIP, tmp_path: Path) -> None:
    model = _trained("promptsrc", tiny)
    path = _dassl_file(tmp_path / "model.pth.tar-20", to_reference("promptsrc", model))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    ckpt = load_reference_file(path)
    assert ckpt["epoch"] == 20
    successor = ckpt["scheduler"]["successor"]
    assert isinstance(successor, PickledObject)
    assert successor.dotted_name == "torch.optim.lr_scheduler.CosineAnnealingLR"
    # the optimizer object inside it is inert too, its tensors plain tensors
    assert isinstance(successor.state["optimizer"], PickledObject)
    assert successor.state["optimizer"].dotted_name == "torch.optim.sgd.SGD"
    assert isinstance(ckpt["optimizer"]["state"][0]["momentum_buffer"], Tensor)
    assert_close(ckpt["state_dict"]["image_encoder.VPT"], model.vision_prompts[0].detach())

    loaded = from_reference("promptsrc", path, tiny, CLASSES, **TINY_SETTINGS["promptsrc"])
    images = _images(tiny)
    assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)


def test_plain_state_dict_and_legacy_format(tiny: LoadedCLIP, tmp_path: Path) -> None:
    model = _trained("ivlp", tiny)
    sd = to_reference("ivlp", model)
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    assert set(load_reference_file(plain)) == set(sd)
    legacy = tmp_path / "legacy.pt"  # torch < 1.6 files: not a zip archive
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1), T_max=5
    )
    torch.save(
        {"state_dict": sd, "scheduler": cosine}, legacy, _use_new_zipfile_serialization=False
    )
    ckpt = load_reference_file(legacy)
    assert isinstance(ckpt["scheduler"], PickledObject)
    for key, value in sd.items():
        assert torch.equal(ckpt["state_dict"][key], value), key


class _Evil:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def test_malicious_pickle_does_not_run(tiny: LoadedCLIP, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sd = to_reference("coop", _trained("coop", tiny))
    path = tmp_path / "evil.pth"
    torch.save(
        {
            "state_dict": sd,
            "system": _Evil(os.system, f"touch {marker}"),
            "eval": _Evil(eval, f"open({str(marker)!r}, 'w').close()"),
        },
        path,
    )
    ckpt = load_reference_file(path)
    assert not marker.exists()
    system, evaluated = ckpt["system"], ckpt["eval"]
    assert isinstance(system, PickledObject) and isinstance(evaluated, PickledObject)
    assert system.dotted_name in ("posix.system", "os.system", "nt.system")
    assert system.args == (f"touch {marker}",)
    assert evaluated.dotted_name == "builtins.eval"
    # the tensors still load
    loaded = from_reference("coop", ckpt, tiny, CLASSES)
    assert_close(loaded.text_prompts[0], sd["ctx"])

    # a bare pickle stream (not a torch file) is refused, and nothing runs either
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"state_dict": _Evil(os.system, f"touch {marker}")}, protocol=2))
    with pytest.raises(ModelError, match="evil.pkl"):
        load_reference_file(raw)
    assert not marker.exists()


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="absent.pt: file not found"):
        load_reference_file(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="junk.pt"):
        load_reference_file(junk)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 8)}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="cut.pt"):
        load_reference_file(cut)
    script = tmp_path / "script.pt"  # a TorchScript archive holds code: never handed to torch.jit
    with zipfile.ZipFile(script, "w") as archive:
        archive.writestr("script/data.pkl", pickle.dumps({}, protocol=2))
        archive.writestr("script/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(ModelError, match="script.pt is a TorchScript archive"):
        load_reference_file(script)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ModelError, match="list.pt holds a list, not a dict"):
        load_reference_file(listed)


# ----- import and export -----


@pytest.mark.parametrize("method", REFERENCE_METHODS)
def test_round_trip_gives_the_same_logits(method: str, tiny: LoadedCLIP, tmp_path: Path) -> None:
    model = _trained(method, tiny, seed=1)
    sd = to_reference(method, model)
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, path)
    torch.manual_seed(2)  # another initialisation, overwritten by the import
    loaded = from_reference(method, path, tiny, CLASSES, **TINY_SETTINGS[method])
    assert type(loaded) is type(model) and not loaded.training
    images = _images(tiny)
    assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    for key, value in to_reference(method, loaded).items():
        assert torch.equal(value, sd[key]), key
    # and into a model built elsewhere (``model.init_from``)
    torch.manual_seed(3)
    target = build_model(method, tiny, CLASSES, **TINY_SETTINGS[method])
    load_reference_into(target, method, path)
    assert_close(target(images).logits, model(images).logits, rtol=0, atol=0)


def test_reference_key_names(tiny: LoadedCLIP) -> None:
    sd = to_reference("promptsrc", _trained("promptsrc", tiny))
    assert set(sd) == {
        "prompt_learner.ctx",
        "text_encoder.transformer.resblocks.1.VPT_shallow",
        "image_encoder.VPT",
        "image_encoder.transformer.resblocks.1.VPT_shallow",
    }
    assert sd["prompt_learner.ctx"].shape == (4, 64)
    assert set(to_reference("coop", _trained("coop", tiny))) == {"ctx"}  # prompt learner alone
    with pytest.raises(ModelError, match="text context only"):
        to_reference("coop", _trained("ivlp", tiny))


def test_fp16_checkpoint_is_cast(tiny: LoadedCLIP) -> None:
    model = _trained("ivlp", tiny)
    half = {k: v.half() for k, v in to_reference("ivlp", model).items()}
    loaded = from_reference("ivlp", {"state_dict": half}, tiny, CLASSES, **TINY_SETTINGS["ivlp"])
    assert loaded.text_prompts.dtype == torch.float32
    assert torch.equal(loaded.text_prompts, model.text_prompts.detach().half().float())
    assert torch.equal(loaded.vision_prompts, model.vision_prompts.detach().half().float())


def test_coop_accepts_both_key_forms(tiny: LoadedCLIP) -> None:
    ctx = torch.randn(4, 64)
    for key in ("ctx", "prompt_learner.ctx"):
        state = {key: ctx, "token_prefix": torch.zeros(9, 1, 64), "token_suffix": torch.zeros(1)}
        loaded = from_reference("coop", state, tiny, CLASSES)
        assert loaded.vision_prompts is None
        assert torch.equal(loaded.text_prompts[0], ctx)
    # KgCoOp's prompt learner also saves a meta-net and bias vectors it never uses
    state = {"ctx": ctx, "meta_net.linear1.weight": torch.zeros(64, 64), "bias_vectors": ctx[:1]}
    assert torch.equal(from_reference("kgcoop", state, tiny, CLASSES).text_prompts[0], ctx)
    with pytest.raises(ModelError, match="'meta_net.linear1.weight' is a learned prompt tensor"):
        from_reference("coop", state, tiny, CLASSES)  # a CoCoOp checkpoint


def test_missing_or_misshaped_keys_are_refused(tiny: LoadedCLIP) -> None:
    settings = TINY_SETTINGS["promptsrc"]
    sd = to_reference("promptsrc", _trained("promptsrc", tiny))
    model = build_model("promptsrc", tiny, CLASSES, **settings)
    before = {k: v.clone() for k, v in model.prompt_state_dict().items()}

    missing = dict(sd)
    del missing["text_encoder.transformer.resblocks.1.VPT_shallow"]
    with pytest.raises(ModelError, match=r"missing key 'text_encoder\.transformer\.resblocks\.1"):
        from_reference("promptsrc", missing, tiny, CLASSES, **settings)
    with pytest.raises(ModelError, match="missing key 'prompt_learner.ctx'"):
        from_reference("promptsrc", {"ctx": sd["prompt_learner.ctx"]}, tiny, CLASSES, **settings)

    wrong = {**sd, "image_encoder.VPT": torch.zeros(3, 64)}
    with pytest.raises(ModelError, match=r"'image_encoder.VPT' has shape \(3, 64\).*\(4, 64\)"):
        load_reference_state(model, "promptsrc", wrong)
    not_tensor = {**sd, "prompt_learner.ctx": PickledObject()}
    with pytest.raises(ModelError, match="'prompt_learner.ctx' is PickledObject"):
        load_reference_state(model, "promptsrc", not_tensor)
    for key, value in model.prompt_state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key]), key

    # deeper prompts than the model takes would be dropped: refused, with the checkpoint's depths
    shallow = dict(TINY_SETTINGS["promptsrc"], depth_vision=1)
    with pytest.raises(
        ModelError,
        match=r"'image_encoder.transformer.resblocks.1.VPT_shallow' is a learned prompt tensor"
        r".*checkpoint's depths: text 2, vision 2",
    ):
        from_reference("promptsrc", sd, tiny, CLASSES, **shallow)
    with pytest.raises(ModelError, match="learned prompt tensor"):
        from_reference("coop", {**sd, "ctx": sd["prompt_learner.ctx"]}, tiny, CLASSES)


def test_frozen_and_class_keys_are_ignored(
    tiny: LoadedCLIP, caplog: pytest.LogCaptureFixture
) -> None:
    model = _trained("promptsrc", tiny)
    sd = to_reference("promptsrc", model)
    extra = _frozen_and_buffers(tiny)
    with caplog.at_level(logging.DEBUG, logger="rayot.model.dassl_keys"):
        loaded = from_reference(
            "promptsrc",
            {"state_dict": {**extra, **sd}},
            tiny,
            CLASSES,
            **TINY_SETTINGS["promptsrc"],
        )
    images = _images(tiny)
    assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    assert f"4 tensors loaded, {len(extra)} keys ignored" in caplog.text


def test_unknown_method_and_setting(tiny: LoadedCLIP) -> None:
    with pytest.raises(ConfigError, match="'zeroshot' has no reference checkpoint format"):
        from_reference("zeroshot", {}, tiny, CLASSES)
    with pytest.raises(ConfigError, match="'prompt.depth': unknown key"):
        from_reference("ivlp", {}, tiny, CLASSES, depth=2)


# ----- the reference IVLP forward, computed independently -----


def _reference_ivlp_logits(
    clip: LoadedCLIP,
    sd: dict[str, Tensor],
    classnames: list[str],
    images: Tensor,
    *,
    prompt_prefix: str,
    n_ctx_text: int,
    n_ctx_vision: int,
    depth_text: int,
    depth_vision: int,
    text_ctx_key: str = "prompt_learner.ctx",
) -> Tensor:
    """Logits (B, C) of the reference IVLP model, from open_clip's modules and docs/peers.md §6.1.

    Full-length (un-truncated) text, EOT found as the arg-max token id, per-layer prompt
    replacement written out here, float64.
    """
    m = clip.model
    assert m.transformer.batch_first and m.visual.transformer.batch_first

    # Text: "[prefix] name." tokenised whole; positions 1..M replaced by ctx (docs/peers.md §0.2).
    names = [c.replace("_", " ") for c in classnames]
    tokens = clip.tokenizer([f"{prompt_prefix} {name}." for name in names])  # (C, L)
    n_cls = tokens.shape[0]
    embedded = m.token_embedding(tokens)  # (C, L, W)
    ctx = sd[text_ctx_key].to(embedded.dtype).expand(n_cls, -1, -1)  # (C, M, W)
    x = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + n_ctx_text :]], dim=1)
    x = x + m.positional_embedding  # the context gets the positional embedding too
    for i, block in enumerate(m.transformer.resblocks):
        if 1 <= i < depth_text:  # deep prompt: overwrite positions 1..M, no positional embedding
            deep = sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"].to(x.dtype)
            x = torch.cat([x[:, :1], deep.expand(n_cls, -1, -1), x[:, 1 + n_ctx_text :]], dim=1)
        x = block(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    text = x[torch.arange(n_cls), tokens.argmax(dim=-1)] @ m.text_projection  # (C, D)

    # Vision: class + patches + positions, then the prompts appended, then ln_pre.
    v = m.visual
    batch = images.shape[0]
    y = v.conv1(images)  # (B, W, g, g)
    y = y.reshape(batch, y.shape[1], -1).permute(0, 2, 1)  # (B, g*g, W)
    cls = v.class_embedding + torch.zeros(batch, 1, y.shape[-1], dtype=y.dtype)
    y = torch.cat([cls, y], dim=1) + v.positional_embedding  # (B, 1+g*g, W)
    if depth_vision >= 1:
        vpt = sd["image_encoder.VPT"].to(y.dtype).expand(batch, -1, -1)
        y = torch.cat([y, vpt], dim=1)  # (B, 1+g*g+Mv, W)
    y = v.ln_pre(y)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < depth_vision:  # replace the last Mv tokens
            deep = sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"].to(y.dtype)
            y = torch.cat([y[:, :-n_ctx_vision], deep.expand(batch, -1, -1)], dim=1)
        y = block(y)
    image = v.ln_post(y[:, 0]) @ v.proj  # (B, D)

    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return m.logit_scale.exp() * image @ text.t()  # (B, C)


FIDELITY_CASES = [
    # method, model, settings, prompt prefix of the reference
    ("promptsrc", "rayot-demo", dict(depth_text=2, depth_vision=3), "a photo of a"),
    ("ivlp", "rayot-demo", dict(n_ctx_vision=2, depth_text=1, depth_vision=2), "a photo of a"),
    ("prompt_ot", "rayot-tiny", dict(depth_text=2, depth_vision=2), "a photo of a"),
    (
        "pointwise",
        "rayot-demo",
        dict(n_ctx_text=3, ctx_init="", depth_text=2, depth_vision=3),
        "X X X",
    ),
    # MaPLe's IVLP baseline: 2 context vectors from "a photo of a", "of a" stays fixed words
    (
        "ivlp",
        "rayot-demo",
        dict(n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=3),
        "a photo of a",
    ),
    ("coop", "rayot-demo", {}, "a photo of a"),
    ("kgcoop", "rayot-tiny", dict(n_ctx_text=2, ctx_init=""), "X X"),
]


@pytest.mark.parametrize(("method", "model_name", "settings", "prefix"), FIDELITY_CASES)
def test_imported_model_is_the_reference_ivlp(
    method: str, model_name: str, settings: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    clip = _clip(model_name, torch.float64)
    shapes = {"n_ctx_text": 4, "n_ctx_vision": 4, "depth_vision": 0, "depth_text": 1, **settings}
    coop = method in ("coop", "kgcoop")
    text_w, vision_w = clip.model.transformer.width, clip.model.visual.transformer.width
    g = torch.Generator().manual_seed(11)

    def draw(n: int, w: int, dtype: torch.dtype = torch.float64) -> Tensor:
        return (0.5 * torch.randn(n, w, generator=g, dtype=torch.float64)).to(dtype)

    # A reference checkpoint written key by key (fp16 context, as published), not by rayot.
    ctx_key = "ctx" if coop else "prompt_learner.ctx"
    sd: dict[str, Tensor] = {ctx_key: draw(shapes["n_ctx_text"], text_w, torch.float16)}
    for i in range(1, shapes["depth_text"]):
        sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = draw(
            shapes["n_ctx_text"], text_w
        )
    if shapes["depth_vision"]:
        sd["image_encoder.VPT"] = draw(shapes["n_ctx_vision"], vision_w, torch.float16)
    for i in range(1, shapes["depth_vision"]):
        sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = draw(
            shapes["n_ctx_vision"], vision_w
        )
    if not coop:
        sd.update(_frozen_and_buffers(clip))
    path = _dassl_file(tmp_path / "model.pth.tar-20", sd)

    images = _images(clip, n=4, dtype=torch.float64)
    got = from_reference(method, path, clip, CLASSES, **settings)(images).logits
    want = _reference_ivlp_logits(
        clip,
        sd,
        CLASSES,
        images,
        prompt_prefix=prefix,
        n_ctx_text=shapes["n_ctx_text"],
        n_ctx_vision=shapes["n_ctx_vision"],
        depth_text=shapes["depth_text"],
        depth_vision=shapes["depth_vision"],
        text_ctx_key=ctx_key,
    )
    assert got.dtype == torch.float64 and got.shape == (4, len(CLASSES))
    assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the prompts matter: without the deep/vision prompts the logits move
    plain = _reference_ivlp_logits(
        clip,
        sd,
        CLASSES,
        images,
        prompt_prefix=prefix,
        n_ctx_text=shapes["n_ctx_text"],
        n_ctx_vision=shapes["n_ctx_vision"],
        depth_text=1,
        depth_vision=0,
        text_ctx_key=ctx_key,
    )
    if shapes["depth_text"] > 1 or shapes["depth_vision"] > 0:
        assert (plain - want).abs().max() > 1e-3
