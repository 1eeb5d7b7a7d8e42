"""Result storage under failure: durable writes, leftovers, bad files, done-over-failed, probes."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayot import results, storage
from rayot.errors import RayotError

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _row(trial_id: str, status: str = "done", **extra: object) -> dict:
    row = {
        "trial_id": trial_id, "status": status, "method": "coop", "protocol": "base2novel",
        "dataset": "synthetic", "eval_dataset": "synthetic", "split": "base" if status == "done" else "",
        "seed": 1, "shots": 2, "backbone": "rayot-tiny", "pretrained": "", "lambda_ot": 0.0,
        "regularizer": "none", "modality": "joint", "solver": "emd", "epsilon": 0.1, "epochs": 1,
        "config": "{}", "accuracy": 50.0 if status == "done" else None,
        "error": "boom" if status == "failed" else None,
    }
    return {**row, **extra}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# --- write_file -------------------------------------------------------------------------------------


def test_write_file_local_fsyncs_and_replaces(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = results.write_file(str(tmp_path), "logs/a.log", b"first")
    assert path == f"{tmp_path}/logs/a.log"
    assert Path(path).read_bytes() == b"first"
    assert len(synced) >= 2  # the file, then its folder
    results.write_file(f"file://{tmp_path}", "logs/a.log", b"second")  # a file:// URI: same path
    assert Path(path).read_bytes() == b"second"
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_write_file_failure_leaves_no_temporary_and_keeps_old(tmp_path, monkeypatch, step):
    results.write_file(str(tmp_path), "a.bin", b"old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, boom)
    with pytest.raises(OSError, match="No space left"):
        results.write_file(str(tmp_path), "a.bin", b"new")
    monkeypatch.undo()
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert _temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_file_object_store_path_removes_temporary_on_failure(tmp_path, monkeypatch):
    # a SubTreeFileSystem is not a LocalFileSystem: the pyarrow stream-and-move path runs
    sub = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(results, "filesystem", lambda loc, what="results": (sub, "res"))
    path = results.write_file("s3://fake/res", "t.parquet", b"ok")
    assert path == "res/t.parquet" and (tmp_path / "res" / "t.parquet").read_bytes() == b"ok"

    broken = _BrokenMove(sub)
    monkeypatch.setattr(results, "filesystem", lambda loc, what="results": (broken, "res"))
    monkeypatch.setenv(storage.RETRY_ENV, "0.3")  # a dropped connection is retried for 0.3 s
    with pytest.raises(storage.StorageUnavailable, match="did not answer .* network went away"):
        results.write_file("s3://fake/res", "t.parquet", b"new")
    assert broken.moves > 1
    assert (tmp_path / "res" / "t.parquet").read_bytes() == b"ok"
    assert _temporaries(tmp_path) == []


class _BrokenMove:
    """A pyarrow filesystem whose move fails, as a dropped connection would."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self._fs = fs
        self.moves = 0

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dst):
        self.moves += 1
        raise OSError("network went away")


# --- clean_temporary_files --------------------------------------------------------------------------


def test_clean_temporary_files_removes_only_old_temporaries(tmp_path, caplog):
    (tmp_path / "logs").mkdir()
    old_top = tmp_path / f".{'a' * 32}.tmp"
    old_log = tmp_path / "logs" / f".{'b' * 32}.tmp"
    young = tmp_path / f".{'c' * 32}.tmp"
    other = tmp_path / ".notes.tmp"  # not one of ours
    deep = tmp_path / "trial-x" / f".{'d' * 32}.tmp"  # not looked at: only the top and logs/
    deep.parent.mkdir()
    result = tmp_path / "t.parquet"
    for p in (old_top, old_log, young, other, deep, result):
        p.write_bytes(b"x")
    past = time.time() - 3600
    for p in (old_top, old_log, other, deep, result):
        os.utime(p, (past, past))
    with caplog.at_level(logging.INFO, logger="rayot.results"):
        removed = results.clean_temporary_files(str(tmp_path), older_than_s=600)
    assert sorted(removed) == sorted([str(old_top), str(old_log)])
    assert not old_top.exists() and not old_log.exists()
    assert young.exists() and other.exists() and deep.exists() and result.exists()
    assert str(old_top) in caplog.text and str(old_log) in caplog.text
    # with a later "now", the young one is old too
    assert results.clean_temporary_files(str(tmp_path), 600, now=time.time() + 3600) == [str(young)]
    assert results.clean_temporary_files(str(tmp_path / "missing")) == []


