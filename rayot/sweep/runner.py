"""Run a sweep on Ray Tune: one Tune trial per pending trial configuration, a live view, a summary."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from rayot import config as C
from rayot import results, switches
from rayot.errors import ConfigError
from rayot.report.names import format_value, setting_label
from rayot.storage import lease_guarantee, transient, transient_text
from rayot.sweep import cluster, search
from rayot.sweep.packs import make_packs, pack_id
from rayot.sweep.spec import SweepSpec, storage_of
from rayot.sweep.tune_callbacks import callbacks as tracker_callbacks
from rayot.sweep.worker import (
    lease_ttl_s,
    log_name,
    ray_storage,
    record_failure,
    tune_driver,
)
from rayot.terminal import fit
from rayot.trackers import Tracking
from rayot.trackers import prepare as prepare_tracking
from rayot.typed import plain

log = logging.getLogger(__name__)

#: Trial states: pending (not started), waiting (its Tune trial waits for workers), running,
#: done, failed, skipped (finished before this run) and busy (another sweep holds its lease).
STATES = ("pending", "waiting", "running", "done", "failed", "skipped", "busy")


@dataclass
class TrialState:
    trial_id: str
    cfg: C.TrialConfig
    status: str = "pending"  # one of STATES
    epoch: int = 0
    error: str = ""
    log: str = ""
    started: float | None = None
    finished: float | None = None


def describe(cfg: C.TrialConfig, varying: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """The columns of a trial in the sweep's tables; ``settings``: its method's settings that
    differ between the sweep's trials of that method (:func:`varying_settings`)."""
    name = C.method_of(cfg).name
    keys = (varying or {}).get(name, ())
    own = plain(cfg.settings)
    return {
        "dataset": cfg.data.dataset,
        "protocol": cfg.data.protocol,
        "method": name,
        "seed": str(cfg.seed),
        "settings": " ".join(f"{setting_label(k)}={format_value(own[k])}" for k in keys),
    }


def varying_settings(cfgs: list[C.TrialConfig]) -> dict[str, tuple[str, ...]]:
    """For each method, its settings whose values differ between ``cfgs``' trials of it."""
    values: dict[str, dict[str, set[str]]] = {}
    for cfg in cfgs:
        name = C.method_of(cfg).name
        for key, value in plain(cfg.settings).items():
            values.setdefault(name, {}).setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return {name: tuple(k for k, seen in keys.items() if len(seen) > 1) for name, keys in values.items()}


def plan_table(states: list[TrialState], title: str, packs: dict[str, str] | None = None) -> Table:
    """The trials of a sweep; ``packs`` (trial id → its pack) adds a column saying which trials
    train together (rayot.packing)."""
    table = Table(title=title)
    varying = varying_settings([s.cfg for s in states])
    rows = [describe(s.cfg, varying) for s in states]
    shown = ("dataset", "protocol", "method", "seed", *(("settings",) if any(d["settings"] for d in rows) else ()))
    for col in ("trial", *shown, "status", *(("pack",) if packs else ())):
        table.add_column(col)
    for s, d in zip(states, rows, strict=True):
        pack = (packs.get(s.trial_id, "-"),) if packs else ()
        table.add_row(s.trial_id, *(d[col] for col in shown), s.status, *pack)
    return table


#: Above this many trials (or searches), ``--dry-run`` prints a summary, a row per dataset, protocol
#: and method, and the table of every trial only with ``--full``: a 100,000-trial table is 100,000
#: lines, about 11 MB, that nobody reads, while a few hundred rows still fit a scroll back.
PLAN_ROWS = 200


def plan_summary(states: list[TrialState], title: str) -> Table:
    """The trials of a large sweep, a row per dataset, protocol and method: how many, of how many
    seeds and settings, done and to run."""
    table = Table(title=title)
    for col in ("dataset", "protocol", "method", "trials", "seeds", "settings", "done", "to run"):
        table.add_column(col)
    varying = varying_settings([s.cfg for s in states])
    groups: dict[tuple[str, str, str], list[TrialState]] = {}
    for s in states:
        d = describe(s.cfg, varying)
        groups.setdefault((d["dataset"], d["protocol"], d["method"]), []).append(s)
    for (dataset, protocol, method), members in groups.items():
        seeds = len({m.cfg.seed for m in members})
        settings = len({describe(m.cfg, varying)["settings"] for m in members})
        done = sum(m.status == "done" for m in members)
        table.add_row(dataset, protocol, method, str(len(members)), str(seeds), str(settings), str(done),
                      str(len(members) - done))
    return table


