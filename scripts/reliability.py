"""The failure matrix of `rayot sweep`: each scenario run as a user would, timed, its outcome checked.

    python scripts/reliability.py                 # every scenario; rewrites docs/reliability.md
    python scripts/reliability.py --only address  # some scenarios (name substrings): their rows only

Each scenario sets up a tiny sweep (the demo world at a few images per class, a tiny random
CLIP, 1-2 epochs) in a fresh folder, runs `python -m rayot sweep ...` in a subprocess, and checks
the exit status, the one message a user must see, and what is kept on storage. The tests run the
same scenarios (tests/test_reliability.py), so the table cannot drift from the behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    name: str
    title: str
    ray: bool  # starts a Ray (slower: seconds of start-up)
    run: Callable[[Path], Outcome]
    section: str = LOCAL


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
          name: str = "rel") -> Path:
    tree = {
        "device": "cpu",
        "data": {"dataset": "synthetic", "root": str(_world(tmp)), "shots": 2, "num_workers": 0},
        "model": {"name": "rayot-tiny", "pretrained": None},
        "prompt": {"depth_text": 2, "depth_vision": 2},
        "optim": {"epochs": 1, "batch_size": 4, "eval_batch_size": 64},
    }
    for key, value in (base or {}).items():
        tree.setdefault(key, {}).update(value) if isinstance(value, dict) else tree.update({key: value})
    spec = {"name": name, "base": tree, "grid": grid,
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


# ----------------------------------------------------------------------------- scenarios


def unreachable_address(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["zeroshot"]})
    rc, text, t = _rayot(tmp, "sweep", str(spec), "--address", "127.0.0.1:1",
                         "--results", f"file://{tmp}/results", "--checkpoints", f"file://{tmp}/ckpt")
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check("Ray cluster at '127.0.0.1:1': nothing answers at 127.0.0.1:1" in text, "message", text)
    _check("Traceback" not in text, "no traceback", text)
    return Outcome("exit 2: `error: Ray cluster at '127.0.0.1:1': nothing answers at 127.0.0.1:1 "
                   "(Connection refused …)`", "nothing was written", t)


def unwritable_results(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["ivlp"]})
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
                 base={"optim": {"batch_size": n}})  # a batch the n workers can share
    rc, text, t = _rayot(tmp, "sweep", str(spec))
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check(f"a trial needs {n} worker(s) × 1 CPU = {n} CPU" in text, "message names the numbers", text)
    return Outcome(f"exit 2 once the embedded Ray is up: `error: resources: a trial needs {n} "
                   f"worker(s) × 1 CPU = {n} CPU, but the embedded Ray has {n - 1} …`",
                   "nothing was written", t)


def unreadable_result_file(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["zeroshot"], "seed": [1, 2]})
    ids = _trial_ids(spec)
    (tmp / "results").mkdir(parents=True, exist_ok=True)
    bad = tmp / "results" / f"{ids[0]}.parquet"
    bad.write_bytes(b"")
    rc, text, t = _rayot(tmp, "sweep", str(spec), "--dry-run")
    _check(rc == 0, f"dry run exit status {rc}", text)
    _check(f"results file {bad}" in text and "runs again" in text, "the file is named", text)
    _check("Traceback" not in text, "no traceback", text)
    rc, text, t_run = _rayot(tmp, "sweep", str(spec))
    _check(rc == 0, f"sweep exit status {rc}", text)
    _check(_status(tmp) == {i: "done" for i in ids}, "both trials done", text)
    return Outcome("a warning naming the file, in `--dry-run` and in the sweep; its trial counts "
                   "as not done and runs again, the sweep goes on",
                   f"the bad file is replaced by the trial's result ({t_run:.0f} s for the sweep)", t)


def override_of_a_swept_key(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["zeroshot"], "seed": [1, 2]})
    rc, text, t = _rayot(tmp, "sweep", str(spec), "--dry-run", "--set", "seed=1",
                         "--set", f"output.results={tmp}/elsewhere")
    _check(rc == 0, f"exit status {rc}", text)
    _check("note: grid axis seed [1, 2] replaced by --set seed=1" in text, "the plan says so", text)
    _check(f"1 trial, 0 already done, 1 to run; results: {tmp}/elsewhere" in text,
           "--set output.results is honoured", text)
    return Outcome("the `--set` value replaces the axis, and the plan says `note: grid axis seed "
                   "[1, 2] replaced by --set seed=1`; `--set output.results=…` is honoured "
                   "(`--results` still wins)", "nothing (a dry run)", t)


def every_trial_fails(tmp: Path) -> Outcome:
    spec = _spec(tmp, grid={"method": ["zeroshot", "ivlp"]}, base={"data": {"dataset": "dtd"}})
    rc, text, t = _rayot(tmp, "sweep", str(spec))
    _check(rc == 1, f"exit status {rc}, expected 1", text)
    _check("error:" not in text, "no second, misleading error", text)
    _check("no trial of this sweep finished" in text, "says there is no table", text)
    rows = _rows(tmp)
    _check(len(rows) == 2 and all(r[0]["status"] == "failed" and "dtd" in r[0]["error"]
                                  for r in rows.values()), "failure rows with the error", text)
    for tid in rows:
        _check((tmp / "ckpt" / "logs" / f"{tid}.log").is_file(), f"log of {tid} exists", text)
        _check(f"(log: {tmp / 'ckpt' / 'logs' / f'{tid}.log'})" in text, "log named", text)
    return Outcome("exit 1; the summary lists each failure with its error and a log path that "
                   "exists; `no trial of this sweep finished: no table to print`",
                   "a `failed` row per trial with its error, a traceback under `<checkpoints>/logs/`", t)


def lease_held_by_another_sweep(tmp: Path) -> Outcome:
    from rayot.sweep import leases

    spec = _spec(tmp, grid={"method": ["zeroshot"], "seed": [1, 2]})
    ids = _trial_ids(spec)
    other = leases.Owner("0" * 32, "other-host", 4242, "sweep other")
    held = leases.acquire(str(tmp / "results"), ids[0], other, ttl_s=3600)
    _check(isinstance(held, leases.Lease), "set-up: lease taken")
    rc, text, t = _rayot(tmp, "sweep", str(spec))
    _check(rc == 3, f"exit status {rc}, expected 3", text)
    _check(f"{ids[0]}: trial {ids[0]} is held by sweep other on other-host (pid 4242)" in text,
           "names the holder", text)
    _check(_status(tmp) == {ids[1]: "done"}, "only the free trial ran", text)
    # the holder dies: its lease expires and the next run takes the trial over
    held.expires_at = time.time() - 1
    lease_file = Path(held.path)
    data = json.loads(lease_file.read_text())
    lease_file.write_text(json.dumps({**data, "expires_at": time.time() - 1}))
    rc, text, _ = _rayot(tmp, "sweep", str(spec))
    _check(rc == 0, f"re-run exit status {rc}", text)
    _check(_status(tmp) == {i: "done" for i in ids}, "the expired lease was taken over", text)
    return Outcome("the trial held by the other sweep is skipped and named with its holder; the "
                   "others run; exit 3 (nothing failed, something is still running elsewhere); "
                   "once the holder's lease expires a re-run takes the trial",
                   "each trial run exactly once; leases under `<results>/.leases/`", t)


def one_rank_fails(tmp: Path) -> Outcome:
    from rayot.data import build_task

    spec = _spec(tmp, grid={"method": ["ivlp"]}, resources={"num_workers": 2, "cpus_per_worker": 0.5},
                 base={"optim": {"epochs": 2}})
    task = build_task("synthetic", str(_world(tmp)), shots=2, seed=1, subsample="base")
    broken = task.image_root / task.train[0].impath
    original = broken.read_bytes()
    broken.write_bytes(original[: len(original) // 3])  # a truncated image: one rank's data error
    # Ray's own logs in a folder of this scenario, to see whether Ray Train retried; a short path,
    # since Ray's Unix sockets live under it (at most 107 characters)
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        rc, text, t = _rayot(tmp, "sweep", str(spec), RAY_TMPDIR=str(ray_tmp))
    finally:
        broken.write_bytes(original)
    _check(rc == 1, f"exit status {rc}, expected 1", text)
    found = list(_rows(tmp).values())
    _check(len(found) == 1, f"one result file, found {len(found)}", text)
    rows = found[0]
    _check(rows[0]["status"] == "failed" and str(broken) in rows[0]["error"],
           "the failure names the file", text)
    controller_logs = [p.read_text(errors="replace") for p in ray_tmp.glob("**/logs/**/*")
                       if p.is_file() and "controller" in p.name]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    _check(bool(controller_logs), "Ray Train's controller logs were found", text)
    _check(not any("FailurePolicy] RETRY" in log for log in controller_logs), "not retried", text)
    return Outcome("the rank that read the broken image and the other rank agree at the next "
                   "step and both stop; the failure is recorded once, naming the image; no retry",
                   "a `failed` row naming the image, its traceback in the log", t)


def interrupted(tmp: Path) -> Outcome:
    import signal

    spec = _spec(tmp, grid={"method": ["zeroshot", "ivlp"], "seed": [1, 2]},
                 resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1})
    ids = _trial_ids(spec)
    with open(tmp / "out.txt", "w") as out:
        sweep = subprocess.Popen(  # SIGINT as a terminal's Ctrl-C sends it
            [sys.executable, "-m", "rayot", "sweep", str(spec)], stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 300
        while not list((tmp / "results").glob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.5)
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
    return Outcome("exit 130 with `interrupted after …: finished trials are kept …; run the same "
                   "command again to go on`; nothing is marked failed; the re-run starts at once "
                   "(the leases of a process gone from this host are not waited out)",
                   "every finished trial; the interrupted one resumes from its epoch checkpoint", t)


# ----------------------------------------------------------------------------- object stores
#
# Each starts its own S3- or GCS-protocol server on loopback (rayot.emulators) and points the sweep
# at it the way a user points it at a real store: the endpoint in the environment
# (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST), --results and --checkpoints as s3:// or gs:// URIs.

BUCKET = "rayot-reliability"
OUTAGE_S = 25


def _on_store(tmp: Path, server, spec: Path, *args: str, **env_vars: str) -> tuple[int, str, float]:
    uri = server.uri(BUCKET, "sweep")
    return _rayot(tmp, "sweep", str(spec), "--results", f"{uri}/results", "--checkpoints", f"{uri}/ckpt",
                  *args, **server.env, **env_vars)


def _sweep_process(tmp: Path, server, spec: Path, name: str, **env_vars: str) -> subprocess.Popen:
    uri = server.uri(BUCKET, "sweep")
    out = open(tmp / f"{name}.txt", "w")  # noqa: SIM115 - the child writes it until it ends
    return subprocess.Popen(
        [sys.executable, "-m", "rayot", "sweep", str(spec), "--results", f"{uri}/results",
         "--checkpoints", f"{uri}/ckpt"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        env={**os.environ, "COLUMNS": "200", **server.env, **env_vars}, start_new_session=True)


def _store_status(server) -> dict[str, str]:
    from rayot import results

    with server.environment():
        return results.finished_trials(server.uri(BUCKET, "sweep/results"))


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


def _store_files(server, prefix: str = "sweep") -> list[str]:
    import pyarrow.fs as pafs

    from rayot import storage

    with server.environment():
        fs, path = storage.filesystem(server.uri(BUCKET, prefix))
        return sorted(i.path[len(path) + 1:] for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                      if i.type == pafs.FileType.File)


def sweep_on_gcs(tmp: Path) -> Outcome:
    from rayot import emulators

    spec_path = _spec(tmp, grid={}, base={"optim": {"epochs": 2}}, name="gcs")
    tree = yaml.safe_load(spec_path.read_text())
    tree["grids"] = [{"method": "ivlp"}, {"dataset": "dtd", "method": "zeroshot"}]  # dtd: not there
    spec_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    ids = _trial_ids(spec_path)
    with emulators.start_gcs(buckets=(BUCKET,)) as server:
        rc, text, t = _on_store(tmp, server, spec_path, RAYOT_TEST_FAULT=f"1:{tmp / 'marker'}")
        _check(rc == 1, f"exit status {rc}, expected 1 (the dtd trial fails)", text)
        status = _store_status(server)
        files = _store_files(server)
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
    return Outcome("results, prompt checkpoints, Ray Train's epoch checkpoints, the failure log and "
                   "the leases all go to the store; a worker killed after epoch 1 resumes from its "
                   "epoch checkpoint there; exit 1 for the failed trial",
                   "every result, checkpoint and log on the store; no lease left", t)


def two_sweeps_on_one_bucket(tmp: Path) -> Outcome:
    from rayot import emulators

    spec = _spec(tmp, grid={"method": ["zeroshot", "ivlp"], "seed": [1, 2]})
    ids = _trial_ids(spec)
    with emulators.start_s3(buckets=(BUCKET,)) as server:
        t0 = time.monotonic()
        sweeps = [_sweep_process(tmp, server, spec, f"sweep{i}", RAYOT_TEST_RUN_LOG=str(tmp / "runs.txt"))
                  for i in (1, 2)]
        codes = [p.wait(timeout=600) for p in sweeps]
        t = time.monotonic() - t0
        status = _store_status(server)
    text = "\n".join((tmp / f"sweep{i}.txt").read_text() for i in (1, 2))
    _check(all(c in (0, 3) for c in codes), f"exit statuses {codes}", text)
    _check(status == {i: "done" for i in ids}, f"every trial done: {status}", text)
    runs = _runs(tmp / "runs.txt")
    _check(runs == {i: 1 for i in ids}, f"each trial run exactly once: {runs}", text)
    return Outcome(f"both sweeps start at once; each trial is trained by exactly one of them "
                   f"({len(ids)} runs for {len(ids)} trials); the other skips it as held or done; "
                   f"exit statuses {sorted(codes)}",
                   "each trial's result, written once", t)


def store_outage(tmp: Path) -> Outcome:
    from rayot import emulators

    spec = _spec(tmp, grid={"method": ["ivlp"], "seed": [1, 2]}, base={"optim": {"epochs": 2}},
                 resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1})
    ids = _trial_ids(spec)
    with emulators.start_s3(buckets=(BUCKET,), proxy=True) as server:
        t0 = time.monotonic()
        sweep = _sweep_process(tmp, server, spec, "sweep", RAYOT_TEST_RUN_LOG=str(tmp / "runs.txt"))
        _wait(lambda: len(_runs(tmp / "runs.txt")) >= 2 or sweep.poll() is not None, 300, "the second trial")
        server.proxy.down()
        time.sleep(OUTAGE_S)  # longer than the clients' own retries (about 18 s): rayot's back-off rides it out
        server.proxy.up()
        rc = sweep.wait(timeout=600)
        t = time.monotonic() - t0
        status = _store_status(server)
        files = _store_files(server)
    text = (tmp / "sweep.txt").read_text()
    _check(rc == 0, f"exit status {rc}, expected 0", text)
    _check(status == {i: "done" for i in ids}, f"every trial done: {status}", text)
    _check(not any(f.rsplit("/", 1)[-1].endswith(".tmp") for f in files), "nothing half-written", "\n".join(files))
    runs = _runs(tmp / "runs.txt")
    _check(all(runs.get(i, 0) >= 1 for i in ids), f"each trial ran: {runs}", text)
    return Outcome(f"the store refuses connections for {OUTAGE_S} s while the second of two trials trains: "
                   "reads and writes are retried with back-off (the clients' own retries, then "
                   "rayot's, `RAYOT_STORAGE_RETRY_S`, 300 s); the sweep goes on when the store is "
                   f"back; exit 0 (trial runs: {sorted(runs.values())})",
                   "every result whole; no temporary file left", t)


def store_stays_down(tmp: Path) -> Outcome:
    from rayot import emulators

    spec = _spec(tmp, grid={"method": ["ivlp"]}, base={"optim": {"epochs": 2}})
    with emulators.start_s3(buckets=(BUCKET,), proxy=True) as server:
        t0 = time.monotonic()
        sweep = _sweep_process(tmp, server, spec, "sweep", RAYOT_TEST_RUN_LOG=str(tmp / "runs.txt"),
                               RAYOT_STORAGE_RETRY_S="10")
        _wait(lambda: len(_runs(tmp / "runs.txt")) >= 1 or sweep.poll() is not None, 300, "the first trial")
        server.proxy.down()
        try:
            rc = sweep.wait(timeout=600)
        finally:
            server.proxy.up()
        t = time.monotonic() - t0
        status = _store_status(server)
    text = (tmp / "sweep.txt").read_text()
    last = [line for line in text.splitlines() if line.strip()][-1]
    _check(rc == 2, f"exit status {rc}, expected 2", text)
    _check(last.startswith("error: ") and "did not answer for" in last and "RAYOT_STORAGE_RETRY_S=10" in last,
           "ends with one clear message", text)
    return Outcome(f"with `RAYOT_STORAGE_RETRY_S=10` and the store gone for good: Ray Tune logs its "
                   f"failed state uploads meanwhile; the sweep ends with exit {rc} and one line: "
                   "`error: results location 's3://…': the store did not answer for N s (M tries; "
                   "RAYOT_STORAGE_RETRY_S=10): …`",
                   f"what was written before the outage ({len(status)} result(s)); a re-run goes on", t)


def driver_killed(tmp: Path) -> Outcome:
    import signal

    from rayot import emulators

    spec = _spec(tmp, grid={"method": ["ivlp"], "seed": [1, 2]}, base={"optim": {"epochs": 10}},
                 resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1})
    ids = _trial_ids(spec)
    ttl = 40  # longer than a re-run takes to reach the trial (Python, Ray start-up)
    env = {"RAYOT_TEST_RUN_LOG": str(tmp / "runs.txt"), "RAYOT_LEASE_TTL_S": str(ttl),
           "RAYOT_TEST_FAULT": f"999:{tmp / 'marker'}"}  # never kills; notes where a run resumed
    with emulators.start_s3(buckets=(BUCKET,)) as server:
        results_uri = server.uri(BUCKET, "sweep/results")
        sweep = _sweep_process(tmp, server, spec, "killed", **env)
        _wait(lambda: len(_runs(tmp / "runs.txt")) >= 2, 300, "the second trial")
        second = list(_runs(tmp / "runs.txt"))[1]
        _wait(lambda: {f"trial-{second}/checkpoint_manager_snapshot.json", f"trial-{second}/epoch_0001/state.pt"}
              <= set(_store_files(server, "sweep/ckpt")), 300, "an epoch checkpoint of the second trial")
        os.killpg(sweep.pid, signal.SIGKILL)  # the driver and everything it started
        sweep.wait()
        killed_at = time.monotonic()
        finished = set(_store_status(server))
        # as if the killed driver had run on another host: its leases are waited out, not taken
        with server.environment():  # (holders() would not list them: their process is gone from this host)
            held = [f.rsplit("/", 1)[-1][: -len(".json")] for f in _store_files(server, "sweep/results/.leases")]
            client, prefix = _conditional(results_uri)
            for tid in held:
                key = f"{prefix}/.leases/{tid}.json"
                current = client.read(key)
                data = json.loads(current.data)
                data["owner"]["host"] = "node-2"
                client.replace(key, json.dumps(data).encode(), current.version)
        rc1, text1, _ = _on_store(tmp, server, spec, **env)
        _wait(lambda: time.monotonic() - killed_at > ttl + 2, ttl + 10, "the leases' expiry")
        rc2, text2, t = _on_store(tmp, server, spec, **env)
        status = _store_status(server)
    text = text1 + text2
    _check(bool(held), "the killed driver left a live lease", text)
    _check(rc1 == 3 and "is held by" in text1, f"first re-run: exit {rc1}, the held trial skipped", text1)
    _check(bool(finished), "a trial finished before the kill", text)
    _check(rc2 == 0 and status == {i: "done" for i in ids}, f"second re-run: exit {rc2}, all done", text2)
    runs = _runs(tmp / "runs.txt")
    _check(all(runs[i] == 1 for i in finished), f"finished trials not run again: {runs}", text)
    _check(all(runs[i] == 2 for i in held), f"the held trial run once more, after expiry: {runs}", text)
    _check("resumed after epoch" in (tmp / "marker").read_text() if (tmp / "marker").exists() else False,
           "the taken-over trial resumed from its epoch checkpoint", text)
    return Outcome(f"the driver is killed (SIGKILL) mid-trial; its leases, as if from another host, "
                   f"are live: a re-run at once skips the held trial (exit 3); "
                   f"after the time to live (`RAYOT_LEASE_TTL_S`={ttl}) a re-run takes it over and "
                   "resumes it from its epoch checkpoint on the store",
                   "every finished trial (none run twice); the killed trial's epoch checkpoint", t)


def _conditional(location: str):
    from rayot import storage

    store, prefix = storage.conditional_store(location)
    return store, prefix


SCENARIOS = (
    Scenario("address", "`--address 127.0.0.1:1` (nothing listening)", False, unreachable_address),
    Scenario("storage", "`--results /proc/x` (not writable)", False, unwritable_results),
    Scenario("too-large", "a trial needs more CPUs than the machine has", True, trial_larger_than_the_machine),
    Scenario("bad-parquet", "a zero-byte `.parquet` in the results folder", True, unreadable_result_file),
    Scenario("override", "`--set seed=1` on a sweep with a seed axis", False, override_of_a_swept_key),
    Scenario("all-fail", "every trial fails (dataset missing)", True, every_trial_fails),
    Scenario("lease", "another sweep on the same storage holds a trial", True, lease_held_by_another_sweep),
    Scenario("rank", "one rank of a 2-worker trial hits a broken image", True, one_rank_fails),
    Scenario("interrupt", "Ctrl-C (SIGINT) during a sweep", True, interrupted),
    Scenario("gcs", "a sweep on `gs://` (GCS emulator): a worker killed mid-trial, a trial failing",
             True, sweep_on_gcs, STORE),
    Scenario("two-sweeps", "two sweeps started at the same moment on one S3 bucket", True,
             two_sweeps_on_one_bucket, STORE),
    Scenario("outage", f"the S3 store stops answering for {OUTAGE_S} s mid-sweep, then comes back", True,
             store_outage, STORE),
    Scenario("down", "the S3 store stops answering for good mid-sweep", True, store_stays_down, STORE),
    Scenario("driver", "the driver killed mid-trial, the sweep re-run from another process (S3)", True,
             driver_killed, STORE),
)


def run(names: list[str] | None = None) -> list[tuple[Scenario, Outcome]]:
    chosen = [s for s in SCENARIOS if not names or any(n in s.name for n in names)]
    done = []
    for scenario in chosen:
        with tempfile.TemporaryDirectory(prefix=f"rayot-{scenario.name}-") as tmp:
            print(f"{scenario.name}: {scenario.title} ...", flush=True)
            outcome = scenario.run(Path(tmp))
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
        "subprocess on the 2-core development machine; the time is the command's wall time to its",
        "message or its end: Python's start-up and imports (5-7 s here) and Ray's start-up, where",
        "the scenario starts one, included.",
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
