"""PLOT, a prompt learner with optimal transport inside its logit, as a rayot plug-in.

Chen et al., ICLR 2023, "Prompt Learning with Optimal Transport for Vision-Language Models";
reference code CHENGY12/PLOT@728539fe, its ViT variant PLOT++ (``plot-pp/``). REFERENCE.md beside
this package describes the reference in detail; what this module does, in short:

- N learned text contexts (N, n_ctx, W), shared by the classes: prompt n of class c is
  "[ctx_n] c."; the N x C prompts go through the frozen text encoder in one call.
- M learned sets of visual prompt tokens (M, n_ctx_v, Wv), each appended after the patch tokens
  of the image: M prompted views of each image, whose projected class tokens are the image's M
  "local" features (PLOT++'s local features on a ViT). No visual prompts (M = 0): one plain view.
- For each image b and class c, an entropic OT plan T (M x N, uniform marginals) between the
  local features and the class's prompt features on the cost 1 - cos, by Sinkhorn (eps 0.1, at
  most 100 iterations), with no gradient; the logit is ``s * sum_mn T_mn cos(f_m(b), t_n(c))``
  (plus ``s * cos(mean_m f_m, mean_n t_n)`` with ``global_term``). The loss is cross-entropy.

Where this differs from the reference, on purpose: the Sinkhorn stopping test is per (image,
class) problem, not one test shared by the whole batch (the reference's makes an image's logits
depend on the other images of its batch, so on the batch size and the number of workers), and it
never reads a value back to the host; it runs in float32 at least (the reference's fp16 kernel
underflows); the two training stages of PLOT++ (visual prompts alone with the global term, then
both without it) are one stage here, both prompt sets training together, the global term a
setting. The context may start from N templates (PLOT++, default) or at random (PLOT).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayot.methods import (
    Batch,
    ConfigError,
    FrozenCLIPPrompts,
    LoadedCLIP,
    Method,
    ModelError,
    Objective,
    Preset,
    PromptOutput,
    cross_entropy,
    encode_image_prompted,
    encode_text_tokens,
    no_autocast,
    read_reference_tensors,
    setting,
)

if TYPE_CHECKING:
    from rayot.methods import PromptConfig, TrialConfig

__all__ = ["PLOT", "PLOTCLIP", "Settings", "sinkhorn_plans"]

_INIT_STD = 0.02
#: PLOT++'s four templates of most datasets (plot-pp/trainers/plotpp.py, ``template_dict``)
TEMPLATES = ("a photo of a", "this is a photo", "this is picture of", "one picture of a")


@dataclass(frozen=True)
class Settings:
    n_prompts: int = setting(4, positive=True, help="N, the learned text contexts (prompts per class)")
    n_views: int = setting(4, minimum=0, help="M, the sets of visual prompt tokens (0: one plain view)")
    init: str = setting("templates", choices=("templates", "random"),
                        help="the contexts start from the templates (PLOT++) or N(0, 0.02) (PLOT)")
    templates: tuple[str, ...] = setting(TEMPLATES, help="the phrases the N contexts start from, in turn")
    epsilon: float = setting(0.1, positive=True, help="entropic regularisation of the plan (cost 1 - cos)")
    # the tiny trial's plans converge within 100 iterations (thresh): the kit tries a single one
    max_iter: int = setting(100, positive=True, help="Sinkhorn iterations at most", test_value=1)
    thresh: float = setting(1e-2, minimum=0, help="a problem stops once its mean |Δr| is below this")
    global_term: bool = setting(False, help="add s · cos(mean image feature, mean prompt feature)")


class PLOT(Method[Settings]):
    name = "plot"
    display = "PLOT"
    summary = "N text prompts per class matched to M prompted views of the image by OT inside the logit"
    order = 85
    reference_format = "Dassl model.pth.tar of PLOT++: prompt_learner.ctx, prompt_learner.ctx_vision"

    def preset(self, protocol: str, dataset: str, shots: int = 16) -> Preset:
        epochs = 50 if dataset == "imagenet" or shots == 1 else 100 if shots in (2, 4) else 200
        return Preset(
            reference={"optim.lr": 0.002, "optim.batch_size": 32, "optim.epochs": epochs,
                       "optim.warmup_epochs": 1, "optim.warmup_lr": 1e-5, "prompt.n_ctx_text": 4,
                       "prompt.n_ctx_vision": 2},
            settings={"n_prompts": 4, "n_views": 4},
            defines={"prompt.depth_text": 1, "prompt.depth_vision": 1},
            source="PLOT++ plot-pp/configs/trainers/PLOTPP/vit.yaml, scripts/main_joint.sh (N = M = 4, 2 "
                   "visual tokens, batch 32, lr 0.002) and the epoch rule of plot-pp/train.py (1 shot: 50, "
                   "2-4: 100, else 200; imagenet 50), CHENGY12/PLOT@728539fe; the reference has few-shot "
                   "presets only: other protocols take the few-shot one of their shot count",
        )

    def check(self, cfg: TrialConfig) -> None:
        s: Settings = cfg.settings
        if s.init == "templates" and not s.templates:
            raise ConfigError(f"config key '{self.name}.templates': init templates needs at least one phrase")
        if cfg.prompt.n_ctx_text < 1:
            raise ConfigError("config key 'prompt.n_ctx_text': PLOT learns at least one context token")
        if s.n_views and cfg.prompt.n_ctx_vision < 1:
            raise ConfigError(f"config key 'prompt.n_ctx_vision': {s.n_views} views need at least one "
                              f"visual prompt token each (or {self.name}.n_views=0)")

    def _shapes(self, prompt: PromptConfig, settings: Settings) -> dict[str, Any]:
        return dict(n_prompts=settings.n_prompts, n_ctx=prompt.n_ctx_text, n_views=settings.n_views,
                    n_ctx_vision=prompt.n_ctx_vision,
                    templates=settings.templates if settings.init == "templates" else ())

    def build(self, clip: LoadedCLIP, classnames: list[str], prompt: PromptConfig, settings: Settings) -> nn.Module:
        s = settings
        return PLOTCLIP(clip, classnames, **self._shapes(prompt, s), epsilon=s.epsilon, max_iter=s.max_iter,
                        thresh=s.thresh, global_term=s.global_term)

    def architecture(self, prompt: PromptConfig, settings: Settings) -> list[Any]:
        shapes = self._shapes(prompt, settings)
        return ["PLOTCLIP", {**shapes, "templates": list(shapes["templates"])}]

    def loss(self, batch: Batch, settings: Settings) -> Objective:
        plan = batch.output.extras["plan"]  # (B, C, M, N), no gradient
        return Objective(cross_entropy(batch.output.logits, batch.labels),
                         {"plan_kl_uniform": plan_kl_from_uniform(plan)})

    def export_reference(self, model: nn.Module, settings: Settings) -> dict[str, Tensor]:
        own = _expect(model).learned()
        return {f"prompt_learner.{k}": v.detach().clone() for k, v in own.items()}

    def import_reference(self, model: nn.Module, state: Mapping[str, Any], settings: Settings) -> None:
        own = _expect(model).learned()
        found = read_reference_tensors(state, {k: tuple(v.shape) for k, v in own.items()}, "PLOT",
                                       ("prompt_learner.", ""))
        with torch.no_grad():
            for key, value in found.items():
                own[key].copy_(value.to(own[key].dtype))


def _expect(model: nn.Module) -> PLOTCLIP:
    if not isinstance(model, PLOTCLIP):
        raise ModelError(f"PLOT: expected a PLOTCLIP, got {type(model).__name__}")
    return model


class PLOTCLIP(FrozenCLIPPrompts):
    """A frozen CLIP with PLOT's N text contexts and M sets of visual prompt tokens.

    Learned (float32; float64 for a float64 model): ``ctx`` (N, n_ctx, text width) and, with
    ``n_views`` > 0, ``ctx_vision`` (M, n_ctx_vision, vision width), N(0, 0.02) at first; with
    ``templates``, ``ctx[n]`` starts as the token embeddings of the first n_ctx tokens of
    ``templates[n % len(templates)]`` (a longer phrase keeps its other words as fixed tokens of
    prompt n, as PLOT++ does). Seed torch's global generator beforehand.

    ``encode_text()``: (n_cls, 1 + N, D): index 0 the normalised mean of the N unnormalised prompt
    features, then the N normalised prompt features. ``encode_image(x)``: (B, 1 + M, D): index 0
    the normalised mean of the M unnormalised view features, then the M normalised ones.
    ``output`` computes the plans and the logits from the two.
    """

    def __init__(self, clip: LoadedCLIP, classnames: list[str], *, n_prompts: int = 4, n_ctx: int = 4,
                 n_views: int = 4, n_ctx_vision: int = 2, templates: tuple[str, ...] = TEMPLATES,
                 epsilon: float = 0.1, max_iter: int = 100, thresh: float = 1e-2,
                 global_term: bool = False) -> None:
        super().__init__()
        device, dtype = self.adopt_clip(clip)
        model = clip.model
        self.n_prompts, self.n_ctx, self.n_views = n_prompts, n_ctx, n_views
        self.prompts_per_class = n_prompts  # text_tokens: (C * N, L), row c * N + n
        self.n_ctx_vision = n_ctx_vision if n_views else 0
        self.templates = tuple(templates)
        self.epsilon, self.max_iter, self.thresh, self.global_term = epsilon, max_iter, thresh, global_term

        ctx = torch.empty(n_prompts, n_ctx, model.transformer.width, device=device, dtype=dtype)
        nn.init.normal_(ctx, std=_INIT_STD)
        self.fixed_words: list[list[int]] = [[] for _ in range(n_prompts)]
        if self.templates:
            emb = model.token_embedding.weight
            for n in range(n_prompts):
                phrase = self.templates[n % len(self.templates)]
                ids = self.tokenizer.encode(phrase)
                if len(ids) < n_ctx:
                    raise ConfigError(f"PLOT template {phrase!r} is {len(ids)} tokens but prompt.n_ctx_text="
                                      f"{n_ctx}; give phrases of at least n_ctx tokens, or init random")
                with torch.no_grad():
                    ctx[n] = emb[torch.tensor(ids[:n_ctx], device=emb.device)]
                self.fixed_words[n] = ids[n_ctx:]
        self.ctx = nn.Parameter(ctx)  # (N, n_ctx, W)
        self.ctx_vision: nn.Parameter | None = None
        if self.n_views:
            vision = torch.empty(n_views, self.n_ctx_vision, model.visual.transformer.width, device=device,
                                 dtype=dtype)
            nn.init.normal_(vision, std=_INIT_STD)
            self.ctx_vision = nn.Parameter(vision)  # (M, n_ctx_v, Wv)
        self.init_classes(classnames)

    # ----- classes: N prompts per class (prompts_per_class), rows class-major (c * N + n)

    def prompt_token_ids(self, names: list[str]) -> list[list[int]]:
        placeholder = self.tokenizer.encode("X") * self.n_ctx
        return [placeholder + self.fixed_words[n] + self.tokenizer.encode(f"{name}.")
                for name in names for n in range(self.n_prompts)]

    def learned(self) -> dict[str, nn.Parameter]:
        return {"ctx": self.ctx, **({"ctx_vision": self.ctx_vision} if self.ctx_vision is not None else {})}

    # ----- features

    def encode_text(self) -> Tensor:
        """(n_cls, 1 + N, D): the normalised mean prompt feature, then the N normalised ones."""
        n_cls = len(self.text_tokens) // self.n_prompts
        prompts = self.ctx.repeat(n_cls, 1, 1)[None]  # (1, C * N, n_ctx, W): row c * N + n gets ctx[n]
        feats = encode_text_tokens(self.clip, self.text_tokens, self.text_eot, prompts, truncate=True,
                                   length=self.text_length)  # (C * N, D)
        return _with_mean(feats.reshape(n_cls, self.n_prompts, -1))  # (C, 1 + N, D)

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 1 + M, D): the normalised mean view feature, then the M normalised view features."""
        if self.ctx_vision is None:
            feats = encode_image_prompted(self.clip.visual, images)[:, None]  # (B, 1, D)
            return _with_mean(feats)
        n_img, n_views = images.shape[0], self.n_views
        views = images.repeat_interleave(n_views, dim=0)  # (B * M, 3, H, W): row b * M + m
        prompts = self.ctx_vision.repeat(n_img, 1, 1)[None]  # (1, B * M, n_ctx_v, Wv): row b * M + m gets m
        feats = encode_image_prompted(self.clip.visual, views, prompts)  # (B * M, D)
        return _with_mean(feats.reshape(n_img, n_views, -1))  # (B, 1 + M, D)

    def output(self, image: Tensor, text: Tensor) -> PromptOutput:
        """Logits (B, n_cls) from image features (B, 1 + M, D) and class features (n_cls, 1 + N, D);
        the plans (B, n_cls, M, N) in ``extras["plan"]``."""
        sim = torch.einsum("bmd,cnd->bcmn", image[:, 1:], text[:, 1:].to(image.dtype))  # (B, C, M, N)
        plan = sinkhorn_plans(sim, self.epsilon, self.max_iter, self.thresh)  # (B, C, M, N), no grad
        logits = self.logit_scale * (plan.to(sim.dtype) * sim).sum(dim=(2, 3))  # (B, C)
        if self.global_term:
            logits = logits + self.logit_scale * image[:, 0] @ text[:, 0].t().to(image.dtype)
        return PromptOutput(logits=logits, image=image, text=text, extras={"plan": plan})

    def extra_repr(self) -> str:
        return (f"model={self.model_name!r}, n_cls={len(self.classnames)}, N={self.n_prompts} x {self.n_ctx} "
                f"tokens, M={self.n_views} x {self.n_ctx_vision} tokens")


