"""The training loop of a pack of trials (a trial alone is a pack of one): a plain function.

Each member is a trial with its own method, model, few-shot data in its seed's order and
augmentation, optimiser and schedule. Each step takes one batch per member, runs the encoders once
for all of them (:func:`rayot.train.features.pack_outputs`), asks each member's method for its
loss on its own rows (:meth:`rayot.methods.Method.loss`), backpropagates the sum (each member gets
exactly its own gradient), lets the method change its gradients (:class:`rayot.methods.StepHooks`)
and steps each member's optimiser. The schedule is the reference toolbox's: a constant warm-up,
then a cosine stepped once per epoch (docs/peers.md §0.4).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rayot import config as C
from rayot.data import ImageDataset, Task, train_transform
from rayot.errors import DataError, RayotError, TrainingError
from rayot.methods import DIAGNOSTIC_PREFIX, Batch, Objective, StepHooks
from rayot.train.collectives import PeerFailure, TrialHooks, agreed_failures
from rayot.train.features import frozen_references, pack_outputs, reference_text_features
from rayot.train.runtime import autocast_dtype
from rayot.train.sampling import GlobalBatchSlices, SeededAugment, batches

log = logging.getLogger(__name__)

#: Per-epoch metrics of every trial: the means over the epoch's steps of the loss, its
#: cross-entropy and the rest (``reg``), and the rate; a method's diagnostics join them as
#: ``diag/<name>``, means too.
EPOCH_METRICS = ("loss", "ce", "reg", "lr")
#: Keys of a member's epoch checkpoint that its method's StepHooks state may not use.
_STATE_KEYS = frozenset({"prompt", "optimizer", "epoch", "train_seconds", "trial_id", "world_size", "history",
                         "stopped_at"})


@dataclass
class Progress:
    """What a progress display needs after each logged step."""

    epoch: int  # 0-based
    epochs: int
    step: int  # steps done in this epoch
    steps: int  # steps per epoch
    loss: float
    ce: float
    reg: float
    lr: float


def lr_at_epoch(epoch: int, optim: C.OptimConfig) -> float:
    """The rate of 0-based ``epoch``: the reference toolbox's constant warm-up, then a cosine over
    the max epoch count E whose count restarts after the warm-up (stepped once per epoch).

    With W warm-up epochs, epoch k >= W runs at lr · (1 + cos(π (k − W) / E)) / 2: the first
    epoch after the warm-up runs at the full rate and the last never reaches zero (docs/peers.md §0.4).
    """
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    k = epoch - optim.warmup_epochs
    return 0.5 * optim.lr * (1.0 + math.cos(math.pi * k / max(optim.epochs, 1)))


def check_finite(losses: list[Tensor], first_step: int, epoch: int) -> TrainingError | None:
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


def check_resumable(state: dict[str, Any], cfg: C.TrialConfig) -> None:
    """An epoch checkpoint resumes only the trial, and the world size, that wrote it."""
    tid = C.trial_id(cfg)
    found = (state.get("trial_id"), state.get("world_size"))
    if found != (tid, cfg.world_size):
        raise TrainingError(
            f"epoch checkpoint of trial {found[0] or '(unknown)'} on {found[1] or '?'} worker(s) "
            f"cannot resume trial {tid} on {cfg.world_size}: delete the run folder trial-{tid} "
            "under the checkpoint storage to start this trial afresh"
        )


def trial_objective(cfg: C.TrialConfig, model: nn.Module, out: Any, labels: Tensor, image_ref: Tensor | None,
                    text_ref: Tensor | None, epoch: int = 0) -> Objective:
    """The objective of a trial's method on one global batch (the model's output ``out``, the
    labels (B,), the frozen references its method asked for)."""
    batch = Batch(output=out, labels=labels, image_ref=image_ref, text_ref=text_ref,
                  logit_scale=model.logit_scale.float(), epoch=epoch)
    return C.method_of(cfg).loss(batch, cfg.settings)


class Member:
    """One trial of a pack while it trains: its method and model, its few-shot data in its seed's
    order and augmentation, its optimiser, schedule, step hooks and logged losses."""

    def __init__(self, cfg: C.TrialConfig, model: nn.Module, task: Task, *, image_size: int,
                 device: torch.device, hooks: TrialHooks, pack_size: int = 1) -> None:
        o = cfg.optim
        if not task.train:
            raise DataError(
                f"dataset {task.dataset}: the training subset is empty "
                f"(shots={cfg.data.shots}, seed={cfg.seed}, protocol={cfg.data.protocol})"
            )
        self.cfg, self.model, self.task = cfg, model, task
        self.method, self.settings = C.method_of(cfg), cfg.settings
        self.trial_id = C.trial_id(cfg)
        self.stop = C.epochs_trained(cfg)
        self.refs = self.method.references(self.settings, task.dataset)
        self.step_hooks: StepHooks = self.method.step_hooks(self.settings, self.stop)
        self.params = list(model.trainable_parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
        self.text_ref: Tensor | None = None
        self.dataset = SeededAugment(
            ImageDataset(task.train, task.image_root, train_transform(image_size), task.dataset), cfg.seed
        )
        # every rank takes its slice of each global batch of optim.batch_size, in the one-worker order;
        # augmentation is seeded per item (SeededAugment), so loader workers need no seeding of their own
        self.sampler = GlobalBatchSlices(self.dataset, o.batch_size, cfg.seed, hooks.rank, hooks.world_size)
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
        self.last = [math.nan] * 3  # the last checked step's (total, ce, rest), for the progress display
        self.loss_sum: Tensor | None = None  # this epoch's (total, ce, rest) summed over its steps
        self.aux: dict[str, Tensor] = {}  # this step's aux terms, for the step hooks
        self.diagnostics: dict[str, Tensor] = {}  # this epoch's sums
        self.diagnostic_steps = 0
        self.history: list[dict[str, float]] = []  # every epoch's metrics, in order
        self.stopped_at: int | None = None  # a search trial its scheduler stopped after this epoch

    def resume(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.cfg)  # the same checkpoint on every rank: no agreement needed
        self.model.load_prompt_state_dict(state["prompt"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_hooks.load_state_dict(state)
        self.history = [dict(h) for h in state.get("history", [])]
        if state.get("stopped_at") is not None:  # stopped by its search's scheduler: trains no more
            self.stopped_at = self.stop = int(state["stopped_at"])

    def start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.lr = lr_at_epoch(epoch, self.cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.model.train()
        self.batches = batches(self.loader)
        self.pending, self.first, self.loss_sum = [], 0, None
        self.diagnostics, self.diagnostic_steps = {}, 0

    def loss(self, out: Any, labels: Tensor, image_ref: Tensor | None, epoch: int) -> tuple[Tensor, Tensor]:
        """The member's loss on its batch (its method's), and its cross-entropy (logged apart)."""
        objective = trial_objective(self.cfg, self.model, out, labels, image_ref, self.text_ref, epoch)
        with torch.no_grad():
            ce = F.cross_entropy(out.logits.float(), labels)
        self.add_diagnostics(objective.diagnostics)
        self.diagnostic_steps += 1
        self.aux = {name: objective.aux[name] for name in self.step_hooks.aux_gradients}
        return objective.loss, ce

    def add_diagnostics(self, values: Mapping[str, Tensor] | None) -> None:
        """Add a step's diagnostics to the epoch's sums (on the device: no sync per step)."""
        with torch.no_grad():
            for name, value in (values or {}).items():
                self.diagnostics[name] = self.diagnostics.get(name, 0.0) + value.detach().float()

    def log_step(self, loss: Tensor, ce: Tensor) -> None:
        """Keep a step's total, cross-entropy and other terms: for the next finiteness check and
        the epoch's means."""
        terms = torch.stack([loss.detach(), ce.detach(), loss.detach() - ce.detach()])
        self.pending.append(terms)
        self.loss_sum = terms.float() if self.loss_sum is None else self.loss_sum + terms.float()

    def check_due(self, step: int) -> bool:
        return len(self.pending) == self.cfg.optim.log_every or step == self.steps - 1

    def end_epoch(self, epoch: int) -> None:
        """Close the epoch: the method's bookkeeping, this epoch's metrics."""
        self.step_hooks.end_epoch(epoch, self.model)
        self.history.append({"epoch": epoch + 1, **self.metrics()})

    def state(self, epoch: int, seconds: float) -> dict[str, Any]:
        """The member's resumable state after ``epoch``."""
        own = self.step_hooks.state_dict()
        if set(own) & _STATE_KEYS:
            raise TypeError(f"method {self.method.name}: its step hooks' state uses reserved keys "
                            f"{sorted(set(own) & _STATE_KEYS)}")
        return {"prompt": self.model.prompt_state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": epoch, "train_seconds": seconds, "trial_id": self.trial_id,
                "world_size": self.cfg.world_size, "history": self.history, "stopped_at": self.stopped_at, **own}

    def metrics(self) -> dict[str, float]:
        """The epoch's metrics: the means over its steps of the loss, the cross-entropy, the other
        terms and each of the method's diagnostics (those of its loss and of its step hooks), and
        the rate (one sync)."""
        names = sorted(self.diagnostics)
        sums = [self.loss_sum if self.loss_sum is not None else torch.full((3,), math.nan)]
        sums += [self.diagnostics[n].reshape(1).to(sums[0].device) for n in names]
        means = (torch.cat(sums) / max(self.diagnostic_steps, 1)).tolist()
        out = {"loss": means[0], "ce": means[1], "reg": means[2], "lr": self.lr}
        out.update({DIAGNOSTIC_PREFIX + n: float(v) for n, v in zip(names, means[3:], strict=True)})
        return out


