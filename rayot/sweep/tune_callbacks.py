"""Tracker callbacks of a sweep: Ray Tune's own logger callbacks, told what rayot logs.

Thin subclasses of ``ray.air.integrations.mlflow.MLflowLoggerCallback``,
``ray.air.integrations.wandb.WandbLoggerCallback`` and ``ray.tune.logger.TBXLoggerCallback``. Ray's
versions name runs from Tune's trial objects, log Tune's whole trial config (here the members' configurations) as
parameters and every result key as a metric over Tune's iteration; these log what
:mod:`rayot.trackers` says instead: run name = trial id, parameters = the resolved configuration,
``loss``/``ce``/``reg``/``lr`` over the epoch, the final accuracies, and the outcome.

One Tune trial runs a pack of rayot trials (often of one, :func:`rayot.sweep.worker.tune_driver`);
every tracker keeps one run per rayot trial, keyed by :class:`_Member` (Tune trial, trial id).
What they read from the Tune results of a trial of one member: each epoch's ``{"epoch", "loss",
"ce", "reg", "lr"}``, then one final ``{"status", "error", "final": {...}}``. Of a pack: each
epoch's ``{"epoch", "members": {trial id: {"loss", ...}}}``, then ``{"status", "members": {trial
id: {"status", "error", "final"}}}``. A Tune-level failure of the trial (its driver died) marks
every member's run failed too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from rayot import config as C
from rayot import trackers as T

log = logging.getLogger(__name__)

FINAL_STATUSES = ("done", "failed", "busy")


@dataclass(frozen=True)
class _Member:
    """One rayot trial of a Tune trial: the key of its run in every tracker (and of its W&B actor)."""

    trial: Any  # the Tune trial, hashed by identity
    trial_id: str
    cfg: C.TrialConfig = field(compare=False, repr=False)  # its resolved configuration

    @property
    def params(self) -> dict[str, Any]:
        return T.params(self.cfg)

    @property
    def final_step(self) -> int:
        return T.final_step(self.cfg)

    @property
    def local_path(self) -> str:
        """The Tune trial's folder: where Ray's W&B actor of this member works."""
        return self.trial.local_path


class _Part(NamedTuple):
    """What one result says of one member: an epoch's metrics, the final accuracies."""

    epoch: tuple[int, dict[str, float]] | None
    final: dict[str, float] | None


