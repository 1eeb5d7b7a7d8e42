"""CoCoOp: a learned text context shifted by a meta-token computed from each image (docs/peers.md §3).

Zhou et al., CVPR 2022; reference code KaiyangZhou/CoOp@ff61507c (``trainers/cocoop.py``).

Text prompt of class c for image x: SOS, ctx_1 + pi(x) .. ctx_M + pi(x), tokens of "c.", EOT, with
pi(x) = meta_net(normalise(frozen image feature of x)). The class features therefore depend on the
image: ``forward`` returns text features (B, n_cls, D), and evaluation cannot encode them once.
The B x n_cls prompts of a batch go through the text encoder in one call.

Only ``ctx`` and the meta-net train; the CLIP model stays frozen and in eval mode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.errors import ConfigError, ModelError
from rayot.methods.base import NoSettings, Preset
from rayot.methods.family import DASSL_WARMUP, ModuleMethod
from rayot.model.adapter import encode_text_embeddings
from rayot.model.loading import LoadedCLIP
from rayot.model.prompts import (
    FrozenCLIPPrompts,
    PromptOutput,
    _check_setting,
    frozen_image_features,
    phrase_token_ids,
    read_reference_tensors,
)

if TYPE_CHECKING:
    from rayot.config import PromptConfig

logger = logging.getLogger(__name__)

_INIT_STD = 0.02
_HIDDEN_RATIO = 16  # meta-net hidden width = image feature width // 16 (reference)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` with the (float32 master) weights cast to the activations' dtype."""
    return F.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))


