"""`rayot sweep SPEC.yaml`: fan a grid of trials out on Ray Tune over Ray Train."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from rayot.terminal import print_table

log = logging.getLogger(__name__)


def sweep(
    spec: Path = typer.Argument(..., help="Sweep specification (YAML), e.g. sweeps/smoke.yaml."),
    address: str = typer.Option(
        None, "--address", help="Join a running Ray cluster ('auto', 'ray://host:10001', 'host:6379'). "
        "Without it an embedded local Ray is started."
    ),
    results_dir: str = typer.Option(None, "--results", help="Results location (path or URI); overrides the spec."),
    checkpoints: str = typer.Option(None, "--checkpoints", help="Checkpoint location (path or URI); overrides the spec."),
    sets: list[str] = typer.Option(
        None, "--set", help="A trial-configuration override for every trial, e.g. --set data.root=/mnt/data."
    ),
    max_concurrent: int = typer.Option(
        None, "--max-concurrent", min=1,
        help="Trials at once; overrides the spec. Needed on an autoscaling cluster that starts empty.",
    ),
    pack: int = typer.Option(
        None, "--pack", min=1,
        help="Train up to K trials that share dataset, backbone, prompt shapes, batch, epochs and precision "
        "as one computation (one Ray Train run, one frozen CLIP); 1: one trial per run. Overrides the spec.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the trial table (and packs), the searches and "
                                 "their epoch budget, and exit."),
    full: bool = typer.Option(False, "--full", help="With --dry-run: the table of every trial and every search, "
                              "even above 200 (else a row per dataset, protocol and method)."),
    search_only: bool = typer.Option(False, "--search-only", help="Run the spec's searches and print their "
                                     "choices; no test trial (no grid trial, no retraining)."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--skip-failed", help="Re-run trials that failed before."),
    report: bool = typer.Option(True, "--report/--no-report", help="Print the Base / Novel / HM table at the end."),
    log_to: list[str] = typer.Option(
        None, "--log", help="Log every trial to a tracker: tensorboard, mlflow or wandb (repeatable; adds to "
        "the spec's tracking section). Local files and W&B offline unless configured.",
    ),
) -> None:
    """Run every trial of a sweep that has no finished result yet.

    Exit status:
    0    every trial is done
    1    some trial failed (the others ran)
    2    bad input, nothing ran
    3    nothing failed, but another sweep on the same storage runs some trials
    130  interrupted (what finished is kept; a re-run goes on from there)
    """
    # Typer's Rich help keeps the docstring's line breaks and wraps only lines that do not fit:
    # one exit status a line, each under 76 characters, reads whole on an 80-column terminal.
    from rayot import config as C
    from rayot import results, search_records
    from rayot.errors import ConfigError
    from rayot.sweep.spec import expand, load_spec, plan_notes, storage_of

    console = Console()
    s = load_spec(spec)
    if pack is not None:
        s = dataclasses.replace(s, resources=dataclasses.replace(s.resources, pack=pack))
    set_values = C.flatten(C.parse_overrides(sets or []))
    trials = expand(s, results=results_dir, checkpoints=checkpoints, sets=set_values)
    results_location = storage_of(s, trials).results
    cells = []
    if s.search is not None:
        from rayot.sweep import search as S

        S.check_sets(s, set_values)
        cells = S.cells_of(s, trials)
        previewed = S.preview(cells, s.search)  # every first-round sample checked before Ray starts
        unsafe = S.validation_only(s.search, S.searched_method(s, trials), [t for c in previewed for t in c.trials])
        if unsafe:  # the space check of load_spec refuses this first; kept as the run's own guard
            raise ConfigError(f"{unsafe}: the search would not be scored on validation images only")
        if not s.search.run_grid:
            searched = S.searched_method(s, trials)
            trials = [t for t in trials if C.method_of(t).name != searched]
    from rayot import trackers as T

    track = T.resolve(s.tracking.with_log(log_to or []), results=results_location, name=s.name)
    for note in plan_notes(s, set_values):
        console.print(f"note: {note}", highlight=False)
    scan = results.scan_results(results_location)  # one read of every result file
    planned = {C.trial_id(t) for t in trials} | {tid for c in cells for tid in c.trial_ids()}
    for path, problem in scan.problems.items():
        # a file named after none of the sweep's trials (another sweep's, a stray copy) is not run
        fate = ("its trial counts as not done and runs again" if _trial_of(path) in planned
                else "it belongs to no trial of this sweep and is left as it is")
        console.print(f"warning: results file {path} is unreadable ({problem}); {fate}", highlight=False,
                      soft_wrap=True, markup=False)
    for path, sample in search_records.tested_search_samples(results_location, scan.statuses).items():
        console.print(f"warning: results file {path} holds test rows written by {sample}, which ran with "
                      "validation switched off (refused since); no result of this plan, rayot report leaves "
                      "it out", highlight=False, soft_wrap=True)
    if dry_run:
        from rayot.sweep.packs import make_packs
        from rayot.sweep.runner import unsaved_as_pending
        from rayot.sweep.view import PLAN_ROWS, TrialState, plan_summary, plan_table

        done = unsaved_as_pending(scan.statuses, trials, storage_of(s, trials).checkpoints, console)
        states = [TrialState(C.trial_id(c), c, status=done.get(C.trial_id(c), "pending")) for c in trials]
        to_run = [st.cfg for st in states if st.status != "done"]
        packs = make_packs(to_run, s.resources.pack)
        pack_of = {C.trial_id(c): f"{n}/{len(packs)}" for n, p in enumerate(packs, 1) for c in p}
        n_done = len(states) - len(to_run)
        whole = full or len(states) <= PLAN_ROWS
        title = f"sweep {s.name}: {_trials(len(states))}"
        print_table(console, plan_table(states, title, pack_of if s.resources.pack > 1 else None) if whole
                    else plan_summary(states, title))
        if not whole:
            console.print(f"{len(states)} trials, above {PLAN_ROWS}: a row per dataset, protocol and method; "
                          "--full lists every trial", highlight=False, soft_wrap=True)
        console.print(f"{_trials(len(states))}, {n_done} already done, {len(to_run)} to run; "
                      f"results: {results_location}", highlight=False, soft_wrap=True)
        if s.resources.pack > 1:
            console.print(f"packing: {_trials(len(to_run))} to run in {len(packs)} runs of at most "
                          f"{s.resources.pack}" + (" (pack column: which run trains the trial)" if whole else ""),
                          highlight=False)
        for line in T.where(track):
            console.print(f"tracking: {line}", highlight=False, soft_wrap=True)
        if cells:
            from rayot.sweep.view import search_plan

            for part in search_plan(s.search, previewed, done, full=full):
                console.print(part, highlight=False, soft_wrap=True)
        return

    from rayot.cli._common import ensure_synthetic
    from rayot.sweep.runner import run_sweep

    ensure_synthetic(c.data.root for c in [*trials, *(c.config for c in cells)] if c.data.dataset == "synthetic")
    t0 = time.monotonic()
    run = {"address": address, "console": console, "retry_failed": retry_failed,
           "max_concurrent": max_concurrent, "tracking": track}
    searched = None
    interrupts = _Interrupts(f"interrupted again: exiting now, without waiting for Ray to stop; finished "
                             f"trials are kept in {results_location}")
    try:
        with interrupts:
            if cells:
                from rayot.sweep.runner import run_search
                from rayot.sweep.view import search_table

                searched = run_search(s, cells, **run)
                print_table(console, search_table(searched, s.search))
                if search_only:
                    _finish(console, [*searched.summaries], t0, results_location, track, report=False)
                    return
                trials = list({C.trial_id(t): t for t in [*trials, *searched.retrain()]}.values())
            summary = run_sweep(s, trials, **run)
    except KeyboardInterrupt:
        Console(stderr=True).print(
            f"interrupted after {time.monotonic() - t0:.0f}s: finished trials are kept in "
            f"{results_location}; run the same command again to go on (an interrupted trial "
            "resumes from its last epoch checkpoint); stopping Ray (Ctrl-C again to exit at once)",
            highlight=False, soft_wrap=True)
        from rayot.sweep.cluster import shutdown

        shutdown()  # here, not in Ray's exit handler: a second Ctrl-C is then one line, not a traceback
        raise typer.Exit(130) from None
    summaries = [*(searched.summaries if searched else []), summary]
    _finish(console, summaries, t0, results_location, track, report=report,
            trial_ids=[st.trial_id for st in summary.states], search_ids=[c.search_id for c in cells])


class _Interrupts:
    """Ctrl-C while a sweep runs: the first stops it (KeyboardInterrupt; the sweep then stops Ray
    and exits 130); from then on, until the process ends, another exits at once, 130, printing
    ``line``, instead of interrupting Ray's shutdown (whose exit handler would print a traceback
    and exit 1). A process that ignores SIGINT (started in the background) keeps ignoring it."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.previous: Any = None

    def __enter__(self) -> _Interrupts:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._first)
        return self

    def _first(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, self._again)
        raise KeyboardInterrupt

    def _again(self, signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, RuntimeError, ValueError):  # closed, or the main thread was writing to it
                pass
        os.write(2, f"{self.line}\n".encode())  # not through a stream: the main thread may hold it
        os._exit(130)

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        # interrupted: armed until the process exits, Ray's shutdown and exit handlers included
        if self.previous is not None and exc_type is not KeyboardInterrupt:
            signal.signal(signal.SIGINT, self.previous)