def agree_members(hooks: TrialHooks, members: list[Member], errors: dict[int, RayotError]) -> None:
    """Mark the members that failed on any rank (:func:`agreed_failures`): they are dropped."""
    for i, error in agreed_failures(hooks, len(members), errors).items():
        members[i].error = error


def alive(members: list[Member]) -> list[Member]:
    return [m for m in members if m.error is None]


def resume_pack(members: list[Member], state: dict[str, Any]) -> tuple[int, float]:
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


def _text_references(members: list[Member], hooks: TrialHooks) -> None:
    """Each member's frozen class text features, computed once per template set (one frozen CLIP)."""
    by_templates: dict[tuple[str, ...], Tensor] = {}
    for m in alive(members):
        templates = m.refs.templates
        if templates:
            if templates not in by_templates:
                by_templates[templates] = reference_text_features(m.model, m.task.classnames, templates, hooks)
            m.text_ref = by_templates[templates]  # (n_cls, D)


def _aux_gradients(stepping: list[Member]) -> list[dict[str, list[Tensor | None]]]:
    """Each member's gradients of the aux terms its step hooks asked for (before the backward
    frees the graph); this rank's contributions."""
    out = []
    for m in stepping:
        grads = {}
        for name, term in m.aux.items():
            grads[name] = list(torch.autograd.grad(term, m.params, retain_graph=True, allow_unused=True))
        out.append(grads)
    return out


