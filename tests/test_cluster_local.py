"""The cluster path of docs/cluster.md, end to end on one machine: `rayot sweep sweeps/smoke.yaml
--address auto --results s3://... --checkpoints s3://...` on a local autoscaling Ray cluster
(cluster/local-fake.yaml, started by scripts/local_cluster.py: a head with no CPU for trials,
1-CPU worker nodes that the autoscaler adds from zero, and moto's S3 server), with one worker node
killed while its pack of trials trains.

One sweep serves every test here (the CI budget has room for one): it checks that the trials
train packed on several worker nodes, that the cluster grows from no worker node and shrinks
back, that the results on S3 equal the embedded run's (tests/test_smoke.py, run once per session
for both), and that the pack on the killed node resumed from its epoch checkpoint on S3 on
another node, each trial's result written once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import load_script
from test_smoke import PINNED, _table, embedded_smoke

slow = pytest.mark.slow  # the sweep's tests; the check of rayot's fit rule below is fast

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "sweeps" / "smoke.yaml"
#: the node running a pack is killed once the pack's checkpoint of this epoch is on S3
KILL_AFTER_EPOCH = 3
EPOCHS = 20  # smoke.yaml's optim.epochs
#: generous bounds: the autoscaler polls every second, a node starts in seconds, and the idle
#: timeout is 30 s (cluster/local-fake.yaml)
SCALE_UP_BOUND_S = 120
SCALE_DOWN_BOUND_S = 150
CHECKPOINT = re.compile(r"checkpoints/((?:pack|trial)-[0-9a-f]+)/epoch_(\d{4})/state\.pt$")


LOCAL = load_script("local_cluster")


@dataclass
class ClusterRun:
    rc: int
    text: str
    started: float  # time.time() when the sweep started
    ended: float
    workers_at_start: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, worker nodes alive)
    runs_on: dict[str, set[str]] = field(default_factory=dict)  # Ray Train run -> nodes seen
    checkpoints: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # run -> (time, epoch)
    kill: dict | None = None  # {"time", "node", "run", "epoch", "pids"}
    scaled_down: float | None = None  # time.time() when no worker node was left
    status: dict = field(default_factory=dict)  # the GCS's nodes and Ray Train workers, at the end
    result_puts: dict[str, int] = field(default_factory=dict)  # results/<trial>.parquet -> PUTs
    watch_error: str = ""  # what stopped the watcher, if anything did


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    done, folder = embedded_smoke(tmp_path_factory)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, folder


@pytest.fixture(scope="module")
def cluster(embedded, tmp_path_factory):  # after the embedded run: they would share two cores
    c = LOCAL.start(log_dir=str(tmp_path_factory.mktemp("local-cluster")))
    try:
        yield c
    finally:
        c.stop()  # raises, failing the teardown, if any process of it is left


def _s3(cluster):
    import boto3

    env = cluster.env
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _epoch_checkpoints(s3, bucket: str) -> dict[str, int]:
    """Each Ray Train run's latest epoch checkpoint on S3 (rayot keeps one per run)."""
    latest: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="checkpoints/"):
        for obj in page.get("Contents", []):
            m = CHECKPOINT.search(obj["Key"])
            if m:
                latest[m.group(1)] = max(latest.get(m.group(1), 0), int(m.group(2)))
    return latest


def _watch(cluster, sweep: subprocess.Popen, run: ClusterRun) -> None:
    """While the sweep runs: sample the worker nodes, the Ray Train runs and their checkpoints,
    and kill the node of the first pack whose KILL_AFTER_EPOCH checkpoint is on S3."""
    try:
        _watch_until_done(cluster, sweep, run)
    except Exception as exc:  # noqa: BLE001 - reported by the tests, not lost in the thread
        run.watch_error = f"{type(exc).__name__}: {exc}"


