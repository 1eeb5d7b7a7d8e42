"""Per-trial leases: one holder at a time, takeover of expired leases, races, heartbeats."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rayot import results
from rayot.sweep import leases
from rayot.sweep.leases import Heartbeat, Lease, LeaseHolder, Owner


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _lease_file(loc: Path, trial_id: str = "t1") -> Path:
    return loc / ".leases" / f"{trial_id}.json"


def test_acquire_holder_renew_release(tmp_path):
    clock = FakeClock()
    a = Owner.new("sweep-a")
    lease = leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=clock)
    assert isinstance(lease, Lease)
    assert lease.expires_at == clock.now + 60
    content = json.loads(_lease_file(tmp_path).read_text())
    assert content["owner"]["token"] == a.token and content["owner"]["label"] == "sweep-a"
    assert content["owner"]["pid"] == os.getpid() and content["expires_at"] == clock.now + 60
    h = leases.holder(str(tmp_path), "t1", clock=clock)
    assert h == LeaseHolder("t1", a, clock.now + 60)
    assert leases.holders(str(tmp_path), clock=clock) == {"t1": h}

    clock.advance(30)
    assert lease.renew() is True
    assert lease.expires_at == clock.now + 60
    assert json.loads(_lease_file(tmp_path).read_text())["expires_at"] == clock.now + 60

    again = leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=clock)  # re-acquiring: ours
    assert isinstance(again, Lease)

    assert lease.release() is True
    assert not _lease_file(tmp_path).exists()
    assert leases.holder(str(tmp_path), "t1", clock=clock) is None
    assert lease.release() is False  # nothing left to release
    assert list((tmp_path / ".leases").iterdir()) == []  # no temporaries, no stale copies


def test_second_owner_is_refused_while_live(tmp_path):
    clock = FakeClock()
    a, b = Owner.new("sweep-a"), Owner.new("sweep-b")
    lease = leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=clock)
    clock.advance(59)
    got = leases.acquire(str(tmp_path), "t1", b, ttl_s=60, clock=clock)
    assert isinstance(got, LeaseHolder)
    assert got.owner == a and got.expires_at == lease.expires_at
    assert "sweep-a" in got.describe(clock.now) and "1 s more" in got.describe(clock.now)
    # another trial is free for b
    assert isinstance(leases.acquire(str(tmp_path), "t2", b, ttl_s=60, clock=clock), Lease)
    # b cannot release a's lease by guessing the trial
    fake = Lease(str(tmp_path), "t1", b, 60, clock.now + 60, clock=clock)
    assert fake.release() is False
    assert leases.holder(str(tmp_path), "t1", clock=clock).owner == a


def test_takeover_after_expiry(tmp_path, caplog):
    clock = FakeClock()
    a, b = Owner.new("sweep-a"), Owner.new("sweep-b")
    lease_a = leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=clock)
    clock.advance(61)  # a died: its lease ran out
    assert leases.holder(str(tmp_path), "t1", clock=clock) is None
    with caplog.at_level(logging.INFO, logger="rayot.sweep.leases"):
        lease_b = leases.acquire(str(tmp_path), "t1", b, ttl_s=60, clock=clock)
    assert isinstance(lease_b, Lease)
    assert "took over" in caplog.text and "sweep-a" in caplog.text
    assert leases.holder(str(tmp_path), "t1", clock=clock).owner == b
    # a comes back: its renewal finds the lease lost, and its release leaves b's lease alone
    with caplog.at_level(logging.WARNING, logger="rayot.sweep.leases"):
        assert lease_a.renew() is False
    assert lease_a.lost and lease_a.lost_to.owner == b
    assert "lost the lease of trial t1" in caplog.text and "sweep-b" in caplog.text
    assert lease_a.renew() is False  # stays lost
    assert lease_a.release() is False
    assert leases.holder(str(tmp_path), "t1", clock=clock).owner == b
    assert [p.name for p in (tmp_path / ".leases").iterdir()] == ["t1.json"]


def test_own_expired_lease_is_renewed_when_nobody_took_it(tmp_path):
    clock = FakeClock()
    a = Owner.new("sweep-a")
    lease = leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=clock)
    clock.advance(600)  # e.g. a suspended machine
    assert lease.renew() is True and not lease.lost
    assert leases.holder(str(tmp_path), "t1", clock=clock).owner == a


def test_unreadable_lease_counts_as_held_until_its_age_passes_the_ttl(tmp_path):
    path = _lease_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    a = Owner.new("sweep-a")
    got = leases.acquire(str(tmp_path), "t1", a, ttl_s=60)
    assert isinstance(got, LeaseHolder) and "unreadable lease file" in got.owner.label
    later = FakeClock(time.time() + 61)
    assert isinstance(leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=later), Lease)


def test_without_hard_links_creation_falls_back_to_o_excl(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    clock = FakeClock()
    a, b = Owner.new("a"), Owner.new("b")
    lease_a = leases.acquire(str(tmp_path), "t1", a, ttl_s=60, clock=clock)
    assert isinstance(lease_a, Lease)
    assert isinstance(leases.acquire(str(tmp_path), "t1", b, ttl_s=60, clock=clock), LeaseHolder)
    clock.advance(61)
    assert isinstance(leases.acquire(str(tmp_path), "t1", b, ttl_s=60, clock=clock), Lease)
    assert leases.holder(str(tmp_path), "t1", clock=clock).owner == b
    assert lease_a.release() is False
    assert [p.name for p in (tmp_path / ".leases").iterdir()] == ["t1.json"]


def test_object_store_path_reads_back(tmp_path, monkeypatch):
    # a store without conditional writes (hdfs://, here a SubTreeFileSystem): the best-effort
    # write-and-read-back path runs
    sub = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(leases, "filesystem", lambda loc, what="results": (sub, "res"))
    clock = FakeClock()
    a, b = Owner.new("a"), Owner.new("b")
    lease_a = leases.acquire("hdfs://fake/res", "t1", a, ttl_s=60, clock=clock, settle_s=0)
    assert isinstance(lease_a, Lease)
    assert (tmp_path / "res" / ".leases" / "t1.json").is_file()
    got = leases.acquire("hdfs://fake/res", "t1", b, ttl_s=60, clock=clock, settle_s=0)
    assert isinstance(got, LeaseHolder) and got.owner == a
    clock.advance(30)
    assert lease_a.renew() is True and lease_a.expires_at == clock.now + 60
    assert leases.holders("hdfs://fake/res", clock=clock)["t1"].owner == a
    clock.advance(61)
    lease_b = leases.acquire("hdfs://fake/res", "t1", b, ttl_s=60, clock=clock, settle_s=0)
    assert isinstance(lease_b, Lease)
    assert lease_a.renew() is False and lease_a.lost
    assert lease_b.release() is True
    assert leases.holder("hdfs://fake/res", "t1", clock=clock) is None


def test_leases_are_not_results(tmp_path):
    row = {
        "trial_id": "t1", "status": "done", "method": "coop", "protocol": "base2novel",
        "dataset": "d", "eval_dataset": "d", "split": "base", "seed": 1, "shots": 1,
        "backbone": "b", "pretrained": "", "lambda_ot": 0.0, "regularizer": "none",
        "modality": "joint", "solver": "emd", "epsilon": 0.1, "epochs": 1, "config": "{}",
    }
    results.write_trial_rows(str(tmp_path), "t1", [row])
    leases.acquire(str(tmp_path), "t1", Owner.new("a"))
    leases.acquire(str(tmp_path), "t2", Owner.new("a"))
    assert results.finished_trials(str(tmp_path)) == {"t1": "done"}
    assert results.unreadable_results(str(tmp_path)) == {}
    assert results.read_results([str(tmp_path)]).column("trial_id").to_pylist() == ["t1"]
    assert set(leases.holders(str(tmp_path))) == {"t1", "t2"}


# --- racing processes -------------------------------------------------------------------------------

ROUNDS = 8
RACERS = 4


def _racer(root: str, barrier, queue) -> None:
    owner = Owner.new(f"racer-{os.getpid()}")
    for r in range(ROUNDS):
        barrier.wait(timeout=30)
        got = leases.acquire(f"{root}/r{r}", "t1", owner, ttl_s=60)
        queue.put((r, owner.token, isinstance(got, Lease)))


def test_racing_processes_end_with_exactly_one_holder(tmp_path):
    # odd rounds race for the take-over of an expired lease, even rounds for a fresh one
    dead = Owner("dead" * 8, "elsewhere", 1, "a dead sweep")
    for r in range(1, ROUNDS, 2):
        path = _lease_file(tmp_path / f"r{r}")
        path.parent.mkdir(parents=True)
        path.write_bytes(leases._encode("t1", dead, time.time() - 1))
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    barrier, queue = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), barrier, queue)) for _ in range(RACERS)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=60) for _ in range(ROUNDS * RACERS)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for r in range(ROUNDS):
        winners = [token for rr, token, won in outcomes if rr == r and won]
        assert len(winners) == 1, f"round {r}: {len(winners)} holders"
        # the racers have exited (so holder() would see their leases as gone): read the file
        held = json.loads(_lease_file(tmp_path / f"r{r}").read_text())
        assert held["owner"]["token"] == winners[0]
        assert [p.name for p in (tmp_path / f"r{r}" / ".leases").iterdir()] == ["t1.json"]


# --- heartbeat --------------------------------------------------------------------------------------


def _wait_for(condition, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_heartbeat_renews_and_stops(tmp_path):
    lease = leases.acquire(str(tmp_path), "t1", Owner.new("a"), ttl_s=0.3)
    first = lease.expires_at
    with Heartbeat(lease) as hb:
        assert hb.interval_s == pytest.approx(0.1)
        assert _wait_for(lambda: hb.renewals >= 3)
        time.sleep(0.35)  # longer than the ttl: only the renewals keep it live
        assert leases.holder(str(tmp_path), "t1").owner == lease.owner
    assert lease.expires_at > first
    assert json.loads(_lease_file(tmp_path).read_text())["expires_at"] == lease.expires_at
    assert not hb.lost and hb.errors == 0
    count = hb.renewals
    time.sleep(0.25)
    assert hb.renewals == count  # stopped
    assert _wait_for(lambda: leases.holder(str(tmp_path), "t1") is None, 1.0)  # and it runs out
    assert lease.release() is True


def test_heartbeat_detects_a_lost_lease(tmp_path, caplog):
    mine = leases.acquire(str(tmp_path), "t1", Owner.new("a"), ttl_s=30)
    other = leases.acquire(str(tmp_path), "t2", Owner.new("a"), ttl_s=30)
    thief = Owner.new("the thief")
    with caplog.at_level(logging.WARNING, logger="rayot.sweep.leases"):
        with Heartbeat([mine, other], interval_s=0.05) as hb:
            assert _wait_for(lambda: hb.renewals >= 2)
            # another owner's lease replaces ours whole (as after an expiry and a takeover)
            results.write_local_file(str(_lease_file(tmp_path)),
                                     leases._encode("t1", thief, time.time() + 30))
            assert _wait_for(lambda: hb.lost)
            renewals = hb.renewals
            assert _wait_for(lambda: hb.renewals >= renewals + 2)  # the other lease goes on
    assert hb.lost_leases == [mine] and mine.lost and not other.lost
    assert mine.lost_to.owner == thief
    assert "lost the lease of trial t1" in caplog.text and "the thief" in caplog.text
    assert leases.holder(str(tmp_path), "t1").owner == thief
    assert mine.release() is False and other.release() is True


def test_heartbeat_survives_storage_errors(tmp_path, monkeypatch, caplog):
    lease = leases.acquire(str(tmp_path), "t1", Owner.new("a"), ttl_s=30)
    calls = []

    def flaky_renew():
        calls.append(1)
        if len(calls) <= 2:
            raise OSError("storage hiccup")
        return True

    monkeypatch.setattr(lease, "renew", flaky_renew)
    with caplog.at_level(logging.WARNING, logger="rayot.sweep.leases"), Heartbeat(lease, interval_s=0.02) as hb:
        assert _wait_for(lambda: hb.renewals >= 1)
    assert hb.errors == 2 and not hb.lost
    assert "storage hiccup" in caplog.text


def test_a_lease_of_a_process_gone_from_this_host_is_taken_at_once(tmp_path):
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone = Owner("gone" * 8, __import__("socket").gethostname(), int(child.stdout), "a killed sweep")
    assert gone.gone() and not Owner.new().gone()
    assert not Owner("x" * 32, "elsewhere", int(child.stdout)).gone()  # another host: not known
    first = leases.acquire(str(tmp_path), "t1", gone, ttl_s=3600)
    assert isinstance(first, Lease)
    second = leases.acquire(str(tmp_path), "t1", Owner.new("next sweep"), ttl_s=60)
    assert isinstance(second, Lease) and leases.holder(str(tmp_path), "t1").owner.label == "next sweep"
