"""Ctrl-C and resuming: a second Ctrl-C while the sweep stops Ray exits 130 with one line; a
resumed run starts from the newest complete epoch checkpoint on the storage, not from the older
one Ray Train registered; Ray's expected warnings stay off the terminal."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from conftest import load_script, stop_marked

from rayot.checkpoints import (
    EPOCH_RECORD_FILE,
    EPOCH_STATE_FILE,
    epoch_folder_name,
    newest_complete_epoch,
    read_epoch_state,
    write_epoch_checkpoint,
)
from rayot.sweep import cluster

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- epoch checkpoints


def _state(epoch: int) -> dict:
    return {"epoch": epoch - 1, "prompt": {"ctx": torch.full((2, 3), float(epoch))}, "trial_id": "t"}


def _epoch(run: Path, epoch: int) -> Path:
    folder = run / epoch_folder_name(epoch)
    folder.mkdir(parents=True)
    write_epoch_checkpoint(folder, epoch, _state(epoch))
    return folder


def test_the_newest_complete_epoch_checkpoint_is_chosen_and_an_incomplete_one_never_looks_complete(tmp_path):
    run = tmp_path / "trial-x"
    _epoch(run, 4)
    _epoch(run, 6)  # the newest complete one
    truncated = _epoch(run, 7)  # copied part-way: its state shorter than its record says
    data = (truncated / EPOCH_STATE_FILE).read_bytes()
    (truncated / EPOCH_STATE_FILE).write_bytes(data[: len(data) // 2])
    (_epoch(run, 8) / EPOCH_RECORD_FILE).unlink()  # the record not copied yet
    (_epoch(run, 9) / EPOCH_STATE_FILE).unlink()  # the state not copied yet
    mixed = _epoch(run, 10)  # a state of the same size but other bytes than its record's
    data = bytearray((mixed / EPOCH_STATE_FILE).read_bytes())
    data[-30] ^= 0xFF
    (mixed / EPOCH_STATE_FILE).write_bytes(bytes(data))
    moved = run / epoch_folder_name(11)  # a record of another epoch
    moved.mkdir()
    for name in (EPOCH_STATE_FILE, EPOCH_RECORD_FILE):
        (moved / name).write_bytes((run / epoch_folder_name(6) / name).read_bytes())
    (_epoch(run, 12) / EPOCH_RECORD_FILE).write_text("{not json")
    (run / epoch_folder_name(13)).write_text("a file, not a folder")
    (run / "epoch_latest").mkdir()

    epoch, data = newest_complete_epoch(pafs.LocalFileSystem(), str(run))
    assert epoch == 6
    state = read_epoch_state(data)
    assert state["epoch"] == 5 and torch.equal(state["prompt"]["ctx"], torch.full((2, 3), 6.0))


def test_no_complete_epoch_checkpoint_resumes_from_rays_own(tmp_path):
    fs = pafs.LocalFileSystem()
    assert newest_complete_epoch(fs, str(tmp_path / "no-such-run")) is None
    legacy = tmp_path / "trial-y" / epoch_folder_name(3)  # written before completion records
    legacy.mkdir(parents=True)
    torch.save(_state(3), legacy / EPOCH_STATE_FILE)
    assert newest_complete_epoch(fs, str(tmp_path / "trial-y")) is None


def test_the_ranks_resume_from_one_epoch_or_fall_back_together():
    from rayot.sweep.worker import RayTrainHooks

    def ranks(*found: int) -> list[bool]:
        answers = []
        for epoch in found:  # every rank with the collective's totals of every rank's values
            hooks = object.__new__(RayTrainHooks)
            hooks.world_size = len(found)
            hooks.sum_counts = lambda counts, found=found: [sum(found), sum(e * e for e in found)]
            answers.append(hooks._same_on_every_rank(epoch))
        return answers

    assert ranks(6, 6) == [True, True]
    assert ranks(5, 7) == [False, False]  # equal sums, other epochs: every rank falls back
    assert ranks(0, 6, 6) == [False, False, False]


# ----------------------------------------------------------------------------- Ray's noise


def test_rays_expected_warnings_go_to_the_debug_log_and_the_others_to_the_terminal(monkeypatch, capsys, caplog):
    from ray._private import worker as ray_worker

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored after
    auth = logging.getLogger(cluster.RAY_AUTH_LOGGER)
    monkeypatch.setattr(auth, "filters", [])
    cluster._quiet_expected_warnings()
    cluster._quiet_expected_warnings()  # once is enough: not wrapped twice
    assert len(auth.filters) == 1
    caplog.set_level(logging.DEBUG, logger="rayot.sweep.cluster")
    # Only what Ray prints is under test: a handler that an earlier test's CLI run left on the
    # root logger would print the debug records too.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if type(h).__module__.startswith("_pytest")])

    pool = ("WARNING: 8 PYTHON worker processes have been started on node: 59a3 with address: 192.0.2.2, "
            "which is 4x the maximum expected startup concurrency (2).")
    ray_worker.print_to_stdstream({"lines": [pool], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    died = "A worker died or was killed while executing a task by an unexpected system error."
    ray_worker.print_to_stdstream({"lines": [died], "pid": "raylet", "is_err": False}, ignore_prefix=False)

    out = capsys.readouterr()
    assert "worker processes" not in out.out + out.err and "Token authentication" not in out.out + out.err
    assert died in out.out  # not an expected warning: on the terminal as before
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(pool in m for m in debug) and any("Token authentication" in m for m in debug)


# ----------------------------------------------------------------------------- a second Ctrl-C


def test_a_second_ctrl_c_once_the_sweep_stops_exits_at_once_with_130_and_one_line(tmp_path):
    """The CLI's handler alone (no Ray): the first Ctrl-C raises KeyboardInterrupt; once the
    shutdown after it has begun, the next exits 130 with its one line."""
    mark = tmp_path / "stopping"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from rayot.cli.sweep import _Interrupts
        try:
            with _Interrupts("interrupted again: the one line"):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
        except KeyboardInterrupt:
            print("stopping", flush=True)
            open({str(mark)!r}, "w").close()
            time.sleep(30)  # a slow shutdown
            sys.exit(0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.exists(), proc.communicate(timeout=5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - t0 < 5
    assert out == "stopping\n" and err == "interrupted again: the one line\n"


RELIABILITY = load_script("reliability")


@pytest.mark.slow
def test_a_second_ctrl_c_while_ray_stops_exits_130_in_one_line_and_the_rerun_resumes_from_the_newest_epoch(
        tmp_path, ray_head):
    from rayot import switches

    # epochs enough that the trial is still training when both Ctrl-Cs come (the first one right
    # after epoch 3), and few for the rerun to train
    spec = RELIABILITY._spec(tmp_path, grid={"method": ["ivlp"]}, base={"optim": {"epochs": 16}})
    mark = tmp_path / "shutdown.mark"
    env = {**os.environ, "COLUMNS": "200", switches.SHUTDOWN_MARK: str(mark)}
    cmd = [sys.executable, "-m", "rayot", "sweep", str(spec)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a terminal's job
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(f"ckpt/trial-*/{epoch_folder_name(3)}")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it: to the whole group
    while not mark.exists() and time.monotonic() < deadline:  # the sweep now stops Ray
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # and again
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    results = tmp_path / "results"
    assert out.rstrip().splitlines()[-1] == ("interrupted again: exiting now, without waiting for Ray to stop; "
                                             f"finished trials are kept in {results}")
    assert "Traceback" not in out and "Token authentication" not in out
    assert "interrupted after" in out and not list(results.glob("*.parquet"))  # nothing marked failed

    # The sweep exited without waiting for Ray: its training worker may still finish an epoch
    # before Ray's reaper ends it. Once no process of that run is left, the folders stay as they are.
    stop_marked(switches.SHUTDOWN_MARK, str(mark), grace_s=30)
    (run,) = tmp_path.glob("ckpt/trial-*")
    newest = newest_complete_epoch(pafs.LocalFileSystem(), str(run))
    assert newest is not None and newest[0] >= 3
    resumed = tmp_path / "resumed"  # notes where the run resumed; kills nothing (epoch 999)
    # the rerun is not about starting Ray: it joins the session's (tests/conftest.py), the same
    # folders given as URIs, as a sweep that joins a Ray needs them
    again = subprocess.run([*cmd, "--address", "auto", "--results", f"file://{results}", "--checkpoints",
                            f"file://{tmp_path / 'ckpt'}"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600, env={**env, **ray_head.env, switches.FAULT: f"999:{resumed}"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert resumed.read_text().splitlines() == [f"resumed after epoch {newest[0]}"]
