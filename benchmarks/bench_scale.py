"""A sweep of 100, 1,000 and 10,000 trials over S3: the plan, the scans of results and leases.

Starts moto's S3 server on loopback (rayot.emulators, its request log on), writes a sweep file of N
Prompt-OT trials (seeds x five λ, the offline demo world of sweeps/smoke.yaml, packs of 8) with its
results and checkpoints on ``s3://rayot-scale/nN/``, and fills the results location the way a
sweep leaves it: 80% of the trials with their ``done`` rows (base and novel, 20 epochs of metrics,
written by rayot.train.rows.result_rows), 10% with a failure row, 10% with nothing, plus two
unreadable files; and a lease for every trial, 10% live (another host's sweep), 90% expired.
Filling is not measured (boto3, 8 threads, straight to the server). Then it times, for each N:

- plan: what ``rayot sweep X.yaml --dry-run`` computes besides the storage scans, in process:
  the grid expanded (rayot.sweep.spec.expand), the trial ids, the packs, the plan table rendered;
- dry-run scans: the two scans the dry run makes (unreadable_results, then finished_trials);
- finished_trials: the scan a sweep makes at its start (and again at its end);
- holders: the scan of the leases;
- per trial: rayot.results.trial_status and rayot.sweep.leases.holder of one trial (what a
  sweep's driver checks for each trial it starts), averaged over 50 trials;

each scan twice: "before", the code of commit 63fd4df reproduced below (a sequential loop, each
result file opened by pyarrow: a HEAD and two ranged GETs; each lease: two HEADs and a GET), and
"after", the code of this tree (one GET per file through the store's client, SCAN_THREADS at a
time). The requests of each scan are counted from the server's request log. Then the same scans
go through a TCP proxy that holds every request for ``--latency-ms`` (default 25 ms) before
passing it on: the round trip of a real bucket, simulated ("before" only at ``--sim-sizes``:
sequential requests at 25 ms take minutes at 10,000). Last, the figures are extrapolated to a
real bucket: requests on the critical path x the round trip, plus this process's CPU time.

Prints tables (docs/scale.md has them); no assertions on time. Machine load moves the figures;
ratios are of runs made one after the other in this process. All three sizes take about 40
minutes on 2 cores; ``--sizes 100 --sim-sizes 100 --repeats 1`` under a minute.

    python benchmarks/bench_scale.py [--sizes 100 1000 10000] [--latency-ms 25] [--sim-sizes 100 1000]
                                     [--repeats 3] [--rtt-ms 20 50] [--cli] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from rayot import config as C
from rayot import emulators, results, storage
from rayot.sweep import leases
from rayot.sweep.packs import make_packs
from rayot.sweep.spec import expand, load_spec
from rayot.train import rows as trial_rows

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "rayot-scale"
LAMBDAS = (0, 1, 5, 10, 20)


# ------------------------------------------------------------------------- "before": commit 63fd4df


def before_finished_trials(location: str) -> dict[str, str]:
    """rayot.results.finished_trials as of commit 63fd4df: one listing, then each file opened in
    turn (on S3: a HEAD, a GET of the footer, a GET of the two columns)."""
    fs, base = results.filesystem(location)

    def listing() -> list[pafs.FileInfo]:
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        return fs.get_file_info(pafs.FileSelector(base, recursive=False))

    infos = storage.retrying(listing, location=location, what="results")
    files = sorted((i.path, i.base_name[: -len(".parquet")]) for i in infos
                   if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith("."))
    out: dict[str, str] = {}
    for path, trial_id in files:
        status, problem = storage.retrying(lambda p=path, t=trial_id: results._inspect(fs, p, t),
                                           location=location, what="results")
        if problem:
            results._warn_unreadable(path, problem)
        else:
            out[trial_id] = status
    return out


def before_unreadable_results(location: str) -> dict[str, str]:
    """rayot.results.unreadable_results as of commit 63fd4df (the same loop, nothing logged)."""
    fs, base = results.filesystem(location)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return {}
    out = {}
    for info in sorted(fs.get_file_info(pafs.FileSelector(base, recursive=False)), key=lambda i: i.path):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".parquet") and not name.startswith("."):
            _, problem = results._inspect(fs, info.path, name[: -len(".parquet")])
            if problem:
                out[info.path] = problem
    return out


def before_holder(location: str, trial_id: str, clock: Callable[[], float] = time.time) -> leases.LeaseHolder | None:
    """rayot.sweep.leases.holder as of commit 63fd4df (pyarrow: a HEAD, then a HEAD and a GET)."""
    fs, path = leases.lease_path(location, trial_id)
    current = leases._current(fs, path, trial_id, 120.0)
    if current is None or not current[0].live(clock()):
        return None
    return current[0]


def before_holders(location: str) -> dict[str, leases.LeaseHolder]:
    """rayot.sweep.leases.holders as of commit 63fd4df: one listing, each lease read in turn."""
    fs, base = leases.filesystem(location)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(f"{base.rstrip('/')}/{leases.LEASES}", allow_not_found=True)):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".json") and not name.startswith("."):
            found = before_holder(location, name[: -len(".json")])
            if found is not None:
                out[found.trial_id] = found
    return out


def after_dry_run_scans(location: str) -> tuple[dict[str, str], dict[str, str]]:
    return results.unreadable_results(location), results.finished_trials(location)


def before_dry_run_scans(location: str) -> tuple[dict[str, str], dict[str, str]]:
    return before_unreadable_results(location), before_finished_trials(location)


# ------------------------------------------------------------------------- the server and its log


class RequestLog:
    """The requests moto's server logged (one line each: ``"GET /bucket?list-type=2... HTTP/1.1"``)."""

    LINE = re.compile(r"(GET|HEAD|PUT|POST|DELETE) (/\S*) HTTP/1\.[01]")  # colour codes around it

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        return self.path.read_text(errors="replace").splitlines()

    def mark(self) -> int:
        """The number of requests logged so far, once the log has stopped growing."""
        last = -1
        while True:
            n = len(self._lines())
            if n == last:
                return n
            last = n
            time.sleep(0.15)

    def since(self, mark: int) -> Counter:
        """Requests since ``mark`` by kind: LIST (a GET with list-type), GET, HEAD, PUT, ..."""
        kinds: Counter = Counter()
        for line in self._lines()[mark:]:
            m = self.LINE.search(line)
            if m:
                method, url = m.groups()
                kinds["LIST" if method == "GET" and "list-type=" in url else method] += 1
        return kinds