# --- unreadable result files ------------------------------------------------------------------------


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    zero = folder / "zero.parquet"
    zero.write_bytes(b"")
    garbage = folder / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all" * 20)
    foreign = folder / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    good = folder / "good.parquet"
    pq.write_table(results.make_table([_row("good")]), good)
    truncated = folder / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-40])
    return {"zero": zero, "garbage": garbage, "foreign": foreign, "truncated": truncated}


def test_finished_trials_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    loc = tmp_path / "results"
    bad = _bad_files(loc)
    results.write_trial_rows(str(loc), "done1", [_row("done1"), _row("done1", split="novel")])
    results.write_trial_rows(str(loc), "fail1", [_row("fail1", status="failed")])
    with caplog.at_level(logging.WARNING, logger="rayot.results"):
        found = results.finished_trials(str(loc))
    assert found == {"done1": "done", "fail1": "failed", "good": "done"}
    for p in bad.values():
        assert str(p) in caplog.text
    assert "0 bytes" in caplog.text and "not a rayot result file (none of a result's columns; it has a)" in caplog.text
    problems = results.unreadable_results(str(loc))
    assert set(problems) == {str(p) for p in bad.values()}
    assert "not a rayot result file" in problems[str(bad["foreign"])]
    for name in bad:
        assert results.trial_status(str(loc), name) is None
    assert results.trial_status(str(loc), "done1") == "done"
    assert results.trial_status(str(loc), "fail1") == "failed"
    assert results.trial_error(str(loc), "fail1") == "boom"
    assert results.trial_error(str(loc), "zero") is None
    assert results.trial_error(str(loc), "nothing") is None


def test_finished_trials_includes_good_named_file(tmp_path):
    loc = tmp_path / "results"
    _bad_files(loc)
    assert results.finished_trials(str(loc)) == {"good": "done"}


def test_file_with_rows_of_another_trial_is_unreadable(tmp_path):
    loc = tmp_path / "results"
    loc.mkdir()
    pq.write_table(results.make_table([_row("other")]), loc / "mine.parquet")
    assert results.finished_trials(str(loc)) == {}
    assert "other" in results.unreadable_results(str(loc))[str(loc / "mine.parquet")]


def test_trial_status_warns_on_bad_file(tmp_path, caplog):
    (tmp_path / "t1.parquet").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="rayot.results"):
        assert results.trial_status(str(tmp_path), "t1") is None
    assert str(tmp_path / "t1.parquet") in caplog.text


def test_read_results_strict_and_skip_unreadable(tmp_path, caplog):
    loc = tmp_path / "results"
    bad = _bad_files(loc)
    results.write_trial_rows(str(loc), "done1", [_row("done1")])
    with pytest.raises(RayotError, match="results file .*(foreign|garbage|truncated|zero).parquet"):
        results.read_results([str(loc)])
    with caplog.at_level(logging.WARNING, logger="rayot.results"):
        table = results.read_results([str(loc)], skip_unreadable=True)
    assert sorted(table.column("trial_id").to_pylist()) == ["done1", "good"]
    assert table.schema.equals(results.SCHEMA)
    for p in bad.values():
        assert str(p) in caplog.text