def _watch_until_done(cluster, sweep: subprocess.Popen, run: ClusterRun) -> None:
    s3 = _s3(cluster)
    while sweep.poll() is None:
        now = time.time()
        run.samples.append((now, len(cluster.worker_nodes())))
        workers = cluster.train_workers()
        for w in workers:
            run.runs_on.setdefault(w.run, set()).add(w.node_id)
        for name, epoch in _epoch_checkpoints(s3, cluster.bucket).items():
            seen = run.checkpoints.setdefault(name, [])
            if not seen or seen[-1][1] != epoch:
                seen.append((now, epoch))
        if run.kill is None:
            for w in workers:
                epochs = run.checkpoints.get(w.run)
                if epochs and KILL_AFTER_EPOCH <= epochs[-1][1] < EPOCHS - 2:
                    try:
                        pids = cluster.kill_node(w.node_id)
                    except LOCAL.ClusterError:  # its pack ended meanwhile: the next one
                        continue
                    run.kill = {"time": time.time(), "node": w.node_id, "run": w.run,
                                "epoch": epochs[-1][1], "pids": len(pids)}
                    break
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster_run(cluster, embedded, tmp_path_factory) -> ClusterRun:
    """smoke.yaml on the local cluster, as docs/cluster.md runs a sweep (the S3 endpoint, its
    credentials and the cluster's address from the environment), one worker node killed."""
    _, embedded_dir = embedded
    tmp = tmp_path_factory.mktemp("cluster-smoke")
    env = {**os.environ, **cluster.env, "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "rayot", "sweep", str(SMOKE), "--address", "auto",
           "--results", cluster.uri("results"), "--checkpoints", cluster.uri("checkpoints"),
           "--max-concurrent", "2", "--set", f"data.root={embedded_dir / 'data'}"]
    run = ClusterRun(rc=-1, text="", started=time.time(), ended=0.0,
                     workers_at_start=len(cluster.worker_nodes()))
    with open(tmp / "sweep.out", "w") as out:
        sweep = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env)
        watcher = threading.Thread(target=_watch, args=(cluster, sweep, run), daemon=True)
        watcher.start()
        try:
            run.rc = sweep.wait(timeout=540)
        finally:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
            run.ended = time.time()
            watcher.join(timeout=30)
    run.text = (tmp / "sweep.out").read_text()
    deadline = time.monotonic() + SCALE_DOWN_BOUND_S
    while time.monotonic() < deadline:
        n = len(cluster.worker_nodes())
        run.samples.append((time.time(), n))
        if n == 0:
            run.scaled_down = time.time()
            break
        time.sleep(1)
    run.status = cluster.status()
    # moto's request log (one line per request): how often each result file was written
    log = Path(cluster.log_dir, "s3.log").read_text(errors="replace")
    for m in re.finditer(rf'PUT /{cluster.bucket}/results/([0-9a-f]+\.parquet) HTTP/1\.1(?:\x1b\[0m)?" 200', log):
        run.result_puts[m.group(1)] = run.result_puts.get(m.group(1), 0) + 1
    print(_timeline(run))
    return run


def _timeline(run: ClusterRun) -> str:
    """What the run measured (printed by the fixture; `pytest -s` shows it)."""
    lines = [f"sweep: exit {run.rc}, {run.ended - run.started:.0f} s"]
    up = [t for t, n in run.samples if n > 0]
    if up:
        lines.append(f"first worker node up {up[0] - run.started:.0f} s after the sweep started; "
                     f"at most {max(n for _, n in run.samples)} at once")
    if run.scaled_down:
        lines.append(f"no worker node left {run.scaled_down - run.ended:.0f} s after the sweep ended")
    workers = [n for n in run.status.get("nodes", []) if not n["head"]]
    lines.append(f"worker nodes over the run: {len(workers)}; Ray Train runs on nodes: "
                 + ", ".join(f"{r}: {sorted(n[-5:] for n in nodes)}" for r, nodes in run.runs_on.items()))
    if run.kill:
        k = run.kill
        lines.append(f"killed node {k['node'][-5:]} ({k['pids']} processes) while {k['run']} had "
                     f"its epoch {k['epoch']} checkpoint")
        gone = {n["node_id"]: n for n in run.status.get("nodes", [])}.get(k["node"], {})
        if gone.get("end_s"):
            lines.append(f"  Ray marked the node dead {gone['end_s'] - k['time']:.1f} s after the kill")
        after = [(t, e) for t, e in run.checkpoints.get(k["run"], []) if t > k["time"]]
        if after:
            lines.append(f"  first checkpoint after the kill: epoch {after[0][1]}, "
                         f"{after[0][0] - k['time']:.0f} s after it; last: epoch {after[-1][1]}, "
                         f"{after[-1][0] - k['time']:.0f} s after it")
    return "\n".join(lines)


@slow
def test_the_sweep_runs_on_the_cluster_with_s3_storage(cluster_run):
    text = cluster_run.text
    assert cluster_run.rc == 0, text
    assert not cluster_run.watch_error
    assert "joining the Ray cluster at auto" in text
    assert "Started a local Ray instance" not in text
    assert "6 trials in 3 packs" in text
    assert "results: s3://rayot-local/results" in text


@slow
def test_packs_train_on_several_worker_nodes_never_on_the_head(cluster_run):
    runs = cluster_run.runs_on
    # three Ray Train runs, one per pack of two seeds, as on the embedded Ray
    assert len(runs) == 3 and all(name.startswith("pack-") for name in runs), runs
    nodes = set().union(*runs.values())
    assert len(nodes) >= 2 and LOCAL.HEAD_NODE_ID not in nodes, runs
    # the GCS agrees: every Ray Train worker ran on a worker node
    gcs = cluster_run.status
    workers = {n["node_id"] for n in gcs["nodes"] if not n["head"]}
    assert {a["node_id"] for a in gcs["train_workers"]} <= workers
    assert len({a["node_id"] for a in gcs["train_workers"]}) >= 2


