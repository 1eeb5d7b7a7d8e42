"""Running a trial, or a pack of trials around one frozen CLIP: build, train, evaluate.

:func:`run_trial` is the single entry point that `rayot train` and a Ray trial both call (a trial
alone is a pack of one, :func:`run_pack`). The distributed layer (Ray Train) plugs in through
:class:`~rayot.train.collectives.TrialHooks`: the collectives that share a trial's work among N
ranks, where epoch checkpoints go and where a resumed run starts. Everything a method does is
asked of the method (:mod:`rayot.methods`); this module knows nothing about Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rayot import config as C
from rayot.checkpoints import init_prompts
from rayot.data import SearchData, Task, build_task, search_data
from rayot.errors import RayotError
from rayot.model import load_clip
from rayot.packing import check_packable
from rayot.train.collectives import PeerFailure, TrialHooks, agree, agreed_failures
from rayot.train.evaluate import evaluate_pack
from rayot.train.loop import Member, Progress, lr_at_epoch, train_pack
from rayot.train.rows import EvalResult
from rayot.train.runtime import resolve_device, resolve_weights_path, seed_everything
from rayot.train.validation import scores, validation_task

log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    trial_id: str
    evals: list[EvalResult]
    prompt_state: dict[str, torch.Tensor]
    train_seconds: float
    #: every epoch's metrics, in order: {"epoch", "loss", "ce", "reg", "lr", "diag/...": ...}
    history: list[dict[str, float]] = field(default_factory=list)
    #: a search trial that its search's scheduler stopped: the epoch it stopped after
    stopped_at: int | None = None


@dataclass
class MemberResult:
    """What became of one member of a pack: its outcome, or the error it failed with (a
    :class:`PeerFailure` on the ranks where it did not fail: the rank where it failed records it)."""

    cfg: C.TrialConfig
    outcome: TrialOutcome | None = None
    error: RayotError | None = None


def plan(cfg: C.TrialConfig) -> dict[str, Any]:
    """What a trial will do, without doing it: its id, configuration, the rate of each epoch it
    trains, how many, and what is evaluated (``rayot train --plan``)."""
    trained = C.epochs_trained(cfg) if C.method_of(cfg).trains else 0
    return {
        "trial_id": C.trial_id(cfg),
        "config": C.to_dict(cfg),
        "lr_per_epoch": [lr_at_epoch(e, cfg.optim) for e in range(trained)],
        "epochs_trained": trained,
        "evaluated": [{"protocol": p, "dataset": d, "split": s} for p, d, s in C.eval_targets(cfg)],
    }


def build_model(cfg: C.TrialConfig, clip: Any, classnames: list[str]) -> nn.Module:
    """The prompt module of the trial's method around ``clip``, with the configuration's shapes."""
    return C.method_of(cfg).build(clip, classnames, cfg.prompt, cfg.settings)


def init_model(cfg: C.TrialConfig, loaded: Any, classnames: list[str], device: torch.device) -> nn.Module:
    """The trial's prompted model around ``loaded`` (shared by a pack's members), its learned
    tensors initialised from the trial's seed alone (or from ``model.init_from``): the same
    initial prompts whether the trial runs alone or packed, whatever loading the CLIP drew."""
    seed_everything(cfg.seed)
    model = build_model(cfg, loaded, classnames).to(device)
    if cfg.model.init_from:
        init_prompts(model, cfg, cfg.model.init_from)
    return model


def run_trial(
    cfg: C.TrialConfig,
    *,
    device: torch.device | None = None,
    hooks: TrialHooks | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> TrialOutcome:
    """Train (unless its method does not) and evaluate one trial; returns its evaluations, or
    raises the error it failed with (:class:`PeerFailure` on a rank where another rank failed).

    Writing results and checkpoints is the caller's job (:func:`rayot.checkpoints.save_checkpoint`,
    :func:`rayot.train.rows.result_rows`), so that the single-process CLI and the distributed Ray trial
    share this function unchanged.
    """
    (result,) = run_pack([cfg], device=device, hooks=hooks, progress=progress)
    assert result.outcome is not None  # a pack of one raises its member's error
    return result.outcome


def _settle(hooks: TrialHooks, results: list[MemberResult], errors: dict[int, RayotError]) -> None:
    """Agree across ranks on which members failed in a phase of :func:`run_pack` (``errors``: this
    rank's, by member); a pack of one raises its member's error at once, as a lone trial does."""
    for i, error in agreed_failures(hooks, len(results), errors).items():
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
    (:func:`~rayot.train.loop.train_pack`, :func:`~rayot.train.evaluate.evaluate_pack`). A failure
    of what the members share (the CLIP model, a test set) fails every member; a member's own
    failure (its data, its ``init_from`` prompts, a non-finite loss) drops that member only. A pack
    of one raises its error.
    """
    hooks = hooks or TrialHooks()
    check_packable(cfgs)
    lead = cfgs[0]
    device = device or resolve_device(lead.device)
    results = [MemberResult(cfg) for cfg in cfgs]
    seed_everything(lead.seed)  # random weights (tiny test models) come from the seed
    trains = C.method_of(lead).trains  # the same for every member (rayot.packing)
    try:  # a bad model on one rank must stop every rank (agree)
        loaded = load_clip(
            lead.model.name,
            lead.model.pretrained,
            checkpoint=resolve_weights_path(lead.model.checkpoint),
            cache_dir=lead.model.cache_dir,
            device=device,
        )
    except RayotError as exc:
        agree(hooks, exc)
    if hooks.world_size > 1:
        agree(hooks, None)

    tasks: list[Task | None] = [None] * len(cfgs)
    search = lead.validation.enabled  # the same for every member (rayot.packing)
    datas: list[SearchData | None] = [None] * len(cfgs)  # a search trial's tasks: no test image
    errors: dict[int, RayotError] = {}
    for i, cfg in enumerate(cfgs):  # each member's few-shot subset, from its seed
        try:
            if search:
                v = cfg.validation
                datas[i] = search_data(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots, seed=cfg.seed,
                                       subsample=C.train_subsample(cfg), holdout=v.holdout,
                                       holdout_seed=v.holdout_seed)
                tasks[i] = datas[i].train
            else:
                tasks[i] = build_task(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots if trains else 0,
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
                C.method_of(cfg).for_dataset(models[i], cfg.settings, cfg.data.dataset)
            except RayotError as exc:
                errors[i] = exc
    _settle(hooks, results, errors)

    train_seconds = 0.0
    histories: dict[int, list[dict[str, float]]] = {}
    stopped: dict[int, int | None] = {}
    if trains:
        members, errors = {}, {}
        for i, cfg in enumerate(cfgs):
            if results[i].error is None and C.epochs_trained(cfg) > 0:
                try:
                    members[i] = Member(cfg, models[i], tasks[i], image_size=loaded.image_size,
                                        device=device, hooks=hooks, pack_size=len(cfgs))
                except RayotError as exc:
                    errors[i] = exc
        _settle(hooks, results, errors)
        members = {i: m for i, m in members.items() if results[i].error is None}
        if members:
            validate = None
            if search:
                index = {m.trial_id: i for i, m in members.items()}

                def validate(done: list[Member]) -> dict[str, dict[str, float]]:
                    """Each member's validation scores after an epoch (its model as it stands)."""
                    where = [index[m.trial_id] for m in done]
                    accuracy = _evaluate(where, C.validation_splits(lead), cfgs, models, tasks, datas,
                                         image_size=loaded.image_size, device=device, hooks=hooks)
                    for m in done:  # a module that holds its classes gets its training classes back
                        if m.model.text_per_image:
                            m.model.set_classnames(m.task.classnames)
                    return {C.trial_id(cfgs[i]): scores({split: e.accuracy for split, e in accuracy[i].items()})
                            for i in where}

            seconds = train_pack(list(members.values()), device=device, hooks=hooks, progress=progress,
                                 validate=validate)
            train_seconds = seconds / len(members)  # each member's share of the pack's time
            for i, m in members.items():  # failures in training were agreed on by every rank
                if m.error is not None:
                    results[i].error = m.error
                histories[i] = m.history
                stopped[i] = m.stopped_at
            if len(cfgs) == 1 and results[0].error is not None:
                raise results[0].error

    alive = [i for i, r in enumerate(results) if r.error is None]
    evals: dict[int, list[EvalResult]] = {i: [] for i in alive}
    targets = C.eval_targets(lead) if alive else []
    try:  # every rank evaluates its share of each test set, for every member at once
        for protocol, eval_dataset, split in targets:
            done = _evaluate(alive, (split,), cfgs, models, tasks, datas, image_size=loaded.image_size,
                             device=device, hooks=hooks, eval_dataset=eval_dataset)
            for i in alive:
                e = done[i][split]
                evals[i].append(EvalResult(protocol, eval_dataset, split, e.n_correct, e.n_test, e.n_classes))
                log.info("%s%s %s (%s): %.2f%% of %d", "" if len(cfgs) == 1 else f"{C.trial_id(cfgs[i])} ",
                         protocol, eval_dataset, split, evals[i][-1].accuracy, e.n_test)
    except RayotError as exc:  # the test set is every member's
        if len(cfgs) == 1:
            raise
        for i in alive:
            results[i].error = exc
    for i, r in enumerate(results):
        if r.error is None:
            r.outcome = TrialOutcome(C.trial_id(r.cfg), evals[i], models[i].prompt_state_dict(), train_seconds,
                                     histories.get(i, []), stopped.get(i))
        elif len(cfgs) > 1 and not isinstance(r.error, PeerFailure):
            log.error("trial %s of the pack failed: %s", C.trial_id(r.cfg), r.error)
    return results


def _evaluate(
    which: list[int],
    splits: tuple[str, ...],
    cfgs: list[C.TrialConfig],
    models: list[nn.Module | None],
    tasks: list[Task | None],
    datas: list[SearchData | None],
    *,
    image_size: int,
    device: torch.device,
    hooks: TrialHooks,
    eval_dataset: str | None = None,
) -> dict[int, dict[str, EvalResult]]:
    """The correct counts of members ``which`` on each of ``splits``: a test split of
    ``eval_dataset`` (shared by every member), or a search trial's validation split (its own
    seed's validation images: members are evaluated in groups of one seed)."""
    lead = cfgs[which[0]]
    eval_dataset = eval_dataset or lead.data.dataset
    groups: dict[int | None, list[int]] = {}
    for i in which:
        groups.setdefault(cfgs[i].seed if datas[i] is not None else None, []).append(i)
    out: dict[int, dict[str, EvalResult]] = {i: {} for i in which}
    for split in splits:
        for members in groups.values():
            first = members[0]
            if datas[first] is not None:
                task = validation_task(datas[first], split)
            elif eval_dataset == lead.data.dataset and split == C.train_subsample(lead):
                task = tasks[first]  # the test split does not depend on the few-shot subset
            else:
                subsample = split if split in ("base", "novel") else "all"
                task = build_task(eval_dataset, lead.data.root, shots=0, seed=lead.seed, subsample=subsample)
            for i in members:
                C.method_of(cfgs[i]).for_dataset(models[i], cfgs[i].settings, eval_dataset)
            counts, n_test = evaluate_pack(
                [models[i] for i in members], task, image_size=image_size, device=device,
                precision=lead.precision, batch_size=lead.optim.eval_batch_size,
                num_workers=lead.data.num_workers, hooks=hooks)
            for i, n_correct in zip(members, counts, strict=True):
                out[i][split] = EvalResult(lead.data.protocol, eval_dataset, split, n_correct, n_test,
                                           len(task.classnames))
    return out
