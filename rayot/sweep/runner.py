"""Run a sweep on Ray Tune: one Tune trial per pending trial configuration, a live view, a summary."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from rayot import config as C
from rayot import results
from rayot.errors import RayotError
from rayot.sweep.spec import SweepSpec, storage_of
from rayot.sweep.worker import FAULT_ENV, storage_path, tune_driver

log = logging.getLogger(__name__)

#: Resources of the Tune trial itself: it only drives its Train run, which holds the real ones.
DRIVER_RESOURCES = {"CPU": 0.01}
#: A custom resource that cluster/ puts on the head node, so that drivers stay off (spot) workers.
DRIVER_SLOT = "driver_slot"


def driver_resources() -> dict[str, float]:
    """Ask for a driver slot where the cluster offers them; plain CPU otherwise (embedded Ray)."""
    if ray.cluster_resources().get(DRIVER_SLOT, 0) >= 1:
        return {**DRIVER_RESOURCES, DRIVER_SLOT: 1}
    return dict(DRIVER_RESOURCES)


@dataclass
class TrialState:
    trial_id: str
    cfg: C.TrialConfig
    status: str = "pending"  # pending | running | done | failed | skipped
    epoch: int = 0
    error: str = ""
    log: str = ""
    started: float | None = None
    finished: float | None = None


def describe(cfg: C.TrialConfig) -> dict[str, str]:
    return {
        "dataset": cfg.data.dataset,
        "protocol": cfg.data.protocol,
        "method": cfg.method,
        "seed": str(cfg.seed),
        "λ": f"{cfg.loss.lambda_ot:g}",
    }


def plan_table(states: list[TrialState], title: str) -> Table:
    table = Table(title=title)
    for col in ("trial", "dataset", "protocol", "method", "seed", "λ", "status"):
        table.add_column(col)
    for s in states:
        d = describe(s.cfg)
        table.add_row(s.trial_id, d["dataset"], d["protocol"], d["method"], d["seed"], d["λ"], s.status)
    return table


class LiveView(tune.Callback):
    """A Rich view of the sweep, refreshed from Tune's trial events in the driver process."""

    def __init__(self, states: list[TrialState], concurrency: int) -> None:
        self.by_id = {s.trial_id: s for s in states}
        self.states = states
        self.concurrency = max(concurrency, 1)
        self.t0 = time.monotonic()
        self.live: Live | None = None

    def _state(self, trial: Any) -> TrialState:
        return self.by_id[trial.config["trial"]["trial_id"]]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        s = self._state(trial)
        s.status, s.started = "running", time.monotonic()
        self.refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        s = self._state(trial)
        if "epoch" in result:
            s.epoch = int(result["epoch"])
        if result.get("status") in ("done", "failed"):
            s.status = result["status"]
            s.error = result.get("error") or s.error
            s.log = result.get("log") or s.log
        self.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        s = self._state(trial)
        s.finished = time.monotonic()
        if s.status == "running":
            s.status = "done"
        self.refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        s = self._state(trial)
        s.status, s.finished = "failed", time.monotonic()
        s.error = s.error or "the Tune trial itself failed (see Ray's logs)"
        self.refresh()

    def eta(self) -> str:
        finished = [s for s in self.states if s.finished is not None and s.started is not None]
        left = sum(s.status in ("pending", "running") for s in self.states)
        if not finished or not left:
            return "-"
        mean = sum(s.finished - s.started for s in finished) / len(finished)  # type: ignore[operator]
        return f"{mean * math.ceil(left / self.concurrency):.0f}s"

    def render(self) -> Group:
        counts = {k: sum(s.status == k for s in self.states) for k in ("pending", "running", "done", "failed", "skipped")}
        head = Table.grid(padding=(0, 2))
        head.add_row(*(f"{k}: [bold]{v}[/]" for k, v in counts.items()),
                     f"elapsed: {time.monotonic() - self.t0:.0f}s", f"left: ~{self.eta()}")
        active = [s for s in self.states if s.status == "running"]
        if not active:
            return Group(head)
        running = Table(show_edge=False, box=None)
        for col in ("trial", "dataset", "method", "seed", "λ", "epoch"):
            running.add_column(col)
        for s in active:
            d = describe(s.cfg)
            running.add_row(s.trial_id, d["dataset"], d["method"], d["seed"], d["λ"],
                            f"{s.epoch}/{s.cfg.optim.epochs}")
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


