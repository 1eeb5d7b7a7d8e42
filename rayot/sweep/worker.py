"""What runs inside Ray: the Ray Train worker function and the Tune trial (driver) function.

Layering (Ray Train V2): a Tune trial runs :func:`tune_driver`, which builds a ``TorchTrainer``
and fits it; the trainer runs :func:`train_worker` on each data-parallel rank. Both call into the
library (:func:`rayot.train.run_trial`) through :class:`RayTrainHooks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer

from rayot import config as C
from rayot import results, storage, switches, trackers
from rayot.checkpoints import (
    EPOCH_STATE_FILE,
    epoch_folder_name,
    newest_complete_epoch,
    read_epoch_state,
    write_epoch_checkpoint,
)
from rayot.errors import RayotError
from rayot.results import trials_without_prompts
from rayot.sweep import leases, search
from rayot.sweep.cluster import worker_resources
from rayot.sweep.packs import pack_id
from rayot.sweep.spec import Resources
from rayot.train import DistributedHooks, MemberResult, PeerFailure, run_pack
from rayot.train.record import error_text, log_name, record_failure, write_outcome
from rayot.train.rows import result_rows

log = logging.getLogger(__name__)

#: How long a trial's lease lives without a renewal (seconds, default 120): how long a sweep that
#: died on another host keeps its trials from the others.
LEASE_TTL_ENV = "RAYOT_LEASE_TTL_S"


def lease_ttl_s() -> float:
    value = os.environ.get(LEASE_TTL_ENV, "120")
    try:
        ttl = float(value)
    except ValueError:
        ttl = -1.0
    if ttl <= 0:
        raise RayotError(f"{LEASE_TTL_ENV}={value!r}: not a positive number of seconds")
    return ttl


class RayTrainHooks(DistributedHooks):
    """Rank, world size and device from Ray Train, the collectives over the process group it set
    up (gloo or NCCL), per-epoch checkpoints in the run's storage. ``fault``: the test switch
    :data:`rayot.switches.FAULT`."""

    def __init__(self, coordinator: str | None = None) -> None:
        ctx = ray.train.get_context()
        super().__init__(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
        self.fault = switches.value(switches.FAULT)
        self.coordinator = coordinator

    def early_stop(self, epoch: int, histories: dict[str, list[dict[str, float]]]) -> set[str]:
        """Ask the sweep's coordinator (rayot.sweep.search.Rungs, one actor): every rank asks and
        gets its kept decision."""
        if not self.coordinator:
            return set()
        ask, report = search.coordinator_hook(self.coordinator)
        report(histories)
        return search.wait_for_decision(ask, sorted(histories), epoch + 1)

    def resume_state(self) -> dict[str, Any] | None:
        """The newest complete epoch checkpoint in the run's folder.

        Ray Train's own (:func:`ray.train.get_checkpoint`) is the last one its controller
        registered, which lags the folders on the storage by up to two epochs: resumed from it, a
        run stopped by Ctrl-C trains those epochs again. Ray's is used only where no folder has a
        completion record (checkpoints of earlier versions) or the ranks did not find the same one.
        """
        run = ray.train.get_context().get_storage()
        newest = newest_complete_epoch(run.storage_filesystem, run.experiment_fs_path)
        if not self._same_on_every_rank(newest[0] if newest is not None else 0):
            newest = None
        registered = ray.train.get_checkpoint()
        if newest is not None:
            if registered is None or Path(registered.path).name != epoch_folder_name(newest[0]):
                log.info("resuming from the checkpoint of epoch %d (Ray Train registered %s)", newest[0],
                         Path(registered.path).name if registered is not None else "none")
            state = read_epoch_state(newest[1])
        elif registered is not None:
            with registered.as_directory() as d:
                state = torch.load(Path(d) / EPOCH_STATE_FILE, map_location="cpu", weights_only=True)
        else:
            return None
        if self.fault and self.rank == 0:  # let the fault-injection test see where it resumed
            with open(self.fault.split(":", 1)[1], "a") as marker:
                marker.write(f"resumed after epoch {int(state['epoch']) + 1}\n")
        return state

    def _same_on_every_rank(self, epoch: int) -> bool:
        """Whether every rank found the same epoch: the ranks' sum S and sum of squares Q of it
        (one collective) satisfy N·Q = S² only when all N are equal; the same answer on every rank."""
        if self.world_size == 1:
            return True
        total, squares = self.sum_counts([epoch, epoch * epoch])
        return self.world_size * squares == total * total

    def save_epoch(self, epoch: int, state: dict[str, Any], metrics: dict[str, float]) -> None:
        metrics = {**metrics, "status": "running"}
        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                write_epoch_checkpoint(tmp, epoch + 1, state)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=epoch_folder_name(epoch + 1),
                )
        else:
            ray.train.report(metrics)
        if self.fault and self.rank == 0:
            at, marker = self.fault.split(":", 1)
            if int(at) == epoch + 1 and not os.path.exists(marker):
                Path(marker).write_text(f"killed after epoch {epoch + 1}\n")
                time.sleep(5)  # mid-way through the next epoch, once the checkpoint is registered
                os._exit(1)  # a hard worker death, as a lost node would cause


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train rank of one pack of trials (a lone trial is a pack of one).

    Every rank reports the same number of times (``ray.train.report`` is a barrier): once when it
    starts, once per epoch, once at the end. A failure that every rank agreed on (bad input, a
    NaN loss; see :meth:`rayot.train.TrialHooks.first_failed_rank`) is recorded once, by the rank
    that failed, and ends that trial without a Ray Train retry, which could not help; the other
    members of its pack go on.
    """
    switches.adopt(loop_config["switches"])
    cfgs: list[C.TrialConfig] = loop_config["configs"]
    hooks = RayTrainHooks(loop_config.get("coordinator"))
    if hooks.world_size != cfgs[0].world_size:
        raise RuntimeError(f"trial {C.trial_id(cfgs[0])} is for {cfgs[0].world_size} workers, "
                           f"Ray Train gave {hooks.world_size}")
    ray.train.report({"status": "running"})  # the workers are up: no longer waiting for resources
    sweep = loop_config["sweep"]
    try:
        members = run_pack(cfgs, device=ray.train.torch.get_device(), hooks=hooks)
    except PeerFailure as exc:
        ray.train.report({"status": "failed", "error": str(exc)})
        return
    except (RayotError, torch.OutOfMemoryError) as exc:  # what every member shares failed
        if isinstance(exc, torch.OutOfMemoryError) and hooks.world_size > 1:
            raise  # the other ranks may sit in a collective: only Ray Train can stop them
        paths = [record_failure(cfg, exc, sweep) for cfg in cfgs]
        ray.train.report({"status": "failed", "error": error_text(exc), "log": paths[0] or ""})
        return
    failed = [_record_member(m, sweep, hooks.rank) for m in members]
    final: dict[str, Any] = {"status": "failed" if all(failed) else "done"}
    if len(members) > 1:  # each member's own outcome, not the pack's (the live view shows members)
        final["members"] = {C.trial_id(m.cfg): {"status": "failed" if f else "done",
                                                **({"error": error_text(m.error)} if m.error else {})}
                            for m, f in zip(members, failed, strict=True)}
    ray.train.report(final)


