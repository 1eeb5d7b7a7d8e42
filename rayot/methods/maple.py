"""MaPLe: text prompts coupled to vision prompts through per-layer linear maps (docs/peers.md §5).

Khattak et al., CVPR 2023; reference code muzairkhattak/multimodal-prompt-learning@69bce21a.

Learned: text prompts P_j (n_ctx, text width) for the first ``depth`` layers and affine maps F_j
(text width -> vision width). Layer j's vision prompts are V_j = F_j(P_j). Text side: P_0
replaces the embeddings of positions 1..n_ctx of "{ctx_init} {c}." (so with n_ctx 2 and "a photo
of a" the prompt reads "[P_0] of a {c}."), P_j replaces those positions before layer j. Image
side: V_0 is appended after the class and patch tokens (after the positional embedding, before
``ln_pre``), V_j replaces the last n_ctx tokens before layer j; they are dropped before pooling.

Only the prompts and the maps train; the CLIP model stays frozen and in eval mode.
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
from rayot.methods.family import DASSL_WARMUP, TRANSFER_PROTOCOLS, ModuleMethod
from rayot.model.adapter import encode_image_prompted, encode_text_tokens
from rayot.model.loading import LoadedCLIP
from rayot.model.prompts import (
    FrozenCLIPPrompts,
    _check_setting,
    phrase_token_ids,
    read_reference_tensors,
)

if TYPE_CHECKING:
    from rayot.config import PromptConfig

logger = logging.getLogger(__name__)

_INIT_STD = 0.02
_PREFIX = "prompt_learner."  # the reference saves the whole model


class MaPLeCLIP(FrozenCLIPPrompts):
    """A frozen CLIP with MaPLe's coupled vision-language prompts.

    Parameters, kept in float32 (float64 for a float64 model) and cast to the activations' dtype
    where they enter:

    - ``text_prompts`` (depth, n_ctx, text width): row 0 = P_0, the token embeddings of the first
      n_ctx tokens of ``ctx_init`` (N(0, 0.02) and "X" placeholders when empty or None); rows
      1.. = P_1..P_{depth-1}, N(0, 0.02).
    - ``proj_weight`` (depth, vision width, text width) and ``proj_bias`` (depth, vision width):
      row 0 = F_0, one PyTorch-default Linear draw; rows 1.. = F_1..F_{depth-1}, copies of one
      other draw (they start identical, as in the reference).

    Seed torch's global generator beforehand for reproducible initial values.
    """

    def __init__(
        self,
        clip: LoadedCLIP,
        classnames: list[str],
        *,
        n_ctx: int = 2,
        depth: int = 9,
        ctx_init: str | None = "a photo of a",
    ) -> None:
        super().__init__()
        device, dtype = self.adopt_clip(clip)
        model = clip.model
        layers = min(len(model.transformer.resblocks), len(model.visual.transformer.resblocks))
        _check_setting("n_ctx", n_ctx, 1)
        _check_setting("depth", depth, 1, (layers, "text or vision", clip.model_name))

        self.n_ctx = n_ctx
        self.depth = depth
        self.ctx_init = ctx_init or ""

        text_width = model.transformer.width
        vision_width = model.visual.transformer.width

        text = torch.empty(depth, n_ctx, text_width, device=device, dtype=dtype)
        nn.init.normal_(text, std=_INIT_STD)
        if self.ctx_init:
            ids = self.tokenizer.encode(self.ctx_init)
            if len(ids) < n_ctx:
                raise ConfigError(
                    f"ctx_init {self.ctx_init!r} is {len(ids)} tokens but n_ctx={n_ctx}; give a "
                    "phrase of at least n_ctx tokens, or an empty ctx_init for random context"
                )
            emb = model.token_embedding.weight
            with torch.no_grad():
                text[0] = emb[torch.tensor(ids[:n_ctx], device=device)]  # (n_ctx, W_t)
        self.text_prompts = nn.Parameter(text)  # (J, n_ctx, W_t)

        first = nn.Linear(text_width, vision_width, device=device, dtype=dtype)
        deep = nn.Linear(text_width, vision_width, device=device, dtype=dtype)
        weight = torch.cat([first.weight[None], deep.weight[None].expand(depth - 1, -1, -1)])
        bias = torch.cat([first.bias[None], deep.bias[None].expand(depth - 1, -1)])
        self.proj_weight = nn.Parameter(weight.detach().clone())  # (J, W_v, W_t)
        self.proj_bias = nn.Parameter(bias.detach().clone())  # (J, W_v)

        self.init_classes(classnames)

    def prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        return phrase_token_ids(self.tokenizer, self.ctx_init, self.n_ctx, names)

    # ----- nn.Module plumbing -----

    def learned(self) -> dict[str, nn.Parameter]:
        return {
            "text_prompts": self.text_prompts,
            "proj_weight": self.proj_weight,
            "proj_bias": self.proj_bias,
        }

    def _reference_keys(self) -> dict[str, tuple[str, int]]:
        """Reference key (without ``prompt_learner.``) -> (own parameter, row of it)."""
        keys = {"ctx": ("text_prompts", 0), "proj.weight": ("proj_weight", 0)}
        keys["proj.bias"] = ("proj_bias", 0)
        for j in range(1, self.depth):
            keys[f"compound_prompts_text.{j - 1}"] = ("text_prompts", j)
            keys[f"compound_prompt_projections.{j - 1}.weight"] = ("proj_weight", j)
            keys[f"compound_prompt_projections.{j - 1}.bias"] = ("proj_bias", j)
        return keys

    def reference_state(self) -> dict[str, Tensor]:
        """The learned tensors under the reference's whole-model keys (``prompt_learner.*``)."""
        own = self.learned()
        return {
            _PREFIX + key: own[name][row].detach().clone()
            for key, (name, row) in self._reference_keys().items()
        }

    def load_reference(self, state: Mapping[str, Tensor]) -> None:
        """Load the learned tensors from the reference's whole-model state dict.

        Frozen CLIP weights, class buffers (``token_prefix``, ``token_suffix``) and any other key
        are ignored; fp16 tensors are cast to the parameters' dtype. ModelError names the first
        missing or mis-shaped key, and refuses a checkpoint with more prompted layers than
        ``depth`` (their prompts would otherwise be dropped without a word).
        """
        keys = self._reference_keys()
        own = self.learned()
        for key in state:
            if (
                key.startswith(_PREFIX + "compound_prompt")
                and key.removeprefix(_PREFIX) not in keys
            ):
                raise ModelError(
                    f"MaPLe reference checkpoint: key {key!r} belongs to a deeper prompt than "
                    f"this model's depth={self.depth}; build the model with the checkpoint's depth"
                )
        shapes = {key: tuple(own[name].shape[1:]) for key, (name, _) in keys.items()}
        found = read_reference_tensors(state, shapes, "MaPLe", (_PREFIX,))
        with torch.no_grad():
            for key, (name, row) in keys.items():
                own[name][row].copy_(found[key].to(own[name].dtype))

    # ----- features -----

    packs_fused = True

    def deep_prompts(self) -> tuple[Tensor | None, Tensor | None]:
        return self.text_prompts, self.vision_prompts()

    def vision_prompts(self) -> Tensor:
        """V_j = F_j(P_j) for every prompted layer j: (depth, n_ctx, vision width)."""
        weight = self.proj_weight  # (J, W_v, W_t)
        prompts = torch.einsum("jnt,jvt->jnv", self.text_prompts, weight)
        return prompts + self.proj_bias[:, None]  # (J, n_ctx, W_v)

    def encode_text(self) -> Tensor:
        """L2-normalised prompted text features of the current classes (n_cls, D)."""
        feats = encode_text_tokens(
            self.clip,
            self.text_tokens,
            self.text_eot,
            self.text_prompts,
            truncate=True,
            length=self.text_length,
        )  # (n_cls, D)
        return F.normalize(feats, dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised prompted image features (B, D) of ``images`` (B, 3, H, W)."""
        feats = encode_image_prompted(self.clip.visual, images, self.vision_prompts())  # (B, D)
        return F.normalize(feats, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name!r}, n_cls={len(self.classnames)}, n_ctx={self.n_ctx}, "
            f"depth={self.depth}"
        )


class MaPLe(ModuleMethod[NoSettings]):
    name = "maple"
    display = "MaPLe"
    summary = "coupled prompts: 2 tokens, depth 9, vision prompts = per-layer projections of the text ones"
    order = 40
    reference_format = "Dassl model.pth.tar: prompt_learner.ctx, proj, compound_prompts_text, compound_prompt_projections"
    module = MaPLeCLIP

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        transfer = protocol in TRANSFER_PROTOCOLS
        return Preset(
            reference={**DASSL_WARMUP, "optim.lr": 0.0026 if transfer else 0.0035, "optim.batch_size": 4,
                       "optim.epochs": 2 if transfer else 5, "prompt.n_ctx_text": 2,
                       "prompt.depth_text": 3 if transfer else 9},
            defines={"prompt.n_ctx_vision": 0, "prompt.depth_vision": 0},
            source="MaPLe configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml (base-to-novel), "
                   "..._cross_datasets.yaml (transfer), muzairkhattak/multimodal-prompt-learning@69bce21a; "
                   "docs/peers.md §5",
        )

    def shapes(self, prompt: PromptConfig, settings: NoSettings) -> dict[str, Any]:
        # the vision prompts are projections of the text ones: the text shapes are the module's
        return dict(n_ctx=prompt.n_ctx_text, depth=prompt.depth_text, ctx_init=prompt.ctx_init)
