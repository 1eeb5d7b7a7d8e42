"""Run a sweep on Ray Tune: one Tune trial per pending trial configuration (what the terminal shows
of it: rayot.sweep.view), and a sweep's searches."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ray import tune
from rich.console import Console
from rich.markup import escape

from rayot import config as C
from rayot import results, search_records, switches
from rayot.storage import lease_guarantee, transient, transient_text
from rayot.sweep import cluster, search
from rayot.sweep.packs import make_packs, pack_id
from rayot.sweep.spec import SweepSpec, storage_of
from rayot.sweep.tune_callbacks import callbacks as tracker_callbacks
from rayot.sweep.view import LiveView, SweepSummary, TrialState
from rayot.sweep.worker import lease_ttl_s, ray_storage, tune_driver
from rayot.trackers import Tracking
from rayot.trackers import prepare as prepare_tracking
from rayot.train.record import log_name, record_failure

log = logging.getLogger(__name__)


def _owner(spec: SweepSpec) -> dict[str, Any]:
    """Who runs this sweep, as its trials' leases name it."""
    return {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "label": f"sweep {spec.name}"}


def unsaved_as_pending(done: dict[str, str], trials: list[C.TrialConfig], checkpoints: str,
                       console: Console) -> dict[str, str]:
    """``done`` without this sweep's ``done`` trials whose prompts are not saved under
    ``checkpoints`` (rows of earlier versions: :func:`rayot.results.trials_without_prompts`),
    so that they run again; one warning line names them."""
    from rayot.results import trials_without_prompts, without_prompts_line

    ids = [C.trial_id(c) for c in trials if done.get(C.trial_id(c)) == "done"]
    unsaved = trials_without_prompts(checkpoints, ids)
    if not unsaved:
        return done
    line = without_prompts_line(checkpoints, unsaved, "they count as not done and run again")
    log.debug("%s", line)
    console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    again = set(unsaved)
    return {tid: status for tid, status in done.items() if tid not in again}