def train_pack(
    members: list[Member],
    *,
    device: torch.device,
    hooks: TrialHooks,
    progress: Callable[[Progress], None] | None = None,
    validate: Callable[[list[Member]], dict[str, dict[str, float]]] | None = None,
) -> float:
    """Train every member's prompts in place, in one computation per step: the first S epochs of
    each member's E-epoch schedule (``optim.stop_epoch``), then each method's ``finish`` (for
    example loading averaged prompts).

    Search trials (``validate``: each member's validation scores, :mod:`rayot.train.validation`)
    are scored after every epoch; the scores join the epoch's metrics, and the members that the
    search's scheduler stops then (:meth:`TrialHooks.early_stop`) train no further, while the
    others go on exactly as they would alone.

    A member that fails (bad data, a non-finite loss) is dropped and keeps its error; the others
    go on. On N ranks (``hooks``) each rank takes its slice of every global batch and its share of
    the classes, and every rank computes the one-rank loss on the gathered features; the prompt
    gradients are summed once, so every rank takes the step of one rank.

    Returns the training time in seconds, summed over every run of the pack when it resumed.
    """
    start_epoch, seconds_before = 0, 0.0
    t0 = time.perf_counter()
    states: dict[str, dict[str, Any]] = {}  # each member's state after its last trained epoch
    state = hooks.resume_state()
    if state is not None:
        start_epoch, seconds_before = resume_pack(members, state)
        if len(members) > 1:  # a member stopped early is in every later checkpoint of its pack
            states = dict(state["members"])
        log.info("resuming from the checkpoint of epoch %d", start_epoch)
    _text_references(members, hooks)

    alone = len(members) == 1
    stop = max(m.stop for m in members)
    amp = autocast_dtype(members[0].cfg.precision)
    for epoch in range(start_epoch, stop):
        active = [m for m in alive(members) if epoch < m.stop]
        if not active:
            break
        # the whole epoch is a function of (state at its start, seed, epoch): resumable exactly
        # (each member's sampling and augmentation have their own generators; nothing in a step
        # draws from the global one, so a pack seeds it from its first member)
        torch.manual_seed(active[0].cfg.seed * 1_000_003 + epoch)
        for m in active:
            m.start_epoch(epoch)
        for step in range(max(m.steps for m in active)):
            # data errors and non-finite losses are agreed on across ranks (agree_members) at the
            # same points of every rank's loop, so one rank's failure stops that member on every rank
            stepping = [m for m in alive(active) if step < m.steps]
            got, errors = [], {}
            for i, m in enumerate(stepping):
                try:
                    got.append(next(m.batches))
                except RayotError as exc:
                    errors[i] = exc
                    got.append(None)
            agree_members(hooks, stepping, errors)
            got = [b for m, b in zip(stepping, got, strict=True) if m.error is None]
            stepping = alive(stepping)
            if not stepping:
                continue
            # each member's (b, 3, H, W) and (b,): this rank's slice of its global batch
            images = [b[0].to(device, non_blocking=True) for b in got]
            sizes = [m.sampler.sizes(step) for m in stepping]  # every rank's share of each global batch
            labels = [hooks.gather(b[1].to(device, non_blocking=True), s)  # (B,): the global batch's
                      for b, s in zip(got, sizes, strict=True)]
            models = [m.model for m in stepping]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                outs = pack_outputs(models, images, stepping[0].task.classnames, sizes, hooks)
                refs: list[Tensor | None] = [None] * len(stepping)
                if any(m.refs.image for m in stepping):
                    refs = frozen_references(models, images, sizes, hooks)  # (B, D) each
                losses = [m.loss(out, y, ref, epoch)
                          for m, out, y, ref in zip(stepping, outs, labels, refs, strict=True)]
            for m in stepping:
                m.optimizer.zero_grad(set_to_none=True)
            aux = _aux_gradients(stepping) if any(m.aux for m in stepping) else [{} for _ in stepping]
            scaled = [m.scaler.scale(loss) for m, (loss, _) in zip(stepping, losses, strict=True)]
            (scaled[0] if alone else torch.stack(scaled).sum()).backward()
            # each rank holds its shares' contributions: summed once, for every member together
            hooks.sum_gradients([p for m in stepping for p in m.params])
            for m, (loss, ce), grads in zip(stepping, losses, aux, strict=True):
                if type(m.step_hooks).gradients is not StepHooks.gradients:
                    for name in grads:
                        grads[name] = hooks.sum_tensors(grads[name], m.params)
                    m.scaler.unscale_(m.optimizer)  # the method sees the true gradients
                    m.add_diagnostics(m.step_hooks.gradients(m.params, grads))
                m.scaler.step(m.optimizer)
                m.scaler.update()
                m.log_step(loss, ce)  # total, cross-entropy, and every weighted term beside it
            due = [m for m in stepping if m.check_due(step)]
            if due:
                errors = {i: e for i, m in enumerate(due) if (e := check_finite(m.pending, m.first, epoch))}
                agree_members(hooks, due, errors)
                for m in due:
                    m.last = m.pending[-1].float().tolist()
                    m.first, m.pending = step + 1, []
                    if progress is not None and alone and m.error is None:
                        progress(Progress(epoch, m.cfg.optim.epochs, step + 1, m.steps, *m.last, m.lr))
        done = alive(active)
        if not done:
            break
        seconds = seconds_before + time.perf_counter() - t0
        for m in done:
            m.end_epoch(epoch)
            h = m.history[-1]
            log.info("%sepoch %d/%d: mean loss %.4f (ce %.4f, reg %.4f), lr %.2e", "" if alone else f"{m.trial_id} ",
                     epoch + 1, m.cfg.optim.epochs, h["loss"], h["ce"], h["reg"], m.lr)
        if validate is not None:
            for tid, scores in validate(done).items():
                next(m for m in done if m.trial_id == tid).history[-1].update(scores)
            stopped = hooks.early_stop(epoch, {m.trial_id: [dict(h) for h in m.history] for m in done})
            for m in done:
                if m.trial_id in stopped and epoch + 1 < m.stop:
                    log.info("%s: stopped by its search's scheduler after epoch %d", m.trial_id, epoch + 1)
                    m.stopped_at = m.stop = epoch + 1
        for m in done:
            states[m.trial_id] = m.state(epoch, seconds)  # a member stopped early keeps its last state
        states = {m.trial_id: states[m.trial_id] for m in alive(members) if m.trial_id in states}
        epoch_metrics = {m.trial_id: m.history[-1] for m in done}  # {"epoch": epoch + 1, metrics...}
        if alone:
            hooks.save_epoch(epoch, states[done[0].trial_id], dict(epoch_metrics[done[0].trial_id]))
        else:
            dropped = [m.trial_id for m in members if m.error is not None]
            hooks.save_epoch(epoch, {"members": states, "dropped": dropped, "epoch": epoch, "train_seconds": seconds},
                             {"epoch": epoch + 1, "members": {t: {k: v for k, v in h.items() if k != "epoch"}
                                                              for t, h in epoch_metrics.items()}})
    for m in alive(members):
        m.step_hooks.finish(m.model)
    return seconds_before + time.perf_counter() - t0
