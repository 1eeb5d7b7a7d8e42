"""The Ray cluster a sweep runs on: connect (or start an embedded one), check that a trial fits,
and how many trials fit at once. Every check ends in seconds with one message naming the numbers.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray

from rayot import storage, switches
from rayot.errors import RayotError
from rayot.sweep.spec import Resources

log = logging.getLogger(__name__)

#: A custom resource that holds the Tune trials (drivers): cluster/ puts it on the head node, so
#: that drivers stay off (spot) workers, and the embedded Ray has it too, so that a driver that
#: only waits on its Train run takes no CPU from the workers that train.
DRIVER_SLOT = "driver_slot"
#: Driver slots of an embedded Ray: one per trial that could possibly run at once.
EMBEDDED_DRIVER_SLOTS = 1024
#: Where a cluster offers no driver slots, a driver takes this much CPU (counted in concurrency).
DRIVER_CPU = 0.01
#: Seconds to wait for a TCP answer from a cluster's address before giving up.
PROBE_TIMEOUT_S = 3.0


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask and its cgroup quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(n, 1)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _probe(address: str) -> None:
    """Fail fast when nothing answers at a cluster's address (Ray itself retries for minutes)."""
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - private API: let ray.init say what is wrong
            return
        if target is None:
            raise RayotError(
                "Ray cluster at 'auto': no running Ray cluster found on this machine "
                "(start one with `ray start --head`, or leave out --address to use an embedded Ray)"
            )
    target = target.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise RayotError(f"Ray cluster at {address!r}: expected host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayotError(
            f"Ray cluster at {address!r}: nothing answers at {host}:{port} ({reason} within "
            f"{PROBE_TIMEOUT_S:g} s); is the head node up (`ray start --head`) and the port open?"
        ) from exc