def _one_line(s: TrialState, varying: Mapping[str, tuple[str, ...]]) -> str:
    d = describe(s.cfg, varying)
    settings = f" {d['settings']}" if d["settings"] else ""
    return f"{s.trial_id} ({d['dataset']} {d['method']} seed {d['seed']}{settings})"


class LiveView(tune.Callback):
    """The sweep as it runs, from Tune's trial events in the driver process.

    On a terminal a Rich view refreshed in place; elsewhere (``nohup``, CI logs, ``| tee``) one
    line per trial event, since a refreshed view would only print its last frame there.
    """

    def __init__(self, states: list[TrialState], concurrency: int, console: Console) -> None:
        self.by_id = {s.trial_id: s for s in states}
        self.states = states
        self.varying = varying_settings([s.cfg for s in states])
        self.concurrency = max(concurrency, 1)
        self.console = console
        self.t0 = time.monotonic()
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a console or live view cannot be
        return {**self.__dict__, "console": None, "live": None}

    def _states(self, trial: Any) -> list[TrialState]:
        """The trials of a Tune trial: one, or the members of its pack."""
        return [self.by_id[m["trial_id"]] for m in trial.config["trial"]["members"]]

    def _move(self, s: TrialState, status: str, note: str = "") -> None:
        changed = s.status != status
        s.status = status
        if changed and self.console is not None and not self.console.is_terminal:
            counts = self.counts()
            tally = f"[{counts['done'] + counts['skipped']}/{len(self.states)} done, {counts['failed']} failed]"
            self.console.print(f"{time.monotonic() - self.t0:6.0f}s {tally} {_one_line(s, self.varying)}: {status}"
                               + (f" {note}" if note else ""), highlight=False, soft_wrap=True)
        self.refresh()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for s in self._states(trial):
            s.started = time.monotonic()
            self._move(s, "waiting", "(for its workers)")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        members = result.get("members") if isinstance(result.get("members"), dict) else {}
        for s in self._states(trial):
            if "epoch" in result:
                s.epoch = int(result["epoch"])
            mine = members.get(s.trial_id, {})
            status = mine.get("status", result.get("status"))
            if status in ("done", "failed", "busy"):
                s.error = mine.get("error") or result.get("error") or s.error
                s.log = mine.get("log") or result.get("log") or s.log
                note = f"after {time.monotonic() - (s.started or self.t0):.0f}s"
                self._move(s, status, f"{note}: {s.error}" if s.error else note)
            elif status == "running" and s.status == "waiting":
                self._move(s, "running")
            else:
                self.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for s in self._states(trial):
            s.finished = time.monotonic()
        self.refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for s in self._states(trial):
            s.finished = time.monotonic()
            self._move(s, "failed", "(its Tune trial failed; the error is recorded at the end)")

    def counts(self) -> dict[str, int]:
        return {k: sum(s.status == k for s in self.states) for k in STATES}

    def eta(self) -> str:
        finished = [s for s in self.states if s.finished is not None and s.started is not None]
        left = sum(s.status in ("pending", "waiting", "running") for s in self.states)
        if not finished or not left:
            return "-"
        mean = sum(s.finished - s.started for s in finished) / len(finished)  # type: ignore[operator]
        return f"{mean * math.ceil(left / self.concurrency):.0f}s"

    def render(self) -> Group:
        head = Table.grid(padding=(0, 2))
        head.add_row(*(f"{k}: [bold]{v}[/]" for k, v in self.counts().items() if v or k in ("done", "failed")),
                     f"at once: {self.concurrency}",
                     f"elapsed: {time.monotonic() - self.t0:.0f}s", f"left: ~{self.eta()}")
        active = [s for s in self.states if s.status in ("waiting", "running")]
        if not active:
            return Group(head)
        running = Table(show_edge=False, box=None)
        for col in ("trial", "dataset", "method", "seed", "settings", "epoch"):
            running.add_column(col)
        for s in active:
            d = describe(s.cfg, self.varying)
            if s.status == "waiting":
                where = "waiting for workers"
            elif not C.method_of(s.cfg).trains or C.epochs_trained(s.cfg) == 0:
                where = "evaluating"
            else:
                where = f"{s.epoch}/{s.cfg.optim.epochs}"
            running.add_row(s.trial_id, d["dataset"], d["method"], d["seed"], d["settings"], where)
        return Group(head, running)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())