def _record_member(member: MemberResult, sweep: str, rank: int) -> bool:
    """Write a member's result (rank 0) or its failure (the rank where it failed); whether it failed."""
    cfg, outcome = member.cfg, member.outcome
    if member.error is not None:
        if not isinstance(member.error, PeerFailure):
            record_failure(cfg, member.error, sweep)
        return True
    if rank != 0:
        return False
    rows = result_rows(cfg, outcome.evals, train_seconds=outcome.train_seconds, sweep=sweep,
                       history=outcome.history, stopped_at=outcome.stopped_at)
    try:
        write_outcome(cfg, outcome, rows, sweep=sweep)
    except RayotError:  # storage refused the result: recorded as failed where it could be
        return True
    return False


def ray_storage(location: str) -> dict[str, Any]:
    """Ray's ``storage_path`` (and ``storage_filesystem``) for a checkpoint location: an absolute
    local path, a ``file://`` URI, or an object store's path with rayot's filesystem of it (its
    endpoint from the environment, see rayot.storage, and its retries)."""
    if storage.is_remote(location) and storage.scheme_of(location) in ("s3", "gs"):
        fs, path = storage.filesystem(location, "checkpoint")
        return {"storage_path": path, "storage_filesystem": fs}
    if "://" in location:
        return {"storage_path": location}
    return {"storage_path": os.path.abspath(location)}


def tune_driver(param: dict[str, Any]) -> None:
    """One Tune trial: a pack of trials (often of one). Hold each member's lease, fit one
    TorchTrainer for the members that are still to run, record a failure if any.

    The last report says each member's outcome: ``{"status", "error", "log", "final"}`` for a
    pack of one, as before packing; ``{"status", "members": {trial id: {...}}}`` for a pack.
    """
    switches.adopt(param["switches"])
    cfgs: list[C.TrialConfig] = [m["config"] for m in param["members"]]
    sweep = param["sweep"]
    owner = leases.Owner(**param["owner"])
    outcome: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:  # releases the leases held, after the heartbeat stopped
        held, run = [], []
        for cfg in cfgs:
            tid = C.trial_id(cfg)
            try:  # two sweeps on one storage: the second skips what the first runs
                lease = leases.acquire(cfg.output.results, tid, owner, ttl_s=param.get("lease_ttl_s", 120.0))
            except Exception as exc:  # noqa: BLE001 - storage problem: recorded like any failure
                outcome[tid] = {"status": "failed", "error": error_text(exc), "log": record_failure(cfg, exc, sweep) or ""}
                continue
            if not isinstance(lease, leases.Lease):
                outcome[tid] = {"status": "busy", "error": lease.describe()}
                continue
            held.append(stack.enter_context(lease))
            if (results.trial_status(cfg.output.results, tid) == "done"  # finished by another sweep
                    and not trials_without_prompts(cfg.output.checkpoints, [tid])):  # (not an old row)
                outcome[tid] = {"status": "done"}
                continue
            run.append(cfg)
        with leases.Heartbeat(held) as heartbeat:
            try:
                run_log = switches.value(switches.RUN_LOG)
                if run and run_log:
                    with open(run_log, "a") as f:
                        f.writelines(f"{C.trial_id(c)} {os.getpid()}\n" for c in run)
                if run:
                    outcome.update(_fit(run, param))
            finally:  # the samples after these in their search wait no more for them
                search.end_trials(param.get("coordinator"), [C.trial_id(c) for c in cfgs])
        if heartbeat.lost:  # renewals failed past the expiry and another sweep took a trial
            log.warning("trials %s: their leases were taken by another sweep while they ran; both may "
                        "have written the same results", ", ".join(lease.trial_id for lease in heartbeat.lost_leases))
    if len(cfgs) == 1:
        tune.report(outcome[C.trial_id(cfgs[0])])
        return
    statuses = {o["status"] for o in outcome.values()}
    overall = "failed" if "failed" in statuses else "busy" if "busy" in statuses else "done"
    tune.report({"status": overall, "members": outcome})