def _with_mean(feats: Tensor) -> Tensor:
    """(K, P, D) unnormalised -> (K, 1 + P, D): the normalised mean over P, then the P normalised."""
    return torch.cat([F.normalize(feats.mean(dim=1, keepdim=True), dim=-1), F.normalize(feats, dim=-1)], dim=1)


@torch.no_grad()
def sinkhorn_plans(sim: Tensor, epsilon: float, max_iter: int, thresh: float) -> Tensor:
    """Entropic OT plans (..., M, N) between uniform weights 1/M and 1/N on the cost 1 - ``sim``.

    The reference's plain Sinkhorn scaling: K = exp(-(1 - sim) / epsilon); from r = 1, c = 1,
    ``r = a / (K c)`` then ``c = b / (Kᵀ r)``, at most ``max_iter`` times; each problem stops once
    the mean over its M rows of |r - r_prev| is below ``thresh`` (the reference tests the mean over
    the whole batch); T = diag(r) K diag(c). A fixed number of steps on the device, no host sync.
    In float32 at least, outside autocast; returned in that dtype, without gradient.
    """
    dtype = torch.promote_types(sim.dtype, torch.float32)
    with no_autocast(sim.device):
        kernel = torch.exp(-(1.0 - sim.detach().to(dtype)) / epsilon)  # (..., M, N)
        n_rows, n_cols = kernel.shape[-2], kernel.shape[-1]
        r = kernel.new_ones(kernel.shape[:-1])  # (..., M)
        c = kernel.new_ones(*kernel.shape[:-2], n_cols)  # (..., N)
        active = kernel.new_ones(kernel.shape[:-2], dtype=torch.bool)  # (...,)
        for _ in range(max_iter):
            r_new = (1.0 / n_rows) / (kernel @ c[..., None])[..., 0]
            c_new = (1.0 / n_cols) / (kernel.transpose(-1, -2) @ r_new[..., None])[..., 0]
            moved = (r_new - r).abs().mean(dim=-1)  # (...,)
            r = torch.where(active[..., None], r_new, r)
            c = torch.where(active[..., None], c_new, c)
            active = active & (moved >= thresh)
        return r[..., None] * kernel * c[..., None, :]


def plan_kl_from_uniform(plan: Tensor) -> Tensor:
    """Mean over the (image, class) problems of KL(T ‖ uniform) of plans (..., M, N): 0 when the
    plans are uniform (the logit is then the mean cosine), up to log(min(M, N)) for a matching."""
    p = plan.flatten(-2)  # (..., M * N)
    p = p / p.sum(dim=-1, keepdim=True)
    kl = (p * (p.clamp_min(1e-30).log() + math.log(p.shape[-1]))).sum(dim=-1)
    return kl.mean()
