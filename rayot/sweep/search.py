"""Hyper-parameter search on a sweep's grid: cells, samples, early stopping, the choice.

A sweep's ``search:`` section (:class:`rayot.sweep.spec.Search`, docs/search.md) searches the
settings of one method in every cell of the grid (its trials grouped by everything but the seed
and the searched keys). Per cell:

1. **Samples** are asked of the search's algorithm (:mod:`rayot.sweep.algorithms`: Ray Tune's
   variant generator or its Optuna integration), in rounds, told each round's scores before the
   next. Each sample is a *search trial*: the cell's
   configuration with the sample's values, the search's training seed and ``validation.enabled``,
   so it trains without the held-out classes and is scored on validation images only
   (:mod:`rayot.train.validation`). Search trials are ordinary trials to the sweep: results,
   leases, packs, skip-finished.
2. **Early stopping** (``scheduler``): Ray Tune's ASHA scheduler decides after every epoch, fed by
   :class:`Rungs` in the order of the samples, not of their arrival, so that the same search stops
   the same samples whatever the timing (a sample's decision at an epoch waits for the samples
   before it to reach that epoch or end). A stopped member leaves its pack; the others train on.
3. **The choice**: the best final validation score among the samples trained to the end (ties:
   the earlier sample); its values are trained for every seed of the cell and tested as ordinary
   trials. The samples, their scores and the choice are kept in ``<results>/searches/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rayot import config as C
from rayot import results
from rayot.errors import ConfigError
from rayot.metrics import VALIDATION_PREFIX, validation_scores
from rayot.sweep.algorithms import Algorithm
from rayot.sweep.spec import (
    MAX_SEARCH_TRIALS,
    Search,
    SweepSpec,
    searched_method,
    space_key_problem,
)
from rayot.train.validation import metrics_of

log = logging.getLogger(__name__)

#: Seconds a search trial waits at most for the samples before it to reach an epoch, before the
#: scheduler decides without them (and the search is no longer reproducible: logged).
WAIT_LIMIT_S = 3600.0


# ----------------------------------------------------------------------------- cells and samples


@dataclass
class Cell:
    """One search: the cell's grid trials (one per seed, at their grid settings) and its samples."""

    search_id: str
    config: C.TrialConfig  # the cell's first grid trial, at the search's training seed
    grid: list[C.TrialConfig]  # the cell's grid trials of the searched method
    seeds: tuple[int, ...]
    metric: str
    samples: list[dict[str, Any]] = field(default_factory=list)  # {dotted key: value}, in draw order
    trials: list[C.TrialConfig] = field(default_factory=list)  # the samples' search trials

    @property
    def label(self) -> str:
        d = self.config.data
        return f"{d.dataset} {d.protocol} {C.method_of(self.config).name}"

    def trial_ids(self) -> list[str]:
        return [C.trial_id(t) for t in self.trials]


def _cell_key(cfg: C.TrialConfig, space: Iterable[str]) -> str:
    """What a cell's trials share: every key that changes a trial but its seed and the searched keys."""
    skip = ("seed", *space, *C.NOT_IN_ID)
    flat = {k: v for k, v in C.flatten(cfg).items() if not any(k == s or k.startswith(s + ".") for s in skip)}
    return json.dumps(flat, sort_keys=True, default=str)


def cells_of(spec: SweepSpec, trials: list[C.TrialConfig]) -> list[Cell]:
    """The searches of the sweep: the searched method's grid trials grouped by everything but their
    seed and the searched keys, in grid order."""
    search = spec.search
    assert search is not None
    method = searched_method(spec, trials)
    groups: dict[str, list[C.TrialConfig]] = {}
    for cfg in trials:
        if C.method_of(cfg).name == method:
            groups.setdefault(_cell_key(cfg, search.space), []).append(cfg)
    cells = []
    for key, grid in groups.items():
        seeds = tuple(sorted({c.seed for c in grid}))
        seed = search.trial_seed if search.trial_seed is not None else seeds[0]
        first = grid[0]
        offered = metrics_of(_search_trial(first, search, seed, {}))
        metric = search.metric or offered[0]
        if metric not in offered:
            raise ConfigError(f"search.metric: {metric} does not apply to the cell {first.data.dataset} "
                              f"{first.data.protocol} (its metrics: {', '.join(offered)})")
        section = json.dumps({**asdict(search), "method": method, "metric": metric}, sort_keys=True, default=str)
        search_id = hashlib.sha256(f"{key}|{section}".encode()).hexdigest()[:12]
        cells.append(Cell(search_id, C.replace(first, seed=seed), grid, seeds, metric))
    if len(cells) * search.sample_count > MAX_SEARCH_TRIALS:
        raise ConfigError(f"search: {len(cells):,} cells x {search.sample_count:,} samples is "
                          f"{len(cells) * search.sample_count:,} search trials, above the limit of "
                          f"{MAX_SEARCH_TRIALS:,} (fewer samples, or fewer cells in the grid; docs/search.md §7)")
    return cells