def _epoch(result: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
    """``(epoch, {loss, ce, reg, lr, diag/...})`` of an epoch's result, else ``None``."""
    if result.get("epoch") is None or "loss" not in result:
        return None
    return int(result["epoch"]), T.epoch_metrics(result)


def _own(members: tuple[_Member, ...], result: Mapping[str, Any]) -> Iterator[tuple[_Member, Mapping[str, Any]]]:
    """Each member's own result: the result itself for a trial of one member; for a pack, its entry
    of ``result["members"]`` with the result's epoch (members absent from it are left out)."""
    if len(members) == 1:
        yield members[0], result
        return
    entries = result.get("members")
    if not isinstance(entries, Mapping):
        return  # a pack's other reports ("running", its Train workers' own outcome) say nothing per member
    shared = {"epoch": result["epoch"]} if "epoch" in result else {}
    for m in members:
        if isinstance(entries.get(m.trial_id), Mapping):
            yield m, {**shared, **entries[m.trial_id]}


def _tune_error(trial: Any) -> str:
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - only a message
        error = None
    return f"its Tune trial failed: {error}" if error else "its Tune trial failed"


class _Members:
    """The members of each Tune trial and what their final results said (status and error)."""

    def __init__(self) -> None:
        self._of: dict[Any, tuple[_Member, ...]] = {}
        self._outcome: dict[_Member, tuple[str, str | None]] = {}

    def of(self, trial: Any) -> tuple[_Member, ...]:
        if trial not in self._of:
            self._of[trial] = tuple(_Member(trial, m["trial_id"], m["config"])
                                    for m in trial.config["trial"]["members"])
        return self._of[trial]

    def parts(self, trial: Any, result: Mapping[str, Any]) -> list[tuple[_Member, _Part]]:
        """What ``result`` says of each member; final statuses noted for :meth:`end`."""
        out = []
        for m, own in _own(self.of(trial), result):
            status = own.get("status")
            if status in FINAL_STATUSES:  # a failure's last report may repeat the status without its error
                before = self._outcome.get(m, (None, None))[1]
                self._outcome[m] = (status, own.get("error") or before)
            out.append((m, _Part(_epoch(own), dict(own["final"]) if own.get("final") else None)))
        return out

    def end(self, trial: Any, failed: bool) -> list[tuple[_Member, str, str | None]]:
        """Each member's ``(member, status, error)`` at the end of its Tune trial, then forgets it."""
        members = self.of(trial)
        del self._of[trial]
        out = []
        for m in members:
            status, error = self._outcome.pop(m, ("done", None))
            if failed and status != "failed":
                status, error = "failed", _tune_error(trial)
            out.append((m, status, error))
        return out


class MLflowCallback(MLflowLoggerCallback):
    """One MLflow run per rayot trial, named by its trial id, in the sweep's experiment."""

    def __init__(self, opts: T.MLflowOptions, sweep: str) -> None:
        super().__init__(tracking_uri=opts.tracking_uri, experiment_name=opts.experiment,
                         tags={"sweep": sweep, "source": "rayot sweep"})
        self._members = _Members()

    def log_trial_start(self, trial: Any) -> None:
        from mlflow.entities import Param

        for m in self._members.of(trial):
            if m in self._trial_runs:  # a restarted trial goes on in its runs
                continue
            run = self.mlflow_util.start_run(run_name=m.trial_id, tags={**self.tags, "trial_id": m.trial_id})
            self._trial_runs[m] = run.info.run_id
            # one batch, not Ray's one write per parameter (~60 here: seconds of Tune's event loop)
            params = [Param(k, str(v)) for k, v in m.params.items()]
            self.mlflow_util._get_client().log_batch(run.info.run_id, params=params)

    def _log(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.mlflow_util._get_client().log_batch(run_id, metrics=batch)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self.log_trial_start(trial)
        for m, part in self._members.parts(trial, result):
            if part.epoch is not None:
                self._log(self._trial_runs[m], *part.epoch)
            if part.final:
                self._log(self._trial_runs[m], m.final_step, part.final)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        client = self.mlflow_util._get_client()
        for m, status, error in self._members.end(trial, failed):
            run_id = self._trial_runs.pop(m, None)
            if run_id is None:
                continue
            if status == "busy":  # another sweep runs it and logs it: no empty duplicate here
                client.delete_run(run_id)
                continue
            client.set_tag(run_id, "status", status)
            if status == "failed":
                client.set_tag(run_id, "error", T.error_text(error))
            self.mlflow_util.end_run(run_id=run_id, status="FAILED" if status == "failed" else "FINISHED")


class TensorBoardCallback(TBXLoggerCallback):
    """TensorBoard event files (tensorboardX) per rayot trial in ``<dir>/<trial id>/``.

    Being a ``TBXLoggerCallback``, it also stands in for the one Tune adds by default (Tune's
    iteration-indexed copy of every result in the trial folder).
    """

    def __init__(self, opts: T.TensorBoardOptions) -> None:
        super().__init__()
        self.opts = opts
        self._runs: dict[_Member, T.TensorBoardRun] = {}
        self._final: dict[_Member, dict[str, float]] = {}
        self._members = _Members()

    def log_trial_start(self, trial: Any) -> None:
        for m in self._members.of(trial):
            if m not in self._runs:
                self._runs[m] = T.TensorBoardRun(self.opts, m.trial_id, m.params)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self.log_trial_start(trial)
        for m, part in self._members.parts(trial, result):
            if part.epoch is not None:
                self._runs[m].log(*part.epoch)
            if part.final:
                self._final[m] = part.final

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        for m, status, error in self._members.end(trial, failed):
            run = self._runs.pop(m, None)
            if run is not None:
                run.finish(self._final.pop(m, {}), m.final_step, error if status == "failed" else None)


class WandbActor(_WandbLoggingActor):
    """Ray's W&B process of one run; its queue carries ``(step, metrics)`` or a failure."""

    def run(self) -> None:
        os.environ["WANDB_START_METHOD"] = "thread"
        run = self._wandb.init(*self.args, **self.kwargs)
        error = None
        while True:
            kind, item = self.queue.get()
            if kind == _QueueItem.END:
                break
            if kind != _QueueItem.RESULT:
                continue
            if "failed" in item:
                error = item["failed"]
            elif item["metrics"]:
                run.log(item["metrics"], step=item["step"])
        run.summary["status"] = "failed" if error is not None else "done"
        if error is not None:
            run.summary["error"] = T.error_text(error)
        run.finish(exit_code=1 if error is not None else 0)


class WandbCallback(WandbLoggerCallback):
    """One W&B run per rayot trial, named by its trial id, grouped by sweep; offline by default.

    Ray keeps one logging actor (and queue) per key of its ``_trial_*`` dictionaries and only
    reads ``local_path`` from the key; keyed here by :class:`_Member`, a pack of K trials gets K
    actors, K runs, and Ray's own cleanup (experiment end, ``__del__``) ends them all.
    """

    _logger_actor_cls = WandbActor

    def __init__(self, opts: T.WandbOptions) -> None:
        super().__init__(project=opts.project)
        self.opts = opts
        self._members = _Members()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        if self.opts.mode in ("offline", "disabled"):
            return  # no API key is needed, none is looked for
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        for m in self._members.of(trial):
            if m in self._trial_logging_futures:
                continue
            trial.init_local_path()  # the actor works in the trial's folder
            self._start_logging_actor(m, [], **T.wandb_init_kwargs(self.opts, m.trial_id, m.params))

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self.log_trial_start(trial)
        for m, part in self._members.parts(trial, result):
            queue = self._trial_queues[m]
            if part.epoch is not None:
                queue.put((_QueueItem.RESULT, {"step": part.epoch[0], "metrics": part.epoch[1]}))
            if part.final:
                queue.put((_QueueItem.RESULT, {"step": m.final_step, "metrics": part.final}))

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        for m, status, error in self._members.end(trial, failed):
            if m not in self._trial_queues:
                continue
            if status == "failed":
                self._trial_queues[m].put((_QueueItem.RESULT, {"failed": error or "failed"}))
            self._signal_logging_actor_stop(m)
        self._cleanup_logging_actors()


def callbacks(tracking: T.Tracking, sweep: str) -> list[Callback]:
    """The Tune callbacks of the sweep's trackers (``tracking`` resolved: :func:`rayot.trackers.resolve`)."""
    out: list[Callback] = []
    if tracking.tensorboard is not None:
        out.append(TensorBoardCallback(tracking.tensorboard))
    if tracking.mlflow is not None:
        out.append(MLflowCallback(tracking.mlflow, sweep))
    if tracking.wandb is not None:
        out.append(WandbCallback(tracking.wandb))
    return out
