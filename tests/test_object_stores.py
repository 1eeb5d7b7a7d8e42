"""Results, checkpoints, logs and leases on real S3- and GCS-protocol servers (rayot.emulators):
round trips, atomic leases under racing processes, a store that stops answering for a while."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest
import torch

from rayot import config as C
from rayot import emulators, results, storage
from rayot.checkpoints import save_checkpoint
from rayot.sweep import leases
from rayot.sweep.leases import Lease, LeaseHolder, Owner

pytest.importorskip("moto")
pytest.importorskip("gcp_storage_emulator")

BUCKET = "rayot-test"


@pytest.fixture(scope="module")
def s3_server():
    """One S3 server for the module, behind a proxy that some tests take off the network."""
    with emulators.start_s3(buckets=(BUCKET,), proxy=True) as s:
        yield s


@pytest.fixture(scope="module")
def gcs_server():
    with emulators.start_gcs(buckets=(BUCKET,)) as s:
        yield s


@pytest.fixture(params=["s3", "gcs"])
def server(request):
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def store(server, monkeypatch, request):
    """The server's environment set, and a fresh prefix of its bucket for this test."""
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    return server.uri(BUCKET, request.node.name.replace("[", "-").rstrip("]"))


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _row(trial_id: str, status: str = "done") -> dict:
    return {
        "trial_id": trial_id, "status": status, "method": "coop", "protocol": "base2novel",
        "dataset": "d", "eval_dataset": "d", "split": "base" if status == "done" else "", "seed": 1,
        "shots": 1, "backbone": "b", "pretrained": "", "accuracy": 50.0 if status == "done" else None,
        "epochs": 1, "config": "{}", "error": None if status == "done" else "boom",
    }


def test_results_checkpoints_and_logs_round_trip(store):
    results.check_writable(store, "results")
    results.write_trial_rows(store, "t1", [_row("t1")])
    results.write_failure_rows(store, "t2", [_row("t2", "failed")])
    assert results.write_failure_rows(store, "t1", [_row("t1", "failed")]) is None  # done stays done
    assert results.finished_trials(store) == {"t1": "done", "t2": "failed"}
    assert results.trial_status(store, "t1") == "done" and results.trial_error(store, "t2") == "boom"
    table = results.read_results([store])
    assert sorted(table.column("trial_id").to_pylist()) == ["t1", "t2"]

    cfg = C.TrialConfig()
    path = save_checkpoint(store, "t1/prompt.pt", cfg, {"ctx": torch.arange(4.0)})
    fs, _ = storage.filesystem(store)
    with fs.open_input_stream(path) as f:
        payload = torch.load(io.BytesIO(f.read()), weights_only=True)
    assert torch.equal(payload["prompt"]["ctx"], torch.arange(4.0))
    log_path = results.write_file(store, "logs/t2.log", b"Traceback ...\n")
    with fs.open_input_stream(log_path) as f:
        assert f.read() == b"Traceback ...\n"
    # nothing but the results, the checkpoint and the log: no temporary file left behind
    names = sorted(i.path.rsplit("/", 1)[1] for i in fs.get_file_info(pafs.FileSelector(
        storage.filesystem(store)[1], recursive=True)) if i.type == pafs.FileType.File)
    assert names == ["prompt.pt", "t1.parquet", "t2.log", "t2.parquet"]


def test_lease_life_cycle(store):
    clock = FakeClock()
    a, b = Owner.new("a"), Owner.new("b")
    lease_a = leases.acquire(store, "t1", a, ttl_s=60, clock=clock)
    assert isinstance(lease_a, Lease)
    held = leases.acquire(store, "t1", b, ttl_s=60, clock=clock)
    assert isinstance(held, LeaseHolder) and held.owner == a
    clock.now += 30
    assert lease_a.renew() and lease_a.expires_at == clock.now + 60
    assert set(leases.holders(store, clock=clock)) == {"t1"}
    clock.now += 61  # a's lease expired: b takes it over, a finds it lost
    lease_b = leases.acquire(store, "t1", b, ttl_s=60, clock=clock)
    assert isinstance(lease_b, Lease)
    assert not lease_a.renew() and lease_a.lost and lease_a.lost_to.owner == b
    assert lease_a.release() is False  # not a's any more: left in place
    assert leases.holder(store, "t1", clock=clock).owner == b
    assert lease_b.release() is True
    assert leases.holder(store, "t1", clock=clock) is None
    assert isinstance(leases.acquire(store, "t1", a, ttl_s=60, clock=clock), Lease)  # free again