def validation_only(search: Search, method: str, trials: Iterable[C.TrialConfig]) -> str | None:
    """Why search trials could read a test image, or None when they cannot: the space holds only
    training keys (:func:`rayot.sweep.spec.space_key_problem`, the check that refuses the others at
    load) and every trial is scored on validation splits only. The plan's claim rests on it."""
    for key in search.space:
        problem = space_key_problem(key, method)
        if problem:
            return f"search.space.{key}: {problem}"
    for trial in trials:
        tested = [split for _, _, split in C.eval_targets(trial) if split not in C.VALIDATION_SPLITS]
        if not trial.validation.enabled or tested:
            return f"search trial {C.trial_id(trial)}: evaluated on {', '.join(tested) or 'its test splits'}"
    return None


def _search_trial(cfg: C.TrialConfig, search: Search, seed: int, params: dict[str, Any]) -> C.TrialConfig:
    """A sample's search trial: the cell's configuration with its values, trained with the search's
    seed without the held-out classes, scored on validation images."""
    # the search's own keys last: no sample can switch validation off (the space refuses it too)
    updates = {**params, "seed": seed, "validation.enabled": True, "validation.holdout": search.holdout,
               "validation.holdout_seed": search.holdout_seed}
    try:
        return C.replace(cfg, **updates)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ConfigError(f"search sample {shown or '(none)'}: {exc}") from None


def retrain_trials(cell: Cell, params: dict[str, Any]) -> list[C.TrialConfig]:
    """The chosen setting's test trials: the cell's grid trial of each seed with its values."""
    one_per_seed = {c.seed: c for c in reversed(cell.grid)}
    return [C.replace(one_per_seed[s], **params) for s in cell.seeds]


def algorithms(cells: list[Cell], search: Search) -> dict[str, Algorithm]:
    """Each cell's algorithm, by search id, before it drew anything."""
    return {c.search_id: search.algorithm_type(search, c.metric) for c in cells}


def draw_round(cells: list[Cell], search: Search, round_no: int, drawing: dict[str, Algorithm]) -> list[C.TrialConfig]:
    """The search trials of round ``round_no`` (0-based) of every cell, asked of its algorithm in
    ``drawing`` (:func:`algorithms`) and added to the cells."""
    new = []
    start = round_no * search.round_size
    n = min(search.round_size, search.sample_count - start)
    for cell in cells:
        drawn = drawing[cell.search_id].ask(n, start) if n > 0 else []
        for params in drawn:
            cell.samples.append(params)
            cell.trials.append(_search_trial(cell.config, search, cell.config.seed, params))
        new.extend(cell.trials[len(cell.trials) - len(drawn):])
    return new


def preview(cells: list[Cell], search: Search) -> list[Cell]:
    """Copies of ``cells`` with their first round of samples drawn (checked: a sample's value of the
    wrong type fails here, before Ray starts); the cells themselves are left as they are."""
    copies = [Cell(c.search_id, c.config, c.grid, c.seeds, c.metric) for c in cells]
    draw_round(copies, search, 0, algorithms(copies, search))
    return copies


def check_sets(spec: SweepSpec, sets: dict[str, Any]) -> None:
    """A ``--set`` of a searched key would fix what the search varies: refused."""
    assert spec.search is not None
    clash = sorted(set(spec.search.space) & set(sets))
    if clash:
        raise ConfigError(f"--set {clash[0]}: the sweep's search varies {clash[0]}; leave it out of --set "
                          "(or out of search.space)")