def test_read_results_ignores_dot_folders(tmp_path):
    loc = tmp_path / "results"
    results.write_trial_rows(str(loc), "t1", [_row("t1")])
    (loc / ".leases").mkdir()
    (loc / ".leases" / "t1.json").write_text("{}")
    (loc / ".leases" / "junk.parquet").write_bytes(b"")  # would fail if read
    (loc / "sub").mkdir()
    results.write_trial_rows(str(loc / "sub"), "t2", [_row("t2")])
    table = results.read_results([str(loc)])
    assert sorted(table.column("trial_id").to_pylist()) == ["t1", "t2"]
    assert results.finished_trials(str(loc)) == {"t1": "done"}


# --- failures never replace a done result -----------------------------------------------------------


def test_failure_rows_never_replace_done(tmp_path, caplog):
    loc = str(tmp_path)
    results.write_trial_rows(loc, "t1", [_row("t1")])
    with caplog.at_level(logging.WARNING, logger="rayot.results"):
        assert results.write_failure_rows(loc, "t1", [_row("t1", status="failed")]) is None
    assert "t1" in caplog.text
    assert results.trial_status(loc, "t1") == "done"


def test_failure_rows_replace_failed_missing_and_unreadable(tmp_path):
    loc = str(tmp_path)
    path = results.write_failure_rows(loc, "t1", [_row("t1", status="failed", error="first")])
    assert path == f"{tmp_path}/t1.parquet"
    assert results.write_failure_rows(loc, "t1", [_row("t1", status="failed", error="second")]) == path
    assert results.trial_error(loc, "t1") == "second"
    (tmp_path / "t2.parquet").write_bytes(b"")
    assert results.write_failure_rows(loc, "t2", [_row("t2", status="failed")]) is not None
    assert results.trial_status(loc, "t2") == "failed"
    # a done result still replaces a failure
    results.write_trial_rows(loc, "t1", [_row("t1")])
    assert results.trial_status(loc, "t1") == "done"


# --- check_writable ---------------------------------------------------------------------------------


def test_check_writable_good_folder_is_created_and_left_clean(tmp_path):
    loc = tmp_path / "a" / "b"
    t0 = time.monotonic()
    results.check_writable(str(loc), "results")
    assert time.monotonic() - t0 < 1.0
    assert loc.is_dir() and list(loc.iterdir()) == []
    results.check_writable(f"file://{loc}", "checkpoint")
    assert list(loc.iterdir()) == []


def test_check_writable_proc(tmp_path):
    with pytest.raises(RayotError) as err:
        results.check_writable("/proc/x/results", "results")
    msg = str(err.value)
    assert msg.startswith("results location '/proc/x/results'") and "not writable" in msg


def test_check_writable_under_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RayotError, match=r"checkpoint location .*afile/sub.* not writable: Not a directory"):
        results.check_writable(str(afile / "sub"), "checkpoint")


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders (the under-a-file case covers it)")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user can write into a read-only folder")
        with pytest.raises(RayotError, match=r"results location .*ro.* not writable: Permission denied"):
            results.check_writable(str(ro), "results")
        with pytest.raises(RayotError, match="Permission denied"):
            results.check_writable(str(ro / "sub"), "results")
    finally:
        ro.chmod(0o755)


def test_check_writable_unreachable_store_fails_within_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(RayotError, match=r"results location 's3://bucket/x.*no answer within 1 s"):
        results.check_writable("s3://bucket/x?endpoint_override=127.0.0.1:1&scheme=http", "results",
                               timeout_s=1.0)
    assert time.monotonic() - t0 < 2.0


def test_a_file_of_an_earlier_version_reads_its_new_columns_as_null(tmp_path):
    """Files written before ``epoch_metrics`` existed stay readable: the column reads as null."""
    table = results.make_table([_row("t1")]).drop_columns(list(results.OPTIONAL_COLUMNS))
    old = tmp_path / "res"
    old.mkdir()
    pq.write_table(table, old / "t1.parquet")
    assert results.finished_trials(str(old)) == {"t1": "done"}
    back = results.read_results([str(old)])
    assert back.schema.equals(results.SCHEMA) and back.column("epoch_metrics").to_pylist() == [None]