def test_leases_are_atomic_there(store):
    assert storage.lease_guarantee(store) is None
    assert "If" in storage.describe_store(store) or "ifGeneration" in storage.describe_store(store)


# --- racing processes -------------------------------------------------------------------------------

ROUNDS = 12  # 6 fresh leases and 6 take-overs, each raced by every racer
RACERS = 4


def _racer(location: str, barrier, queue) -> None:
    owner = Owner.new(f"racer-{os.getpid()}")
    for r in range(ROUNDS):
        barrier.wait(timeout=60)
        got = leases.acquire(location, f"t{r}", owner, ttl_s=60)
        queue.put((r, owner.token, isinstance(got, Lease)))


def _conditional(location: str):
    """A store client of this process only (not the cached one that forked racers would share)."""
    bucket = location.split("://", 1)[1].split("/", 1)[0]
    prefix = location.split("://", 1)[1][len(bucket):].strip("/")
    client = storage.S3Store(bucket) if location.startswith("s3://") else storage.GcsStore(bucket)
    return client, prefix


def test_racing_processes_end_with_exactly_one_holder_per_round(store):
    """Odd rounds race to take over an expired lease, even rounds to create a fresh one."""
    client, prefix = _conditional(store)
    dead = Owner("dead" * 8, "elsewhere", 1, "a dead sweep")
    for r in range(1, ROUNDS, 2):
        assert client.create(f"{prefix}/.leases/t{r}.json", leases._encode(f"t{r}", dead, time.time() - 1))
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    barrier, queue = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(store, barrier, queue)) for _ in range(RACERS)]
    for p in procs:
        p.start()
    try:
        outcomes = [queue.get(timeout=120) for _ in range(ROUNDS * RACERS)]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    for r in range(ROUNDS):
        winners = [token for rr, token, won in outcomes if rr == r and won]
        assert len(winners) == 1, f"round {r}: {len(winners)} holders"
        stored = client.read(f"{prefix}/.leases/t{r}.json")
        assert json.loads(stored.data)["owner"]["token"] == winners[0]


# --- a store that stops answering -------------------------------------------------------------------


#: How long the tests' outages last: longer than the clients' own retries, which a retry budget
#: under a minute (RAYOT_STORAGE_RETRY_S, set by flaky_s3) cuts to 2 quick tries
OUTAGE_S = 0.5