@slow
def test_the_cluster_grows_from_no_worker_node_and_shrinks_back(cluster_run):
    assert cluster_run.workers_at_start == 0
    assert max(n for _, n in cluster_run.samples) >= 2
    first_up = next(t for t, n in cluster_run.samples if n > 0)
    assert first_up - cluster_run.started < SCALE_UP_BOUND_S
    assert cluster_run.scaled_down is not None, "worker nodes still up after the bound"
    nodes = cluster_run.status["nodes"]
    assert [n["alive"] for n in nodes if n["head"]] == [True]
    assert not [n for n in nodes if not n["head"] and n["alive"]]


@slow
def test_the_results_on_s3_equal_the_embedded_runs(cluster_run, cluster, embedded, monkeypatch):
    from rayot.results import read_results

    done, embedded_dir = embedded
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, cluster.env[name])  # as a user reads them: the endpoint from the env

    def rows(location: str) -> dict[tuple[str, str], tuple]:
        table = read_results([location]).to_pylist()
        return {(r["trial_id"], r["split"]): (r["status"], r["accuracy"], r["n_correct"], r["n_test"],
                                             r["epoch_metrics"]) for r in table}

    on_s3, alone = rows(cluster.uri("results")), rows(str(embedded_dir / "results"))
    assert len(alone) == 12 and {v[0] for v in alone.values()} == {"done"}
    # exact: the same computation, wherever it ran and whether it was interrupted
    assert on_s3 == alone
    assert _table(cluster_run.text) == _table(done.stdout + done.stderr)
    assert set(_table(cluster_run.text)) == set(PINNED)


@slow
def test_a_killed_worker_node_resumes_its_pack_from_the_s3_checkpoint(cluster_run):
    kill = cluster_run.kill
    assert kill is not None, cluster_run.watch_error or "no pack reached its checkpoint while it trained"
    assert cluster_run.rc == 0, cluster_run.text
    # the node is gone for Ray as well, and its pack trained on another node afterwards
    gone = {n["node_id"]: n for n in cluster_run.status["nodes"]}[kill["node"]]
    assert not gone["alive"]
    assert len(cluster_run.runs_on[kill["run"]]) >= 2, cluster_run.runs_on
    # resumed, not restarted: every checkpoint of the pack written after the kill is of a later
    # epoch than the one it had, up to the last
    after = [e for t, e in cluster_run.checkpoints[kill["run"]] if t > kill["time"]]
    assert after and min(after) > kill["epoch"] and max(after) == EPOCHS, cluster_run.checkpoints
    # nothing lost or duplicated: each trial's result written once, two rows (base, novel) each
    assert len(cluster_run.result_puts) == 6 and set(cluster_run.result_puts.values()) == {1}, cluster_run.result_puts


def test_an_autoscaler_of_unseen_node_types_lets_a_trial_wait_for_its_node(monkeypatch, caplog):
    # Ray's v1 autoscaler (ray up, ray start --autoscaling-config) publishes its status but not
    # its node types: on a cluster with no worker node yet, a 1-CPU trial is not refused.
    from rayot.errors import RayotError
    from rayot.sweep import cluster
    from rayot.sweep.spec import Resources

    def status(report):
        monkeypatch.setattr("ray.experimental.internal_kv._internal_kv_get",
                            lambda key: json.dumps({"autoscaler_report": report}).encode())

    status({"active_nodes": {"ray.head.default": 1}, "pending_launches": {},
            "node_type_mapping": {LOCAL.HEAD_NODE_ID: "ray.head.default"}})
    assert cluster._autoscaler_adds_nodes()
    status({"active_nodes": {"cpu1": 1}, "pending_launches": {"cpu1": 1}, "node_type_mapping": {}})
    assert cluster._autoscaler_adds_nodes()
    # `ray start --head` without a config: one read-only type per node, nothing to add
    status({"active_nodes": {f"node_{LOCAL.HEAD_NODE_ID}": 1}, "pending_launches": {},
            "node_type_mapping": {LOCAL.HEAD_NODE_ID: f"node_{LOCAL.HEAD_NODE_ID}"}})
    assert not cluster._autoscaler_adds_nodes()
    status(None)
    assert not cluster._autoscaler_adds_nodes()

    head_only = cluster.Capacity({"driver_slot": 64.0}, {"CPU": 0.0, "GPU": 0.0}, None, autoscaling=True)
    with caplog.at_level(logging.WARNING, logger="rayot.sweep.cluster"):
        cluster.check_fits(Resources(num_workers=2, cpus_per_worker=1), head_only, embedded=False)
    assert "no node has 1 CPU for a trial's worker yet" in caplog.text
    fixed = cluster.Capacity({"driver_slot": 64.0}, {"CPU": 0.0, "GPU": 0.0}, None)
    with pytest.raises(RayotError, match="worker needs 1 CPU but the largest node has 0"):
        cluster.check_fits(Resources(cpus_per_worker=1), fixed, embedded=False)
    with pytest.raises(RayotError, match="largest node has 0"):  # an embedded Ray never grows
        cluster.check_fits(Resources(cpus_per_worker=1), head_only, embedded=True)
