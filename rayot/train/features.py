"""The feature passes a pack of trials shares, over the ranks of a trial.

Every member of a pack has its own prompt module around one frozen CLIP; the encoders run once
for all members where their class allows it (:mod:`rayot.model.packed`). Over N ranks each rank
encodes its share of the classes and of each global batch, and the shares are gathered with their
gradients (:meth:`rayot.train.collectives.TrialHooks.gather`): every rank then holds the
single-worker features.
"""

from __future__ import annotations

from torch import Tensor, nn

from rayot import distributed
from rayot.errors import TrainingError
from rayot.model import packed
from rayot.model.prompts import PromptOutput
from rayot.train.collectives import TrialHooks


def my_classes(classnames: list[str], hooks: TrialHooks) -> tuple[list[str], list[int]]:
    """This rank's contiguous share of ``classnames`` and every rank's share size."""
    sizes = distributed.shard_sizes(len(classnames), hooks.world_size)
    if min(sizes) == 0:
        raise TrainingError(f"{len(classnames)} classes cannot be shared by {hooks.world_size} workers: "
                            "use at most one worker per class")
    start = sum(sizes[:hooks.rank])
    return classnames[start:start + sizes[hooks.rank]], sizes


def reference_text_features(model: nn.Module, classnames: list[str], templates: tuple[str, ...],
                            hooks: TrialHooks) -> Tensor:
    """The frozen CLIP's class text features (n_cls, D) from ``templates`` (raw features averaged,
    then normalised), each rank encoding its share of the classes."""
    mine, sizes = my_classes(classnames, hooks)
    return hooks.gather(model.template_text_features(mine, templates), sizes)  # (n_cls, D)


def pack_class_features(models: list[nn.Module], classnames: list[str], hooks: TrialHooks) -> list[Tensor]:
    """The prompted class features of every class (n_cls, ...) for each member of a pack, in one
    text-encoder call for all of them where they allow it: each rank encodes its share of the
    classes (deep prompts and all) and the shares are gathered with their gradients. The models
    keep this rank's share as their classes, tokenised once."""
    mine, sizes = my_classes(classnames, hooks)
    for model in models:
        if model.classnames != mine:
            model.set_classnames(mine)
    return [hooks.gather(text, sizes) for text in packed.encode_texts(models)]  # each (n_cls, ...)


def global_output(model: nn.Module, images: Tensor, classnames: list[str], sizes: list[int],
                  hooks: TrialHooks) -> PromptOutput:
    """The model's output on the global batch, of which ``images`` (b, 3, H, W) is this rank's
    share (``sizes``: every rank's): logits (B, n_cls), image (B, ...), text (n_cls, ...) or, for a
    model whose class features depend on the image, (B, n_cls, D).

    With one rank it is ``model(images)``; with N, each rank encodes its images and its share of
    the classes, and the features are gathered: every rank then holds the single-worker output.
    """
    return pack_outputs([model], [images], classnames, [sizes], hooks)[0]


def pack_outputs(models: list[nn.Module], images: list[Tensor], classnames: list[str],
                 sizes: list[list[int]], hooks: TrialHooks) -> list[PromptOutput]:
    """:func:`global_output` of each member of a pack on its own global batch (``images[m]``:
    this rank's share of member m's batch, ``sizes[m]`` every rank's)."""
    if models[0].text_per_image:  # its text is per image: only the images are shared out
        if len(models) == 1:
            outs = [models[0](images[0])]
        else:
            frozen = packed.frozen_images(models, images)  # each (b, D)
            outs = [m.output(f, t) for m, f, t in
                    zip(models, frozen, packed.encode_conditioned_texts(models, frozen), strict=True)]
        return [PromptOutput(logits=hooks.gather(out.logits, s), image=hooks.gather(out.image, s),
                             text=hooks.gather(out.text, s))  # (B, n_cls), (B, D), (B, n_cls, D)
                for out, s in zip(outs, sizes, strict=True)]
    texts = pack_class_features(models, classnames, hooks)  # each (n_cls, ...)
    return [model.output(hooks.gather(feats, s), text)  # image features of the global batch
            for model, text, feats, s in zip(models, texts, packed.encode_images(models, images), sizes, strict=True)]


def frozen_references(models: list[nn.Module], images: list[Tensor], sizes: list[list[int]],
                      hooks: TrialHooks) -> list[Tensor]:
    """The frozen CLIP's features (B, D) of each member's global batch, in one call."""
    return [hooks.gather(r, s) for r, s in zip(packed.frozen_images(models, images), sizes, strict=True)]


def pack_logits(models: list[nn.Module], images: Tensor, texts: list[Tensor | None]) -> list[Tensor]:
    """Each member's logits (B, n_cls) of one test batch ``images`` (B, 3, H, W), from its class
    features ``texts[m]`` encoded once for the test set (``None``: per image, encoded here)."""
    if models[0].text_per_image:
        if len(models) == 1:
            return [models[0](images).logits]
        frozen = models[0].frozen_image_features(images)  # (B, D), shared
        conditioned = packed.encode_conditioned_texts(models, [frozen] * len(models))
        return [m.output(frozen, t).logits for m, t in zip(models, conditioned, strict=True)]
    feats = packed.encode_images(models, [images] * len(models))  # each (B, ...)
    return [model.output(image, text).logits for model, image, text in zip(models, feats, texts, strict=True)]