@pytest.fixture
def flaky_s3(s3_server, monkeypatch):
    """The S3 server, which the test takes off the network and brings back."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(storage.RETRY_ENV, "30")
    yield s3_server
    s3_server.proxy.up()


def test_a_short_outage_is_ridden_out(flaky_s3, monkeypatch):
    location = flaky_s3.uri(BUCKET, "outage")
    results.write_trial_rows(location, "t1", [_row("t1")])
    flaky_s3.proxy.down()
    threading.Timer(OUTAGE_S, flaky_s3.proxy.up).start()
    start = time.monotonic()
    results.write_trial_rows(location, "t2", [_row("t2")])
    lease = leases.acquire(location, "t2", Owner.new("a"))
    assert time.monotonic() - start >= OUTAGE_S
    assert isinstance(lease, Lease)
    assert results.finished_trials(location) == {"t1": "done", "t2": "done"}


def test_retrying_backs_off_within_its_budget_and_logs_an_outage_once(caplog):
    calls, sleeps = [], []

    def op():
        calls.append(1)
        if len(calls) < 5:
            raise OSError("When reading 'x': AWS Error NETWORK_CONNECTION during GetObject operation: curl")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="rayot.storage"):
        assert storage.retrying(op, location="s3://b/x", budget_s=60, sleep=sleeps.append) == "ok"
    assert len(calls) == 5 and len(sleeps) == 4
    assert all(b > a for a, b in zip(sleeps, sleeps[1:], strict=False))  # exponential back-off
    messages = [r.getMessage() for r in caplog.records]
    assert sum("does not answer" in m for m in messages) == 1, messages
    assert sum("answers again" in m for m in messages) == 1, messages
    # an answer (not found, denied) is not retried; a local path never is
    for exc in (FileNotFoundError("gone"), PermissionError("denied")):
        with pytest.raises(type(exc)):
            storage.retrying(lambda exc=exc: (_ for _ in ()).throw(exc), location="s3://b/x", sleep=sleeps.append)
    with pytest.raises(OSError):
        storage.retrying(lambda: (_ for _ in ()).throw(OSError("network")), location="/tmp/x", sleep=sleeps.append)
    assert len(sleeps) == 4


def test_a_store_that_stays_down_is_one_clear_error(flaky_s3, monkeypatch):
    location = flaky_s3.uri(BUCKET, "down")
    results.write_trial_rows(location, "t1", [_row("t1")])
    monkeypatch.setenv(storage.RETRY_ENV, "1")
    monkeypatch.setattr(storage, "_S3_ATTEMPTS", 1)  # no client-side retries inside each try
    storage._object_filesystem.cache_clear()
    flaky_s3.proxy.down()
    try:
        with pytest.raises(storage.StorageUnavailable, match=r"results location 's3://rayot-test/down': "
                           r"the store did not answer for \d+ s \(\d+ tries; RAYOT_STORAGE_RETRY_S=1\)"):
            results.finished_trials(location)
    finally:
        flaky_s3.proxy.up()
        storage._object_filesystem.cache_clear()
    assert results.finished_trials(location) == {"t1": "done"}  # what was written is intact


# --- where leases are best effort --------------------------------------------------------------------


def test_best_effort_stores_are_named_in_one_line(monkeypatch):
    assert storage.lease_guarantee("results/x") is None
    assert storage.lease_guarantee("file:///tmp/x") is None
    line = storage.lease_guarantee("hdfs://namenode/x")
    assert line and "\n" not in line and "best effort" in line and "hdfs://" in line
    monkeypatch.setitem(sys.modules, "boto3", None)  # boto3 not installed
    line = storage.lease_guarantee("s3://b/x")
    assert line and "pip install 'rayot[s3]'" in line and "\n" not in line


# --- the sweep's side -------------------------------------------------------------------------------


def test_ray_gets_rayots_filesystem_of_an_object_store(store, tmp_path):
    from rayot.sweep.worker import ray_storage

    got = ray_storage(f"{store}/ckpt")
    assert got["storage_path"].endswith("/ckpt") and "://" not in got["storage_path"]
    fs = got["storage_filesystem"]
    with fs.open_output_stream(f"{got['storage_path']}/probe") as out:  # Ray writes through it
        out.write(b"x")
    assert storage.filesystem(f"{store}/ckpt/probe")[0].get_file_info(
        storage.filesystem(f"{store}/ckpt/probe")[1]).type == pafs.FileType.File
    assert ray_storage(str(tmp_path)) == {"storage_path": str(tmp_path)}
    assert ray_storage("file:///mnt/shared") == {"storage_path": "file:///mnt/shared"}


def test_lease_time_to_live_from_the_environment(monkeypatch):
    from rayot.errors import RayotError
    from rayot.sweep.worker import LEASE_TTL_ENV, lease_ttl_s

    assert lease_ttl_s() == 120.0
    monkeypatch.setenv(LEASE_TTL_ENV, "45")
    assert lease_ttl_s() == 45.0
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(LEASE_TTL_ENV, bad)
        with pytest.raises(RayotError, match=f"RAYOT_LEASE_TTL_S='{bad}': not a positive number"):
            lease_ttl_s()


def test_a_run_that_failed_in_an_outage_waits_for_the_store(flaky_s3, monkeypatch):
    from rayot.sweep.worker import _outage_over

    location = flaky_s3.uri(BUCKET, "ckpt")
    assert _outage_over(location, RuntimeError("a bug in the training code")) is False
    assert _outage_over("/tmp/local", OSError("Could not connect to server")) is False
    flaky_s3.proxy.down()
    threading.Timer(OUTAGE_S, flaky_s3.proxy.up).start()
    start = time.monotonic()
    assert _outage_over(location, RuntimeError("ActorDiedError: ... curlCode: 7, Could not connect to server")) is True
    assert time.monotonic() - start >= OUTAGE_S - 0.1  # it returned once the store answered again


def test_a_damaged_file_is_not_mistaken_for_a_store_that_does_not_answer():
    for text in ("Couldn't deserialize thrift: TProtocolException: Invalid data",
                 "Parquet magic bytes not found in footer", "Parquet file size is 0 bytes",
                 "Unexpected end of stream: expected 500 bytes"):
        assert not storage.transient(OSError(text)), text
    for text in ("When reading 'x': AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7",
                 "Connection refused", "HTTP response code: 503; SlowDown"):
        assert storage.transient(OSError(text)), text