def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start an embedded Ray; returns True when embedded."""
    # the plain reporter honours verbose=0; the sweep has its own live view
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C ends the sweep at once (exit 130): Tune's own handler would instead end every trial
    # as if it had finished, and the sweep would have to guess which of them were interrupted
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    for name in ("ray.tune", "ray.train", "ray.air"):  # their INFO lines would cut into the view
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return not address
    if address:
        _probe(address)
        log.info("joining the Ray cluster at %s", address)
        try:
            # the object stores' endpoints this process uses reach the sweep's workers too
            env = storage.client_environment()
            _quiet_expected_warnings()
            ray.init(address=address, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            raise RayotError(f"Ray cluster at {address!r}: cannot connect ({exc})") from exc
        return False
    cpus = available_cpus()
    log.info("starting an embedded local Ray with %d CPUs", cpus)
    _quiet_expected_warnings()
    # address="local": a new Ray of its own, even where `ray start` left one running here
    ray.init(address="local", num_cpus=cpus, resources={DRIVER_SLOT: EMBEDDED_DRIVER_SLOTS},
             include_dashboard=False, log_to_driver=False)
    return True


#: Ray's logger that warns, on every start of a local Ray, that it turned token authentication on
#: (Ray's default; RAY_AUTH_MODE=token or disabled names the choice and silences it, but Ray reads
#: it once, when it is loaded, before rayot could set it). Expected: logged at debug level.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
#: The raylet's warnings that a sweep causes by design, kept off the terminal: every pack that
#: trains is five Ray actors or more, each its own Python process (its Tune trial, the queue that
#: reports to Tune, Ray Train's controller and synchronisation actor, the workers; Ray Train adds
#: a few per run or per Ray), so a machine full of one-CPU trials soon has four processes per CPU,
#: the raylet's threshold for "N PYTHON worker processes have been started ... which is 4x the
#: maximum expected startup concurrency" (its CPU count). The raylet keeps them in its own log
#: (``raylet.out`` in the Ray session's ``logs`` folder, ``/tmp/ray/session_latest/logs`` for the
#: embedded Ray); rayot logs them at debug level (``rayot -v``).
EXPECTED_RAY_WARNINGS = ("worker processes have been started on node",)


def expected_warning(data: dict) -> bool:
    """Whether a message that Ray's driver would print (its error listener's ``{"pid", "lines"}``)
    is one of :data:`EXPECTED_RAY_WARNINGS` from the raylet."""
    lines = data.get("lines") or []
    return data.get("pid") == "raylet" and bool(lines) and all(
        any(w in str(line) for w in EXPECTED_RAY_WARNINGS) for line in lines)


class _ToDebug(logging.Filter):
    """Takes a Ray logger's record of ``expected`` text off the terminal, into rayot's debug log."""

    def __init__(self, expected: str) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        if self.expected not in record.getMessage():
            return True
        log.debug("Ray: %s", record.getMessage())
        return False


def _quiet_expected_warnings() -> None:
    """Route Ray's expected warnings to rayot's debug log (``rayot -v``) instead of the terminal:
    the token-authentication notice (:data:`RAY_AUTH_LOGGER`) and the raylet's
    :data:`EXPECTED_RAY_WARNINGS`. Ray's driver prints what the raylet reports through
    ``ray._private.worker.print_to_stdstream``, with no filter of its own: that function is
    wrapped, and every other message (a worker killed, memory running out) is printed as before."""
    auth = logging.getLogger(RAY_AUTH_LOGGER)
    if not any(isinstance(f, _ToDebug) for f in auth.filters):
        auth.addFilter(_ToDebug("Token authentication is enabled for this Ray cluster"))
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # private API: without it the warnings stay on the terminal
        return
    printer = ray_worker.print_to_stdstream
    if getattr(printer, "rayot_quiet", False):
        return

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        if expected_warning(data):
            for line in data["lines"]:
                log.debug("Ray (raylet): %s", line)
            return
        printer(data, ignore_prefix)

    print_to_stdstream.rayot_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def shutdown() -> None:
    """Stop the embedded Ray (or leave the joined cluster) now, after a Ctrl-C, rather than in
    Ray's exit handler, where a second Ctrl-C would end in a traceback and exit status 1."""
    mark = switches.value(switches.SHUTDOWN_MARK)
    if mark:
        Path(mark).write_text("shutting down Ray\n")
    log.debug("stopping Ray")
    ray.shutdown()


def driver_resources() -> dict[str, float]:
    """A driver slot where the cluster offers them (no CPU taken); a sliver of CPU otherwise."""
    if ray.cluster_resources().get(DRIVER_SLOT, 0) >= 1:
        return {DRIVER_SLOT: 1}
    return {"CPU": DRIVER_CPU}