def _trial_of(path: str) -> str:
    """The trial a result file is named after: ``<results>/<trial id>.parquet``."""
    return path.rsplit("/", 1)[-1].removesuffix(".parquet")


def _finish(console: Console, summaries: list, t0: float, results_location: str, track, *, report: bool,
            trial_ids: list[str] | None = None, search_ids: list[str] = ()) -> None:
    """The end of a sweep: its summary, failures, where everything is, the table; the exit status."""
    from rayot import trackers as T
    from rayot.sweep.view import SweepSummary, failures_table, summary_table

    summary = SweepSummary([st for sm in summaries for st in sm.states])
    print_table(console, summary_table(summary))
    if summary.failed and console.is_terminal:
        print_table(console, failures_table(summary))
    for st in summary.failed if not console.is_terminal else ():  # whole lines, for logs and grep
        console.print(f"failed: {st.trial_id} ({st.cfg.data.dataset} {st.cfg.method} seed {st.cfg.seed}): "
                      f"{st.error} (log: {st.log})", highlight=False, soft_wrap=True)
    for st in summary.busy:
        console.print(f"{st.trial_id}: {st.error or 'running in another sweep'}; re-run later to "
                      "pick up its result", highlight=False, soft_wrap=True)
    console.print(f"wall time {time.monotonic() - t0:.0f}s; results: {results_location}")
    for line in T.where(track):
        console.print(f"tracking: {line}", highlight=False, soft_wrap=True)
    if report and trial_ids is not None:
        _print_report(console, results_location, trial_ids, search_ids)
    if summary.failed:
        raise typer.Exit(1)
    if summary.busy:
        raise typer.Exit(3)


def _print_report(console: Console, location: str, trial_ids: list[str], search_ids: list[str] = ()) -> None:
    """The Base / Novel / HM table of this sweep's trials, whichever run finished them, with the
    rows of its searches' choices."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rayot import results, search_records
    from rayot.report import build_report, print_report

    table = results.read_results([location], skip_unreadable=True)
    table = table.filter(pc.is_in(table.column("trial_id"), value_set=pa.array(trial_ids)))
    if "done" not in table.column("status").to_pylist():
        console.print("no trial of this sweep finished: no table to print")
        return
    searches = None
    if search_ids:
        searches = search_records.read_search_records([location])
        searches = searches.filter(pc.is_in(searches.column("search_id"), value_set=pa.array(list(search_ids), pa.string())))
    print_report(build_report(table, figures=False, searches=searches), console)


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"
