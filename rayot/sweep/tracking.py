"""Tracker callbacks of a sweep: Ray Tune's own logger callbacks, told what rayot logs.

Thin subclasses of ``ray.air.integrations.mlflow.MLflowLoggerCallback``,
``ray.air.integrations.wandb.WandbLoggerCallback`` and ``ray.tune.logger.TBXLoggerCallback``. Ray's
versions name runs from Tune's trial objects, log Tune's whole trial config (here a JSON string) as
parameters and every result key as a metric over Tune's iteration; these log what
:mod:`rayot.tracking` says instead: run name = trial id, parameters = the resolved configuration,
``loss``/``ce``/``reg``/``lr`` over the epoch, the final accuracies, and the outcome.

What they read from the Tune results of a trial (:func:`rayot.sweep.worker.tune_driver`): each
epoch's ``{"epoch", "loss", "ce", "reg", "lr"}``, then one final ``{"status", "error",
"final": {...}}``. A Tune-level failure of the trial (its driver died) marks the run failed too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from rayot import tracking as T

log = logging.getLogger(__name__)

FINAL_STATUSES = ("done", "failed", "busy")


def _trial_id(trial: Any) -> str:
    return trial.config["trial"]["trial_id"]


def _params(trial: Any) -> dict[str, Any]:
    return T.params(json.loads(trial.config["trial"]["config"]))


def _final_step(trial: Any) -> int:
    cfg = json.loads(trial.config["trial"]["config"])
    return 0 if cfg["method"] == "zeroshot" else int(cfg["optim"]["epochs"])


def _epoch(result: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
    """``(epoch, {loss, ce, reg, lr})`` of an epoch's result, else ``None``."""
    if result.get("epoch") is None or "loss" not in result:
        return None
    return int(result["epoch"]), {k: float(result[k]) for k in T.EPOCH_METRICS if k in result}


def _tune_error(trial: Any) -> str:
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - only a message
        error = None
    return f"its Tune trial failed: {error}" if error else "its Tune trial failed"


class _Outcome:
    """What the trial's final result said: status and error."""

    def __init__(self) -> None:
        self.by_trial: dict[Any, tuple[str, str | None]] = {}

    def note(self, trial: Any, result: Mapping[str, Any]) -> None:
        status = result.get("status")
        if status in FINAL_STATUSES:  # a failure's last report may repeat the status without its error
            before = self.by_trial.get(trial, (None, None))[1]
            self.by_trial[trial] = (status, result.get("error") or before)

    def pop(self, trial: Any, failed: bool) -> tuple[str, str | None]:
        status, error = self.by_trial.pop(trial, ("done", None))
        if failed and status != "failed":
            return "failed", _tune_error(trial)
        return status, error


class MLflowCallback(MLflowLoggerCallback):
    """One MLflow run per trial, named by its trial id, in the sweep's experiment."""

    def __init__(self, opts: T.MLflowOptions, sweep: str) -> None:
        super().__init__(tracking_uri=opts.tracking_uri, experiment_name=opts.experiment,
                         tags={"sweep": sweep, "source": "rayot sweep"})
        self._outcome = _Outcome()

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_runs:  # a restarted trial goes on in its run
            return
        tid = _trial_id(trial)
        run = self.mlflow_util.start_run(run_name=tid, tags={**self.tags, "trial_id": tid})
        self._trial_runs[trial] = run.info.run_id
        # one batch, not Ray's one write per parameter (~60 here: seconds of Tune's event loop)
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in _params(trial).items()]
        self.mlflow_util._get_client().log_batch(run.info.run_id, params=params)

    def _log(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.mlflow_util._get_client().log_batch(run_id, metrics=batch)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        run_id = self._trial_runs[trial]
        epoch = _epoch(result)
        if epoch is not None:
            self._log(run_id, *epoch)
        if result.get("final"):
            self._log(run_id, _final_step(trial), result["final"])
        self._outcome.note(trial, result)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial not in self._trial_runs:
            return
        run_id = self._trial_runs.pop(trial)
        status, error = self._outcome.pop(trial, failed)
        client = self.mlflow_util._get_client()
        if status == "busy":  # another sweep runs it and logs it: no empty duplicate here
            client.delete_run(run_id)
            return
        client.set_tag(run_id, "status", status)
        if status == "failed":
            client.set_tag(run_id, "error", T.error_text(error))
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if status == "failed" else "FINISHED")


class TensorBoardCallback(TBXLoggerCallback):
    """TensorBoard event files (tensorboardX) per trial in ``<dir>/<trial id>/``.

    Being a ``TBXLoggerCallback``, it also stands in for the one Tune adds by default (Tune's
    iteration-indexed copy of every result in the trial folder).
    """

    def __init__(self, opts: T.TensorBoardOptions) -> None:
        super().__init__()
        self.opts = opts
        self._runs: dict[Any, T.TensorBoardRun] = {}
        self._final: dict[Any, dict[str, float]] = {}
        self._outcome = _Outcome()

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._runs:
            self._runs[trial] = T.TensorBoardRun(self.opts, _trial_id(trial), _params(trial))

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self.log_trial_start(trial)
        epoch = _epoch(result)
        if epoch is not None:
            self._runs[trial].log(*epoch)
        if result.get("final"):
            self._final[trial] = dict(result["final"])
        self._outcome.note(trial, result)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        run = self._runs.pop(trial, None)
        if run is None:
            return
        status, error = self._outcome.pop(trial, failed)
        run.finish(self._final.pop(trial, {}), _final_step(trial), error if status == "failed" else None)


class WandbActor(_WandbLoggingActor):
    """Ray's per-trial W&B process; its queue carries ``(step, metrics)`` or a failure."""

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
    """One W&B run per trial, named by its trial id, grouped by sweep; offline by default."""

    _logger_actor_cls = WandbActor

    def __init__(self, opts: T.WandbOptions) -> None:
        super().__init__(project=opts.project)
        self.opts = opts
        self._outcome = _Outcome()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        if self.opts.mode in ("offline", "disabled"):
            return  # no API key is needed, none is looked for
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_logging_futures:
            return
        trial.init_local_path()  # the actor works in the trial's folder
        self._start_logging_actor(trial, [], **T.wandb_init_kwargs(self.opts, _trial_id(trial), _params(trial)))

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        queue = self._trial_queues[trial]
        epoch = _epoch(result)
        if epoch is not None:
            queue.put((_QueueItem.RESULT, {"step": epoch[0], "metrics": epoch[1]}))
        if result.get("final"):
            queue.put((_QueueItem.RESULT, {"step": _final_step(trial), "metrics": dict(result["final"])}))
        self._outcome.note(trial, result)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial not in self._trial_queues:
            return
        status, error = self._outcome.pop(trial, failed)
        if status == "failed":
            self._trial_queues[trial].put((_QueueItem.RESULT, {"failed": error or "failed"}))
        super().log_trial_end(trial, failed)


def callbacks(tracking: T.Tracking, sweep: str) -> list[Callback]:
    """The Tune callbacks of the sweep's trackers (``tracking`` resolved: :func:`rayot.tracking.resolve`)."""
    out: list[Callback] = []
    if tracking.tensorboard is not None:
        out.append(TensorBoardCallback(tracking.tensorboard))
    if tracking.mlflow is not None:
        out.append(MLflowCallback(tracking.mlflow, sweep))
    if tracking.wandb is not None:
        out.append(WandbCallback(tracking.wandb))
    return out