def run_sweep(
    spec: SweepSpec,
    trials: list[C.TrialConfig],
    *,
    address: str | None,
    console: Console,
    retry_failed: bool = True,
    max_concurrent: int | None = None,
    tracking: Tracking | None = None,
    searches: dict[str, dict[str, Any]] | None = None,
    phase: str = "",
) -> SweepSummary:
    """Run every trial that has no finished result; returns the final state of each trial.

    Everything that can be checked before Ray starts is checked first (storage is writable, the
    cluster answers, a trial fits on it), so a bad sweep ends in seconds with one message.
    ``tracking`` (resolved: :func:`rayot.trackers.resolve`) logs every trial to its trackers.
    ``searches`` (:func:`rayot.sweep.search.rung_searches`): the searches whose trials these are,
    for their early stopping (one coordinator actor for the run).
    """
    storage = storage_of(spec, trials)
    results_location = storage.results
    done = results.finished_trials(results_location)
    done = unsaved_as_pending(done, trials, storage.checkpoints, console)
    states = []
    for cfg in trials:
        tid = C.trial_id(cfg)
        prior = done.get(tid)
        skip = prior == "done" or (prior == "failed" and not retry_failed)
        states.append(TrialState(tid, cfg, status="skipped" if skip else "pending"))
    pending = [s for s in states if s.status == "pending"]
    if not pending:
        console.print(f"all {len(states)} trials already have results: nothing to run")
        return SweepSummary(states)

    lease_ttl = lease_ttl_s()  # a bad value: one message before anything starts
    for location, what in ((results_location, "results"), (storage.checkpoints, "checkpoint")):
        results.check_writable(location, what)
        results.clean_temporary_files(location)
    best_effort = lease_guarantee(results_location)
    if best_effort:  # two sweeps on this storage could both run a trial: say so, once
        log.warning("%s", best_effort)
        console.print(f"[yellow]warning:[/] {escape(best_effort)}")
    if tracking is not None and tracking.enabled:
        prepare_tracking(tracking)  # a missing package or a bad store: one message, before Ray
    cluster.check_storage(results_location, "results", embedded=not address)
    cluster.check_storage(storage.checkpoints, "checkpoint", embedded=not address)
    embedded = cluster.connect(address)
    capacity = cluster.Capacity.of_cluster()
    cluster.check_fits(spec.resources, capacity, embedded=embedded)
    driver = cluster.driver_resources()
    concurrency = cluster.concurrency(spec.resources, capacity, driver, max_concurrent)
    log.info("%d trials to run, %d at once", len(pending), concurrency)
    owner = _owner(spec)
    # the actor lives while its handle does: held here until every trial of the run ended
    actor, coordinator = _start_coordinator(searches, results_location, owner["token"], done) if searches else (None, None)
    packs = make_packs([s.cfg for s in pending], spec.resources.pack)
    if len(packs) < len(pending):
        log.info("%d trials in %d packs", len(pending), len(packs))
    param_space = {
        "trial": tune.grid_search(
            [
                {
                    "trial_id": pack_id(pack),  # a lone trial's own id, else pack-<hash of its ids>
                    # the configurations as expand() built them, carried whole: never built again
                    "members": [{"trial_id": C.trial_id(c), "config": c} for c in pack],
                    "resources": asdict(spec.resources),
                    "sweep": spec.name,
                    "owner": owner,
                    "switches": switches.carried(),  # a Ray joined, not started, lacks this environment
                    "lease_ttl_s": lease_ttl,
                    "coordinator": coordinator,
                }
                for pack in packs
            ]
        )
    }
    view = LiveView(states, concurrency * spec.resources.pack, console)
    tuner = tune.Tuner(
        tune.with_resources(lambda param: tune_driver(param["trial"]), driver),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
            trial_name_creator=lambda t: t.config["trial"]["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"tune-{spec.name}{phase and '-' + phase}",
            **ray_storage(storage.checkpoints),
            callbacks=[view, *tracker_callbacks(tracking or Tracking(), spec.name),
                       *([EndOnError(coordinator)] if coordinator else [])],
            verbose=0,
            # a driver records its trial's failures itself and never raises for them: a Tune-level
            # retry only follows a crash of the driver process (its node lost, killed)
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    grid = view.showing(lambda: _fit_tuner(tuner, storage.checkpoints))
    del actor  # every trial ended: the coordinator may go
    tune_errors = _tune_errors(grid or ())
    _reconcile(states, results_location, tune_errors, spec.name)
    return SweepSummary(states)


def _fit_tuner(tuner: tune.Tuner, checkpoints: str):
    """``tuner.fit()``; ``None`` when Tune could not read its own state back from an object store
    that stopped answering (the trials' outcomes are then read from the results, which retries)."""
    try:
        return tuner.fit()
    except Exception as exc:
        if not (transient(exc) or transient_text(str(exc))):
            raise
        log.warning("Ray Tune could not read its state at %s (%s); the trials' outcomes come from "
                    "the results", checkpoints, exc)
        return None


class EndOnError(tune.Callback):
    """A Tune trial that died (its driver lost) tells the search coordinator that its members
    report nothing more, so the samples after them wait no longer."""

    def __init__(self, coordinator: str) -> None:
        self.coordinator = coordinator

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        search.end_trials(self.coordinator, [m["trial_id"] for m in trial.config["trial"]["members"]])


def _start_coordinator(searches: dict[str, dict[str, Any]], location: str, token: str,
                       done: dict[str, str]) -> tuple[Any, str | None]:
    """The searches' coordinator actor and its name (None without a scheduler), told what earlier
    runs finished: their trials' every epoch's scores, and where they ended."""
    if not any(info["search"].scheduler.type != "none" for info in searches.values()):
        return None, None
    histories, ended = {}, {}
    for info in searches.values():
        for tid in info["order"]:
            if tid not in done:
                continue
            outcome = search.outcome_of(location, tid, info["metric"])
            histories[tid] = outcome.history
            ended[tid] = outcome.stopped_at or outcome.epochs_trained or 0
    return search.start_coordinator(searches, histories, ended, token)


def _tune_errors(results: Iterable[Any]) -> dict[str, BaseException]:
    """The error of each failed Tune trial, by the rayot trial ids it packed. A Tune trial that
    failed before its configuration reached it (its actor could not import, say) has no ids to
    name: its error is logged, and :func:`_reconcile` records its trials as ended without a result,
    rather than the sweep stopping on a missing configuration."""
    errors: dict[str, BaseException] = {}
    for r in results:
        if r.error is None:
            continue
        members = ((r.config or {}).get("trial") or {}).get("members")
        if not members:
            log.error("a Tune trial failed before its configuration reached it: %s: %s",
                      type(r.error).__name__, r.error)
            continue
        for m in members:
            errors[m["trial_id"]] = r.error
    return errors


def _reconcile(states: list[TrialState], location: str, tune_errors: dict[str, BaseException],
               sweep: str) -> None:
    """The result files are the truth: a trial is done only when its rows say so.

    A trial that ended without a result (its Tune trial died) gets a failure row and a log file
    here, so every failure names a log that exists.
    """
    final = results.finished_trials(location)
    for s in states:
        if s.status == "skipped":
            continue
        if s.status == "busy":
            s.status = "skipped" if final.get(s.trial_id) == "done" else "busy"
            continue
        s.status = final.get(s.trial_id, "failed")
        if s.status != "failed":
            continue
        recorded = results.trial_error(location, s.trial_id) if s.trial_id in final else None
        if recorded is None:
            exc = tune_errors.get(s.trial_id)
            error = exc if exc is not None else "the trial ended without writing a result"
            s.log = record_failure(s.cfg, error, sweep) or s.log
            s.error = s.error or (f"{type(exc).__name__}: {exc}" if exc is not None else str(error))
        else:
            s.error = recorded
        if not s.log:
            s.log = log_name(s.cfg)


# ----------------------------------------------------------------------------- searches


@dataclass
class SearchRun:
    """A sweep's searches after they ran: each sample's outcome, each search's choice."""

    cells: list[search.Cell]
    outcomes: dict[str, list[search.Outcome]] = field(default_factory=dict)
    chosen: dict[str, int | None] = field(default_factory=dict)
    summaries: list[SweepSummary] = field(default_factory=list)

    def retrain(self) -> list[C.TrialConfig]:
        """The chosen settings' test trials, every seed of each cell."""
        return [t for c in self.cells if self.chosen.get(c.search_id) is not None
                for t in search.retrain_trials(c, c.samples[self.chosen[c.search_id]])]


def run_search(spec: SweepSpec, cells: list[search.Cell], **run: Any) -> SearchRun:
    """Run the searches of a sweep (every cell's samples, in its algorithm's rounds), then choose and
    keep each search's record (``<results>/searches/``). ``run``: :func:`run_sweep`'s options.

    Finished search trials are not run again: a re-run draws the same samples (and, for optuna,
    tells it the same scores), so the search resumes where it stopped.
    """
    s = spec.search
    assert s is not None
    location = cells[0].config.output.results
    drawing = search.algorithms(cells, s)
    out = SearchRun(cells)
    for round_no in range(s.rounds):
        new = search.draw_round(cells, s, round_no, drawing)
        if not new:
            break
        unique = list({C.trial_id(t): t for t in new}.values())
        log.info("search round %d: %d samples", round_no + 1, len(unique))
        out.summaries.append(run_sweep(spec, unique, searches=search.rung_searches(cells, s),
                                       phase=f"search{round_no + 1}", **run))
        if round_no + 1 == s.rounds:
            continue  # no round after this one to learn from its scores
        start = round_no * s.round_size
        for c in cells:
            scores = [search.outcome_of(location, C.trial_id(t), c.metric) for t in c.trials[start:]]
            drawing[c.search_id].tell(start, [o.score if o.status == "done" else None for o in scores])
    for c in cells:
        outcomes = [search.outcome_of(location, C.trial_id(t), c.metric) for t in c.trials]
        out.outcomes[c.search_id] = outcomes
        out.chosen[c.search_id] = chosen = search.choose(c, outcomes)
        try:
            search_records.write_search_record(location, c.search_id,
                                        search.record_rows(c, s, outcomes, chosen, spec.name))
        except OSError as exc:
            log.error("search %s: its record could not be written (%s); its trials' results are kept", c.search_id, exc)
    return out