# ----------------------------------------------------------------------------- outcomes and the choice


@dataclass
class Outcome:
    """What became of a search trial, from its rows."""

    status: str  # done | failed | missing
    score: float | None = None
    epochs_trained: int | None = None
    stopped_at: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def outcome_of(location: str, tid: str, metric: str) -> Outcome:
    """A search trial's outcome: its final validation score (``metric``) from its rows."""
    status = results.trial_status(location, tid)
    if status is None:
        return Outcome("missing")
    fs, path = results.trial_path(location, tid)
    import pyarrow.parquet as pq

    table = pq.read_table(path, filesystem=fs).to_pylist()
    if status != "done":
        return Outcome("failed")
    score = validation_scores({r["split"]: r["accuracy"] for r in table}).get(metric)
    history = json.loads(table[0].get("epoch_metrics") or "[]")
    return Outcome("done", score, len(history), table[0].get("stopped_at"), history)


def choose(cell: Cell, outcomes: list[Outcome]) -> int | None:
    """The chosen sample: the best final score among the samples trained to the end (if none was,
    among every finished one); ties go to the earlier sample. None when no sample finished."""
    done = [i for i, o in enumerate(outcomes) if o.status == "done" and o.score is not None]
    full = [i for i in done if outcomes[i].stopped_at is None] or done
    if not full:
        return None
    return max(full, key=lambda i: (outcomes[i].score, -i))


def record_rows(cell: Cell, search: Search, outcomes: list[Outcome], chosen: int | None,
                sweep: str) -> list[dict[str, Any]]:
    """The search's record: one row per sample (:data:`rayot.search_records.SEARCH_SCHEMA`)."""
    cfg = cell.config
    retrain = [C.trial_id(t) for t in retrain_trials(cell, cell.samples[chosen])] if chosen is not None else []
    shared = {
        "search_id": cell.search_id, "sweep": sweep, "method": C.method_of(cfg).name,
        "dataset": cfg.data.dataset, "protocol": cfg.data.protocol, "shots": cfg.data.shots,
        "cell": C.to_json(cfg), "space": json.dumps(search.space, sort_keys=True),
        "algorithm": search.algorithm, "scheduler": json.dumps(asdict(search.scheduler), sort_keys=True),
        "metric": cell.metric, "search_seed": search.seed, "epochs": C.epochs_trained(cfg),
        "retrain_trial_ids": json.dumps(retrain),
    }
    return [{**shared, "sample": i, "trial_id": C.trial_id(t), "params": json.dumps(p, sort_keys=True),
             "status": o.status, "score": o.score, "epochs_trained": o.epochs_trained,
             "stopped_at": o.stopped_at, "chosen": i == chosen}
            for i, (p, t, o) in enumerate(zip(cell.samples, cell.trials, outcomes, strict=True))]


# ----------------------------------------------------------------------------- early stopping


def make_scheduler(search: Search, epochs: int) -> Any:
    """Ray Tune's ASHA scheduler for a search (None: no early stopping); its time unit is the epoch."""
    s = search.scheduler
    if s.type == "none" or s.grace_period >= epochs:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         brackets=s.brackets, stop_last_trials=False)


def milestones(search: Search, epochs: int, bracket: int = 0) -> list[int]:
    """The epochs at which the scheduler's rungs of ``bracket`` decide (Tune's rung rule)."""
    s = search.scheduler
    g, rf = s.grace_period, s.reduction_factor
    n = int(math.log(epochs / g) / math.log(rf) - bracket + 1)
    return sorted(m for k in range(max(n, 0)) if (m := int(g * rf ** (k + bracket))) < epochs)


def epoch_budget(search: Search, epochs: int) -> tuple[int, float]:
    """(epochs every sample of one search trains without early stopping, the expected epochs with
    it if each rung stops the share it aims at), brackets weighted as Tune assigns them."""
    full = search.num_samples * epochs
    if make_scheduler(search, epochs) is None:
        return full, float(full)
    rf = search.scheduler.reduction_factor
    brackets = range(search.scheduler.brackets)
    sizes = np.array([len(milestones(search, epochs, b)) for b in brackets])
    weights = np.e ** (sizes - sizes.max())
    weights = weights / weights.sum()
    expected = 0.0
    for b, w in zip(brackets, weights, strict=True):
        marks, alive, last, per_sample = milestones(search, epochs, b), 1.0, 0, 0.0
        for m in marks:
            per_sample += alive * (m - last)
            alive, last = alive / rf, m
        per_sample += alive * (epochs - last)
        expected += w * per_sample
    return full, search.num_samples * expected