@dataclass
class SweepSummary:
    states: list[TrialState] = field(default_factory=list)

    @property
    def failed(self) -> list[TrialState]:
        return [s for s in self.states if s.status == "failed"]

    @property
    def busy(self) -> list[TrialState]:
        return [s for s in self.states if s.status == "busy"]


def _owner(spec: SweepSpec) -> dict[str, Any]:
    """Who runs this sweep, as its trials' leases name it."""
    return {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "label": f"sweep {spec.name}"}


def unsaved_as_pending(done: dict[str, str], trials: list[C.TrialConfig], checkpoints: str,
                       console: Console) -> dict[str, str]:
    """``done`` without this sweep's ``done`` trials whose prompts are not saved under
    ``checkpoints`` (rows of earlier versions: :func:`rayot.checkpoints.trials_without_prompts`),
    so that they run again; one warning line names them."""
    from rayot.checkpoints import trials_without_prompts, without_prompts_line

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
                    "members": [{"trial_id": C.trial_id(c), "config": C.to_json(c)} for c in pack],
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
    if console.is_terminal:
        with Live(view.render(), console=console, refresh_per_second=2, transient=False) as live:
            view.live = live
            grid = _fit_tuner(tuner, storage.checkpoints)
            view.live = None
            live.update(view.render())
    else:
        grid = _fit_tuner(tuner, storage.checkpoints)
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


def summary_table(summary: SweepSummary) -> Table:
    table = Table(title="sweep summary")
    for col in ("status", "trials"):
        table.add_column(col)
    for status, label in (("done", "done"), ("skipped", "done before"),
                          ("busy", "running in another sweep"), ("failed", "failed")):
        n = sum(s.status == status for s in summary.states)
        if n or status in ("done", "failed"):
            table.add_row(label, str(n))
    return table


def failures_table(summary: SweepSummary) -> Table:
    table = Table(title="failed trials (a re-run retries them)")
    for col in ("trial", "dataset", "method", "seed", "error", "log"):
        table.add_column(col, overflow="fold")
    for s in summary.failed:
        d = describe(s.cfg)
        table.add_row(s.trial_id, d["dataset"], d["method"], d["seed"], s.error, s.log)
    return table


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
    """Run the searches of a sweep (every cell's samples, in rounds for optuna), then choose and
    keep each search's record (``<results>/searches/``). ``run``: :func:`run_sweep`'s options.

    Finished search trials are not run again: a re-run draws the same samples (and, for optuna,
    tells it the same scores), so the search resumes where it stopped.
    """
    s = spec.search
    assert s is not None
    location = cells[0].config.output.results
    optuna = {c.search_id: search.OptunaRounds(s, c.metric) for c in cells} if s.algorithm == "optuna" else {}
    out = SearchRun(cells)
    for round_no in range(search.rounds(s)):
        start = round_no * s.rounds_batch
        new = search.draw_round(cells, s, round_no, optuna)
        if not new:
            break
        unique = list({C.trial_id(t): t for t in new}.values())
        log.info("search round %d: %d samples", round_no + 1, len(unique))
        out.summaries.append(run_sweep(spec, unique, searches=search.rung_searches(cells, s),
                                       phase=f"search{round_no + 1}", **run))
        for c in cells if optuna else ():
            scores = [search.outcome_of(location, C.trial_id(t), c.metric) for t in c.trials[start:]]
            optuna[c.search_id].tell(start, [o.score if o.status == "done" else None for o in scores])
    for c in cells:
        outcomes = [search.outcome_of(location, C.trial_id(t), c.metric) for t in c.trials]
        out.outcomes[c.search_id] = outcomes
        out.chosen[c.search_id] = chosen = search.choose(c, outcomes)
        try:
            results.write_search_record(location, c.search_id,
                                        search.record_rows(c, s, outcomes, chosen, spec.name))
        except OSError as exc:
            log.error("search %s: its record could not be written (%s); its trials' results are kept", c.search_id, exc)
    return out


