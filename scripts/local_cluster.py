"""A local autoscaling Ray cluster and an S3 server on this machine: the cluster path of
docs/cluster.md ("Try the cluster path on one machine") without a cloud.

    eval "$(python scripts/local_cluster.py up)"     # starts both; exports what a client needs
    python scripts/local_cluster.py status           # the nodes: the head, workers added, gone
    rayot sweep sweeps/smoke.yaml --address auto --max-concurrent 2 \\
        --results s3://rayot-local/results --checkpoints s3://rayot-local/checkpoints
    eval "$(python scripts/local_cluster.py down)"   # stops all of it; unsets the exports
    python scripts/local_cluster.py check            # only checks that what `up` needs is installed

It needs ``pip install -e ".[local-cluster]"`` (:data:`INSTALL`): `up` and `check` say in one line
which package is missing, and exit with status 2, before anything starts.

What `up` starts, in a background process of its own (``serve``) that `down` stops:

- moto's S3 server on a free port of 127.0.0.1 (:func:`rayot.emulators.start_s3`), with the bucket
  ``rayot-local``; it lives in memory, so the bucket goes with `down`;
- ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`` with cluster/local-fake.yaml
  (Ray's fake multi-node provider) on a free port, in a Ray temp folder of its own (so it neither
  sees nor disturbs another Ray on this machine), with the head's resources from the config's
  ``ray.head.default`` type and the S3 variables in its environment. The autoscaler on the head
  adds worker nodes, each one more raylet on this machine, when trials wait for CPUs, and removes
  them when idle.

`up` prints ``export`` lines, what a client of this cluster sets: the S3 endpoint and credentials
(as for any S3-compatible store; rayot forwards the endpoint to the sweep's workers itself,
rayot/sweep/cluster.py), ``RAY_ADDRESS`` (so that ``--address auto`` finds this cluster rather
than another Ray on the machine) and the cluster's own token authentication (``RAY_AUTH_MODE``,
``RAY_AUTH_TOKEN_PATH``; Ray starts clusters with token authentication, and a client that names
the address must say so).

Every Ray process of the cluster (the head's, the worker nodes' and all their workers) carries a
token of its own in its environment (``RAYOT_LOCAL_CLUSTER``); stopping sends them SIGTERM, then
SIGKILL, and checks that none is left. The S3 server is a child of the process that started it
and stops with it. Nothing else is touched: no ``ray stop``, which stops every Ray on the machine.

Tests use :func:`start`, which starts the same in-process and returns a :class:`LocalCluster`
(a context manager): its nodes as processes, killing one, the GCS's view, stopping.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "local-fake.yaml"
BUCKET = "rayot-local"
#: the environment variable that marks every process of one local cluster (its value: a token)
MARKER = "RAYOT_LOCAL_CLUSTER"
#: where `up` keeps what `down` needs (one cluster per state folder)
STATE_DIR = Path(tempfile.gettempdir()) / "rayot-local-cluster"
HEAD_TYPE = "ray.head.default"
#: the fake provider's node ids: the head's, and the variable holding a node's id in the
#: environment of the raylet it starts (and so of every process of that node)
HEAD_NODE_ID = "f" * 51 + "00000"
NODE_ID_VARIABLE = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"
#: the Ray Train runs of rayot's sweeps (rayot.sweep.worker._fit)
RUN_NAME = re.compile(r"(?:trial|pack)-[0-9a-f]+")
#: seconds between SIGTERM and SIGKILL when stopping the cluster
STOP_GRACE_S = 3.0
#: the autoscaler's update interval (seconds): Ray's fake-cluster tests use 1 (default 5)
AUTOSCALER_UPDATE_INTERVAL_S = "1"
#: what brings everything the local cluster needs (pyproject.toml's `local-cluster` extra); the
#: line docs/cluster.md gives, and tests/test_install_docs.py runs in a fresh virtual environment
INSTALL = 'pip install -e ".[local-cluster]"'
#: what the local cluster imports beyond the script's own (the module, the package that brings
#: it), checked before anything starts. grpcio is Ray Client's: `ray start --head` refuses the
#: client server port `start` gives it without it, and ray[tune,train] does not bring it
REQUIREMENTS = (("ray", "ray"), ("boto3", "boto3"), ("moto.server", "moto[server]"),
                ("grpc", "ray[client]"))


class ClusterError(RuntimeError):
    pass


class MissingRequirement(ClusterError):
    """A package the local cluster needs is not installed (the message: one line)."""


def missing_requirements() -> list[str]:
    """The packages of :data:`REQUIREMENTS` that do not import here, each with the module that
    is missing (a package's own dependency, such as moto[server]'s flask, is named as such)."""
    missing = []
    for module, package in REQUIREMENTS:
        try:
            with warnings.catch_warnings():  # moto warns, then fails, without flask: one line
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{package} (no module {exc.name or module!r})")
    return missing


def check_requirements() -> None:
    """Raise :class:`MissingRequirement` naming every missing package and :data:`INSTALL`."""
    missing = missing_requirements()
    if missing:
        raise MissingRequirement(f"the local cluster needs {', '.join(missing)}, not installed "
                                 f"here; install with: {INSTALL}")


def _ray_cli() -> str:
    return shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


def _free_port() -> int:
    from rayot.emulators import free_port

    return free_port()


# ------------------------------------------------------------------------------ processes


def _environ(pid: int | str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def marked_processes(token: str, extra: dict[str, str] | None = None) -> list[int]:
    """The pids of live processes whose environment holds ``MARKER=token`` (and every ``extra``
    variable with its value)."""
    want = {MARKER: token, **(extra or {})}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(entry.name)
        if all(env.get(k) == v for k, v in want.items()) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def kill_processes(pids: list[int], *, grace_s: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to each pid, then SIGKILL to any left after ``grace_s`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------------------ the config


def load_config(path: Path = CONFIG) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"{path}: cannot read the cluster config ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ClusterError(f"{path}: not a cluster config (no available_node_types)")
    if config.get("provider", {}).get("type") != "fake_multinode":
        raise ClusterError(f"{path}: provider.type must be fake_multinode for a local cluster")
    if config.get("head_node_type") != HEAD_TYPE or HEAD_TYPE not in config["available_node_types"]:
        raise ClusterError(f"{path}: the fake provider's head node type is {HEAD_TYPE!r}")
    return config


def head_arguments(config: dict) -> list[str]:
    """`ray start --head` options giving the head the resources its node type declares."""
    resources = dict(config["available_node_types"][HEAD_TYPE].get("resources", {}))
    args = [f"--num-cpus={resources.pop('CPU', 0):g}", f"--num-gpus={resources.pop('GPU', 0):g}"]
    if "object_store_memory" in resources:
        args.append(f"--object-store-memory={int(resources.pop('object_store_memory'))}")
    if resources:
        args.append(f"--resources={json.dumps(resources, separators=(',', ':'))}")
    return args


# ------------------------------------------------------------------------------ the cluster


@dataclass(frozen=True)
class TrainWorker:
    pid: int
    node_id: str
    run: str  # the Ray Train run: trial-<trial id> or pack-<hash>


@dataclass
class LocalCluster:
    """A running local cluster: ``address`` (host:port of its GCS), ``env`` (what a client sets:
    ``RAY_ADDRESS``, the cluster's token authentication and the S3 endpoint and credentials),
    ``bucket``, ``temp_dir`` (Ray's folder of it: the session's logs are under
    ``<temp_dir>/session_latest/logs``; removed by :meth:`stop`)."""

    address: str
    env: dict[str, str]
    bucket: str
    token: str
    temp_dir: str
    config: dict
    s3: object = None  # rayot.emulators.StoreServer, when this process started it
    log_dir: str = ""  # s3.log (the S3 server's request log), ray-start.log

    def uri(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path.strip('/')}".rstrip("/")

    # --- nodes, as processes on this machine

    def processes(self) -> list[int]:
        """Every live process of the cluster (the S3 server excepted)."""
        return marked_processes(self.token)

    def worker_nodes(self) -> dict[str, int]:
        """The worker nodes running now: node id -> the pid of its raylet."""
        nodes = {}
        for pid in self.processes():
            node_id = _environ(pid).get(NODE_ID_VARIABLE)
            if node_id and node_id != HEAD_NODE_ID and _command(pid).split(" ", 1)[0].endswith("/raylet"):
                nodes[node_id] = pid
        return nodes

    def node_processes(self, node_id: str) -> list[int]:
        """The pids of one worker node: its raylet, its agents and its worker processes (the fake
        provider gives the raylet it starts the node's id in its environment; they inherit it)."""
        return marked_processes(self.token, {NODE_ID_VARIABLE: node_id})

    def train_workers(self) -> list[TrainWorker]:
        """The Ray Train workers running now: each one's pid, node and run. Ray Train makes a
        worker's working directory ``<session>/.../<run name>``; rayot names its runs
        ``trial-<trial id>`` or ``pack-<hash>`` (rayot.sweep.worker)."""
        found = []
        for pid in self.processes():
            if not _command(pid).startswith("ray::RayTrainWorker"):
                continue
            try:
                run = os.path.basename(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if RUN_NAME.fullmatch(run):  # else not in its run's folder yet
                found.append(TrainWorker(pid, _environ(pid).get(NODE_ID_VARIABLE, "?"), run))
        return found

    def kill_node(self, node_id: str) -> list[int]:
        """Kill a worker node as the loss of its machine would: SIGKILL to every process of it,
        at once. Returns the pids killed."""
        pids = self.node_processes(node_id)
        if not pids:
            raise ClusterError(f"node {node_id}: no process of it is running")
        kill_processes(pids, grace_s=0, sig=signal.SIGKILL)
        return pids

    def status(self) -> dict:
        """What the cluster's GCS knows (`status --json`, in a process of its own with
        :attr:`env`): every node that joined, alive or gone, with its start and end times."""
        out = subprocess.run([sys.executable, __file__, "status", "--json"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, **self.env})
        if out.returncode != 0:
            raise ClusterError(f"status: {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout)

    # --- stop

    def stop(self) -> None:
        """Stop every process of the cluster and the S3 server; raises if one is left."""
        try:
            # SIGTERM first (raylets end their workers); the GCS server and the autoscaler stay
            # on after it for many seconds, and a throwaway cluster needs no graceful end
            kill_processes(self.processes(), grace_s=STOP_GRACE_S)
            # a node the autoscaler launched while the others stopped: once more, at once
            kill_processes(self.processes(), grace_s=1, sig=signal.SIGKILL)
        finally:
            if self.s3 is not None:
                self.s3.stop()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        left = self.processes()
        if left:
            raise ClusterError("processes of the local cluster still alive: "
                               + "; ".join(f"{p} {_command(p)[:80]}" for p in left))

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_ip() -> str:
    """The address Ray gives this machine (the fake provider's worker nodes take it too)."""
    try:
        from ray._private.services import get_node_ip_address

        return get_node_ip_address()
    except Exception:  # noqa: BLE001 - private API
        return "127.0.0.1"


def start(config_path: Path = CONFIG, *, bucket: str = BUCKET, log_dir: str | None = None,
          timeout_s: float = 120) -> LocalCluster:
    """Start the S3 server and the local cluster (its head only; the autoscaler adds workers);
    a :class:`LocalCluster` to stop, or to use as a context manager. Whatever started is stopped
    again if the start fails."""
    check_requirements()
    from rayot.emulators import start_s3

    config = load_config(config_path)
    token = uuid.uuid4().hex
    # a short folder of its own: Ray's Unix sockets live under it (at most 107 characters)
    temp_dir = tempfile.mkdtemp(prefix="rayot-lc-", dir="/tmp")
    log_dir = log_dir or temp_dir
    # token authentication (Ray's default) with a token of this cluster's own, so that neither
    # ~/.ray/auth_token nor another cluster's token matters
    token_file = Path(temp_dir) / "auth_token"
    token_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    token_file.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    s3 = None
    cluster = None
    try:
        s3 = start_s3(buckets=(bucket,), log_path=os.path.join(log_dir, "s3.log"))
        port = _free_port()
        address = f"{_node_ip()}:{port}"
        config = copy.deepcopy(config)
        config["provider"]["gcs_address"] = address
        config_file = Path(temp_dir) / "autoscaling.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**s3.env, **auth, "RAY_ADDRESS": address}
        cluster = LocalCluster(address, env, bucket, token, temp_dir, config, s3, log_dir)
        head_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        head_env.update({**s3.env, **auth, MARKER: token, "RAY_FAKE_CLUSTER": "1",
                         "AUTOSCALER_UPDATE_INTERVAL_S": AUTOSCALER_UPDATE_INTERVAL_S})
        # free ports for what would otherwise take fixed ones (8265, 10001, 52365), which
        # another Ray on this machine may hold
        cmd = [_ray_cli(), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
               f"--autoscaling-config={config_file}", "--include-dashboard=false",
               f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats",
               *head_arguments(config)]
        start_log = Path(log_dir) / "ray-start.log"
        with start_log.open("ab") as out:
            done = subprocess.run(cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s)
        if done.returncode != 0:
            raise ClusterError(f"`{shlex.join(cmd)}` exited with status {done.returncode}:\n"
                               + start_log.read_text(errors="replace")[-3000:])
        return cluster
    except BaseException:
        if cluster is not None:
            with contextlib.suppress(ClusterError):
                cluster.stop()
        else:
            if s3 is not None:
                s3.stop()
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def gcs_status(address: str) -> dict:
    """Every node the GCS at ``address`` knows (alive or gone) and every Ray Train worker actor,
    with the node it ran on; run with the cluster's :attr:`LocalCluster.env`."""
    import asyncio

    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._raylet import GcsClient

    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    client = GcsClient(address=address)
    nodes = []
    for node_id, info in client.get_all_node_info(timeout=30).items():
        nodes.append({"node_id": node_id.hex(), "alive": info.state == 0,
                      "head": bool(info.is_head_node), "resources": dict(info.resources_total),
                      "start_s": info.start_time_ms / 1000,
                      "end_s": info.end_time_ms / 1000 if info.end_time_ms else None})
    async def all_actors():  # the client's future needs a running event loop
        return await client.async_get_all_actor_info(timeout=30)

    actors = []
    for info in asyncio.run(all_actors()).values():
        if "RayTrainWorker" in info.class_name:
            actors.append({"class": info.class_name, "node_id": info.address.node_id.hex(),
                           "start_s": info.start_time / 1000, "end_s": info.end_time / 1000 or None,
                           "state": info.state})
    return {"address": address, "nodes": sorted(nodes, key=lambda n: (not n["head"], n["start_s"])),
            "train_workers": sorted(actors, key=lambda a: a["start_s"])}


# ------------------------------------------------------------------------------ the CLI


def _state_file(state_dir: Path) -> Path:
    return state_dir / "cluster.json"


def _read_state(state_dir: Path) -> dict | None:
    try:
        return json.loads(_state_file(state_dir).read_text())
    except (OSError, ValueError):
        return None


def _serve(args: argparse.Namespace) -> int:
    """The background process of `up`: holds the S3 server (a child of this process, which it
    dies with), starts the cluster, writes the state file, and stops everything on SIGTERM."""
    state_dir = Path(args.state)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        cluster = start(Path(args.config), bucket=args.bucket, log_dir=str(state_dir))
    except Exception as exc:  # noqa: BLE001 - reported to `up` through the state file
        _state_file(state_dir).write_text(json.dumps({"error": str(exc)}))
        return 1
    try:
        _state_file(state_dir).write_text(json.dumps({
            "pid": os.getpid(), "address": cluster.address, "env": cluster.env,
            "bucket": cluster.bucket, "token": cluster.token, "temp_dir": cluster.temp_dir}))
        while not stopping.wait(1.0):
            pass
    finally:
        try:
            cluster.stop()
        finally:
            _state_file(state_dir).unlink(missing_ok=True)
    return 0


def _exports(state: dict) -> str:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in state["env"].items()]
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    check_requirements()
    print(f"the local cluster's requirements import: {', '.join(p for _, p in REQUIREMENTS)}")
    return 0


def _up(args: argparse.Namespace) -> int:
    check_requirements()  # before anything starts, in one line (main) rather than Ray's traceback
    state_dir = Path(args.state)
    state = _read_state(state_dir)
    if state and "pid" in state and _alive(state["pid"]):
        print(f"# already up: Ray at {state['address']}", file=sys.stderr)
        print(_exports(state))
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    _state_file(state_dir).unlink(missing_ok=True)
    with open(state_dir / "serve.log", "ab") as log:
        server = subprocess.Popen(
            [sys.executable, __file__, "serve", "--config", str(args.config), "--bucket",
             args.bucket, "--state", str(state_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while (state := _read_state(state_dir)) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            if server.poll() is None:
                server.terminate()
            print(f"error: the local cluster did not start; see {state_dir / 'serve.log'}",
                  file=sys.stderr)
            return 1
        time.sleep(0.5)
    if "error" in state:
        _state_file(state_dir).unlink(missing_ok=True)
        print(f"error: {state['error']}", file=sys.stderr)
        return 1
    print(f"# local cluster up: Ray at {state['address']} (the head; the autoscaler adds worker "
          f"nodes), S3 at {state['env']['AWS_ENDPOINT_URL']} with bucket {state['bucket']}; "
          f"stop it with: python {Path(__file__).relative_to(ROOT)} down", file=sys.stderr)
    print(_exports(state))
    return 0


def _down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state)
    state = _read_state(state_dir)
    if not state or "pid" not in state:
        print("no local cluster is up", file=sys.stderr)
        return 0
    if _alive(state["pid"]):
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = marked_processes(state["token"])
    if left:  # the serving process was killed before it could stop them
        kill_processes(left, grace_s=STOP_GRACE_S)
    _state_file(state_dir).unlink(missing_ok=True)
    shutil.rmtree(state["temp_dir"], ignore_errors=True)
    left = marked_processes(state["token"])
    if left or _alive(state["pid"]):
        print(f"error: still alive: {[state['pid'], *left]}", file=sys.stderr)
        return 1
    print("# local cluster stopped: none of its processes is left", file=sys.stderr)
    print("unset " + " ".join(state["env"]))  # for eval: what `up` exported
    return 0


def _status(args: argparse.Namespace) -> int:
    address = os.environ.get("RAY_ADDRESS")
    if not address or "RAY_AUTH_TOKEN_PATH" not in os.environ:
        state = _read_state(Path(args.state))
        if not state or "pid" not in state:
            print("no local cluster is up (and no RAY_ADDRESS)", file=sys.stderr)
            return 1
        os.environ.update(state["env"])
        address = state["address"]
    status = gcs_status(address)
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"Ray at {address}")
    for n in status["nodes"]:
        res = ", ".join(f"{k} {v:g}" for k, v in sorted(n["resources"].items())
                        if "memory" not in k and not k.startswith("node:"))
        when = time.strftime("%H:%M:%S", time.localtime(n["start_s"]))
        if n["end_s"]:
            when += time.strftime(" to %H:%M:%S", time.localtime(n["end_s"]))
        print(f"  {'head  ' if n['head'] else 'worker'} {n['node_id'][-5:]} "
              f"{'alive' if n['alive'] else 'gone '} {when:20s} {res}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("up", "start the S3 server and the cluster, print the exports"),
                       ("down", "stop every process `up` started"),
                       ("status", "the cluster's nodes, alive and gone"),
                       ("check", "check that what `up` needs is installed; start nothing"),
                       ("serve", "(internal) the background process of `up`")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--state", default=str(STATE_DIR), help="where `up` keeps its state")
        if name in ("up", "serve"):
            s.add_argument("--config", default=str(CONFIG), help="the fake_multinode cluster config")
            s.add_argument("--bucket", default=BUCKET, help="the S3 bucket to create")
        if name == "status":
            s.add_argument("--json", action="store_true", help="as JSON, with Ray Train's workers")
    args = p.parse_args(argv)
    command = {"up": _up, "serve": _serve, "down": _down, "status": _status, "check": _check}
    try:
        return command[args.command](args)
    except MissingRequirement as exc:  # bad setup, as argparse's bad usage: status 2
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