class _Sample:
    """What Ray Tune's scheduler needs of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


class Rungs:
    """The early-stopping decisions of the sweep's searches, reproducible.

    Each search's Ray Tune scheduler is fed every sample's validation score of every epoch in the
    order of the samples: the decision for sample i after epoch e is taken once every sample before
    it has a score for epoch e or has ended before it (:meth:`decide` returns None until then).
    Decisions are kept, so every rank of a trial, and a trial that asks again, gets the same one.
    """

    def __init__(self, searches: dict[str, dict[str, Any]]) -> None:
        """``searches``: search id -> {"order": [trial ids], "metric": name, "search": the
        :class:`Search`, "epochs": E, "seed": the search's seed}."""
        self.order: dict[str, list[str]] = {}
        self.search_of: dict[str, str] = {}
        self.metric: dict[str, str] = {}
        self.schedulers: dict[str, Any] = {}
        self.fed: dict[tuple[str, int], int] = {}  # (search, epoch) -> samples fed or passed
        self.scores: dict[str, dict[int, float]] = {}
        self.ended: dict[str, int] = {}  # trial id -> the last epoch it will ever report
        self.decisions: dict[tuple[str, int], bool] = {}  # (trial id, epoch) -> stop
        for sid, info in searches.items():
            scheduler = make_scheduler(info["search"], info["epochs"])
            self.order[sid] = list(dict.fromkeys(info["order"]))
            self.metric[sid] = VALIDATION_PREFIX + info["metric"]
            if scheduler is None:
                continue
            self.schedulers[sid] = scheduler
            state = np.random.get_state()
            np.random.seed(info["seed"])  # the bracket of each sample (hyperband), in sample order
            for tid in self.order[sid]:
                scheduler.on_trial_add(None, _Sample(tid))
            np.random.set_state(state)
            for tid in self.order[sid]:
                self.search_of[tid] = sid
                self.scores[tid] = {}

    def report(self, histories: dict[str, list[dict[str, Any]]]) -> None:
        """Every epoch's metrics so far of some search trials (a resumed trial sends its history)."""
        for tid, history in histories.items():
            if tid not in self.search_of:
                continue
            metric = self.metric[self.search_of[tid]]
            for h in history:
                if metric in h and h[metric] == h[metric]:  # NaN: no score
                    self.scores[tid].setdefault(int(h["epoch"]), float(h[metric]))
        self._advance()

    def end(self, trial_ids: Iterable[str], last_epoch: dict[str, int] | None = None) -> None:
        """These trials report nothing more (finished, failed, stopped, held by another sweep)."""
        for tid in trial_ids:
            if tid in self.search_of:
                known = max(self.scores[tid], default=0)
                self.ended[tid] = (last_epoch or {}).get(tid, known)
        self._advance()

    def decide(self, trial_ids: Iterable[str], epoch: int) -> list[str] | None:
        """The trials of ``trial_ids`` that stop after ``epoch`` (1-based), or None while a sample
        before one of them has still to reach it."""
        stop = []
        for tid in trial_ids:
            if tid not in self.search_of:
                continue
            sid = self.search_of[tid]
            if self.fed.get((sid, epoch), 0) <= self.order[sid].index(tid):
                return None
            if self.decisions.get((tid, epoch)):
                stop.append(tid)
        return stop

    def ask(self, trial_ids: list[str], epoch: int, force: bool = False) -> list[str] | None:
        """:meth:`decide`, or :meth:`force` with ``force``: what a search trial's rank asks."""
        return self.force(trial_ids, epoch) if force else self.decide(trial_ids, epoch)

    def force(self, trial_ids: Iterable[str], epoch: int) -> list[str]:
        """Decide now with the scores at hand (after a wait past :data:`WAIT_LIMIT_S`)."""
        for tid in trial_ids:
            if tid in self.search_of:
                sid = self.search_of[tid]
                for other in self.order[sid][: self.order[sid].index(tid)]:
                    if epoch not in self.scores[other]:
                        self.ended.setdefault(other, epoch - 1)
        self._advance()
        return self.decide(trial_ids, epoch) or []

    def _advance(self) -> None:
        for sid, order in self.order.items():
            scheduler = self.schedulers.get(sid)
            if scheduler is None:
                continue
            epochs = {e for tid in order for e in self.scores[tid]}
            for epoch in sorted(epochs):
                n = self.fed.get((sid, epoch), 0)
                while n < len(order):
                    tid = order[n]
                    if epoch in self.scores[tid]:
                        result = {"epoch": epoch, "score": self.scores[tid][epoch]}
                        action = scheduler.on_trial_result(None, _Sample(tid), result)
                        self.decisions[(tid, epoch)] = action == "STOP"
                        if action == "STOP":  # it trains no further: the samples after it wait no more
                            self.ended[tid] = min(self.ended.get(tid, epoch), epoch)
                    elif not (tid in self.ended and self.ended[tid] < epoch):
                        break
                    n += 1
                self.fed[(sid, epoch)] = n


def rung_searches(cells: list[Cell], search: Search) -> dict[str, dict[str, Any]]:
    """What :class:`Rungs` needs of each search (it travels to a Ray actor)."""
    return {c.search_id: {"order": c.trial_ids(), "metric": c.metric, "search": search,
                          "epochs": C.epochs_trained(c.config), "seed": search.seed} for c in cells}


def wait_for_decision(ask: Any, trial_ids: list[str], epoch: int, limit_s: float = WAIT_LIMIT_S) -> set[str]:
    """Poll ``ask(trial_ids, epoch, force)`` (the coordinator) until it decides."""
    t0 = time.monotonic()
    warned = t0
    delay = 0.05
    while True:
        stop = ask(trial_ids, epoch, False)
        if stop is not None:
            return set(stop)
        now = time.monotonic()
        if now - t0 > limit_s:
            log.warning("search trials %s: the samples before them did not reach epoch %d within %.0f s; "
                        "deciding without them (this search's stops may differ from a re-run's)",
                        ", ".join(trial_ids), epoch, limit_s)
            return set(ask(trial_ids, epoch, True))
        if now - warned > 60:
            log.info("search trials %s wait for the samples before them to reach epoch %d", ", ".join(trial_ids), epoch)
            warned = now
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


# ----------------------------------------------------------------------------- the coordinator actor

#: The name prefix of a sweep's coordinator actor (one per sweep run: its name travels to trials).
COORDINATOR = "rayot-rungs-"
#: The Ray namespace of the coordinator: Ray Train's workers look it up from their own jobs.
NAMESPACE = "rayot"


def start_coordinator(searches: dict[str, dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
                      ended: dict[str, int], token: str) -> tuple[Any, str]:
    """A Ray actor holding the sweep's :class:`Rungs`, seeded with what earlier runs finished."""
    import ray

    name = COORDINATOR + token
    actor = ray.remote(num_cpus=0)(Rungs).options(name=name, namespace=NAMESPACE).remote(searches)
    ray.get(actor.report.remote(histories))
    ray.get(actor.end.remote(list(ended), ended))
    return actor, name


def coordinator_hook(name: str):
    """``ask(trial_ids, epoch, force)`` against the named coordinator actor (a worker's view)."""
    import ray

    actor = ray.get_actor(name, namespace=NAMESPACE)

    def ask(trial_ids: list[str], epoch: int, force: bool) -> list[str] | None:
        return ray.get(actor.ask.remote(trial_ids, epoch, force))

    def report(histories: dict[str, list[dict[str, Any]]]) -> None:
        ray.get(actor.report.remote(histories))

    return ask, report


def end_trials(name: str | None, trial_ids: list[str]) -> None:
    """Tell the coordinator that these trials report nothing more (best effort)."""
    if not name:
        return
    import ray

    try:
        ray.get(ray.get_actor(name, namespace=NAMESPACE).end.remote(trial_ids))
    except Exception as exc:  # noqa: BLE001 - a missing coordinator means the sweep itself ended
        log.debug("coordinator %s: %s", name, exc)