@dataclass(frozen=True)
class Capacity:
    """What the cluster has now, its largest node, and (autoscaling) the most it can grow to."""

    total: dict[str, float]
    largest: dict[str, float]  # per resource, the most any one node has (or can have)
    maximum: dict[str, float] | None  # the autoscaler's limit; None for a fixed cluster
    #: an autoscaler may add nodes: with ``maximum`` None, of sizes not known here (Ray's v1
    #: autoscaler, which `ray up` and `ray start --autoscaling-config` run, does not publish its
    #: node types), so a trial larger than today's nodes is not refused
    autoscaling: bool = False

    @classmethod
    def of_cluster(cls) -> Capacity:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        largest = {k: max(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")} if nodes else {}
        maximum = None
        try:
            from ray._private.state import state

            config = state.get_cluster_config()
            if config is not None and config.node_group_configs:
                maximum = state.get_max_resources_from_cluster_config() or None
                for group in config.node_group_configs:
                    for k in ("CPU", "GPU"):
                        largest[k] = max(largest.get(k, 0.0), float(group.resources.get(k, 0)))
        except Exception:  # noqa: BLE001 - private API; without it the cluster counts as fixed
            log.debug("no autoscaler configuration found", exc_info=True)
        autoscaling = maximum is not None or _autoscaler_adds_nodes()
        return cls(dict(ray.cluster_resources()), largest, maximum, autoscaling)


def _autoscaler_adds_nodes() -> bool:
    """Whether the cluster's autoscaler has node types of its own, i.e. was started with an
    autoscaling config (`ray up`, `ray start --autoscaling-config`). Read from the status it
    publishes in the GCS (what `ray status` shows); a cluster started without a config reports
    one read-only type per node (``node_<node id>``), and can only grow by hand."""
    try:
        import json

        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = json.loads(raw).get("autoscaler_report") if raw else None
    except Exception:  # noqa: BLE001 - private API; without it the cluster counts as fixed
        log.debug("no autoscaler status found", exc_info=True)
        return False
    if not report:
        return False
    types = {*report.get("active_nodes", {}), *report.get("pending_launches", {}),
             *(report.get("node_type_mapping") or {}).values()}
    return any(not t.startswith("node_") for t in types)


def worker_resources(r: Resources) -> dict[str, float]:
    return {"CPU": r.cpus_per_worker} | ({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})


def check_fits(r: Resources, capacity: Capacity, *, embedded: bool) -> None:
    """Refuse a trial that could never be scheduled (Ray Train would wait for it for ever)."""
    per_worker = worker_resources(r)
    if not embedded and capacity.autoscaling and capacity.maximum is None:
        short = {k: v for k, v in per_worker.items() if v > capacity.largest.get(k, 0.0)}
        if short:  # the autoscaler adds nodes, of sizes rayot cannot see: let Ray wait for them
            log.warning("no node has %s for a trial's worker yet; the cluster's autoscaler adds "
                        "nodes when trials wait, but rayot cannot see their sizes: a trial that no "
                        "node type fits waits for ever (see `ray status`)",
                        " and ".join(f"{v:g} {k}" for k, v in short.items()))
        return
    for key, need in per_worker.items():
        most = capacity.largest.get(key, 0.0)
        if need > most:
            raise RayotError(
                f"resources: a trial's worker needs {need:g} {key} but the largest node "
                f"{'can have' if capacity.maximum else 'has'} {most:g}: lower "
                f"resources.{'cpus' if key == 'CPU' else 'gpus'}_per_worker"
            )
    limit = capacity.maximum or capacity.total
    for key, need in per_worker.items():
        trial = need * r.num_workers
        have = limit.get(key, 0.0)
        if trial > have:
            where = (f"the embedded Ray has {have:g} (the CPUs this process may use)" if embedded
                     else f"the cluster {'can grow to' if capacity.maximum else 'has'} {have:g}")
            raise RayotError(
                f"resources: a trial needs {r.num_workers} worker(s) × {need:g} {key} = {trial:g} "
                f"{key}, but {where}: lower resources.num_workers or "
                f"resources.{'cpus' if key == 'CPU' else 'gpus'}_per_worker"
            )


def concurrency(r: Resources, capacity: Capacity, driver: dict[str, float],
                max_concurrent: int | None) -> int:
    """Trials at once: what the cluster fits now, counting what workers and drivers take."""
    if max_concurrent or r.max_concurrent_trials:
        return max_concurrent or r.max_concurrent_trials
    trial = {k: v * r.num_workers for k, v in worker_resources(r).items()}
    for k, v in driver.items():
        trial[k] = trial.get(k, 0.0) + v
    fit = min(int(capacity.total.get(k, 0.0) // v) for k, v in trial.items() if v > 0)
    if fit < 1:
        log.warning("the cluster has no room for a trial yet; running one at a time "
                    "(pass --max-concurrent N or set resources.max_concurrent_trials for an "
                    "autoscaling cluster)")
    return max(fit, 1)


def check_storage(location: str, what: str, *, embedded: bool) -> None:
    """A cluster's nodes share no local disk: a joined cluster needs URIs (file:// for a mount)."""
    if "://" in location or embedded:
        return
    raise RayotError(
        f"{what} location {location!r} is a local path, but the sweep runs on a Ray cluster whose "
        "nodes (including those the autoscaler adds later) do not share it: use s3://, gs://, or "
        "file:// for a mount every node has"
    )
