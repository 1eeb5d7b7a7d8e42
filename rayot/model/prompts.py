"""Prompt modules around a frozen open_clip model, and independent deep prompts on both towers.

Text prompt of class c: SOS, ctx_1..ctx_n, tokens of "c.", EOT. Image tokens: CLS, patches,
then n learned vision tokens. The first ``depth`` layers of each tower get their own prompt
vectors (docs/method.md). Depth 0 turns a side's prompts off: the text side then reads the hand-made
prompt ``"{ctx_init} {c}."`` and the image side is plain CLIP. Text depth 1 and vision depth 0 is a
learned text context alone.

Only the prompt tensors train; the CLIP model stays frozen and in eval mode.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.data.specs import DEFAULT_TEMPLATE, prompt_classname
from rayot.errors import ConfigError, ModelError
from rayot.model.adapter import (
    check_supported,
    encode_image_prompted,
    encode_text_tokens,
    eot_positions,
)
from rayot.model.loading import LoadedCLIP

logger = logging.getLogger(__name__)

_INIT_STD = 0.02


@dataclass
class PromptOutput:
    """What the ``forward`` of every prompt module returns, in every mode.

    logits (B, n_cls): ``logit_scale.exp() * image @ text.T``; image (B, D) and text: L2-normalised
    adapted features. text is (n_cls, D) for every method whose class features do not depend on
    the image, and (B, n_cls, D) for a module whose class features are conditioned on each image
    (``text_per_image``; then logits[b] = scale * text[b] @ image[b]). A method's own module may
    return other shapes (several features per class or per image) with its own ``output``.
    """

    logits: Tensor
    image: Tensor
    text: Tensor
    #: by-products of a method's own forward that its loss or diagnostics use (a transport plan),
    #: computed on the global batch
    extras: dict[str, Tensor] = field(default_factory=dict)


#: The names a subclass overrode before 0.4.0 -> their public names (deprecated in 0.4.0, removed
#: in 0.6.0).
_RENAMED = {"_learned": "learned", "_prompt_token_ids": "prompt_token_ids"}


class FrozenCLIPPrompts(nn.Module):
    """What every prompt module shares: a frozen CLIP kept
    in eval mode, its temperature, its frozen features, and the token ids of the class prompts.

    A subclass starts its ``__init__`` with :meth:`adopt_clip` (which sets ``clip``, open_clip's
    ``CLIP`` itself, and ``tokenizer``), ends it with :meth:`init_classes`, and implements
    :meth:`learned` (its learned tensors by name), :meth:`prompt_token_ids` (the tokens of each
    class prompt, the learned positions as placeholders), ``encode_text()`` and
    ``encode_image(images)``.
    """

    #: the frozen open_clip ``CLIP`` (``LoadedCLIP.model``, not the ``LoadedCLIP``)
    clip: open_clip.CLIP
    tokenizer: Any
    #: whether the class features depend on each image (``PromptOutput.text`` (B, n_cls, D)): then
    #: ``encode_text(image_features)`` takes the frozen image features (B, D) of the batch
    text_per_image: bool = False
    #: how many prompts each class has: ``prompt_token_ids`` gives that many rows per class, in a
    #: row c * k + j for prompt j of class c (``text_tokens`` (n_cls * k, L))
    prompts_per_class: int = 1
    #: whether several modules of this class can run as one computation (:mod:`rayot.model.packed`):
    #: their learned tensors enter CLIP only as deep prompts (:meth:`deep_prompts`)
    packs_fused: bool = False

    def deep_prompts(self) -> tuple[Tensor | None, Tensor | None]:
        """The deep prompts that enter the two towers: text (depth, n_ctx, text width) and image
        (depth, n_ctx, vision width), ``None`` for a side without prompts; only for a class with
        ``packs_fused``."""
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass written before 0.4.0 overrides ``_learned`` / ``_prompt_token_ids``: they
        serve as ``learned`` / ``prompt_token_ids``, with a DeprecationWarning."""
        super().__init_subclass__(**kwargs)
        for old, new in _RENAMED.items():
            if old in vars(cls) and new not in vars(cls):
                warnings.warn(f"{cls.__qualname__}.{old} is deprecated since 0.4.0 and will be removed in "
                              f"0.6.0: name it {new}", DeprecationWarning, stacklevel=2)
                setattr(cls, new, vars(cls)[old])

    def prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        """The token ids of each class prompt (without SOS and EOT), the learned positions as
        placeholders: ``prompts_per_class`` rows per class, row c * k + j for prompt j of class c."""
        raise NotImplementedError

    def learned(self) -> dict[str, nn.Parameter]:
        """The learned tensors by name: what trains, is saved and is loaded."""
        raise NotImplementedError

    def _learned(self) -> dict[str, nn.Parameter]:
        _deprecated("_learned", "learned")
        return self.learned()

    def _prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        _deprecated("_prompt_token_ids", "prompt_token_ids")
        return self.prompt_token_ids(names)

    def _adopt(self, clip: LoadedCLIP) -> tuple[torch.device, torch.dtype]:
        _deprecated("_adopt", "adopt_clip")
        return self.adopt_clip(clip)

    def _init_classes(self, classnames: list[str]) -> None:
        _deprecated("_init_classes", "init_classes")
        self.init_classes(classnames)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The learned tensors, the only parameters an optimizer should see."""
        return list(self.learned().values())

    def prompt_state_dict(self) -> dict[str, Tensor]:
        """The learned tensors only (kilobytes to megabytes), detached copies on their device."""
        return {k: p.detach().clone() for k, p in self.learned().items()}

    def load_prompt_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load tensors saved by ``prompt_state_dict``; any key or shape difference is a ModelError."""
        own = self.learned()
        check_prompt_state(own, state)
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    def adopt_clip(self, clip: LoadedCLIP) -> tuple[torch.device, torch.dtype]:
        """The start of a subclass's ``__init__``: take ``clip.model`` frozen as ``self.clip``
        (after checking that its towers and tokenizer can take prompts) and its tokenizer as
        ``self.tokenizer``; returns the device and the dtype of the learned tensors: float32
        master copies even for a low-precision model, float64 for a float64 one."""
        check_supported(clip.model, repr(clip.model_name))
        self.tokenizer = check_tokenizer(clip)
        clip.model.requires_grad_(False)
        self.clip = clip.model
        self.model_name = clip.model_name
        dtype = self.clip.positional_embedding.dtype
        return self.clip.positional_embedding.device, torch.float64 if dtype == torch.float64 else torch.float32

    def init_classes(self, classnames: list[str]) -> None:
        """The end of a subclass's ``__init__``: the class prompt buffers, then eval mode."""
        self.register_buffer("text_tokens", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("text_eot", torch.empty(0, dtype=torch.long), persistent=False)
        self.classnames: list[str] = []
        self.set_classnames(classnames)
        self.train(False)

    def set_classnames(self, classnames: list[str]) -> None:
        """Use these classes from now on (for example the novel classes, same learned tensors)."""
        if not classnames:
            raise ModelError("class names: the list is empty")
        names = [prompt_classname(c) for c in classnames]
        ids = self.prompt_token_ids(names)
        rows = [name for name in names for _ in range(self.prompts_per_class)]
        tokens = tokenize_ids(self.tokenizer, self.clip.context_length, ids, rows)
        tokens = tokens.to(self.clip.positional_embedding.device)
        self.text_tokens = tokens  # (n_cls * prompts_per_class, context_length)
        self.text_eot = eot_positions(tokens, self.tokenizer.eot_token_id)  # (n_cls * prompts_per_class,)
        self.text_length = int(self.text_eot.max()) + 1  # once here, not a device sync per step
        self.classnames = list(classnames)

    def train(self, mode: bool = True) -> FrozenCLIPPrompts:
        """Set the mode of the prompt module; the frozen CLIP model always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def logit_scale(self) -> Tensor:
        """exp of CLIP's learned temperature (scalar)."""
        return self.clip.logit_scale.exp()

    def eval_text_features(self) -> Tensor | None:
        """What evaluation encodes once for all test batches: ``encode_text()`` (n_cls, D)."""
        return self.encode_text()

    def forward(self, images: Tensor, text_features: Tensor | None = None) -> PromptOutput:
        """Logits (B, n_cls) of ``images`` (B, 3, H, W) against the current classes.

        ``text_features`` (n_cls, D), normalised, skips re-encoding the class prompts (evaluation
        encodes them once with ``eval_text_features``).
        """
        text = self.encode_text() if text_features is None else text_features  # (n_cls, D)
        return self.output(self.encode_image(images), text)

    def output(self, image: Tensor, text: Tensor) -> PromptOutput:
        """The output for normalised image features (B, D) and class features (n_cls, D): logits
        (B, n_cls) = ``logit_scale * image @ text.T`` (a pack computes the features of several
        modules at once, :mod:`rayot.model.packed`, then asks each module for its output)."""
        logits = self.logit_scale * image @ text.t().to(image.dtype)  # (B, n_cls)
        return PromptOutput(logits=logits, image=image, text=text)

    def frozen_image_features(self, images: Tensor) -> Tensor:
        """The frozen CLIP's normalised image features (B, D) of the same batch, no gradient."""
        return frozen_image_features(self.clip, images)

    def frozen_text_features(
        self, classnames: list[str], template: str = DEFAULT_TEMPLATE
    ) -> Tensor:
        """The frozen CLIP's normalised features (n_cls, D) of ``template.format(class)``."""
        return frozen_text_features(self.clip, self.tokenizer, classnames, template)

    @torch.no_grad()
    def template_text_features(self, classnames: list[str], templates: tuple[str, ...]) -> Tensor:
        """The frozen CLIP's normalised class features (n_cls, D) from several templates: the raw
        features averaged over the templates, then normalised (docs/peers.md §6.7); float32."""
        if len(templates) == 1:
            return self.frozen_text_features(classnames, templates[0]).float()
        raw = sum(frozen_text_features(self.clip, self.tokenizer, classnames, t, normalize=False).float()
                  for t in templates)
        return F.normalize(raw / len(templates), dim=-1)  # (n_cls, D)


def phrase_token_ids(tokenizer: Any, ctx_init: str, n_ctx: int, names: list[str]) -> list[list[int]]:
    """Ids of "{ctx_init} {name}." (or n_ctx "X" placeholders): the learned context replaces the
    first n_ctx tokens of the phrase, the rest stay fixed words ("[P_0] of a {c}." for 1 vector)."""
    prefix = ctx_init or " ".join(["X"] * n_ctx)
    return [tokenizer.encode(f"{prefix} {n}.") for n in names]


class PromptedCLIP(FrozenCLIPPrompts):
    """A frozen CLIP with learned text and vision deep prompts (a text context alone when the
    vision depth is 0).

    Parameters are ``text_prompts`` (depth_text, n_ctx_text, text width) and ``vision_prompts``
    (depth_vision, n_ctx_vision, vision width), kept in float32 (float64 for a float64 model) and
    cast to the activations' dtype where they enter, so a bf16/fp16 model or autocast trains
    float32 prompts.
    ``text_prompts[0]`` starts as the token embeddings of the first ``n_ctx_text`` tokens of
    ``ctx_init`` (N(0, 0.02) when ``ctx_init`` is empty or None); a longer phrase keeps its other
    tokens as fixed words after the context, as the reference trainers do ("a photo of a" with 2
    context vectors reads "[ctx] of a {c}."). Every other prompt vector starts N(0, 0.02). Seed
    torch's global generator beforehand for reproducible initial prompts.
    """

    def __init__(
        self,
        clip: LoadedCLIP,
        classnames: list[str],
        *,
        n_ctx_text: int = 4,
        n_ctx_vision: int = 4,
        depth_text: int = 12,
        depth_vision: int = 12,
        ctx_init: str | None = "a photo of a",
    ) -> None:
        super().__init__()
        device, dtype = self.adopt_clip(clip)
        model = clip.model
        text_layers = len(model.transformer.resblocks)
        vision_layers = len(model.visual.transformer.resblocks)
        _check_setting("n_ctx_text", n_ctx_text, 0)
        _check_setting("n_ctx_vision", n_ctx_vision, 0)
        _check_setting("depth_text", depth_text, 0, (text_layers, "text", clip.model_name))
        _check_setting("depth_vision", depth_vision, 0, (vision_layers, "vision", clip.model_name))

        self.ctx_init = ctx_init or ""
        # A side with depth 0 or no context vectors has no prompts at all.
        self.n_ctx_text = n_ctx_text if depth_text > 0 else 0
        self.depth_text = depth_text if n_ctx_text > 0 else 0
        self.n_ctx_vision = n_ctx_vision if depth_vision > 0 else 0
        self.depth_vision = depth_vision if n_ctx_vision > 0 else 0
        self.truncate_text = True  # exact; switch off only to check that claim

        self.text_prompts: nn.Parameter | None = None
        self.vision_prompts: nn.Parameter | None = None
        if self.depth_text:
            width = model.transformer.width
            text = torch.empty(self.depth_text, self.n_ctx_text, width, device=device, dtype=dtype)
            nn.init.normal_(text, std=_INIT_STD)
            if self.ctx_init:
                text[0] = self._init_embeddings(self.ctx_init, self.n_ctx_text)
            self.text_prompts = nn.Parameter(text)
        if self.depth_vision:
            width = model.visual.transformer.width
            vision = torch.empty(
                self.depth_vision, self.n_ctx_vision, width, device=device, dtype=dtype
            )
            nn.init.normal_(vision, std=_INIT_STD)
            self.vision_prompts = nn.Parameter(vision)

        self.init_classes(classnames)

    # ----- construction helpers -----

    def _init_embeddings(self, text: str, n_ctx: int) -> Tensor:
        ids = self.tokenizer.encode(text)
        if len(ids) < n_ctx:
            raise ConfigError(
                f"ctx_init {text!r} is {len(ids)} tokens but n_ctx_text={n_ctx}; give a phrase of "
                "at least n_ctx_text tokens, or an empty ctx_init for random context vectors"
            )
        emb = self.clip.token_embedding.weight
        with torch.no_grad():
            return emb[torch.tensor(ids[:n_ctx], device=emb.device)]  # (n_ctx, W)

    def prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        if self.n_ctx_text:
            # Placeholder ids for the context positions; their embeddings are overwritten.
            placeholder = self.tokenizer.encode("X") * self.n_ctx_text
            # A phrase longer than the context keeps its remaining tokens as fixed words.
            fixed = self.tokenizer.encode(self.ctx_init)[self.n_ctx_text :] if self.ctx_init else []
            ids = [placeholder + fixed + self.tokenizer.encode(f"{n}.") for n in names]
        else:
            prefix = f"{self.ctx_init} " if self.ctx_init else ""
            ids = [self.tokenizer.encode(f"{prefix}{n}.") for n in names]
        return ids

    # ----- nn.Module plumbing -----

    def learned(self) -> dict[str, nn.Parameter]:
        return {name: p for name in ("text_prompts", "vision_prompts")
                if (p := getattr(self, name)) is not None}

    # ----- features -----

    packs_fused = True

    def deep_prompts(self) -> tuple[Tensor | None, Tensor | None]:
        return self.text_prompts, self.vision_prompts

    def encode_text(self) -> Tensor:
        """L2-normalised prompted text features of the current classes (n_cls, D)."""
        feats = encode_text_tokens(
            self.clip,
            self.text_tokens,
            self.text_eot,
            self.text_prompts,
            truncate=self.truncate_text,
            length=self.text_length,
        )  # (n_cls, D)
        return F.normalize(feats, dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised prompted image features (B, D) of ``images`` (B, 3, H, W)."""
        feats = encode_image_prompted(self.clip.visual, images, self.vision_prompts)  # (B, D)
        return F.normalize(feats, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name!r}, n_cls={len(self.classnames)}, "
            f"text=(n_ctx={self.n_ctx_text}, depth={self.depth_text}), "
            f"vision=(n_ctx={self.n_ctx_vision}, depth={self.depth_vision})"
        )


# ----- shared by every prompt module -----


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"FrozenCLIPPrompts.{old} is deprecated since 0.4.0 and will be removed in 0.6.0: use {new}",
                  DeprecationWarning, stacklevel=3)


def check_tokenizer(clip: LoadedCLIP) -> Any:
    """``clip.tokenizer`` if it is open_clip's CLIP BPE tokenizer (ids, SOS/EOT), else ModelError."""
    tokenizer = clip.tokenizer
    if not all(hasattr(tokenizer, a) for a in ("encode", "sot_token_id", "eot_token_id")):
        raise ModelError(
            f"model {clip.model_name!r}: deep prompts need open_clip's CLIP BPE tokenizer, "
            f"got {type(tokenizer).__name__}"
        )
    return tokenizer


def tokenize_ids(
    tokenizer: Any, context_length: int, texts_ids: list[list[int]], names: list[str]
) -> Tensor:
    """Token ids (N, context_length): SOS, ids, EOT, zero padding; too long -> cut, EOT kept."""
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    out = torch.zeros(len(texts_ids), context_length, dtype=torch.long)
    for row, (ids, name) in enumerate(zip(texts_ids, names, strict=True)):
        seq = [sot, *ids, eot]
        if len(seq) > context_length:
            logger.warning("prompt of class %r cut to %d tokens", name, context_length)
            seq = seq[: context_length - 1] + [eot]
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def check_prompt_state(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> None:
    """ModelError naming the first key of ``state`` missing from, foreign to or shaped unlike ``own``."""
    for key in own:
        if key not in state:
            raise ModelError(f"prompt state dict: missing key {key!r}")
    for key in state:
        if key not in own:
            raise ModelError(
                f"prompt state dict: unexpected key {key!r} (this model has {sorted(own)})"
            )
    for key, value in state.items():
        if not isinstance(value, Tensor) or value.shape != own[key].shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(
                f"prompt state dict: key {key!r} has shape {shape}, this model expects "
                f"{tuple(own[key].shape)}"
            )


def read_reference_tensors(
    state: Mapping[str, Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    method: str,
    prefixes: tuple[str, ...] = ("",),
) -> dict[str, Tensor]:
    """The tensors named by ``shapes``, taken from a reference implementation's state dict.

    Each key is looked up under each of ``prefixes`` in turn (a reference saves either the whole
    model, keys ``prompt_learner.*``, or its prompt learner alone); every other key of ``state``
    is ignored. ModelError names the first key that is missing, not a tensor or of another shape.
    Returned under the unprefixed keys, in the file's dtype.
    """
    out = {}
    for key, shape in shapes.items():
        found = next((prefix + key for prefix in prefixes if prefix + key in state), None)
        if found is None:
            names = " or ".join(repr(prefix + key) for prefix in prefixes)
            raise ModelError(f"{method} reference checkpoint: missing key {names}")
        value = state[found]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(
                f"{method} reference checkpoint: key {found!r} has shape {got}, this model "
                f"expects {tuple(shape)}"
            )
        out[key] = value
    return out


@torch.no_grad()
def frozen_image_features(model: nn.Module, images: Tensor) -> Tensor:
    """The frozen CLIP's normalised image features (B, D) of ``images``, no gradient."""
    return model.encode_image(images.to(model.visual.conv1.weight.dtype), normalize=True)


@torch.no_grad()
def frozen_text_features(
    model: nn.Module, tokenizer: Any, classnames: list[str], template: str = DEFAULT_TEMPLATE,
    *, normalize: bool = True,
) -> Tensor:
    """The frozen CLIP's features (n_cls, D) of ``template.format(class)``, normalised unless
    ``normalize`` is False."""
    if not classnames:
        raise ModelError("class names: the list is empty")
    if "{}" not in template:
        raise ConfigError(f"template {template!r} has no '{{}}' for the class name")
    names = [prompt_classname(c) for c in classnames]
    ids = [tokenizer.encode(template.format(n)) for n in names]
    tokens = tokenize_ids(tokenizer, model.context_length, ids, names)
    tokens = tokens.to(model.positional_embedding.device)  # (n_cls, L)
    eot = eot_positions(tokens, tokenizer.eot_token_id)
    feats = encode_text_tokens(model, tokens, eot, None, truncate=True)  # (n_cls, D)
    return F.normalize(feats, dim=-1) if normalize else feats


def _check_setting(
    name: str, value: Any, low: int, layers: tuple[int, str, str] | None = None
) -> None:
    """``value`` an int >= ``low`` and, for a depth, at most the tower's (count, tower, model)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {low}")
    if layers is not None and value > layers[0]:
        count, tower, model_name = layers
        raise ConfigError(f"{name}={value}: model {model_name!r} has only {count} {tower} layers")
