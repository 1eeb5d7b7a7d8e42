"""One trial: train the prompts on a dataset's few-shot subset, evaluate on the protocol's splits.

:func:`run_trial` is the single entry point that `rayot train` and a Ray trial both call. The
distributed layer (Ray Train) plugs in through :class:`TrialHooks`: the collectives that share a
trial's work among N ranks (:class:`DistributedHooks`, :mod:`rayot.distributed`), where epoch
checkpoints go and where a resumed run starts. This module itself knows nothing about Ray.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from rayot import config as C
from rayot import distributed
from rayot.data import (
    ImageDataset,
    Task,
    build_task,
    make_loader,
    template_for,
    test_transform,
    train_transform,
)
from rayot.data.specs import DEFAULT_TEMPLATE
from rayot.errors import DataError, RayotError, TrainingError
from rayot.losses import kgcoop_loss, l1_consistency, logit_kl, prompt_ot_loss, total_loss
from rayot.model import PromptedCLIP, load_clip, packed
from rayot.model.prompts import PromptOutput, frozen_text_features

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- hooks


@dataclass
class Progress:
    """What a progress display needs after each logged step or epoch."""

    epoch: int  # 0-based
    epochs: int
    step: int  # steps done in this epoch
    steps: int  # steps per epoch
    loss: float
    ce: float
    reg: float
    lr: float


class TrialHooks:
    """One process: no collectives. :class:`DistributedHooks` is the N-rank version, the Ray layer
    adds checkpoint storage to it.

    A trial on N ranks is the single-worker experiment divided up (:mod:`rayot.distributed`): each
    rank takes its slice of every global batch, its share of the classes and of the test set;
    :meth:`gather` puts the shares together, every rank computes the same global loss, and
    :meth:`sum_gradients` adds up the ranks' contributions to the prompt gradients, once.
    """

    rank: int = 0
    world_size: int = 1

    def gather(self, x: Tensor, sizes: list[int]) -> Tensor:
        """Every rank's ``x`` concatenated along dim 0 (rank r gives ``sizes[r]`` rows), with
        gradients flowing back to the rank that gave the rows; ``x`` itself on one process."""
        return x

    def sum_gradients(self, params: list[nn.Parameter]) -> None:
        """Sum the parameters' gradients across ranks (after the backward, before the step)."""

    def sum_count(self, n: int) -> int:
        """An integer summed across ranks (the correct counts of the test shares)."""
        return n

    def resume_state(self) -> dict[str, Any] | None:
        """The last epoch checkpoint of an interrupted run of this trial, if any."""
        return None

    def save_epoch(self, epoch: int, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Called on every rank after each epoch with the resumable training state."""

    def first_failed_rank(self, failed: bool) -> int | None:
        """Agree across ranks on a failure: the lowest rank that failed, or ``None``.

        Every rank calls it at the same points of the loop; over N ranks it is a collective, so a
        failure on one rank stops them all instead of leaving them blocked in the next one.
        """
        return self.rank if failed else None

    def first_failed_ranks(self, failed: list[bool]) -> list[int | None]:
        """:meth:`first_failed_rank` for each member of a pack (one collective over N ranks)."""
        return [self.first_failed_rank(f) for f in failed]

    def sum_counts(self, counts: list[int]) -> list[int]:
        """:meth:`sum_count` for each member of a pack (one collective over N ranks)."""
        return [self.sum_count(n) for n in counts]


class DistributedHooks(TrialHooks):
    """The collectives over an initialised torch.distributed process group (gloo or NCCL).

    ``device`` is the rank's training device; ``group`` the process group (``None``: the default).
    With one rank every method is the single-process one.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device,
                 group: dist.ProcessGroup | None = None) -> None:
        self.rank, self.world_size, self.device, self.group = rank, world_size, device, group

    @property
    def comm_device(self) -> torch.device:
        return distributed.comm_device(self.device, self.group)

    def gather(self, x: Tensor, sizes: list[int]) -> Tensor:
        if self.world_size == 1:
            return x
        return distributed.gather_rows(x, sizes, self.rank, self.comm_device, self.group)

    def sum_gradients(self, params: list[nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else p.new_zeros(p.shape) for p in params]
        distributed.all_reduce_sum_(grads, self.comm_device, self.group)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def sum_count(self, n: int) -> int:
        return self.sum_counts([n])[0]

    def sum_counts(self, counts: list[int]) -> list[int]:
        if self.world_size == 1:
            return list(counts)
        total = torch.tensor(counts, dtype=torch.long, device=self.comm_device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return [int(n) for n in total.tolist()]

    def first_failed_rank(self, failed: bool) -> int | None:
        return self.first_failed_ranks([failed])[0]

    def first_failed_ranks(self, failed: list[bool]) -> list[int | None]:
        if self.world_size == 1:
            return [self.rank if f else None for f in failed]
        flags = torch.tensor([self.rank if f else self.world_size for f in failed], device=self.comm_device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=self.group)
        return [None if first == self.world_size else first for first in flags.tolist()]


class _EpochRandomSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.n = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _GlobalBatchSlices(Sampler[list[int]]):
    """This rank's slice of each global batch of the single-worker order (a batch sampler).

    The global batches are those one worker takes: ``batch_size`` consecutive indices of the
    epoch's permutation (:class:`_EpochRandomSampler`), the last incomplete one dropped when the
    set holds at least one full batch (as CoOp does, so a tiny 1-shot set still yields a batch).
    Rank r takes the r-th contiguous share of each (:func:`rayot.distributed.shard_sizes`).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.order = _EpochRandomSampler(dataset, seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.batches: list[list[int]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        order = list(self.order)
        b = self.batch_size
        n_full = len(order) // b
        self.batches = [order[i * b:(i + 1) * b] for i in range(n_full)] if n_full else [order]

    def sizes(self, step: int) -> list[int]:
        """Every rank's share of the global batch of ``step``."""
        return distributed.shard_sizes(len(self.batches[step]), self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for step, batch in enumerate(self.batches):
            start = sum(self.sizes(step)[:self.rank])
            yield batch[start:start + self.sizes(step)[self.rank]]

    def __len__(self) -> int:
        return len(self.batches)


class _SeededAugment(Dataset):
    """Seeds the random augmentation of each item from (seed, epoch, index).

    The crops and flips of a sample then do not depend on the number of data-loader workers,
    on how the ranks share the batch or on whether the run was resumed: the same configuration and
    seed give the same training inputs everywhere.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base = base
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.base[index]


# ----------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


ASSET_PREFIX = "rayot:"


def resolve_weights_path(checkpoint: str | None) -> str | None:
    """``rayot:NAME`` names a file shipped in the package (``rayot/assets/NAME``), e.g. the
    demo model; it keeps a configuration, and so its trial id, the same on every machine."""
    if checkpoint is None or not checkpoint.startswith(ASSET_PREFIX):
        return checkpoint
    from importlib.resources import files

    return str(files("rayot") / "assets" / checkpoint[len(ASSET_PREFIX):])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The one autocast path: ``None`` for fp32, else the low-precision compute dtype."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_at_epoch(epoch: int, optim: C.OptimConfig) -> float:
    """The rate of 0-based ``epoch``: the reference toolbox's constant warm-up, then a cosine over
    the max epoch count E whose count restarts after the warm-up (stepped once per epoch).

    With W warm-up epochs, epoch k >= W runs at lr · (1 + cos(π (k − W) / E)) / 2: the first
    epoch after the warm-up runs at the full rate and the last never reaches zero (peers.md §0.4).
    """
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    k = epoch - optim.warmup_epochs
    return 0.5 * optim.lr * (1.0 + math.cos(math.pi * k / max(optim.epochs, 1)))


def plan(cfg: C.TrialConfig) -> dict[str, Any]:
    """What a trial will do, without doing it: its id, configuration, the rate of each epoch it
    trains, how many, and what is evaluated (``rayot train --plan``)."""
    trained = 0 if cfg.method == "zeroshot" else C.epochs_trained(cfg)
    return {
        "trial_id": C.trial_id(cfg),
        "config": C.to_dict(cfg),
        "lr_per_epoch": [lr_at_epoch(e, cfg.optim) for e in range(trained)],
        "epochs_trained": trained,
        "evaluated": [{"protocol": p, "dataset": d, "split": s} for p, d, s in C.eval_targets(cfg)],
    }


#: KgCoOp's table differs from CoOp's zero-shot one in one entry (peers.md §4.1).
_KGCOOP_TEMPLATES = {"dtd": "a photo of a {}, a type of texture."}


def ensemble_templates() -> tuple[str, ...]:
    """PromptSRC's 60 templates: "a photo of a {}." and the first 60 of OpenAI's 80 without it."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    openai = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES][:60]
    return (DEFAULT_TEMPLATE, *(t for t in openai if t != DEFAULT_TEMPLATE))


def resolve_templates(cfg: C.TrialConfig, dataset: str) -> tuple[str, ...]:
    """The text templates of the frozen reference (and zero-shot) text features."""
    match cfg.data.template:
        case "default":
            return (DEFAULT_TEMPLATE,)
        case "dataset":
            return (template_for(dataset),)
        case "kgcoop":
            return (_KGCOOP_TEMPLATES.get(dataset, template_for(dataset)),)
        case "ensemble":
            return ensemble_templates()
        case literal:
            return (literal,)


@torch.no_grad()
def reference_text_features(model: nn.Module, classnames: list[str], templates: tuple[str, ...]) -> Tensor:
    """The frozen CLIP's normalised class text features (n_cls, D); over several templates, the
    raw features are averaged before normalising, as PromptSRC does (peers.md §6.7)."""
    if len(templates) == 1:
        return model.frozen_text_features(classnames, templates[0]).float()
    raw = sum(frozen_text_features(model.clip, model.tokenizer, classnames, t, normalize=False).float()
              for t in templates)
    return F.normalize(raw / len(templates), dim=-1)  # (n_cls, D)


def _my_classes(classnames: list[str], hooks: TrialHooks) -> tuple[list[str], list[int]]:
    """This rank's contiguous share of ``classnames`` and every rank's share size."""
    sizes = distributed.shard_sizes(len(classnames), hooks.world_size)
    if min(sizes) == 0:
        raise TrainingError(f"{len(classnames)} classes cannot be shared by {hooks.world_size} workers: "
                            "use at most one worker per class")
    start = sum(sizes[:hooks.rank])
    return classnames[start:start + sizes[hooks.rank]], sizes


def sharded_reference_features(model: nn.Module, classnames: list[str], templates: tuple[str, ...],
                               hooks: TrialHooks) -> Tensor:
    """:func:`reference_text_features` of every class, each rank encoding its share (n_cls, D)."""
    mine, sizes = _my_classes(classnames, hooks)
    return hooks.gather(reference_text_features(model, mine, templates), sizes)  # (n_cls, D)


def pack_class_features(models: list[nn.Module], classnames: list[str], hooks: TrialHooks) -> list[Tensor]:
    """The prompted text features of every class (n_cls, D) for each member of a pack, in one
    text-encoder call for all of them: each rank encodes its share of the classes (deep prompts
    and all) and the shares are gathered with their gradients. The models keep this rank's share
    as their classes, tokenised once."""
    mine, sizes = _my_classes(classnames, hooks)
    for model in models:
        if model.classnames != mine:
            model.set_classnames(mine)
    return [hooks.gather(text, sizes) for text in packed.encode_texts(models)]  # each (n_cls, D)


def global_output(model: nn.Module, images: Tensor, classnames: list[str], sizes: list[int],
                  hooks: TrialHooks) -> PromptOutput:
    """The model's output on the global batch, of which ``images`` (b, 3, H, W) is this rank's
    share (``sizes``: every rank's): logits (B, n_cls), image (B, D), text (n_cls, D) or, for a
    model whose class features depend on the image (CoCoOp), (B, n_cls, D).

    With one rank it is ``model(images)``; with N, each rank encodes its images and its share of
    the classes, and the features are gathered: every rank then holds the single-worker output.
    """
    return pack_outputs([model], [images], classnames, [sizes], hooks)[0]


def pack_outputs(models: list[nn.Module], images: list[Tensor], classnames: list[str],
                 sizes: list[list[int]], hooks: TrialHooks) -> list[PromptOutput]:
    """:func:`global_output` of each member of a pack on its own global batch (``images[m]``:
    this rank's share of member m's batch, ``sizes[m]`` every rank's), with one image-encoder and
    one text-encoder call for all members where their class allows it (:mod:`rayot.model.packed`)."""
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
    texts = pack_class_features(models, classnames, hooks)  # each (n_cls, D)
    return [model.output(hooks.gather(feats, s), text)  # image (B, D) of the global batch
            for model, text, feats, s in zip(models, texts, packed.encode_images(models, images), sizes, strict=True)]


def gpa_weights(mean: float, std: float, epochs: int) -> list[float]:
    """PromptSRC's Gaussian prompt aggregation: N(e; mean, std) at the 1-based epochs 1..epochs,
    normalised to sum to 1 (computed in log space, so far-off means do not underflow)."""
    logs = torch.tensor([-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)], dtype=torch.float64)
    return torch.softmax(logs, dim=0).tolist()


def build_model(cfg: C.TrialConfig, clip: Any, classnames: list[str]) -> nn.Module:
    """The prompted model of ``cfg.method`` with the configuration's shapes (zero-shot: IVLP's
    module, used for its frozen features only)."""
    from rayot.model.reference import build_model as build_method_model
    from rayot.model.reference import model_settings

    settings = model_settings(cfg.method, cfg.prompt)
    if cfg.method == "zeroshot":
        return PromptedCLIP(clip, classnames, **settings)
    return build_method_model(cfg.method, clip, classnames, **settings)


def _batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``; a data error raised in a loader worker keeps its one-line message.

    PyTorch re-raises a worker's exception with the worker's traceback folded into the message;
    the user should see the dataset, the file and the problem, as with ``num_workers=0``.
    """
    try:
        yield from loader
    except DataError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        marker = f"{type(exc).__name__}: "  # the traceback's last line: "rayot.errors.DataError: ..."
        if len(lines) > 1 and marker in lines[-1]:
            raise type(exc)(lines[-1].split(marker, 1)[1]) from None
        raise


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalResult:
    protocol: str
    eval_dataset: str
    split: str
    n_correct: int
    n_test: int
    n_classes: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.n_correct / self.n_test


def evaluate(
    model: nn.Module,
    task: Task,
    *,
    zero_shot: bool,
    templates: tuple[str, ...],
    image_size: int,
    device: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    hooks: TrialHooks | None = None,
) -> tuple[int, int]:
    """Top-1 correct count and test size of ``model`` on ``task``'s test split (protocol.md §5).

    The class prompts are encoded once, not per test batch. Over N ranks (``hooks``) each rank
    encodes its share of the classes and classifies its contiguous share of the test images; the
    correct counts are summed, so every rank returns the single-worker numbers.
    """
    (n_correct,), n_test = evaluate_pack(
        [model], task, zero_shot=zero_shot, templates=[templates], image_size=image_size, device=device,
        precision=precision, batch_size=batch_size, num_workers=num_workers, hooks=hooks)
    return n_correct, n_test


@torch.no_grad()
def evaluate_pack(
    models: list[nn.Module],
    task: Task,
    *,
    zero_shot: bool,
    templates: list[tuple[str, ...]],
    image_size: int,
    device: torch.device,
    precision: str,
    batch_size: int,
    num_workers: int,
    hooks: TrialHooks | None = None,
) -> tuple[list[int], int]:
    """:func:`evaluate` of every member of a pack in one pass over the test images: each member's
    correct count, and the test size.

    Each test batch goes through the image encoder once for all members, each copy of an image
    with its member's prompts (:mod:`rayot.model.packed`); zero-shot members share the frozen
    image features, and members with the same templates their text features.
    """
    hooks = hooks or TrialHooks()
    if not task.test:
        raise DataError(f"dataset {task.dataset}: the test split is empty")
    amp = autocast_dtype(precision)
    for model in models:
        model.eval()
    texts: list[Tensor | None]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        if zero_shot:
            by_templates: dict[tuple[str, ...], Tensor] = {}
            for model, t in zip(models, templates, strict=True):  # one frozen CLIP: one per template set
                if t not in by_templates:
                    by_templates[t] = sharded_reference_features(model, task.classnames, t, hooks)
            texts = [by_templates[t] for t in templates]  # each (n_cls, D)
        elif models[0].text_per_image:
            for model in models:
                model.set_classnames(task.classnames)
            texts = [None] * len(models)  # it depends on the image: encoded per test batch
        else:
            texts = list(pack_class_features(models, task.classnames, hooks))  # each (n_cls, D)
    scale = models[0].logit_scale.float()  # already exp(log-scale); one frozen CLIP
    start, stop = distributed.shard_range(len(task.test), hooks.world_size, hooks.rank)
    dataset = ImageDataset(task.test[start:stop], task.image_root, test_transform(image_size), task.dataset)
    correct = torch.zeros(len(models), dtype=torch.long, device=device)
    loader = make_loader(dataset, batch_size=batch_size, train=False, num_workers=num_workers)
    error: RayotError | None = None
    try:  # a bad test image on one rank must stop every rank (_agree) before the count is summed
        for images, labels in _batches(loader):
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = _pack_logits(models, images, texts, zero_shot, scale)  # each (B, n_cls)
            for m, member_logits in enumerate(logits):
                correct[m] += (member_logits.argmax(dim=-1) == labels).sum()
    except RayotError as exc:
        error = exc
    if error is not None or hooks.world_size > 1:
        _agree(hooks, error)
    return hooks.sum_counts([int(n) for n in correct.tolist()]), len(task.test)


def _pack_logits(models: list[nn.Module], images: Tensor, texts: list[Tensor | None], zero_shot: bool,
                 scale: Tensor) -> list[Tensor]:
    """Each member's logits (B, n_cls) of one test batch ``images`` (B, 3, H, W)."""
    if zero_shot:
        frozen = models[0].frozen_image_features(images).float()  # (B, D), shared
        return [scale * frozen @ text.T for text in texts]
    if models[0].text_per_image:
        if len(models) == 1:
            return [models[0](images).logits]
        frozen = models[0].frozen_image_features(images)  # (B, D), shared
        texts = packed.encode_conditioned_texts(models, [frozen] * len(models))
        return [m.output(frozen, t).logits for m, t in zip(models, texts, strict=True)]
    feats = packed.encode_images(models, [images] * len(models))  # each (B, D)
    return [model.output(image, text).logits for model, image, text in zip(models, feats, texts, strict=True)]


# ----------------------------------------------------------------------------- training


def _check_finite(losses: list[torch.Tensor], first_step: int, epoch: int) -> TrainingError | None:
    """The error for a NaN or infinite loss, naming the step and the loss terms (one sync per check)."""
    if not losses:
        return None
    terms = torch.stack(losses).float().cpu()  # (n_steps, 3): total, ce, reg
    bad = (~torch.isfinite(terms)).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        total, ce, reg = terms[i].tolist()
        return TrainingError(
            f"non-finite loss at epoch {epoch + 1}, step {first_step + i + 1}: "
            f"total={total}, cross_entropy={ce}, regularizer={reg}"
        )
    return None


class PeerFailure(TrainingError):
    """Another rank of this trial failed; that rank records the failure, this one only stops."""


def _agree(hooks: TrialHooks, error: RayotError | None) -> None:
    """Raise on every rank when any rank failed: its own error where it failed, else PeerFailure."""
    failed = hooks.first_failed_rank(error is not None)
    if failed is None:
        return
    if error is not None and failed == hooks.rank:
        raise error
    raise PeerFailure(f"rank {failed} of this trial failed")


def _check_resumable(state: dict[str, Any], cfg: C.TrialConfig) -> None:
    """An epoch checkpoint resumes only the trial, and the world size, that wrote it."""
    tid = C.trial_id(cfg)
    found = (state.get("trial_id"), state.get("world_size"))
    if found != (tid, cfg.world_size):
        raise TrainingError(
            f"epoch checkpoint of trial {found[0] or '(unknown)'} on {found[1] or '?'} worker(s) "
            f"cannot resume trial {tid} on {cfg.world_size}: delete the run folder trial-{tid} "
            "under the checkpoint storage to start this trial afresh"
        )


def _regularizer_terms(cfg: C.TrialConfig, out: Any, labels: Tensor, image_ref: Tensor | None,
                       text_ref_all: Tensor | None, scale: Tensor) -> tuple[Tensor, tuple[tuple[float, Tensor], ...]]:
    """The method's terms beside cross-entropy: the OT (or point-wise) regulariser, to be weighted
    by λ, and the peers' weighted terms (KgCoOp, PromptSRC); a weight of 0 computes nothing."""
    lc = cfg.loss
    reg = torch.zeros((), device=labels.device)
    if lc.regularizer != "none" and lc.lambda_ot > 0:
        text = out.text[labels] if out.text.dim() == 2 else out.text[torch.arange(len(labels)), labels]
        reg = prompt_ot_loss(
            out.image.float(),
            image_ref.float(),
            text.float(),  # (B, D): each sample's class
            text_ref_all[labels],
            eta=lc.eta,
            solver=lc.solver,
            epsilon=lc.epsilon,
            tau=lc.tau,
            n_iters=lc.n_iters,
            modality=lc.modality,
            regularizer=lc.regularizer,
        )
    terms = []
    if lc.kg_weight:
        terms.append((lc.kg_weight, kgcoop_loss(out.text, text_ref_all)))
    if lc.text_l1:
        terms.append((lc.text_l1, l1_consistency(out.text, text_ref_all)))
    if lc.image_l1:
        terms.append((lc.image_l1, l1_consistency(out.image, image_ref)))
    if lc.logit_kl:
        frozen_logits = scale * image_ref.float() @ text_ref_all.T  # (B, n_cls)
        terms.append((lc.logit_kl, logit_kl(out.logits, frozen_logits)))
    return reg, tuple(terms)


class _Member:
    """One trial of a pack while it trains: its model, its few-shot data in its seed's order and
    augmentation, its optimiser, schedule, loss settings and logged losses. A trial trained alone
    is a pack of one."""

    def __init__(self, cfg: C.TrialConfig, model: nn.Module, task: Task, *, image_size: int,
                 device: torch.device, hooks: TrialHooks, pack_size: int = 1) -> None:
        o, lc = cfg.optim, cfg.loss
        if not task.train:
            raise DataError(
                f"dataset {task.dataset}: the training subset is empty "
                f"(shots={cfg.data.shots}, seed={cfg.seed}, protocol={cfg.data.protocol})"
            )
        self.cfg, self.model, self.task = cfg, model, task
        self.trial_id = C.trial_id(cfg)
        self.stop = C.epochs_trained(cfg)
        self.use_reg = lc.regularizer != "none" and lc.lambda_ot > 0
        self.need_image_ref = self.use_reg or lc.image_l1 > 0 or lc.logit_kl > 0
        self.need_text_ref = self.use_reg or lc.kg_weight > 0 or lc.text_l1 > 0 or lc.logit_kl > 0
        self.gpa = gpa_weights(o.gpa_mean, o.gpa_std, self.stop) if o.gpa_std > 0 else None
        self.gpa_sum: dict[str, Tensor] | None = None
        self.params = list(model.trainable_parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
        self.text_ref: Tensor | None = None
        self.dataset = _SeededAugment(
            ImageDataset(task.train, task.image_root, train_transform(image_size), task.dataset), cfg.seed
        )
        # every rank takes its slice of each global batch of optim.batch_size, in the one-worker order;
        # augmentation is seeded per item (_SeededAugment), so loader workers need no seeding of their own
        self.sampler = _GlobalBatchSlices(self.dataset, o.batch_size, cfg.seed, hooks.rank, hooks.world_size)
        if min(self.sampler.sizes(0)) == 0:
            raise DataError(f"dataset {task.dataset}: the training subset of {len(self.dataset)} images gives "
                            f"some of the {hooks.world_size} workers no image")
        # a pack's members share the trial's loader processes (the inputs do not depend on how many)
        workers = cfg.data.num_workers and max(1, cfg.data.num_workers // pack_size)
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=workers)
        self.steps = len(self.loader)
        self.error: RayotError | None = None  # set when it failed: it is dropped from the pack
        self.lr = 0.0
        self.pending: list[Tensor] = []  # (total, ce, rest) of each step since the last check
        self.first = 0  # the step of pending[0]
        self.last = [math.nan] * 3

    def resume(self, state: dict[str, Any]) -> None:
        _check_resumable(state, self.cfg)  # the same checkpoint on every rank: no agreement needed
        self.model.load_prompt_state_dict(state["prompt"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gpa_sum = state.get("gpa")

    def start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.lr = lr_at_epoch(epoch, self.cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.model.train()
        self.batches = _batches(self.loader)
        self.pending, self.first = [], 0

    def loss(self, out: PromptOutput, labels: Tensor, image_ref: Tensor | None) -> tuple[Tensor, Tensor]:
        """The member's total loss on its batch, and its cross-entropy (logged apart)."""
        reg, terms = _regularizer_terms(self.cfg, out, labels, image_ref, self.text_ref,
                                        self.model.logit_scale.float())
        loss = total_loss(out.logits, labels, reg, self.cfg.loss.lambda_ot if self.use_reg else 0.0, terms)
        with torch.no_grad():
            ce = F.cross_entropy(out.logits.float(), labels)
        return loss, ce

    def check_due(self, step: int) -> bool:
        return len(self.pending) == self.cfg.optim.log_every or step == self.steps - 1

    def end_epoch(self, epoch: int, seconds: float) -> dict[str, Any]:
        """Accumulate GPA; the member's resumable state after ``epoch``."""
        if self.gpa is not None:  # a weighted running sum of the learned tensors, resumable
            snapshot, w, before = self.model.prompt_state_dict(), self.gpa[epoch], self.gpa_sum
            self.gpa_sum = {k: w * v.detach().clone() + (before[k] if before else 0) for k, v in snapshot.items()}
        state = {"prompt": self.model.prompt_state_dict(), "optimizer": self.optimizer.state_dict(),
                 "epoch": epoch, "train_seconds": seconds, "trial_id": self.trial_id,
                 "world_size": self.cfg.world_size}
        if self.gpa_sum is not None:
            state["gpa"] = self.gpa_sum
        return state

    def metrics(self) -> dict[str, float]:
        return {"loss": self.last[0], "ce": self.last[1], "reg": self.last[2], "lr": self.lr}


def _agreed_failures(hooks: TrialHooks, n: int, errors: dict[int, RayotError]) -> dict[int, RayotError]:
    """Agree across ranks on which of ``n`` members failed (``errors``: this rank's, by member):
    each failed member's error where it failed, :class:`PeerFailure` on the other ranks. Every rank
    calls it at the same points; one process asks only when something failed."""
    if n == 0 or (not errors and hooks.world_size == 1):
        return {}
    firsts = hooks.first_failed_ranks([i in errors for i in range(n)])
    return {i: (errors.get(i) if first == hooks.rank else None) or PeerFailure(f"rank {first} of this trial failed")
            for i, first in enumerate(firsts) if first is not None}


def _agree_members(hooks: TrialHooks, members: list[_Member], errors: dict[int, RayotError]) -> None:
    """Mark the members that failed on any rank (:func:`_agreed_failures`): they are dropped."""
    for i, error in _agreed_failures(hooks, len(members), errors).items():
        members[i].error = error


def _alive(members: list[_Member]) -> list[_Member]:
    return [m for m in members if m.error is None]


def _resume_pack(members: list[_Member], state: dict[str, Any]) -> tuple[int, float]:
    """Load each member's state from the pack's last epoch checkpoint: (next epoch, seconds)."""
    if len(members) == 1:
        members[0].resume(state)
        return int(state["epoch"]) + 1, float(state.get("train_seconds", 0.0))
    own = state.get("members")
    ids = sorted(m.trial_id for m in members)
    if not isinstance(own, dict) or sorted([*own, *state.get("dropped", [])]) != ids:
        raise TrainingError(f"the epoch checkpoint is not that of the pack of trials {', '.join(ids)}: "
                            "delete its run folder under the checkpoint storage to start the pack afresh")
    for m in members:
        if m.trial_id in own:
            m.resume(own[m.trial_id])
        else:  # failed before the checkpoint, and recorded then
            m.error = PeerFailure(f"trial {m.trial_id} failed before the last checkpoint of its pack")
    return int(state["epoch"]) + 1, float(state.get("train_seconds", 0.0))


def train_pack(
    members: list[_Member],
    *,
    device: torch.device,
    hooks: TrialHooks,
    progress: Callable[[Progress], None] | None = None,
) -> float:
    """Train every member's prompts in place, in one computation per step: the first S epochs of
    each member's E-epoch schedule (``optim.stop_epoch``), then, with GPA, load each member's
    Gaussian-weighted average of its end-of-epoch prompts.

    Each step takes one batch per member, runs the encoders once for all of them
    (:func:`pack_outputs`) and each member's loss on its own rows; the summed loss gives each member
    exactly its own gradient, and each member's optimiser takes its own step. A member that fails
    (bad data, a non-finite loss) is dropped and keeps its error; the others go on.

    On N ranks (``hooks``) each rank takes its slice of every global batch and its share of the
    classes, and every rank computes the one-rank loss on the gathered features; the prompt
    gradients are summed once, so every rank takes the step of one rank.

    Returns the training time in seconds, summed over every run of the pack when it resumed.
    """
    start_epoch, seconds_before = 0, 0.0
    t0 = time.perf_counter()
    state = hooks.resume_state()
    if state is not None:
        start_epoch, seconds_before = _resume_pack(members, state)
        log.info("resuming from the checkpoint of epoch %d", start_epoch)

    by_templates: dict[tuple[str, ...], Tensor] = {}  # one frozen CLIP: one text reference per template set
    for m in _alive(members):
        if m.need_text_ref:
            templates = resolve_templates(m.cfg, m.task.dataset)
            if templates not in by_templates:
                by_templates[templates] = sharded_reference_features(m.model, m.task.classnames, templates, hooks)
            m.text_ref = by_templates[templates]  # (n_cls, D)

    alone = len(members) == 1
    stop = max(m.stop for m in members)
    amp = autocast_dtype(members[0].cfg.precision)
    for epoch in range(start_epoch, stop):
        active = [m for m in _alive(members) if epoch < m.stop]
        if not active:
            break
        # the whole epoch is a function of (state at its start, seed, epoch): resumable exactly
        # (each member's sampling and augmentation have their own generators; nothing in a step
        # draws from the global one, so a pack seeds it from its first member)
        torch.manual_seed(active[0].cfg.seed * 1_000_003 + epoch)
        for m in active:
            m.start_epoch(epoch)
        for step in range(max(m.steps for m in active)):
            # data errors and non-finite losses are agreed on across ranks (_agree_members) at the
            # same points of every rank's loop, so one rank's failure stops that member on every rank
            stepping = [m for m in _alive(active) if step < m.steps]
            batches, errors = [], {}
            for i, m in enumerate(stepping):
                try:
                    batches.append(next(m.batches))
                except RayotError as exc:
                    errors[i] = exc
                    batches.append(None)
            _agree_members(hooks, stepping, errors)
            batches = [b for m, b in zip(stepping, batches, strict=True) if m.error is None]
            stepping = _alive(stepping)
            if not stepping:
                continue
            # each member's (b, 3, H, W) and (b,): this rank's slice of its global batch
            images = [b[0].to(device, non_blocking=True) for b in batches]
            sizes = [m.sampler.sizes(step) for m in stepping]  # every rank's share of each global batch
            labels = [hooks.gather(b[1].to(device, non_blocking=True), s)  # (B,): the global batch's
                      for b, s in zip(batches, sizes, strict=True)]
            models = [m.model for m in stepping]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                outs = pack_outputs(models, images, stepping[0].task.classnames, sizes, hooks)
                refs: list[Tensor | None] = [None] * len(stepping)
                if any(m.need_image_ref for m in stepping):
                    refs = [hooks.gather(r, s) for r, s in  # (B, D) each
                            zip(packed.frozen_images(models, images), sizes, strict=True)]
                losses = [m.loss(out, y, ref) for m, out, y, ref in zip(stepping, outs, labels, refs, strict=True)]
            for m in stepping:
                m.optimizer.zero_grad(set_to_none=True)
            scaled = [m.scaler.scale(loss) for m, (loss, _) in zip(stepping, losses, strict=True)]
            (scaled[0] if alone else torch.stack(scaled).sum()).backward()
            # each rank holds its shares' contributions: summed once, for every member together
            hooks.sum_gradients([p for m in stepping for p in m.params])
            for m, (loss, ce) in zip(stepping, losses, strict=True):
                m.scaler.step(m.optimizer)
                m.scaler.update()
                # logged: total, cross-entropy, and every weighted term beside it
                m.pending.append(torch.stack([loss.detach(), ce.detach(), loss.detach() - ce.detach()]))
            due = [m for m in stepping if m.check_due(step)]
            if due:
                errors = {i: e for i, m in enumerate(due) if (e := _check_finite(m.pending, m.first, epoch))}
                _agree_members(hooks, due, errors)
                for m in due:
                    m.last = m.pending[-1].float().tolist()
                    m.first, m.pending = step + 1, []
                    if progress is not None and alone and m.error is None:
                        progress(Progress(epoch, m.cfg.optim.epochs, step + 1, m.steps, *m.last, m.lr))
        done = _alive(active)
        if not done:
            break
        seconds = seconds_before + time.perf_counter() - t0
        states = {}
        for m in done:
            log.info("%sepoch %d/%d: loss %.4f (ce %.4f, reg %.4f), lr %.2e", "" if alone else f"{m.trial_id} ",
                     epoch + 1, m.cfg.optim.epochs, *m.last, m.lr)
            states[m.trial_id] = m.end_epoch(epoch, seconds)
        if alone:
            hooks.save_epoch(epoch, states[done[0].trial_id], {"epoch": epoch + 1, **done[0].metrics()})
        else:
            dropped = [m.trial_id for m in members if m.error is not None]
            hooks.save_epoch(epoch, {"members": states, "dropped": dropped, "epoch": epoch, "train_seconds": seconds},
                             {"epoch": epoch + 1, "members": {m.trial_id: m.metrics() for m in done}})
    for m in _alive(members):
        if m.gpa_sum is not None:
            m.model.load_prompt_state_dict(m.gpa_sum)  # the aggregate is the model that is evaluated
    return seconds_before + time.perf_counter() - t0


def _trial_fields(cfg: C.TrialConfig, sweep: str | None) -> dict[str, Any]:
    """The columns every row of a trial shares (schema: :mod:`rayot.results`)."""
    return {
        "trial_id": C.trial_id(cfg),
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "seed": cfg.seed,
        "shots": cfg.data.shots,
        "backbone": cfg.model.name,
        "pretrained": cfg.model.checkpoint or cfg.model.pretrained or "random",
        "lambda_ot": cfg.loss.lambda_ot,
        "regularizer": cfg.loss.regularizer,
        "modality": cfg.loss.modality,
        "solver": cfg.loss.solver,
        "epsilon": cfg.loss.epsilon,
        "epochs": cfg.optim.epochs,
        "sweep": sweep,
        "config": C.to_json(cfg),
    }


def result_rows(
    cfg: C.TrialConfig, results: list[EvalResult], *, train_seconds: float, sweep: str | None = None
) -> list[dict[str, Any]]:
    """The Parquet rows of a finished trial: one per evaluation."""
    shared = _trial_fields(cfg, sweep)
    return [
        {
            **shared,
            "status": "done",
            "protocol": r.protocol,
            "eval_dataset": r.eval_dataset,
            "split": r.split,
            "accuracy": r.accuracy,
            "n_correct": r.n_correct,
            "n_test": r.n_test,
            "n_classes": r.n_classes,
            "train_seconds": train_seconds,
        }
        for r in results
    ]


def failure_row(cfg: C.TrialConfig, error: str, *, sweep: str | None = None) -> dict[str, Any]:
    """The single row that records a failed trial with its error (no accuracy)."""
    return {
        **_trial_fields(cfg, sweep),
        "status": "failed",
        "protocol": cfg.data.protocol,
        "eval_dataset": cfg.data.dataset,
        "split": "",
        "error": error,
    }


@dataclass
class TrialOutcome:
    trial_id: str
    evals: list[EvalResult]
    prompt_state: dict[str, torch.Tensor]
    train_seconds: float


def run_trial(
    cfg: C.TrialConfig,
    *,
    device: torch.device | None = None,
    hooks: TrialHooks | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> TrialOutcome:
    """Train (unless zero-shot) and evaluate one trial; returns its evaluations, or raises the
    error it failed with (:class:`PeerFailure` on a rank where another rank failed).

    Writing results and checkpoints is the caller's job (:func:`save_checkpoint`,
    :func:`result_rows`), so that the single-process CLI and the distributed Ray trial share this
    function unchanged. A trial alone is a pack of one (:func:`run_pack`).
    """
    (result,) = run_pack([cfg], device=device, hooks=hooks, progress=progress)
    assert result.outcome is not None  # a pack of one raises its member's error
    return result.outcome


@dataclass
class MemberResult:
    """What became of one member of a pack: its outcome, or the error it failed with (a
    :class:`PeerFailure` on the ranks where it did not fail: the rank where it failed records it)."""

    cfg: C.TrialConfig
    outcome: TrialOutcome | None = None
    error: RayotError | None = None


def _settle(hooks: TrialHooks, results: list[MemberResult], errors: dict[int, RayotError]) -> None:
    """Agree across ranks on which members failed in a phase of :func:`run_pack` (``errors``: this
    rank's, by member); a pack of one raises its member's error at once, as a lone trial does."""
    for i, error in _agreed_failures(hooks, len(results), errors).items():
        results[i].error = results[i].error or error
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error


def run_pack(
    cfgs: list[C.TrialConfig],
    *,
    device: torch.device | None = None,
    hooks: TrialHooks | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> list[MemberResult]:
    """Train and evaluate several trials as one computation around one frozen CLIP; returns each
    member's outcome or error, in order (:mod:`rayot.packing` says which trials may share a pack).

    Every member's data, initial prompts (from its seed), optimiser, schedule, losses and
    evaluations are those of the trial run alone; only the encoders' calls are shared
    (:func:`train_pack`, :func:`evaluate_pack`). A failure of what the members share (the CLIP
    model, a test set) fails every member; a member's own failure (its data, its ``init_from``
    prompts, a non-finite loss) drops that member only. A pack of one raises its error.
    """
    from rayot.packing import check_packable

    hooks = hooks or TrialHooks()
    check_packable(cfgs)
    lead = cfgs[0]
    device = device or resolve_device(lead.device)
    results = [MemberResult(cfg) for cfg in cfgs]
    seed_everything(lead.seed)  # random weights (tiny test models) come from the seed
    zero_shot = lead.method == "zeroshot"
    try:  # a bad model on one rank must stop every rank (_agree)
        loaded = load_clip(
            lead.model.name,
            lead.model.pretrained,
            checkpoint=resolve_weights_path(lead.model.checkpoint),
            cache_dir=lead.model.cache_dir,
            device=device,
        )
    except RayotError as exc:
        _agree(hooks, exc)
    if hooks.world_size > 1:
        _agree(hooks, None)

    tasks: list[Task | None] = [None] * len(cfgs)
    errors: dict[int, RayotError] = {}
    for i, cfg in enumerate(cfgs):  # each member's few-shot subset, from its seed
        try:
            tasks[i] = build_task(cfg.data.dataset, cfg.data.root, shots=0 if zero_shot else cfg.data.shots,
                                  seed=cfg.seed, subsample=C.train_subsample(cfg))
        except RayotError as exc:
            errors[i] = exc
    _settle(hooks, results, errors)
    models: list[nn.Module | None] = [None] * len(cfgs)
    errors = {}
    for i, cfg in enumerate(cfgs):
        if results[i].error is None:
            try:
                models[i] = init_model(cfg, loaded, tasks[i].classnames, device)
            except RayotError as exc:
                errors[i] = exc
    _settle(hooks, results, errors)

    train_seconds = 0.0
    if not zero_shot:
        members, errors = {}, {}
        for i, cfg in enumerate(cfgs):
            if results[i].error is None and C.epochs_trained(cfg) > 0:
                try:
                    members[i] = _Member(cfg, models[i], tasks[i], image_size=loaded.image_size,
                                         device=device, hooks=hooks, pack_size=len(cfgs))
                except RayotError as exc:
                    errors[i] = exc
        _settle(hooks, results, errors)
        members = {i: m for i, m in members.items() if results[i].error is None}
        if members:
            seconds = train_pack(list(members.values()), device=device, hooks=hooks, progress=progress)
            train_seconds = seconds / len(members)  # each member's share of the pack's time
            for i, m in members.items():  # failures in training were agreed on by every rank
                if m.error is not None:
                    results[i].error = m.error
            if len(cfgs) == 1 and results[0].error is not None:
                raise results[0].error

    alive = [i for i, r in enumerate(results) if r.error is None]
    evals: dict[int, list[EvalResult]] = {i: [] for i in alive}
    # every rank evaluates its share of each test set, for every member at once
    for protocol, eval_dataset, split in C.eval_targets(lead) if alive else ():
        try:
            if eval_dataset == lead.data.dataset and split == C.train_subsample(lead):
                task = tasks[alive[0]]  # the test split does not depend on the few-shot subset
            else:
                subsample = split if split in ("base", "novel") else "all"
                task = build_task(eval_dataset, lead.data.root, shots=0, seed=lead.seed, subsample=subsample)
            counts, n_test = evaluate_pack(
                [models[i] for i in alive],
                task,
                zero_shot=zero_shot,
                templates=[resolve_templates(cfgs[i], eval_dataset) for i in alive],
                image_size=loaded.image_size,
                device=device,
                precision=lead.precision,
                batch_size=lead.optim.eval_batch_size,
                num_workers=lead.data.num_workers,
                hooks=hooks,
            )
        except RayotError as exc:  # the test set is every member's
            if len(cfgs) == 1:
                raise
            for i in alive:
                results[i].error = exc
            break
        for i, n_correct in zip(alive, counts, strict=True):
            evals[i].append(EvalResult(protocol, eval_dataset, split, n_correct, n_test, len(task.classnames)))
            log.info("%s%s %s (%s): %.2f%% of %d", "" if len(cfgs) == 1 else f"{C.trial_id(cfgs[i])} ",
                     protocol, eval_dataset, split, evals[i][-1].accuracy, n_test)
    for i, r in enumerate(results):
        if r.error is None:
            r.outcome = TrialOutcome(C.trial_id(r.cfg), evals[i], models[i].prompt_state_dict(), train_seconds)
        elif len(cfgs) > 1 and not isinstance(r.error, PeerFailure):
            log.error("trial %s of the pack failed: %s", C.trial_id(r.cfg), r.error)
    return results


def init_model(cfg: C.TrialConfig, loaded: Any, classnames: list[str], device: torch.device) -> nn.Module:
    """The trial's prompted model around ``loaded`` (shared by a pack's members), its learned
    tensors initialised from the trial's seed alone (or from ``model.init_from``): the same
    initial prompts whether the trial runs alone or packed, whatever loading the CLIP drew."""
    seed_everything(cfg.seed)
    model = build_model(cfg, loaded, classnames).to(device)
    if cfg.model.init_from:
        init_prompts(model, cfg, cfg.model.init_from)
    return model


def init_prompts(model: nn.Module, cfg: C.TrialConfig, path: str) -> None:
    """Start from saved prompts (``model.init_from``): a rayot ``prompt.pt`` of the same method,
    or a checkpoint written by the method's reference code (rayot.model.reference)."""
    import json

    from rayot.errors import ModelError
    from rayot.model.reference import load_reference_file, load_reference_state

    payload = load_reference_file(path)
    if "prompt" in payload and "config" in payload:  # a rayot prompt.pt
        saved = json.loads(payload["config"]).get("method")
        if saved != cfg.method:
            raise ModelError(f"checkpoint {path}: its prompts are of method {saved!r}, not {cfg.method!r}")
        model.load_prompt_state_dict(payload["prompt"])
    else:
        load_reference_state(model, cfg.method, payload)
    log.info("prompts initialised from %s", path)


def prompt_checkpoint_name(trial_id: str) -> str:
    """Where a trial's final prompts go under the checkpoint location, for `rayot train` and sweeps."""
    return f"{trial_id}/prompt.pt"


def checkpoint_payload(cfg: C.TrialConfig, prompt_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a final checkpoint holds: the prompt parameters and the resolved configuration only."""
    return {"prompt": {k: v.detach().cpu() for k, v in prompt_state.items()}, "config": C.to_json(cfg)}


def save_checkpoint(
    location: str, name: str, cfg: C.TrialConfig, prompt_state: dict[str, torch.Tensor]
) -> str:
    """Write a final checkpoint to ``<location>/<name>`` (a path or URI) atomically."""
    from rayot.results import write_file

    buffer = io.BytesIO()
    torch.save(checkpoint_payload(cfg, prompt_state), buffer)
    return write_file(location, name, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[C.TrialConfig, dict[str, torch.Tensor]]:
    """Read a final checkpoint (``weights_only=True``): its configuration and prompt state."""
    from rayot.errors import ModelError

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path}: not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelError(f"checkpoint {path}: not a rayot checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "prompt" not in payload or "config" not in payload:
        raise ModelError(f"checkpoint {path}: expected keys 'prompt' and 'config'")
    import json

    return C.from_dict(json.loads(payload["config"])), payload["prompt"]