def latency_proxy(target_port: int, delay_s: float) -> emulators.Proxy:
    """A TCP forwarder to the server that holds every request ``delay_s`` (rayot.emulators.Proxy)."""
    return emulators.Proxy(target_port, delay_s=delay_s)


@contextlib.contextmanager
def endpoint(url: str):
    """Point rayot's clients at ``url`` for the block (its filesystems and stores are cached per
    endpoint, so each endpoint gets its own)."""
    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved


# ------------------------------------------------------------------------- the sweep and its storage


def write_spec(folder: Path, n: int) -> Path:
    """A sweep file of ``n`` Prompt-OT trials (n / 5 seeds x 5 λ) on S3, modelled on sweeps/smoke.yaml."""
    smoke = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec = {
        "name": f"scale{n}",
        "description": f"{n} trials for benchmarks/bench_scale.py",
        "base": {**smoke["base"], "method": "prompt_ot", "data": {**smoke["base"]["data"], "root": str(ROOT / "data")}},
        "grid": {"seed": list(range(1, n // len(LAMBDAS) + 1)), "prompt_ot.lambda_ot": list(LAMBDAS)},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "pack": 8},
        "storage": {"results": f"s3://{BUCKET}/n{n}/results", "checkpoints": f"s3://{BUCKET}/n{n}/checkpoints"},
    }
    path = folder / f"scale{n}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def plan(spec_path: Path) -> tuple[list[C.TrialConfig], dict[str, float]]:
    """What the dry run computes besides its storage scans, timed step by step."""
    from rich.console import Console

    from rayot.sweep.view import TrialState, plan_table

    times: dict[str, float] = {}
    cpu = time.process_time()
    t = time.perf_counter()
    spec = load_spec(spec_path)
    trials = expand(spec)
    times["expand"] = time.perf_counter() - t
    t = time.perf_counter()
    states = [TrialState(C.trial_id(c), c, status="pending") for c in trials]
    times["trial ids"] = time.perf_counter() - t
    t = time.perf_counter()
    packs = make_packs([s.cfg for s in states], spec.resources.pack)
    pack_of = {C.trial_id(c): f"{n}/{len(packs)}" for n, p in enumerate(packs, 1) for c in p}
    times["packs"] = time.perf_counter() - t
    t = time.perf_counter()
    Console(file=io.StringIO(), width=160).print(plan_table(states, f"sweep {spec.name}", pack_of))
    times["table"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    times["cpu"] = time.process_time() - cpu  # this process's: what load on the machine does not move
    return trials, times


def result_bytes(cfg: C.TrialConfig, kind: str) -> bytes:
    if kind == "done":
        evals = [trial_rows.EvalResult("base2novel", "synthetic", split, 40 + cfg.seed % 7, 60, 12)
                 for split in ("base", "novel")]
        history = [{"epoch": e, "loss": 1.0 / e, "ce": 0.9 / e, "reg": 0.1 / e, "lr": 0.002}
                   for e in range(1, 21)]
        rows = trial_rows.result_rows(cfg, evals, train_seconds=12.5, sweep="scale", history=history)
    else:
        rows = [trial_rows.failure_row(cfg, "RuntimeError: CUDA out of memory (simulated)", sweep="scale")]
    buffer = pa.BufferOutputStream()
    pq.write_table(results.make_table(rows), buffer)
    return buffer.getvalue().to_pybytes()


def populate(server: emulators.StoreServer, n: int, trials: list[C.TrialConfig], local: Path | None) -> dict[str, Any]:
    """Results and leases of ``trials`` under ``s3://rayot-scale/nN/results`` (and a local copy)."""
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint)
    prefix = f"n{n}/results"
    now = time.time()
    objects: list[tuple[str, bytes]] = []
    kinds: Counter = Counter()
    for i, cfg in enumerate(trials):
        tid = C.trial_id(cfg)
        kind = "done" if i % 10 < 8 else "failed" if i % 10 == 8 else "none"
        kinds[kind] += 1
        if kind != "none":
            objects.append((f"{tid}.parquet", result_bytes(cfg, kind)))
        live = i % 10 == 0
        owner = leases.Owner(f"token{i:06d}", "another-host", 4242, "sweep scale")
        lease = {"trial_id": tid, "owner": dataclasses.asdict(owner), "expires_at": now + (3600 if live else -60)}
        objects.append((f"{leases.LEASES}/{tid}.json", json.dumps(lease, sort_keys=True).encode()))
        kinds["live leases" if live else "expired leases"] += 1
    objects += [("unreadable0.parquet", b""), ("unreadable1.parquet", b"not parquet" * 10)]
    kinds["unreadable"] = 2

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{item[0]}", Body=item[1])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, objects))
    if local is not None:
        (local / leases.LEASES).mkdir(parents=True, exist_ok=True)
        for name, data in objects:
            (local / name).write_bytes(data)
    sizes = [len(d) for name, d in objects if name.endswith(".parquet") and d]
    return {"kinds": dict(kinds), "objects": len(objects), "mean_result_bytes": statistics.mean(sizes)}


# ------------------------------------------------------------------------- measuring


def measure(fn: Callable[[], Any], log: RequestLog | None, repeats: int) -> dict[str, Any]:
    """Median wall time, the client's CPU time and the requests of one call of ``fn``."""
    walls, cpus, requests, out = [], [], Counter(), None
    for r in range(repeats):
        mark = log.mark() if log else 0
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        if log and r == 0:
            requests = log.since(mark)
    return {"s": statistics.median(walls), "cpu_s": statistics.median(cpus), "requests": dict(requests),
            "total_requests": sum(requests.values()), "out": out}


def critical_path(requests: dict[str, int], concurrent: bool, threads: int) -> float:
    """Round trips one after the other: every request, or the listing pages plus the reads spread
    over ``threads``."""
    listing = requests.get("LIST", 0)
    reads = sum(v for k, v in requests.items() if k != "LIST")
    return listing + (reads / threads if concurrent else reads)


def same(a: Any, b: Any) -> bool:
    """Equal outcomes: a dict of statuses / problems, or of lease holders, or pairs of them."""
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--latency-ms", type=float, default=25.0, help="simulated round trip per request")
    parser.add_argument("--sim-sizes", type=int, nargs="*", default=[100, 1000],
                        help="sizes at which 'before' also runs behind the simulated latency")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fast measurement (median)")
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[20.0, 50.0], help="round trips to extrapolate to")
    parser.add_argument("--cli", action="store_true", help="also time `rayot sweep X.yaml --dry-run` in a subprocess")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the two unreadable files would warn at every scan

    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load": os.getloadavg(),
                               "scan_threads": results.SCAN_THREADS, "latency_ms": args.latency_ms, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp_path = Path(tmp)
        request_log = RequestLog(tmp_path / "moto.log")
        server = emulators.start_s3(buckets=(BUCKET,), log_path=str(request_log.path))
        proxy = latency_proxy(server.port, args.latency_ms / 1000)
        try:
            os.environ.update(server.env)
            plan(write_spec(tmp_path, len(LAMBDAS)))  # warm up (methods loaded, caches filled): not counted
            for n in args.sizes:
                figures["sizes"][n] = run_size(n, server, proxy, request_log, tmp_path, args)
                print(json.dumps({n: _printable(figures["sizes"][n])}, indent=1), flush=True)
        finally:
            proxy.down()
            server.stop()
    figures["load after"] = os.getloadavg()
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(_printable(figures), indent=1))


def run_size(n: int, server: emulators.StoreServer, proxy: emulators.Proxy, log: RequestLog, tmp: Path,
             args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spec_path = write_spec(tmp, n)
    trials, times = plan(spec_path)
    out["plan"] = times
    out["trials"] = len(trials)
    local = tmp / f"local{n}"
    t = time.perf_counter()
    out["population"] = populate(server, n, trials, local)
    out["population"]["s"] = time.perf_counter() - t
    location = f"s3://{BUCKET}/n{n}/results"
    sample = [C.trial_id(c) for c in trials[:: max(1, len(trials) // 50)][:50]]

    scans: dict[str, tuple[Callable[[str], Any], Callable[[str], Any]]] = {
        "dry-run scans": (before_dry_run_scans, after_dry_run_scans),
        "finished_trials": (before_finished_trials, results.finished_trials),
        "holders": (before_holders, leases.holders),
    }
    for name, (before, after) in scans.items():
        b = measure(lambda f=before: f(location), log, 1 if n >= 10000 else args.repeats)
        a = measure(lambda f=after: f(location), log, args.repeats)
        if not same(a["out"], b["out"]):
            raise SystemExit(f"{name} at {n}: the two versions disagree")
        saved = results.SCAN_THREADS
        results.SCAN_THREADS = 1  # the fewer requests alone, without the threads
        try:
            seq = measure(lambda f=after: f(location), log, 1)
        finally:
            results.SCAN_THREADS = saved
        out[name] = {"before": b, "after": a, "after, 1 thread": seq}
    # what a sweep's driver checks for each trial (not a scan: a constant per trial)
    out["trial_status"] = measure(lambda: [results.trial_status(location, t) for t in sample], log, 1)
    out["trial_status"]["per"] = len(sample)
    out["holder"] = {"before": measure(lambda: [before_holder(location, t) for t in sample], log, 1),
                     "after": measure(lambda: [leases.holder(location, t) for t in sample], log, 1)}
    out["holder"]["per"] = len(sample)
    # the same on a local disk (its code path is unchanged): the client's own cost
    out["local finished_trials"] = measure(lambda: results.finished_trials(str(local)), None, 1)
    out["local holders"] = measure(lambda: leases.holders(str(local)), None, 1)
    # behind the simulated round trip
    with endpoint(f"http://127.0.0.1:{proxy.port}"):
        sim: dict[str, Any] = {}
        for name in ("finished_trials", "holders"):
            before, after = scans[name]
            sim[name] = {"after": measure(lambda f=after: f(location), log, 1)}
            if n in args.sim_sizes:
                sim[name]["before"] = measure(lambda f=before: f(location), log, 1)
        out["simulated"] = sim
    if args.cli:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "rayot", "sweep", str(spec_path), "--dry-run"],
                              capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
        out["cli dry-run"] = {"s": time.perf_counter() - t, "rc": done.returncode,
                              "last": done.stdout.strip().splitlines()[-3:] if done.stdout else done.stderr[-500:]}
    return out


def _printable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _printable(v) for k, v in x.items() if k != "out"}
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, list | tuple):
        return [_printable(v) for v in x]
    return x


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    sizes = figures["sizes"]
    threads = figures["scan_threads"]
    load = "/".join(f"{x:.1f}" for x in figures["load"])
    print(f"\n# {figures['date']}, {figures['cpus']} CPUs (load average {load} at the start), moto S3 on "
          f"loopback, SCAN_THREADS={threads}\n")
    print("## plan (in process, no storage): seconds")
    print("| trials | expand | trial ids | packs | table | total | CPU | CPU ms / trial |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, f in sizes.items():
        p = f["plan"]
        print(f"| {n} | {p['expand']:.2f} | {p['trial ids']:.2f} | {p['packs']:.2f} | {p['table']:.2f} | "
              f"{p['total']:.2f} | {p['cpu']:.2f} | {1000 * p['cpu'] / n:.2f} |")
    print("\n## scans on loopback: seconds (requests), before -> after, ratio")
    print("| scan | trials | before | after, 1 thread | after | before / after |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("dry-run scans", "finished_trials", "holders"):
        for n, f in sizes.items():
            b, s, a = f[name]["before"], f[name]["after, 1 thread"], f[name]["after"]
            print(f"| {name} | {n} | {b['s']:.2f} ({b['total_requests']}) | {s['s']:.2f} ({s['total_requests']}) | "
                  f"{a['s']:.2f} ({a['total_requests']}) | {b['s'] / a['s']:.1f}x |")
    print("\n## requests per scan, by kind (after)")
    for name in ("finished_trials", "holders"):
        for n, f in sizes.items():
            print(f"{name} {n}: before {f[name]['before']['requests']}, after {f[name]['after']['requests']}")
    print("\n## per trial (a sweep's driver, each trial it starts)")
    for n, f in sizes.items():
        ts, h = f["trial_status"], f["holder"]
        print(f"{n}: trial_status {ts['total_requests'] / ts['per']:.1f} requests, {1000 * ts['s'] / ts['per']:.1f} ms; "
              f"holder before {h['before']['total_requests'] / h['per']:.1f} requests, "
              f"after {h['after']['total_requests'] / h['per']:.1f}")
    print(f"\n## behind a simulated {args.latency_ms:g} ms round trip per request: seconds")
    print("| scan | trials | before | after | before / after | model before | model after |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rtt = args.latency_ms / 1000
    for name in ("finished_trials", "holders"):
        for n, f in sizes.items():
            sim = f["simulated"][name]
            b, a = f[name]["before"], f[name]["after"]
            model_b = b["s"] + critical_path(b["requests"], False, threads) * rtt
            model_a = a["s"] + critical_path(a["requests"], True, threads) * rtt
            sb = f"{sim['before']['s']:.1f}" if "before" in sim else "-"
            ratio = f"{sim['before']['s'] / sim['after']['s']:.0f}x" if "before" in sim else "-"
            print(f"| {name} | {n} | {sb} | {sim['after']['s']:.1f} | {ratio} | {model_b:.1f} | {model_a:.1f} |")
    print("\n## extrapolated to a real bucket: (requests on the critical path x round trip) + client CPU, seconds")
    head = " | ".join(f"before @{r:g} ms | after @{r:g} ms" for r in args.rtt_ms)
    print(f"| scan | trials | {head} |")
    print("|---|---:|" + "---:|" * (2 * len(args.rtt_ms)))
    for name in ("dry-run scans", "finished_trials", "holders"):
        for n, f in sizes.items():
            b, a = f[name]["before"], f[name]["after"]
            cells = []
            for r in args.rtt_ms:
                cells.append(f"{b['cpu_s'] + critical_path(b['requests'], False, threads) * r / 1000:.1f}")
                cells.append(f"{a['cpu_s'] + critical_path(a['requests'], True, threads) * r / 1000:.1f}")
            print(f"| {name} | {n} | " + " | ".join(cells) + " |")
    if args.cli:
        print("\n## rayot sweep X.yaml --dry-run (a subprocess, imports included): seconds")
        for n, f in sizes.items():
            print(f"{n}: {f['cli dry-run']['s']:.1f} s (exit {f['cli dry-run']['rc']})")


if __name__ == "__main__":
    main()
