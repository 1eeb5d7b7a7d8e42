"""The failure matrix of `rayot sweep`: each scenario run as a user would, timed, its outcome checked.

    python scripts/reliability.py                 # every scenario; rewrites docs/reliability.md
    python scripts/reliability.py --only address  # some scenarios (name substrings): their rows only

Each scenario sets up a tiny sweep (the demo world at a few images per class, a tiny random
CLIP, 1-4 epochs) in a fresh folder, runs `python -m rayot sweep ...` in a subprocess, and checks
the exit status, the one message a user must see, and what is kept on storage. Scenarios that
can share a set-up do, since a sweep's start (Python, Ray) costs more than its tiny trials: a
:class:`Run` shows several, one sweep whose trials each go wrong their own way, or one command
after another on the same storage. The tests run the same runs (tests/test_reliability.py), so
the table cannot drift from the behaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Outcome:
    happens: str  # what the user sees
    kept: str  # what is on storage afterwards
    seconds: float  # wall time of the command, to its message


#: the sections of the document
LOCAL, STORE = "local", "store"
STORE_HEADING = "## On a cluster and an object store"


@dataclass(frozen=True)
class Scenario:
    """A row of the document: one thing that goes wrong."""

    name: str
    title: str
    ray: bool  # starts a Ray (slower: seconds of start-up)
    section: str = LOCAL


@dataclass(frozen=True)
class Run:
    """One set-up that shows its ``scenarios``: ``run(folder, s3)`` returns each one's outcome by
    name. ``s3``: the run works on the shared S3 server (``None`` for the others)."""

    name: str
    scenarios: tuple[Scenario, ...]
    run: Callable[[Path, object], dict[str, Outcome]]
    s3: bool = False


class ScenarioFailed(AssertionError):
    pass


def _check(condition: bool, what: str, text: str = "") -> None:
    if not condition:
        raise ScenarioFailed(f"{what}\n--- output ---\n{text[-4000:]}")


# ----------------------------------------------------------------------------- set-up


def _world(tmp: Path) -> Path:
    from rayot.data.synth import write_synthetic

    root = tmp / "data"
    if not (root / "synthetic").is_dir():
        write_synthetic(root, seed=0, n_train=6, n_val=2, n_test=6)
    return root


def _spec(tmp: Path, *, grid: dict, resources: dict | None = None, base: dict | None = None,
          name: str = "rel", grids: list[dict] | None = None) -> Path:
    tree = {
        "device": "cpu",
        "data": {"dataset": "synthetic", "root": str(_world(tmp)), "shots": 2, "num_workers": 0},
        "model": {"name": "rayot-tiny", "pretrained": None},
        "prompt": {"depth_text": 2, "depth_vision": 2},
        "optim": {"epochs": 1, "batch_size": 4, "eval_batch_size": 64},
    }
    for key, value in (base or {}).items():
        tree.setdefault(key, {}).update(value) if isinstance(value, dict) else tree.update({key: value})
    spec = {"name": name, "base": tree, "grid": grid, **({"grids": grids} if grids else {}),
            "resources": resources or {"num_workers": 1, "cpus_per_worker": 1},
            "storage": {"results": str(tmp / "results"), "checkpoints": str(tmp / "ckpt")}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _rayot(tmp: Path, *args: str, timeout: float = 600, **env_vars: str) -> tuple[int, str, float]:
    env = {**os.environ, "COLUMNS": "200", **env_vars}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rayot", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=tmp, env=env)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def _rows(tmp: Path) -> dict[str, list[dict]]:
    return {p.stem: pq.read_table(p).to_pylist() for p in sorted((tmp / "results").glob("*.parquet"))}


def _status(tmp: Path) -> dict[str, str]:
    return {tid: "done" if {r["status"] for r in rows} == {"done"} else "failed"
            for tid, rows in _rows(tmp).items()}


def _trial_ids(spec: Path) -> list[str]:
    from rayot import config as C
    from rayot.sweep.spec import expand, load_spec

    return [C.trial_id(c) for c in expand(load_spec(spec))]


def _runs(log: Path) -> dict[str, int]:
    """How many times each trial was handed to training (RAYOT_TEST_RUN_LOG)."""
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"timed out waiting for {what}")
        time.sleep(0.5)


def _set_expiry(read: Callable[[], bytes], write: Callable[[bytes], object], expires_at: float,
                host: str | None = None) -> None:
    """Rewrite a lease: its expiry (and its owner's host), as its holder's clock would have it."""
    data = json.loads(read())
    data["expires_at"] = expires_at
    if host:
        data["owner"]["host"] = host
    write(json.dumps(data).encode())


# ----------------------------------------------------------------------------- refused at once
#
# Four commands that end with one message before anything trains, in one folder (they share its
# data and nothing else).


def unreachable_address(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["zeroshot"]}, name="address")
    rc, text, t = _rayot(tmp, "sweep", str(spec), "--address", "127.0.0.1:1",
                         "--results", f"file://{tmp}/results", "--checkpoints", f"file://{tmp}/ckpt")
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check("Ray cluster at '127.0.0.1:1': nothing answers at 127.0.0.1:1" in text, "message", text)
    _check("Traceback" not in text, "no traceback", text)
    return Outcome("exit 2: `error: Ray cluster at '127.0.0.1:1': nothing answers at 127.0.0.1:1 "
                   "(Connection refused …)`", "nothing was written", t)


def unwritable_results(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["ivlp"]}, name="storage")
    rc, text, t = _rayot(tmp, "sweep", str(spec), "--results", "/proc/x")
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check("results location '/proc/x'" in text and "not writable" in text, "message", text)
    _check("Started a local Ray" not in text, "refused before Ray starts", text)
    return Outcome("exit 2 before Ray starts or anything trains: `error: results location "
                   "'/proc/x' is not writable: …`", "nothing was written", t)


def trial_larger_than_the_machine(tmp: Path) -> Outcome:
    from rayot.sweep.cluster import available_cpus

    n = available_cpus() + 1
    spec = _spec(tmp, grid={"method": ["ivlp"]}, resources={"num_workers": n, "cpus_per_worker": 1},
                 base={"optim": {"batch_size": n}}, name="too-large")  # a batch the n workers can share
    rc, text, t = _rayot(tmp, "sweep", str(spec))
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check(f"a trial needs {n} worker(s) × 1 CPU = {n} CPU" in text, "message names the numbers", text)
    return Outcome(f"exit 2 once the embedded Ray is up: `error: resources: a trial needs {n} "
                   f"worker(s) × 1 CPU = {n} CPU, but the embedded Ray has {n - 1} …`",
                   "nothing was written", t)


def override_of_a_swept_key(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["zeroshot"], "seed": [1, 2]}, name="override")
    rc, text, t = _rayot(tmp, "sweep", str(spec), "--dry-run", "--set", "seed=1",
                         "--set", f"output.results={tmp}/elsewhere")
    _check(rc == 0, f"exit status {rc}", text)
    _check("note: grid axis seed [1, 2] replaced by --set seed=1" in text, "the plan says so", text)
    _check(f"1 trial, 0 already done, 1 to run; results: {tmp}/elsewhere" in text,
           "--set output.results is honoured", text)
    return Outcome("the `--set` value replaces the axis, and the plan says `note: grid axis seed "
                   "[1, 2] replaced by --set seed=1`; `--set output.results=…` is honoured "
                   "(`--results` still wins)", "nothing (a dry run)", t)


REFUSED = {"address": unreachable_address, "storage": unwritable_results,
           "too-large": trial_larger_than_the_machine, "override": override_of_a_swept_key}


def refused(tmp: Path, s3: object = None) -> dict[str, Outcome]:
    """The commands that start no Ray side by side (each is mostly Python's start-up), then the
    one that does."""
    _world(tmp)
    quick = [name for name in REFUSED if name != "too-large"]
    with ThreadPoolExecutor(len(quick)) as pool:
        futures = {name: pool.submit(REFUSED[name], tmp) for name in quick}
    return {**{name: future.result() for name, future in futures.items()},
            "too-large": trial_larger_than_the_machine(tmp)}


# ----------------------------------------------------------------------------- one results folder


def bad_file_and_held_trial(tmp: Path, s3: object = None) -> dict[str, Outcome]:
    """A zero-byte result file of one trial, another sweep's live lease on the other: the dry run
    and the sweep name both; the sweep runs the first (exit 3, the second held); once the lease
    has expired a re-run takes the second. Each trial runs exactly once."""
    from rayot.sweep import leases

    spec = _spec(tmp, grid={"method": ["zeroshot"], "seed": [1, 2]})
    bad_id, held_id = _trial_ids(spec)
    (tmp / "results").mkdir(parents=True, exist_ok=True)
    bad = tmp / "results" / f"{bad_id}.parquet"
    bad.write_bytes(b"")
    other = leases.Owner("0" * 32, "other-host", 4242, "sweep other")
    held = leases.acquire(str(tmp / "results"), held_id, other, ttl_s=3600)
    _check(isinstance(held, leases.Lease), "set-up: lease taken")
    env = {"RAYOT_TEST_RUN_LOG": str(tmp / "runs.txt")}

    rc, text, t_dry = _rayot(tmp, "sweep", str(spec), "--dry-run")
    _check(rc == 0, f"dry run exit status {rc}", text)
    _check(f"results file {bad}" in text and "runs again" in text, "the file is named", text)
    _check("Traceback" not in text, "no traceback", text)
    rc, text, t_run = _rayot(tmp, "sweep", str(spec), **env)
    _check(rc == 3, f"exit status {rc}, expected 3", text)
    _check(f"results file {bad}" in text, "the sweep names the file too", text)
    _check(f"{held_id}: trial {held_id} is held by sweep other on other-host (pid 4242)" in text,
           "names the holder", text)
    _check(_status(tmp) == {bad_id: "done"}, "the bad file replaced; the held trial not run", text)
    # the holder dies: its lease expires and the next run takes the trial over
    lease_file = Path(held.path)
    _set_expiry(lease_file.read_bytes, lease_file.write_bytes, time.time() - 1)
    rc, text, _ = _rayot(tmp, "sweep", str(spec), **env)
    _check(rc == 0, f"re-run exit status {rc}", text)
    _check(_status(tmp) == {bad_id: "done", held_id: "done"}, "the expired lease was taken over", text)
    runs = _runs(tmp / "runs.txt")
    _check(runs == {bad_id: 1, held_id: 1}, f"each trial run exactly once: {runs}", text)
    return {
        "bad-parquet": Outcome(
            "a warning naming the file, in `--dry-run` and in the sweep; its trial counts as not done "
            "and runs again, the sweep goes on", f"the bad file is replaced by the trial's result "
            f"({t_run:.0f} s for the sweep)", t_dry),
        "lease": Outcome(
            "the trial held by the other sweep is skipped and named with its holder; the others run; "
            "exit 3 (nothing failed, something is still running elsewhere); once the holder's lease "
            "expires a re-run takes the trial", "each trial run exactly once; leases under "
            "`<results>/.leases/`", t_run),
    }


def failures(tmp: Path, s3: object = None) -> dict[str, Outcome]:
    """One sweep of two 2-worker trials, both failing: one reads a truncated image on one rank,
    the other's dataset is missing."""
    from rayot.data import build_task

    spec = _spec(tmp, grid={}, grids=[{"method": "ivlp"}, {"dataset": "dtd", "method": "zeroshot"}],
                 resources={"num_workers": 2, "cpus_per_worker": 0.5}, base={"optim": {"epochs": 2}})
    broken_id, missing_id = _trial_ids(spec)
    task = build_task("synthetic", str(_world(tmp)), shots=2, seed=1, subsample="base")
    broken = task.image_root / task.train[0].impath
    original = broken.read_bytes()
    broken.write_bytes(original[: len(original) // 3])  # a truncated image: one rank's data error
    # Ray's own logs in a folder of this run, to see whether Ray Train retried; a short path,
    # since Ray's Unix sockets live under it (at most 107 characters)
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        rc, text, t = _rayot(tmp, "sweep", str(spec), RAY_TMPDIR=str(ray_tmp))
        controller_logs = [p.read_text(errors="replace") for p in ray_tmp.glob("**/logs/**/*")
                           if p.is_file() and "controller" in p.name]
    finally:
        broken.write_bytes(original)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    _check(rc == 1, f"exit status {rc}, expected 1", text)
    _check("error:" not in text, "no second, misleading error", text)
    _check("no trial of this sweep finished" in text, "says there is no table", text)
    rows = _rows(tmp)
    _check(sorted(rows) == sorted([broken_id, missing_id]), f"a result file per trial: {sorted(rows)}", text)
    _check(all(len(r) == 1 and r[0]["status"] == "failed" for r in rows.values()), "one failure row each", text)
    _check("dtd" in rows[missing_id][0]["error"], "the missing dataset named", text)
    _check(str(broken) in rows[broken_id][0]["error"], "the failure names the image", text)
    for tid in rows:
        _check((tmp / "ckpt" / "logs" / f"{tid}.log").is_file(), f"log of {tid} exists", text)
        _check(f"(log: {tmp / 'ckpt' / 'logs' / f'{tid}.log'})" in text, "log named", text)
    _check(bool(controller_logs), "Ray Train's controller logs were found", text)
    _check(not any("FailurePolicy] RETRY" in log for log in controller_logs), "not retried", text)
    return {
        "all-fail": Outcome(
            "exit 1; the summary lists each failure with its error and a log path that exists; "
            "`no trial of this sweep finished: no table to print`",
            "a `failed` row per trial with its error, a traceback under `<checkpoints>/logs/`", t),
        "rank": Outcome(
            "the rank that read the broken image and the other rank agree at the next step and both "
            "stop; the failure is recorded once, naming the image; no retry",
            "a `failed` row naming the image, its traceback in the log", t),
    }


def interrupted(tmp: Path, s3: object = None) -> dict[str, Outcome]:
    spec = _spec(tmp, grid={"method": ["zeroshot", "ivlp"]}, base={"optim": {"epochs": 2}},
                 resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1})
    ids = _trial_ids(spec)
    with open(tmp / "out.txt", "w") as out:
        sweep = subprocess.Popen(  # SIGINT as a terminal's Ctrl-C sends it
            [sys.executable, "-m", "rayot", "sweep", str(spec)], stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait(lambda: bool(list((tmp / "results").glob("*.parquet"))) or sweep.poll() is not None, 300,
              "the first trial's result")
        time.sleep(2)  # into the next trial
        sweep.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        rc = sweep.wait(timeout=120)
        t = time.monotonic() - t0
    text = (tmp / "out.txt").read_text()
    _check(rc == 130, f"exit status {rc}, expected 130", text)
    _check("interrupted after" in text and "finished trials are kept" in text, "message", text)
    kept = _status(tmp)
    _check(0 < len(kept) < len(ids) and set(kept.values()) == {"done"}, "finished trials kept, none failed", text)
    rc, text, _ = _rayot(tmp, "sweep", str(spec))
    _check(rc == 0 and _status(tmp) == {i: "done" for i in ids}, "the re-run finishes the rest at once", text)
    return {"interrupt": Outcome(
        "exit 130 with `interrupted after …: finished trials are kept …; run the same command again "
        "to go on`; nothing is marked failed; the re-run starts at once (the leases of a process gone "
        "from this host are not waited out)",
        "every finished trial; the interrupted one resumes from its epoch checkpoint", t)}


# ----------------------------------------------------------------------------- object stores
#
# The sweep reaches a store on loopback (rayot.emulators) the way a user reaches a real one: the
# endpoint in the environment (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST), --results and
# --checkpoints as s3:// or gs:// URIs. The S3 runs share one server (behind a proxy, for the
# outages), each under its own prefix of one bucket.

BUCKET = "rayot-reliability"
#: The outage: longer than the clients' own retries (2 tries with a retry budget under a minute,
#: rayot.storage), shorter than rayot's back-off (RAYOT_STORAGE_RETRY_S, here OUTAGE_BUDGET_S)
OUTAGE_S = 8
OUTAGE_BUDGET_S = 45
#: How long rayot retries a store that stays down before the sweep gives up
DOWN_BUDGET_S = 5


def _store_args(server, prefix: str) -> list[str]:
    uri = server.uri(BUCKET, prefix)
    return ["--results", f"{uri}/results", "--checkpoints", f"{uri}/ckpt"]


def _on_store(tmp: Path, server, prefix: str, spec: Path, **env_vars: str) -> tuple[int, str, float]:
    return _rayot(tmp, "sweep", str(spec), *_store_args(server, prefix), **server.env, **env_vars)


def _sweep_process(tmp: Path, server, prefix: str, spec: Path, name: str, **env_vars: str) -> subprocess.Popen:
    out = open(tmp / f"{name}.txt", "w")  # noqa: SIM115 - the child writes it until it ends
    return subprocess.Popen(
        [sys.executable, "-m", "rayot", "sweep", str(spec), *_store_args(server, prefix)],
        stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        env={**os.environ, "COLUMNS": "200", **server.env, **env_vars}, start_new_session=True)


def _store_status(server, prefix: str) -> dict[str, str]:
    from rayot import results

    with server.environment():
        return results.finished_trials(server.uri(BUCKET, f"{prefix}/results"))


def _store_files(server, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    from rayot import storage

    with server.environment():
        fs, path = storage.filesystem(server.uri(BUCKET, prefix))
        return sorted(i.path[len(path) + 1:] for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                      if i.type == pafs.FileType.File)


def sweep_on_gcs(tmp: Path, s3: object = None) -> dict[str, Outcome]:
    from rayot import emulators

    spec = _spec(tmp, grid={}, base={"optim": {"epochs": 2}}, name="gcs",
                 grids=[{"method": "ivlp"}, {"dataset": "dtd", "method": "zeroshot"}])  # dtd: not there
    ids = _trial_ids(spec)
    with emulators.start_gcs(buckets=(BUCKET,)) as server:
        rc, text, t = _on_store(tmp, server, "gcs", spec, RAYOT_TEST_FAULT=f"1:{tmp / 'marker'}")
        _check(rc == 1, f"exit status {rc}, expected 1 (the dtd trial fails)", text)
        status = _store_status(server, "gcs")
        files = _store_files(server, "gcs")
    done = [i for i in ids if status.get(i) == "done"]
    failed = [i for i in ids if status.get(i) == "failed"]
    _check(len(done) == 1 and len(failed) == 1, f"one done, one failed: {status}", text)
    _check((tmp / "marker").read_text() == "killed after epoch 1\nresumed after epoch 1\n",
           "the killed worker's trial resumed from its epoch checkpoint", text)
    for expected in (f"results/{done[0]}.parquet", f"results/{failed[0]}.parquet",
                     f"ckpt/{done[0]}/prompt.pt", f"ckpt/logs/{failed[0]}.log"):
        _check(expected in files, f"{expected} on the store", "\n".join(files))
    _check(any(f.startswith(f"ckpt/trial-{done[0]}/epoch_") for f in files), "Ray Train's epoch checkpoint", text)
    _check(not any(f.startswith("results/.leases/") for f in files), "every lease released", "\n".join(files))
    return {"gcs": Outcome(
        "results, prompt checkpoints, Ray Train's epoch checkpoints, the failure log and the leases all "
        "go to the store; a worker killed after epoch 1 resumes from its epoch checkpoint there; exit 1 "
        "for the failed trial", "every result, checkpoint and log on the store; no lease left", t)}


def two_sweeps_on_one_bucket(tmp: Path, server) -> dict[str, Outcome]:
    spec = _spec(tmp, grid={"method": ["zeroshot", "ivlp"]})
    ids = _trial_ids(spec)
    t0 = time.monotonic()
    sweeps = [_sweep_process(tmp, server, "two-sweeps", spec, f"sweep{i}", RAYOT_TEST_RUN_LOG=str(tmp / "runs.txt"))
              for i in (1, 2)]
    codes = [p.wait(timeout=600) for p in sweeps]
    t = time.monotonic() - t0
    status = _store_status(server, "two-sweeps")
    text = "\n".join((tmp / f"sweep{i}.txt").read_text() for i in (1, 2))
    _check(all(c in (0, 3) for c in codes), f"exit statuses {codes}", text)
    _check(status == {i: "done" for i in ids}, f"every trial done: {status}", text)
    runs = _runs(tmp / "runs.txt")
    _check(runs == {i: 1 for i in ids}, f"each trial run exactly once: {runs}", text)
    return {"two-sweeps": Outcome(
        f"both sweeps start at once; each trial is trained by exactly one of them ({len(ids)} runs for "
        f"{len(ids)} trials); the other skips it as held or done; exit statuses {sorted(codes)}",
        "each trial's result, written once", t)}


def driver_killed_then_outage(tmp: Path, server) -> dict[str, Outcome]:
    """The driver killed mid-trial; a re-run finds the trial held (its lease as if from another
    host); once the lease has expired a re-run takes it over, resumes it from its epoch checkpoint
    and rides out an outage of the store while it trains."""
    from rayot import storage

    prefix = "driver"
    spec = _spec(tmp, grid={"method": ["ivlp"], "seed": [1, 2]}, base={"optim": {"epochs": 4}},
                 resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1})
    ids = _trial_ids(spec)
    ttl = 600  # read back from the leases: the setting reaches the sweep's drivers (default 120)
    env = {"RAYOT_TEST_RUN_LOG": str(tmp / "runs.txt"), "RAYOT_LEASE_TTL_S": str(ttl),
           "RAYOT_TEST_FAULT": f"999:{tmp / 'marker'}"}  # never kills; notes where a run resumed
    sweep = _sweep_process(tmp, server, prefix, spec, "killed", **env)
    _wait(lambda: len(_runs(tmp / "runs.txt")) >= 2, 300, "the second trial")
    second = list(_runs(tmp / "runs.txt"))[1]
    _wait(lambda: {f"trial-{second}/checkpoint_manager_snapshot.json", f"trial-{second}/epoch_0001/state.pt"}
          <= set(_store_files(server, f"{prefix}/ckpt")), 300, "an epoch checkpoint of the second trial")
    os.killpg(sweep.pid, signal.SIGKILL)  # the driver and everything it started
    sweep.wait()
    finished = set(_store_status(server, prefix))
    # as if the killed driver had run on another host (holders() would not list them: their process
    # is gone from this host), its leases live until their expiry, which is set rather than waited for
    with server.environment():
        client, under = storage.conditional_store(server.uri(BUCKET, f"{prefix}/results"))
        held = [f.rsplit("/", 1)[-1][: -len(".json")] for f in _store_files(server, f"{prefix}/results/.leases")]
        left = [json.loads(client.read(f"{under}/.leases/{tid}.json").data)["expires_at"] - time.time() for tid in held]

        def set_expiry(expires_at: float, host: str | None = None) -> None:
            for tid in held:
                key = f"{under}/.leases/{tid}.json"
                current = client.read(key)
                _set_expiry(lambda current=current: current.data,
                            lambda data, key=key, current=current: client.replace(key, data, current.version),
                            expires_at, host)

        set_expiry(time.time() + 3600, host="node-2")
    rc1, text1, t = _on_store(tmp, server, prefix, spec, **env)
    with server.environment():
        set_expiry(time.time() - 1)
    t0 = time.monotonic()
    sweep = _sweep_process(tmp, server, prefix, spec, "resumed", RAYOT_STORAGE_RETRY_S=str(OUTAGE_BUDGET_S), **env)
    _wait(lambda: sum(_runs(tmp / "runs.txt").values()) >= 3 or sweep.poll() is not None, 300, "the held trial")
    server.proxy.down()
    time.sleep(OUTAGE_S)
    server.proxy.up()
    rc2 = sweep.wait(timeout=600)
    t_outage = time.monotonic() - t0
    text2 = (tmp / "resumed.txt").read_text()
    status = _store_status(server, prefix)
    files = _store_files(server, prefix)
    text = text1 + text2
    _check(bool(held), "the killed driver left a live lease", text)
    _check(all(120 < s <= ttl for s in left), f"its lease lives RAYOT_LEASE_TTL_S={ttl}, not 120 s: {left}", text)
    _check(rc1 == 3 and "is held by" in text1, f"first re-run: exit {rc1}, the held trial skipped", text1)
    _check(bool(finished), "a trial finished before the kill", text)
    _check(rc2 == 0 and status == {i: "done" for i in ids}, f"second re-run: exit {rc2}, all done", text2)
    _check(not any(f.rsplit("/", 1)[-1].endswith(".tmp") for f in files), "nothing half-written", "\n".join(files))
    runs = _runs(tmp / "runs.txt")
    _check(all(runs[i] == 1 for i in finished), f"finished trials not run again: {runs}", text)
    _check(all(runs[i] == 2 for i in held), f"the held trial run once more, after expiry: {runs}", text)
    _check("resumed after epoch" in (tmp / "marker").read_text() if (tmp / "marker").exists() else False,
           "the taken-over trial resumed from its epoch checkpoint", text)
    return {
        "driver": Outcome(
            "the driver is killed (SIGKILL) mid-trial; its leases, as if from another host, are live: a "
            "re-run at once skips the held trial (exit 3); once they have expired (`RAYOT_LEASE_TTL_S` "
            f"after their last renewal, {ttl} s here; their expiry is then set, not waited out) a re-run "
            "takes it over and resumes it "
            "from its epoch checkpoint on the store",
            "every finished trial (none run twice); the killed trial's epoch checkpoint", t),
        "outage": Outcome(
            f"the store refuses connections for {OUTAGE_S} s while the taken-over trial trains: reads "
            "and writes are retried with back-off (the clients' own retries, then rayot's, "
            f"`RAYOT_STORAGE_RETRY_S`, default 300 s, here {OUTAGE_BUDGET_S} s); the sweep goes on "
            f"when the store is back; exit 0 (trial runs: {sorted(runs.values())})",
            "every result whole; no temporary file left", t_outage),
    }


def store_stays_down(tmp: Path, server) -> dict[str, Outcome]:
    spec = _spec(tmp, grid={"method": ["ivlp"]}, base={"optim": {"epochs": 2}})
    t0 = time.monotonic()
    sweep = _sweep_process(tmp, server, "down", spec, "sweep", RAYOT_TEST_RUN_LOG=str(tmp / "runs.txt"),
                           RAYOT_STORAGE_RETRY_S=str(DOWN_BUDGET_S))
    _wait(lambda: len(_runs(tmp / "runs.txt")) >= 1 or sweep.poll() is not None, 300, "the first trial")
    server.proxy.down()
    try:
        rc = sweep.wait(timeout=600)
    finally:
        server.proxy.up()
    t = time.monotonic() - t0
    status = _store_status(server, "down")
    text = (tmp / "sweep.txt").read_text()
    last = [line for line in text.splitlines() if line.strip()][-1]
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check(last.startswith("error: ") and "did not answer for" in last
           and f"RAYOT_STORAGE_RETRY_S={DOWN_BUDGET_S}" in last, "ends with one clear message", text)
    return {"down": Outcome(
        f"with `RAYOT_STORAGE_RETRY_S={DOWN_BUDGET_S}` and the store gone for good: Ray Tune logs its "
        f"failed state uploads meanwhile; the sweep ends with exit {rc} and one line: `error: results "
        f"location 's3://…': the store did not answer for N s (M tries; RAYOT_STORAGE_RETRY_S="
        f"{DOWN_BUDGET_S}): …`", f"what was written before the outage ({len(status)} result(s)); a "
        "re-run goes on", t)}


RUNS = (
    Run("refused", (
        Scenario("address", "`--address 127.0.0.1:1` (nothing listening)", False),
        Scenario("storage", "`--results /proc/x` (not writable)", False),
        Scenario("too-large", "a trial needs more CPUs than the machine has", True),
        Scenario("override", "`--set seed=1` on a sweep with a seed axis", False),
    ), refused),
    Run("results-folder", (
        Scenario("bad-parquet", "a zero-byte `.parquet` in the results folder", True),
        Scenario("lease", "another sweep on the same storage holds a trial", True),
    ), bad_file_and_held_trial),
    Run("failures", (
        Scenario("all-fail", "every trial fails (a dataset missing, a broken image)", True),
        Scenario("rank", "one rank of a 2-worker trial hits a broken image", True),
    ), failures),
    Run("interrupt", (Scenario("interrupt", "Ctrl-C (SIGINT) during a sweep", True),), interrupted),
    Run("gcs", (Scenario("gcs", "a sweep on `gs://` (GCS emulator): a worker killed mid-trial, a trial "
                                "failing", True, STORE),), sweep_on_gcs),
    Run("two-sweeps", (Scenario("two-sweeps", "two sweeps started at the same moment on one S3 bucket", True,
                                STORE),), two_sweeps_on_one_bucket, s3=True),
    Run("driver", (
        Scenario("driver", "the driver killed mid-trial, the sweep re-run from another process (S3)", True, STORE),
        Scenario("outage", f"the S3 store stops answering for {OUTAGE_S} s mid-sweep, then comes back", True,
                 STORE),
    ), driver_killed_then_outage, s3=True),
    Run("down", (Scenario("down", "the S3 store stops answering for good mid-sweep", True, STORE),),
        store_stays_down, s3=True),
)
#: every row of the document, in its order
SCENARIOS = tuple(s for r in RUNS for s in r.scenarios)


@contextlib.contextmanager
def s3_server():
    """The S3 server that the S3 runs share: moto's, behind a proxy, with the bucket made."""
    from rayot import emulators

    with emulators.start_s3(buckets=(BUCKET,), proxy=True) as server:
        yield server


def run(names: list[str] | None = None) -> list[tuple[Scenario, Outcome]]:
    chosen = [r for r in RUNS if not names or any(n in s.name for n in names for s in r.scenarios)]
    done = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(s3_server()) if any(r.s3 for r in chosen) else None
        for r in chosen:
            with tempfile.TemporaryDirectory(prefix=f"rayot-{r.name}-") as tmp:
                print(f"{r.name}: {', '.join(s.title for s in r.scenarios)} ...", flush=True)
                outcomes = r.run(Path(tmp), server if r.s3 else None)
            for scenario in r.scenarios:
                outcome = outcomes[scenario.name]
                print(f"  {outcome.seconds:.1f}s: {outcome.happens}", flush=True)
                done.append((scenario, outcome))
    return done

def _rows_of(text: str) -> dict[str, str]:
    """The table rows of a document, by their scenario's title."""
    return {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| scenario", "|:"))}


def write_doc(outcomes: list[tuple[Scenario, Outcome]]) -> None:
    """Write docs/reliability.md: a row per scenario, the scenarios not run this time keeping
    their row from the current document."""
    fresh = {s.title: f"| {s.title} | {o.happens} | {o.seconds:.1f} s | {o.kept} |" for s, o in outcomes}
    current = DOC.read_text() if DOC.exists() else ""
    kept = _rows_of(current)
    # rows of the cluster section that other scripts measure (tests/test_cluster_local.py): kept
    section = current.split(STORE_HEADING, 1)[1].split("\n## ", 1)[0] if STORE_HEADING in current else ""
    titles = {s.title for s in SCENARIOS}
    others = [row for title, row in _rows_of(section).items() if title not in titles]
    header = ["| scenario | what happens | time | what is kept |", "|:---|:---|---:|:---|"]

    def table(section: str) -> list[str]:
        return header + [fresh.get(s.title) or kept.get(s.title, f"| {s.title} | (not run yet) | | |")
                         for s in SCENARIOS if s.section == section] + (others if section == STORE else [])

    lines = [
        "# What a sweep does when things go wrong",
        "",
        "Generated by `python scripts/reliability.py` (the tests run the same scenarios,",
        "`tests/test_reliability.py`). Each scenario is a tiny sweep run as `rayot sweep` in a",
        "subprocess on the 2-core development machine; scenarios that can share a sweep or a",
        "results folder do (one sweep's trials each fail their own way, or one command after",
        "another on the same storage). The time is the wall time of the command that shows the",
        "scenario, to its message or its end: Python's start-up and imports (5-7 s here) and Ray's",
        "start-up, where the command starts one, included.",
        "",
        *table(LOCAL),
        "",
        STORE_HEADING,
        "",
        "The same, with results, checkpoints, logs and leases on an S3- or GCS-protocol server on",
        "loopback (`rayot.emulators`: moto's S3 server, the GCS emulator), which the sweep reaches",
        "through `AWS_ENDPOINT_URL` or `STORAGE_EMULATOR_HOST` as it would reach a real store.",
        "",
        *table(STORE),
        "",
        (ROOT / "docs" / "reliability-notes.md").read_text().rstrip(),
        "",
    ]
    DOC.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run the scenarios whose names contain these")
    args = parser.parse_args()
    outcomes = run(args.only)
    write_doc(outcomes)
    print(f"wrote {DOC} ({len(outcomes)} row(s) measured now, the others kept)")


if __name__ == "__main__":
    main()