#: How many times a pack's run is started again after it failed because the object store stopped
#: answering (each time once the store answers again, within rayot.storage's retry budget).
_OUTAGE_REFITS = 3


def _outage_over(location: str, exc: BaseException) -> bool:
    """Whether a failed run failed because the object store at ``location`` stopped answering;
    if so, wait until it answers again (:func:`rayot.storage.retrying`, which raises
    :class:`rayot.storage.StorageUnavailable` past its budget) and return True."""
    if not storage.is_remote(location):
        return False
    fs, path = storage.filesystem(location, "checkpoint")

    def probe() -> None:
        fs.get_file_info(path)

    try:
        probe()
        down = False
    except Exception as probe_exc:  # noqa: BLE001 - sorted by transient()
        if not storage.transient(probe_exc):
            return False
        down = True
    if not (down or storage.transient(exc) or storage.transient_text(str(exc))):
        return False
    storage.retrying(probe, location=location, what="checkpoint")
    return True


def _run_failed(cfgs: list[C.TrialConfig], exc: BaseException, param: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Record a failed run's failure for each member that has no ``done`` result."""
    outcome = {}
    for cfg in cfgs:
        if results.trial_status(cfg.output.results, C.trial_id(cfg)) != "done":
            outcome[C.trial_id(cfg)] = {"status": "failed", "error": error_text(exc),
                                        "log": record_failure(cfg, exc, param["sweep"]) or ""}
    return outcome


def _fit(cfgs: list[C.TrialConfig], param: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Fit one TorchTrainer for the pack ``cfgs``; each member's outcome by trial id."""
    from ray.tune.integration.ray_train import TuneReportCallback

    r = param["resources"]
    per_worker = worker_resources(Resources(**r))
    name = pack_id(cfgs)

    def trainer() -> TorchTrainer:
        return TorchTrainer(
            train_worker,
            train_loop_config={"configs": cfgs, "sweep": param["sweep"],
                               "switches": param["switches"], "coordinator": param.get("coordinator")},
            scaling_config=ray.train.ScalingConfig(
                num_workers=r["num_workers"], use_gpu="GPU" in per_worker, resources_per_worker=per_worker
            ),
            run_config=ray.train.RunConfig(
                # deterministic: a re-run of the same trials resumes from this run's checkpoints
                name=name if name.startswith("pack-") else f"trial-{name}",
                **ray_storage(cfgs[0].output.checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=r["max_failures"]),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                callbacks=[TuneReportCallback()],
            ),
        )

    outcome = {}
    checkpoints = cfgs[0].output.checkpoints
    for attempt in range(_OUTAGE_REFITS + 1):
        try:
            trainer().fit()
            break
        except Exception as exc:  # noqa: BLE001 - any failure of the run is recorded, the sweep goes on
            try:
                again = attempt < _OUTAGE_REFITS and _outage_over(checkpoints, exc)
            except storage.StorageUnavailable as down:
                exc, again = down, False
            if again:  # the run failed because the store stopped answering: it is back, resume
                log.warning("trials %s: the run failed while %s did not answer; it answers again: "
                            "resuming from the last epoch checkpoint", ", ".join(map(C.trial_id, cfgs)), checkpoints)
                continue
            outcome.update(_run_failed(cfgs, exc, param))
            break
    for cfg in cfgs:
        tid = C.trial_id(cfg)
        if tid in outcome:
            continue
        status = results.trial_status(cfg.output.results, tid) or "failed"
        entry: dict[str, Any] = {"status": status}
        if status == "done":  # the final accuracies ride along for the sweep's trackers (rayot.sweep.tune_callbacks)
            final = trackers.final_metrics_of(cfg.output.results, tid)
            if final:
                entry["final"] = final
        else:
            entry["error"] = results.trial_error(cfg.output.results, tid) or "the trial ended without a result"
            entry["log"] = log_name(cfg)
        outcome[tid] = entry
    return outcome