def _values(params: Mapping[str, Any]) -> str:
    """A sample's values as the tables show settings: ``λ=4.43``."""
    return " ".join(f"{setting_label(k.split('.', 1)[-1])}={format_value(v)}" for k, v in params.items())


def search_table(run: SearchRun, s: search.Search) -> Table:
    """Each search's choice: the chosen values, their validation score, how much training it took."""
    table = Table(title="search: the setting chosen on validation, per cell")
    for col in ("dataset", "protocol", "method", "chosen", "score", "samples", "epochs trained"):
        table.add_column(col)
    for c in run.cells:
        outcomes = run.outcomes[c.search_id]
        i = run.chosen[c.search_id]
        chosen = _values(c.samples[i]) if i is not None else "none (no sample finished)"
        score = f"{outcomes[i].score:.2f} ({c.metric})" if i is not None else "-"
        done = sum(o.status == "done" for o in outcomes)
        stopped = sum(o.stopped_at is not None for o in outcomes)
        trained = sum(o.epochs_trained or 0 for o in outcomes)
        full = len(outcomes) * C.epochs_trained(c.config)
        table.add_row(c.config.data.dataset, c.config.data.protocol, C.method_of(c.config).name, chosen, score,
                      f"{done}/{len(outcomes)} done, {stopped} stopped early", f"{trained} of {full}")
    return table


def search_plan(s: search.Search, cells: list[search.Cell], done: dict[str, str], *, full: bool = False) -> list[Any]:
    """``--dry-run``: each search (the first :data:`PLAN_ROWS` unless ``full``), its first samples
    and their state, and the epoch budget with and without early stopping.

    Its "scored on validation images only" is :func:`rayot.sweep.search.validation_only` of these
    very search trials, the check that refuses a space at load: a plan that could not say it is
    refused instead (ConfigError)."""
    method = C.method_of(cells[0].config).name
    problem = search.validation_only(s, method, [t for c in cells for t in c.trials])
    if problem:
        raise ConfigError(f"{problem}: the search would not be scored on validation images only")
    each = f"{s.num_samples} samples each" if s.algorithm == "optuna" else f"{len(cells[0].samples)} samples each"
    table = Table(title=f"searches: {len(cells)} (one per cell), {s.algorithm}, {each}")
    for col in ("search", "dataset", "protocol", "method", "metric", "samples", "done"):
        table.add_column(col)
    shown_cells = cells if full or len(cells) <= PLAN_ROWS else cells[:PLAN_ROWS]
    for c in shown_cells:
        shown = "; ".join(_values(p) for p in c.samples[:6]) + (" ..." if len(c.samples) > 6 else "")
        if s.algorithm == "optuna":
            shown = f"first round: {shown}"
        finished = sum(done.get(t) == "done" for t in c.trial_ids())
        table.add_row(c.search_id, c.config.data.dataset, c.config.data.protocol, C.method_of(c.config).name,
                      c.metric, shown, f"{finished}/{len(c.trials)}")
    epochs = C.epochs_trained(cells[0].config)
    full, expected = search.epoch_budget(s, epochs)
    sched = s.scheduler
    held = (f"trained without {s.holdout:.0%} of the base classes (held out as pseudo-novel)"
            if cells[0].config.data.protocol == "base2novel" and s.holdout > 0 else "trained on the few-shot subset")
    lines: list[Any] = [fit(table)]
    if len(shown_cells) < len(cells):
        lines.append(f"... and {len(cells) - len(shown_cells)} more searches (--full lists every one)")
    lines.append(f"search trials: seed {cells[0].config.seed}, {held}, scored on validation images only "
                 f"(the space varies training settings only: {', '.join(s.space)})")
    if search.make_scheduler(s, epochs) is None:
        lines.append(f"epoch budget: {len(cells)} x {full} = {len(cells) * full} epochs (no early stopping)")
    else:
        marks = ", ".join(map(str, search.milestones(s, epochs)))
        lines.append(f"epoch budget: {len(cells) * full} epochs without early stopping; about "
                     f"{len(cells) * expected:.0f} with {sched.type} (rungs after epochs {marks}, each keeping "
                     f"1/{sched.reduction_factor:g}; {expected / full:.0%} of the full budget)")
    seeds = sorted({n for c in cells for n in c.seeds})
    lines.append(f"then: the chosen setting of each search trained and tested for seeds {seeds} "
                 f"({len(cells) * len(seeds)} test trials)")
    return lines
