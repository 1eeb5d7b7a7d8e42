"""What runs inside Ray: the Ray Train worker function and the Tune trial (driver) function.

Layering (Ray Train V2): a Tune trial runs :func:`tune_driver`, which builds a ``TorchTrainer``
and fits it; the trainer runs :func:`train_worker` on each data-parallel rank. Both call into the
library (:func:`rayot.train.run_trial`) through :class:`RayTrainHooks`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer

from rayot import config as C
from rayot import leases, results, tracking
from rayot.errors import RayotError
from rayot.sweep.cluster import worker_resources
from rayot.sweep.spec import Resources
from rayot.train import (
    DistributedHooks,
    PeerFailure,
    failure_row,
    prompt_checkpoint_name,
    result_rows,
    run_trial,
    save_checkpoint,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
#: Test-only fault injection: "EPOCH:MARKER" kills rank 0 once, right after checkpointing EPOCH.
FAULT_ENV = "RAYOT_INJECT_FAULT"


class RayTrainHooks(DistributedHooks):
    """Rank, world size and device from Ray Train, the collectives over the process group it set
    up (gloo or NCCL), per-epoch checkpoints in the run's storage."""

    def __init__(self, fault: str | None = None) -> None:
        ctx = ray.train.get_context()
        super().__init__(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
        self.fault = fault

    def resume_state(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        if self.fault and self.rank == 0:  # let the fault-injection test see where it resumed
            with open(self.fault.split(":", 1)[1], "a") as marker:
                marker.write(f"resumed after epoch {int(state['epoch']) + 1}\n")
        return state

    def save_epoch(self, epoch: int, state: dict[str, Any], metrics: dict[str, float]) -> None:
        metrics = {**metrics, "status": "running"}
        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(state, Path(tmp) / STATE_FILE)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
                )
        else:
            ray.train.report(metrics)
        if self.fault and self.rank == 0:
            at, marker = self.fault.split(":", 1)
            if int(at) == epoch + 1 and not os.path.exists(marker):
                Path(marker).write_text(f"killed after epoch {epoch + 1}\n")
                time.sleep(5)  # mid-way through the next epoch, once the checkpoint is registered
                os._exit(1)  # a hard worker death, as a lost node would cause


def _error_text(exc: BaseException | str) -> str:
    if isinstance(exc, str) or isinstance(exc, RayotError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def log_name(cfg: C.TrialConfig) -> str:
    """Where a failed trial's traceback goes: ``<checkpoints>/logs/<trial id>.log``."""
    return f"{cfg.output.checkpoints.rstrip('/')}/logs/{C.trial_id(cfg)}.log"


def record_failure(cfg: C.TrialConfig, exc: BaseException | str, sweep: str) -> str | None:
    """Record a failed trial: its row (with the error) and its traceback; returns the log's path.

    A trial already ``done`` keeps its result (a failure never replaces one). Recording is
    attempted once: if the storage refuses it, the problem is logged and ``None`` returned, and
    nothing is retried, so a broken storage cannot multiply a trial's attempts.
    """
    tid = C.trial_id(cfg)
    if isinstance(exc, BaseException):
        text = "".join(traceback.format_exception(exc))
    else:
        text = exc + "\n"
    try:
        results.write_failure_rows(cfg.output.results, tid, [failure_row(cfg, _error_text(exc), sweep=sweep)])
        return results.write_file(cfg.output.checkpoints, f"logs/{tid}.log", text.encode())
    except Exception as write_error:  # noqa: BLE001 - a failure to record must not fail again
        log.error("trial %s failed (%s) and its failure could not be recorded: %s",
                  tid, _error_text(exc), write_error)
        return None


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train rank of one trial.

    Every rank reports the same number of times (``ray.train.report`` is a barrier): once when it
    starts, once per epoch, once at the end. A failure that every rank agreed on (bad input, a
    NaN loss; see :meth:`rayot.train.TrialHooks.first_failed_rank`) is recorded once, by the rank that failed,
    and ends the run without a Ray Train retry, which could not help.
    """
    cfg = C.from_dict(json.loads(loop_config["config"]))
    tid = C.trial_id(cfg)
    hooks = RayTrainHooks(loop_config.get("fault"))
    if hooks.world_size != cfg.world_size:
        raise RuntimeError(f"trial {tid} is for {cfg.world_size} workers, Ray Train gave {hooks.world_size}")
    ray.train.report({"status": "running"})  # the workers are up: no longer waiting for resources
    device = ray.train.torch.get_device()
    try:
        outcome = run_trial(cfg, device=device, hooks=hooks)
    except PeerFailure as exc:
        ray.train.report({"status": "failed", "error": str(exc)})
        return
    except (RayotError, torch.OutOfMemoryError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) and hooks.world_size > 1:
            raise  # the other ranks may sit in a collective: only Ray Train can stop them
        path = record_failure(cfg, exc, loop_config["sweep"])
        ray.train.report({"status": "failed", "error": _error_text(exc), "log": path or ""})
        return
    if hooks.rank == 0:
        try:
            save_checkpoint(cfg.output.checkpoints, prompt_checkpoint_name(tid), cfg, outcome.prompt_state)
            rows = result_rows(cfg, outcome.evals, train_seconds=outcome.train_seconds,
                               sweep=loop_config["sweep"])
            results.write_trial_rows(cfg.output.results, tid, rows)
        except Exception as exc:  # noqa: BLE001 - storage refused the result: a retry cannot help
            path = record_failure(cfg, RayotError(f"trial {tid}: writing its result failed: {_error_text(exc)}"),
                                  loop_config["sweep"])
            ray.train.report({"status": "failed", "error": _error_text(exc), "log": path or ""})
            return
    ray.train.report({"status": "done"})


def storage_path(location: str) -> str:
    """Ray wants an absolute local path or a URI."""
    if "://" in location:
        return location
    return os.path.abspath(location)


def tune_driver(param: dict[str, Any]) -> None:
    """One Tune trial: hold the trial's lease, fit a TorchTrainer, record a failure if any."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = C.from_dict(json.loads(param["config"]))
    tid = C.trial_id(cfg)
    try:  # two sweeps on one storage: the second skips what the first runs
        lease = leases.acquire(cfg.output.results, tid, leases.Owner(**param["owner"]))
    except Exception as exc:  # noqa: BLE001 - storage problem: recorded like any failure
        path = record_failure(cfg, exc, param["sweep"])
        tune.report({"status": "failed", "error": _error_text(exc), "log": path or ""})
        return
    if not isinstance(lease, leases.Lease):
        tune.report({"status": "busy", "error": lease.describe()})
        return
    with lease, leases.Heartbeat(lease) as heartbeat:
        if results.trial_status(cfg.output.results, tid) == "done":  # finished by another sweep
            tune.report({"status": "done"})
            return
        r = param["resources"]
        per_worker = worker_resources(Resources(**r))
        use_gpu = "GPU" in per_worker
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"config": param["config"], "sweep": param["sweep"], "fault": param.get("fault")},
            scaling_config=ray.train.ScalingConfig(
                num_workers=r["num_workers"], use_gpu=use_gpu, resources_per_worker=per_worker
            ),
            run_config=ray.train.RunConfig(
                name=f"trial-{tid}",  # deterministic: a re-run resumes from this run's checkpoints
                storage_path=storage_path(cfg.output.checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=r["max_failures"]),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                callbacks=[TuneReportCallback()],
            ),
        )
        try:
            trainer.fit()
        except Exception as exc:  # noqa: BLE001 - any failure of the run is recorded, the sweep goes on
            path = record_failure(cfg, exc, param["sweep"])
            tune.report({"status": "failed", "error": _error_text(exc), "log": path or ""})
            return
        if heartbeat.lost:  # renewals failed past the expiry and another sweep took the trial
            log.warning("trial %s: its lease was taken by another sweep while it ran; both may "
                        "have written the same result", tid)
        status = results.trial_status(cfg.output.results, tid) or "failed"
        # the final accuracies ride along for the sweep's trackers (rayot.sweep.tracking)
        final = tracking.final_metrics_of(cfg.output.results, tid) if status == "done" else {}
        tune.report({"status": status, **({"final": final} if final else {})})
