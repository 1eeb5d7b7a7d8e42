"""Scans of a results location at scale (docs/scale.md): one listing, one read per file, concurrent
on an object store; the same answers as reading each file in turn, on a local folder and on S3."""

from __future__ import annotations

import json
import logging
import threading
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayot import results, storage
from rayot.sweep import leases

NOW = time.time()  # near the files' modification times: an unreadable lease is live for 120 s after it


def _row(trial_id: str, status: str = "done", **extra: object) -> dict:
    row = {
        "trial_id": trial_id, "status": status, "method": "coop", "protocol": "base2novel",
        "dataset": "synthetic", "eval_dataset": "synthetic", "split": "base" if status == "done" else "",
        "seed": 1, "shots": 2, "backbone": "rayot-tiny", "pretrained": "", "epochs": 1, "config": "{}",
        "accuracy": 50.0 if status == "done" else None, "error": "boom" if status == "failed" else None,
    }
    return {**row, **extra}


def _parquet(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def _lease(trial_id: str, expires_at: float, host: str = "another-host") -> bytes:
    owner = {"token": f"tok-{trial_id}", "host": host, "pid": 4242, "label": "sweep other"}
    return json.dumps({"trial_id": trial_id, "owner": owner, "expires_at": expires_at}).encode()


def _zoo() -> dict[str, bytes]:
    """Every kind of file a results folder can hold: name (relative) → bytes."""
    done = _parquet(results.make_table([_row("done1"), _row("done1", split="novel")]))
    files = {
        "done1.parquet": done,
        "fail1.parquet": _parquet(results.make_table([_row("fail1", status="failed")])),
        "mixed.parquet": _parquet(results.make_table([_row("mixed"), _row("mixed", status="failed")])),
        "zero.parquet": b"",
        "garbage.parquet": b"not parquet" * 20,
        "truncated.parquet": done[:-40],
        "foreign.parquet": _parquet(pa.table({"trial_id": ["foreign"], "x": [1]})),
        "norows.parquet": _parquet(results.make_table([])),
        "other.parquet": _parquet(results.make_table([_row("someone-else")])),
        "weird.parquet": _parquet(results.make_table([_row("weird", status="running")])),
        "notes.txt": b"not a result",
        ".0123456789abcdef0123456789abcdef.tmp": b"half",
        ".hidden.parquet": done,
        "searches/s1.parquet": b"a search record, not a trial",
        ".leases/live.json": _lease("live", NOW + 600),
        ".leases/expired.json": _lease("expired", NOW - 1),
        ".leases/done1.json": _lease("done1", NOW + 60),
        ".leases/mismatch.json": _lease("someone-else", NOW + 600),  # another trial's lease: unreadable
    }
    for i in range(25):  # enough files for every scan thread
        tid = f"t{i:02d}"
        files[f"{tid}.parquet"] = _parquet(results.make_table([_row(tid, status="failed" if i % 3 else "done")]))
        files[f".leases/{tid}.json"] = _lease(tid, NOW + (600 if i % 2 else -600))
    return files


def _sequential(location: str) -> tuple[dict[str, str], dict[str, str]]:
    """What the scan answered before it was concurrent: each listed file judged by _inspect in turn."""
    fs, base = results.filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    statuses, problems = {}, {}
    for info in sorted(infos, key=lambda i: i.path):
        name = info.base_name
        if info.type != pafs.FileType.File or not name.endswith(".parquet") or name.startswith("."):
            continue
        status, problem = results._inspect(fs, info.path, name[: -len(".parquet")])
        if problem:
            problems[info.path] = problem
        else:
            statuses[name[: -len(".parquet")]] = status
    return statuses, problems


def _by_name(problems: dict[str, str]) -> dict[str, str]:
    return {path.rsplit("/", 1)[-1]: problem for path, problem in problems.items()}


EXPECTED_STATUSES = {"done1": "done", "fail1": "failed", "mixed": "failed",
                     **{f"t{i:02d}": "failed" if i % 3 else "done" for i in range(25)}}
UNREADABLE = {"zero.parquet", "garbage.parquet", "truncated.parquet", "foreign.parquet", "norows.parquet",
              "other.parquet", "weird.parquet"}
LIVE = {"live", "done1", "mismatch", *(f"t{i:02d}" for i in range(25) if i % 2)}


@pytest.fixture
def local_zoo(tmp_path):
    for name, data in _zoo().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return str(tmp_path)


@pytest.fixture(scope="module")
def s3_zoo():
    """The zoo on moto's S3 server (started and stopped here), and the server's environment."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from rayot import emulators

    server = emulators.start_s3(buckets=("rayot-scale-test",))
    try:
        with server.environment():
            client = boto3.client("s3", endpoint_url=server.endpoint)
            for name, data in _zoo().items():
                client.put_object(Bucket="rayot-scale-test", Key=f"zoo/results/{name}", Body=data)
            yield server.uri("rayot-scale-test", "zoo/results")
    finally:
        server.stop()


def test_judging_bytes_agrees_with_judging_the_file(local_zoo):
    # the scan judges fetched bytes, trial_status judges the file (_inspect): one verdict
    fs = pafs.LocalFileSystem()
    for name, data in _zoo().items():
        if not name.endswith(".parquet") or "/" in name:
            continue
        trial_id = name[: -len(".parquet")]
        fetched = results._judge(lambda d=data: pq.ParquetFile(pa.BufferReader(d)), trial_id, in_store=False)
        assert fetched == results._inspect(fs, f"{local_zoo}/{name}", trial_id), name


def test_local_scan_answers_as_the_sequential_one(local_zoo, caplog):
    statuses, problems = _sequential(local_zoo)
    assert statuses == EXPECTED_STATUSES and set(_by_name(problems)) == UNREADABLE
    scan = results.scan_results(local_zoo)
    assert scan.statuses == statuses and scan.problems == problems
    with caplog.at_level(logging.WARNING, logger="rayot.results"):
        assert results.finished_trials(local_zoo) == statuses
    for path in problems:
        assert path in caplog.text
    assert results.unreadable_results(local_zoo) == problems


def test_local_leases_scan(local_zoo):
    found = leases.holders(local_zoo, clock=lambda: NOW)
    assert set(found) == LIVE
    assert found["live"].owner.host == "another-host"
    assert found["mismatch"].owner.host == "?"  # unreadable: held by an unknown owner for 120 s
    for trial_id, held in found.items():
        assert leases.holder(local_zoo, trial_id, clock=lambda: NOW) == held
    assert leases.holder(local_zoo, "expired", clock=lambda: NOW) is None


def test_scan_of_a_missing_location_is_empty(tmp_path):
    assert results.scan_results(str(tmp_path / "nothing")) == results.ResultScan({}, {})
    assert leases.holders(str(tmp_path / "nothing")) == {}


def test_scan_map_keeps_order_runs_concurrently_on_object_stores_and_raises(monkeypatch):
    seen: set[str] = set()
    barrier = threading.Barrier(3, timeout=5)

    def work(x: int) -> int:
        seen.add(threading.current_thread().name)
        if x < 3:
            barrier.wait()  # three calls at once, or this times out
        time.sleep(0.001 * (x % 4))
        return x * x

    assert results.scan_map("s3://b/p", work, list(range(40))) == [x * x for x in range(40)]
    assert len(seen) >= 3 and all(name.startswith("rayot-scan") for name in seen)
    seen.clear()
    assert results.scan_map("/a/local/folder", lambda x: (seen.add(threading.current_thread().name), x)[1],
                            list(range(5))) == list(range(5))
    assert seen == {threading.current_thread().name}  # a local scan stays in this thread
    started: list[int] = []

    def failing(x: int) -> int:
        started.append(x)
        if x == 2:
            raise storage.StorageUnavailable("down")
        time.sleep(0.01)
        return x

    with pytest.raises(storage.StorageUnavailable):
        results.scan_map("s3://b/p", failing, list(range(200)))
    assert len(started) < 200  # the calls not started were cancelled


def test_s3_scan_answers_as_the_sequential_one_with_one_read_per_file(s3_zoo, local_zoo, monkeypatch):
    statuses, problems = _sequential(s3_zoo)
    assert statuses == EXPECTED_STATUSES
    reads: list[str] = []
    real_read = storage.S3Store.read
    monkeypatch.setattr(storage.S3Store, "read", lambda self, key: (reads.append(key), real_read(self, key))[1])
    scan = results.scan_results(s3_zoo)
    assert scan.statuses == statuses and scan.problems == problems
    assert _by_name(scan.problems) == _by_name(results.scan_results(local_zoo).problems)
    n_files = sum(1 for name in _zoo() if name.endswith(".parquet") and "/" not in name and not name.startswith("."))
    assert len(reads) == n_files == len(set(reads))  # one GET per file, nothing else read
    assert results.finished_trials(s3_zoo) == statuses
    for trial_id, status in statuses.items():
        assert results.trial_status(s3_zoo, trial_id, warn=False) == status
    nowhere = s3_zoo.rsplit("/", 2)[0] + "/nothing/here"
    assert results.scan_results(nowhere) == results.ResultScan({}, {})
    assert leases.holders(nowhere) == {}


def test_s3_leases_scan_answers_as_the_local_one(s3_zoo, local_zoo):
    clock = lambda: NOW  # noqa: E731
    found = leases.holders(s3_zoo, clock=clock)
    local = leases.holders(local_zoo, clock=clock)
    assert set(found) == set(local) == LIVE
    for trial_id, held in found.items():
        if trial_id == "mismatch":  # unreadable: an unknown owner named after the file, 120 s after its change
            assert held.owner.host == "?" and "mismatch.json" in held.owner.label
            assert held.expires_at == pytest.approx(time.time() + 120, abs=60)
            continue
        assert held == local[trial_id]
        assert leases.holder(s3_zoo, trial_id, clock=clock) == held
    assert leases.holder(s3_zoo, "expired", clock=clock) is None
    assert leases.holder(s3_zoo, "no-such-trial", clock=clock) is None


def test_a_file_removed_during_the_scan_is_left_out(s3_zoo, monkeypatch):
    real_read = storage.S3Store.read
    monkeypatch.setattr(storage.S3Store, "read",
                        lambda self, key: None if key.endswith("/done1.parquet") else real_read(self, key))
    scan = results.scan_results(s3_zoo)
    assert "done1" not in scan.statuses and not any("done1" in path for path in scan.problems)
    assert scan.statuses == {k: v for k, v in EXPECTED_STATUSES.items() if k != "done1"}


def test_an_unreadable_lease_read_without_its_time_asks_the_file_for_it(tmp_path, monkeypatch):
    # a GCS read gives no modification time: the lease file's own is asked for
    (tmp_path / ".leases").mkdir()
    (tmp_path / ".leases" / "t1.json").write_bytes(b"{half a lea")
    mtime = (tmp_path / ".leases" / "t1.json").stat().st_mtime

    class NoTime(storage.ConditionalStore):
        def read(self, key: str) -> storage.Stored | None:
            got = leases._LOCAL.read(key)
            return None if got is None else storage.Stored(got.data, got.version, None)

    real_store = leases._store
    monkeypatch.setattr(leases, "_store", lambda loc, tid: (NoTime(), *real_store(loc, tid)[1:]))
    held = leases.holder(str(tmp_path), "t1", clock=lambda: mtime + 60)
    assert held is not None and held.owner.host == "?"
    assert held.expires_at == pytest.approx(mtime + 120)
    assert leases.holder(str(tmp_path), "t1", clock=lambda: mtime + 121) is None