def _connect(address: str | None) -> None:
    # the plain reporter honours verbose=0; the sweep has its own live view
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    if address:
        log.info("joining the Ray cluster at %s", address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, TimeoutError) as exc:
            raise RayotError(f"Ray cluster at {address!r}: cannot connect ({exc})") from exc
    else:
        log.info("starting an embedded local Ray with %d CPUs", os.cpu_count() or 1)
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)


def _concurrency(spec: SweepSpec, max_concurrent: int | None) -> int:
    r = spec.resources
    if max_concurrent or r.max_concurrent_trials:
        return max_concurrent or r.max_concurrent_trials
    total = ray.cluster_resources()
    if r.gpus_per_worker > 0:
        fit = int(total.get("GPU", 0) // (r.gpus_per_worker * r.num_workers))
    else:
        fit = int(total.get("CPU", 1) // (r.cpus_per_worker * r.num_workers))
    if fit < 1:
        log.warning("the cluster has no room for a trial yet; running one at a time "
                    "(pass --max-concurrent N or set resources.max_concurrent_trials for an "
                    "autoscaling cluster)")
    return max(fit, 1)


def _check_storage(location: str, what: str) -> None:
    if "://" in location:
        return
    if len(ray.nodes()) > 1:
        raise RayotError(
            f"{what} location {location!r} is a local path, but the Ray cluster has "
            f"{len(ray.nodes())} nodes: use shared storage (s3://, gs:// or a shared mount given as file://)"
        )


def run_sweep(
    spec: SweepSpec,
    trials: list[C.TrialConfig],
    *,
    address: str | None,
    console: Console,
    retry_failed: bool = True,
    max_concurrent: int | None = None,
) -> SweepSummary:
    """Run every trial that has no finished result; returns the final state of each trial."""
    storage = storage_of(spec, trials)
    results_location = storage.results
    done = results.finished_trials(results_location)
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

    _connect(address)
    _check_storage(results_location, "results")
    _check_storage(storage.checkpoints, "checkpoint")
    concurrency = _concurrency(spec, max_concurrent)
    fault = os.environ.get(FAULT_ENV)
    param_space = {
        "trial": tune.grid_search(
            [
                {
                    "trial_id": s.trial_id,
                    "config": C.to_json(s.cfg),
                    "resources": asdict(spec.resources),
                    "sweep": spec.name,
                    "fault": fault,
                }
                for s in pending
            ]
        )
    }
    view = LiveView(states, concurrency)
    tuner = tune.Tuner(
        tune.with_resources(lambda param: tune_driver(param["trial"]), driver_resources()),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
            trial_name_creator=lambda t: t.config["trial"]["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"tune-{spec.name}",
            storage_path=storage_path(storage.checkpoints),
            callbacks=[view],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    with Live(view.render(), console=console, refresh_per_second=2, transient=False) as live:
        view.live = live
        tuner.fit()
        view.live = None
        live.update(view.render())
    # the result files are the truth: a trial is done only when its rows are written
    final = results.finished_trials(results_location)
    for s in states:
        if s.status == "skipped":
            continue
        s.status = final.get(s.trial_id, "failed")
        if s.status == "failed":
            recorded = final.get(s.trial_id) and results.trial_error(results_location, s.trial_id)
            s.error = recorded or s.error or "no result was written (see Ray's logs)"
            s.log = s.log or f"{s.cfg.output.checkpoints.rstrip('/')}/logs/{s.trial_id}.log"
    return SweepSummary(states)


def summary_table(summary: SweepSummary) -> Table:
    table = Table(title="sweep summary")
    for col in ("status", "trials"):
        table.add_column(col)
    for status in ("done", "skipped", "failed"):
        table.add_row(status, str(sum(s.status == status for s in summary.states)))
    return table


def failures_table(summary: SweepSummary) -> Table:
    table = Table(title="failed trials (a re-run retries them)")
    for col in ("trial", "dataset", "method", "seed", "error", "log"):
        table.add_column(col, overflow="fold")
    for s in summary.failed:
        d = describe(s.cfg)
        table.add_row(s.trial_id, d["dataset"], d["method"], d["seed"], s.error, s.log)
    return table
