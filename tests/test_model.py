"""rayot.model against open_clip itself, on the tiny random-weight configuration (CPU, seconds)."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_a_step_trains_only_the_learned_tensors
from torch.testing import assert_close

from rayot.errors import ConfigError, ModelError
from rayot.model import TINY_MODELS, LoadedCLIP, PromptedCLIP, PromptOutput, load_clip

torch.set_num_threads(1)

TINY = "rayot-tiny"
CLASSES = ["dog", "sea_lion", "golden retriever", "airplane", "x"]


def _tiny(dtype: torch.dtype = torch.float32, seed: int = 0) -> LoadedCLIP:
    torch.manual_seed(seed)
    return load_clip(TINY, None, dtype=dtype)


@pytest.fixture(scope="module")
def tiny() -> LoadedCLIP:
    return _tiny()


@pytest.fixture(scope="module")
def tiny64() -> LoadedCLIP:
    return _tiny(torch.float64)


def _images(clip: LoadedCLIP, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=g)


def _prompted(clip: LoadedCLIP, seed: int = 0, **kw) -> PromptedCLIP:
    torch.manual_seed(seed)
    return PromptedCLIP(clip, CLASSES, **kw)


# ----- loading -----


def test_tiny_model_registered_and_frozen(tiny: LoadedCLIP) -> None:
    assert TINY in TINY_MODELS and TINY in open_clip.list_models()
    assert tiny.image_size == 32 and tiny.model_name == TINY and tiny.pretrained is None
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())


def test_load_clip_dtype(tiny: LoadedCLIP) -> None:
    torch.manual_seed(0)
    bf16 = load_clip(TINY, None, dtype=torch.bfloat16)
    assert bf16.model.visual.conv1.weight.dtype == torch.bfloat16
    assert_close(bf16.model.visual.proj, tiny.model.visual.proj.to(torch.bfloat16), rtol=0, atol=0)


def test_checkpoint_reproduces_weights(tiny: LoadedCLIP, tmp_path: Path) -> None:
    plain = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": tiny.model.state_dict(), "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        loaded = load_clip(TINY, None, checkpoint=path)
        assert loaded.checkpoint == path
        want = tiny.model.state_dict()
        got = loaded.model.state_dict()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
        assert all(not p.requires_grad for p in loaded.model.parameters())


def test_mismatching_checkpoint_names_file_and_keys(tiny: LoadedCLIP, tmp_path: Path) -> None:
    state = dict(tiny.model.state_dict())
    del state["ln_final.weight"]
    state["visual.proj"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ModelError) as err:
        load_clip(TINY, None, checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg
    for key in ("ln_final.weight", "visual.proj", "extra.weight"):
        assert key in msg


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="file not found"):
        load_clip(TINY, None, checkpoint=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt"):
        load_clip(TINY, None, checkpoint=junk)
    odd = tmp_path / "odd.pt"
    torch.save([1, 2, 3], odd)
    with pytest.raises(ModelError, match="odd.pt holds no state dict"):
        load_clip(TINY, None, checkpoint=odd)


def test_unknown_model_and_tag() -> None:
    with pytest.raises(ModelError, match="'rayot-tiy'.*close matches: rayot-tiny"):
        load_clip("rayot-tiy", None)
    with pytest.raises(ModelError, match="'opena'.*close matches: openai"):
        load_clip("ViT-B-16", "opena")
    with pytest.raises(ModelError, match="no pretrained tags"):
        load_clip(TINY, "openai")
    with pytest.raises(ModelError, match="schema"):
        load_clip("hf-hub:org/repo", None)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record and refuse every attempt to open a connection."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


def test_uncached_tag_names_the_weights(tmp_path: Path, no_network: list[object]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ModelError) as err:
        load_clip("ViT-B-16", "openai", cache_dir=str(cache))
    msg = str(err.value)
    assert "'ViT-B-16'" in msg and "'openai'" in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg  # the HF hub repo open_clip uses
    assert "open_clip_pytorch_model.bin" in msg
    assert str(cache / "ViT-B-16.pt") in msg  # the URL cache file
    assert "create_model_and_transforms('ViT-B-16', pretrained='openai'" in msg
    assert no_network == []
    assert list(cache.iterdir()) == []  # nothing downloaded, nothing created


def _fake_tag(monkeypatch: pytest.MonkeyPatch, cfg: dict) -> None:
    real = open_clip.get_pretrained_cfg

    def get(model: str, tag: str) -> dict:
        return dict(cfg) if (model, tag) == (TINY, "fake") else real(model, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", get)


def test_cached_tag_loads_from_hf_cache(
    tiny: LoadedCLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    # The HF hub cache layout: models--org--name/{refs/main, snapshots/<rev>/<file>}.
    repo = tmp_path / "models--rayot--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    torch.save(tiny.model.state_dict(), repo / "snapshots/abc123/open_clip_pytorch_model.bin")
    _fake_tag(monkeypatch, {"hf_hub": "rayot/tiny/", "url": "https://example.invalid/tiny.pt"})
    torch.manual_seed(7)
    loaded = load_clip(TINY, "fake", cache_dir=str(tmp_path))
    assert loaded.pretrained == "fake"
    assert torch.equal(loaded.model.visual.proj, tiny.model.visual.proj)
    assert torch.equal(loaded.model.token_embedding.weight, tiny.model.token_embedding.weight)
    assert no_network == []


def test_cached_tag_loads_from_url_cache(
    tiny: LoadedCLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    torch.save(tiny.model.state_dict(), tmp_path / "tiny.pt")
    _fake_tag(monkeypatch, {"url": "https://example.invalid/weights/tiny.pt"})
    torch.manual_seed(7)
    loaded = load_clip(TINY, "fake", cache_dir=str(tmp_path))
    assert torch.equal(loaded.model.text_projection, tiny.model.text_projection)
    assert no_network == []


# ----- prompt assembly is exact -----


def test_shallow_text_prompt_equals_encode_text(tiny64: LoadedCLIP) -> None:
    m = _prompted(tiny64, ctx_init="a photo of a", depth_text=1, depth_vision=0)
    names = [c.replace("_", " ") for c in CLASSES]
    tokens = tiny64.tokenizer([f"a photo of a {c}." for c in names])
    want = tiny64.model.encode_text(tokens, normalize=True)  # (n_cls, D)
    got = m.encode_text()
    assert got.dtype == torch.float64
    assert_close(got, want)
    # The token layout itself: SOS, ctx positions, then the class tokens as open_clip makes them.
    assert torch.equal(m.text_tokens[:, 1 + m.n_ctx_text :], tokens[:, 5:])


def test_no_vision_prompts_equals_encode_image(tiny64: LoadedCLIP) -> None:
    m = _prompted(tiny64, depth_text=2, depth_vision=0)
    images = _images(tiny64).double()
    want = tiny64.model.encode_image(images, normalize=True)
    assert_close(m.encode_image(images), want)
    assert_close(m.frozen_image_features(images), want)


def test_frozen_text_features_equal_encode_text(tiny64: LoadedCLIP) -> None:
    m = _prompted(tiny64, depth_text=2, depth_vision=2)
    template = "itap of a {}."
    tokens = tiny64.tokenizer([template.format(c.replace("_", " ")) for c in CLASSES])
    want = tiny64.model.encode_text(tokens, normalize=True)
    got = m.frozen_text_features(CLASSES, template)
    assert not got.requires_grad
    assert_close(got, want)


def test_text_depth_zero_is_the_hand_made_prompt(tiny64: LoadedCLIP) -> None:
    m = _prompted(tiny64, depth_text=0, depth_vision=0)
    assert m.trainable_parameters() == []
    assert_close(m.encode_text(), m.frozen_text_features(CLASSES, "a photo of a {}."))


def test_truncated_text_equals_full_length(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, depth_text=2, depth_vision=2)
    with torch.no_grad():
        m.text_prompts.normal_(std=0.5)
    assert int(m.text_eot.max()) + 1 < tiny.model.context_length  # truncation does cut
    truncated = m.encode_text()
    m.truncate_text = False
    full = m.encode_text()
    assert_close(truncated, full, rtol=1e-5, atol=1e-6)


def test_deep_prompts_change_features(tiny: LoadedCLIP) -> None:
    deep = _prompted(tiny, depth_text=2, depth_vision=2)
    shallow = _prompted(tiny, depth_text=1, depth_vision=1)
    with torch.no_grad():
        deep.text_prompts[1].normal_(std=0.5)
        deep.vision_prompts[1].normal_(std=0.5)
        shallow.text_prompts.copy_(deep.text_prompts[:1])
        shallow.vision_prompts.copy_(deep.vision_prompts[:1])
    images = _images(tiny)
    assert (deep.encode_text() - shallow.encode_text()).abs().max() > 1e-3
    assert (deep.encode_image(images) - shallow.encode_image(images)).abs().max() > 1e-3
    # and the layer-0 vision prompt alone changes the image features too
    plain = tiny.model.encode_image(images, normalize=True)
    assert (shallow.encode_image(images) - plain).abs().max() > 1e-4


def test_forward_output(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, depth_text=2, depth_vision=2)
    images = _images(tiny, n=4)
    out = m(images)
    assert isinstance(out, PromptOutput)
    assert out.logits.shape == (4, len(CLASSES))
    assert out.image.shape == (4, 64) and out.text.shape == (len(CLASSES), 64)
    assert_close(out.image.norm(dim=-1), torch.ones(4))
    assert_close(out.logits, tiny.model.logit_scale.exp() * out.image @ out.text.T)
    again = m(images, text_features=out.text.detach())
    assert_close(again.logits, out.logits)


def test_set_classnames_reuses_prompts(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, depth_text=2, depth_vision=0)
    base = m.encode_text()  # (5, D)
    m.set_classnames(["airplane", "sea_lion", "zebra"])
    novel = m.encode_text()
    assert novel.shape == (3, 64)
    assert_close(novel[0], base[3])  # same class, same prompts, same feature
    assert_close(novel[1], base[1])
    with pytest.raises(ModelError, match="empty"):
        m.set_classnames([])


# ----- training touches only the prompts -----


def test_only_prompts_get_gradients(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, depth_text=2, depth_vision=2)
    images = _images(tiny, n=4)
    labels = torch.tensor([0, 1, 2, 3])

    def loss_of(m):
        out = m(images)
        return F.cross_entropy(out.logits, labels) + (out.image - m.frozen_image_features(images)).pow(2).sum()

    assert_a_step_trains_only_the_learned_tensors(m, loss_of)


def test_coop_has_only_text_context(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, n_ctx_text=4, depth_text=1, depth_vision=0)
    assert m.vision_prompts is None
    assert sum(p.numel() for p in m.trainable_parameters()) == 4 * 64
    assert set(m.prompt_state_dict()) == {"text_prompts"}


def test_random_ctx_init_and_settings(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, n_ctx_text=6, ctx_init=None, depth_text=1, depth_vision=0)
    assert m.text_prompts.shape == (1, 6, 64)
    assert m.text_prompts.std().item() == pytest.approx(0.02, rel=0.3)
    with pytest.raises(ConfigError, match="ctx_init 'a photo of a' is 4 tokens but n_ctx_text=6"):
        _prompted(tiny, n_ctx_text=6, ctx_init="a photo of a", depth_text=1, depth_vision=0)
    with pytest.raises(ConfigError, match="depth_text=3: model 'rayot-tiny' has only 2 text"):
        _prompted(tiny, depth_text=3, depth_vision=2)
    with pytest.raises(ConfigError, match="n_ctx_vision"):
        _prompted(tiny, n_ctx_vision=-1, depth_text=2, depth_vision=2)


def test_prompt_state_dict_round_trip(tiny: LoadedCLIP, tmp_path: Path) -> None:
    a = _prompted(tiny, seed=1, depth_text=2, depth_vision=2)
    b = _prompted(tiny, seed=2, depth_text=2, depth_vision=2)
    images = _images(tiny)
    path = tmp_path / "prompts.pt"
    torch.save(a.prompt_state_dict(), path)
    assert path.stat().st_size < 20_000  # kilobytes, not the CLIP weights
    b.load_prompt_state_dict(torch.load(path, weights_only=True))
    assert_close(b(images).logits, a(images).logits)

    smaller = _prompted(tiny, n_ctx_text=2, ctx_init="", depth_text=2, depth_vision=2)
    with pytest.raises(ModelError, match="'text_prompts' has shape"):
        smaller.load_prompt_state_dict(a.prompt_state_dict())
    coop = _prompted(tiny, depth_text=1, depth_vision=0)
    with pytest.raises(ModelError, match="unexpected key 'vision_prompts'"):
        coop.load_prompt_state_dict(a.prompt_state_dict())
    with pytest.raises(ModelError, match="missing key 'vision_prompts'"):
        a.load_prompt_state_dict(coop.prompt_state_dict())


# ----- precision -----


def test_autocast_bf16_trains_float32_prompts(tiny: LoadedCLIP) -> None:
    m = _prompted(tiny, depth_text=2, depth_vision=2)
    images = _images(tiny)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(images)
        loss = F.cross_entropy(out.logits.float(), torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(out.logits).all()
    assert m.text_prompts.grad is not None and m.text_prompts.grad.dtype == torch.float32
    assert_close(out.logits.float(), m(images).logits, rtol=0.1, atol=0.3)


def test_bf16_model_runs() -> None:
    clip = _tiny(torch.bfloat16)
    m = PromptedCLIP(clip, CLASSES, depth_text=2, depth_vision=2)
    assert m.text_prompts.dtype == torch.float32
    out = m(_images(clip))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