class MetaNet(nn.Module):
    """linear1 (D -> D // 16), ReLU, linear2 (-> text width): the meta-token of an image feature."""

    def __init__(
        self, d_in: int, d_hidden: int, d_out: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_hidden, device=device, dtype=dtype)
        self.linear2 = nn.Linear(d_hidden, d_out, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return _linear(self.linear2, F.relu(_linear(self.linear1, x)))  # (B, d_out)


class CoCoOpCLIP(FrozenCLIPPrompts):
    """A frozen CLIP with CoCoOp's conditional text context.

    Parameters: ``ctx`` (n_ctx, text width), initialised from the token embeddings of
    ``ctx_init`` (which must be n_ctx tokens; N(0, 0.02) and "X" placeholders when empty or None),
    and ``meta_net`` (PyTorch's default Linear init). They are kept in float32 (float64 for a
    float64 model) and cast to the activations' dtype where they enter. Seed torch's global
    generator beforehand for reproducible initial values.
    """

    text_per_image = True

    def __init__(
        self,
        clip: LoadedCLIP,
        classnames: list[str],
        *,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
    ) -> None:
        super().__init__()
        device, dtype = self.adopt_clip(clip)
        model = clip.model
        _check_setting("n_ctx", n_ctx, 1)
        embed_dim = model.visual.output_dim
        hidden = embed_dim // _HIDDEN_RATIO
        if hidden < 1:
            raise ModelError(
                f"model {clip.model_name!r}: image features of width {embed_dim} are too narrow "
                f"for CoCoOp's meta-net (hidden width {embed_dim} // {_HIDDEN_RATIO})"
            )

        self.n_ctx = n_ctx
        self.ctx_init = ctx_init or ""

        width = model.transformer.width
        ctx = torch.empty(n_ctx, width, device=device, dtype=dtype)
        nn.init.normal_(ctx, std=_INIT_STD)
        if self.ctx_init:
            ids = self.tokenizer.encode(self.ctx_init)
            if len(ids) != n_ctx:
                raise ConfigError(
                    f"ctx_init {self.ctx_init!r} is {len(ids)} tokens but n_ctx={n_ctx}; give a "
                    "phrase of n_ctx tokens, or an empty ctx_init for random context vectors"
                )
            emb = model.token_embedding.weight
            with torch.no_grad():
                ctx.copy_(emb[torch.tensor(ids, device=device)])  # (n_ctx, W)
        self.ctx = nn.Parameter(ctx)  # (n_ctx, W)
        self.meta_net = MetaNet(embed_dim, hidden, width, device, dtype)

        self.init_classes(classnames)

    def prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        return phrase_token_ids(self.tokenizer, self.ctx_init, self.n_ctx, names)

    # ----- nn.Module plumbing -----

    def learned(self) -> dict[str, nn.Parameter]:
        return {"ctx": self.ctx, **dict(self.meta_net.named_parameters(prefix="meta_net"))}

    def reference_state(self) -> dict[str, Tensor]:
        """The learned tensors under the reference's keys (its prompt learner's state dict)."""
        return self.prompt_state_dict()  # same names: ctx, meta_net.linear1.weight, ...

    def load_reference(self, state: Mapping[str, Tensor]) -> None:
        """Load the reference's prompt-learner tensors, keys with or without ``prompt_learner.``.

        Class buffers (``token_prefix``, ``token_suffix``) and any other key are ignored; fp16
        tensors are cast to the parameters' dtype. ModelError names the first missing or
        mis-shaped key.
        """
        own = self.learned()
        shapes = {k: tuple(p.shape) for k, p in own.items()}
        found = read_reference_tensors(state, shapes, "CoCoOp", ("", "prompt_learner."))
        with torch.no_grad():
            for key, value in found.items():
                own[key].copy_(value.to(own[key].dtype))

    # ----- features -----

    def encode_text(self, image: Tensor) -> Tensor:
        """Normalised class features (B, n_cls, D) conditioned on normalised image features (B, D).

        One text-encoder call on the B x n_cls prompts (truncated after the last EOT, exact).
        """
        x = self.prompt_embeddings(image)  # (B*C, L, W)
        n_img, n_cls = image.shape[0], self.text_tokens.shape[0]
        feats = encode_text_embeddings(self.clip, x, self.text_eot.repeat(n_img))  # (B*C, D)
        return F.normalize(feats, dim=-1).reshape(n_img, n_cls, -1)  # (B, C, D)

    def prompt_embeddings(self, image: Tensor) -> Tensor:
        """The input embeddings (B*C, L, W) of the B x n_cls class prompts conditioned on normalised
        image features (B, D), image-major, truncated after the last EOT; the text encoder takes
        them with ``text_eot.repeat(B)``."""
        length = self.text_length
        tokens = self.text_tokens[:, :length]  # (C, L)
        emb = self.clip.token_embedding(tokens).to(self.clip.transformer.get_cast_dtype())
        n_img, n_cls, width = image.shape[0], tokens.shape[0], emb.shape[-1]
        shift = self.meta_net(image).to(emb.dtype)  # (B, W)
        ctx = self.ctx.to(emb.dtype)[None] + shift[:, None]  # (B, M, W)
        x = torch.cat(
            [
                emb[None, :, :1].expand(n_img, -1, -1, -1),  # SOS (B, C, 1, W)
                ctx[:, None].expand(-1, n_cls, -1, -1),  # (B, C, M, W)
                emb[None, :, 1 + self.n_ctx :].expand(n_img, -1, -1, -1),  # (B, C, L-1-M, W)
            ],
            dim=2,
        )  # (B, C, L, W)
        return x.reshape(n_img * n_cls, length, width)  # (B*C, L, W)

    def eval_text_features(self) -> Tensor | None:
        """None: CoCoOp's class features depend on each image, evaluation cannot encode them once."""
        return None

    def forward(self, images: Tensor, text_features: Tensor | None = None) -> PromptOutput:
        """Logits (B, n_cls) of ``images`` (B, 3, H, W) against the current classes.

        ``text_features`` (B, n_cls, D), normalised, from an earlier call on the same images,
        skips the text encoder. The image features are the frozen CLIP's (no prompt on the image
        side, no gradient).
        """
        image = frozen_image_features(self.clip, images)  # (B, D)
        if text_features is None:
            text = self.encode_text(image)  # (B, C, D)
        elif text_features.dim() != 3 or text_features.shape[0] != image.shape[0]:
            raise ModelError(
                f"CoCoOp text_features must be (B, n_cls, D) for a batch of {image.shape[0]} "
                f"images, got {tuple(text_features.shape)}"
            )
        else:
            text = text_features
        return self.output(image, text)

    def output(self, image: Tensor, text: Tensor) -> PromptOutput:
        """The output for frozen image features (B, D) and their class features (B, n_cls, D):
        logits[b] = ``logit_scale * text[b] @ image[b]`` (B, n_cls)."""
        logits = self.logit_scale * torch.einsum("bd,bcd->bc", image, text.to(image.dtype))
        return PromptOutput(logits=logits, image=image, text=text)  # logits (B, C)

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, n_cls={len(self.classnames)}, n_ctx={self.n_ctx}"

    @classmethod
    def conditioned_texts_together(cls, models: list[CoCoOpCLIP], images: list[Tensor]) -> list[Tensor]:
        """Each member's normalised class features (b_m, n_cls, D) conditioned on its normalised
        image features ``images[m]`` (b_m, D), in one text-encoder call for all members."""
        first = models[0]
        if any(m.text_length != first.text_length for m in models):
            return [m.encode_text(x) for m, x in zip(models, images, strict=True)]
        x = torch.cat([m.prompt_embeddings(f) for m, f in zip(models, images, strict=True)])  # (N, L, W)
        eot = torch.cat([m.text_eot.repeat(len(f)) for m, f in zip(models, images, strict=True)])  # (N,)
        feats = F.normalize(encode_text_embeddings(first.clip, x, eot), dim=-1)  # (N, D)
        counts = [len(f) * len(m.text_tokens) for m, f in zip(models, images, strict=True)]
        return [t.reshape(len(f), len(m.text_tokens), -1)  # (b_m, C, D)
                for m, f, t in zip(models, images, feats.split(counts), strict=True)]


class CoCoOp(ModuleMethod[NoSettings]):
    name = "cocoop"
    display = "CoCoOp"
    summary = "context + a meta-net token from each image; the B × C prompts in one text-encoder call"
    order = 20
    reference_format = "Dassl model.pth.tar: the prompt learner's ctx and meta_net.* (prefix optional)"
    module = CoCoOpCLIP

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        return Preset(
            reference={**DASSL_WARMUP, "optim.lr": 0.002, "optim.batch_size": 1, "optim.epochs": 10,
                       "prompt.n_ctx_text": 4},
            defines={"prompt.depth_text": 1, "prompt.depth_vision": 0},
            source="configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml, scripts/cocoop/base2new_train.sh "
                   "of KaiyangZhou/CoOp@ff61507c; docs/peers.md §3",
        )

    def shapes(self, prompt: PromptConfig, settings: NoSettings) -> dict[str, Any]:
        return dict(n_ctx=prompt.n_ctx_text, ctx_init=prompt.ctx_init)
