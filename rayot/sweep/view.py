"""What the terminal shows of a sweep: its trials' states, the plan (``--dry-run``), the live view
while it runs, the summary after, and its searches' plan and choices."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from rayot import config as C
from rayot.errors import ConfigError
from rayot.report.names import format_value, setting_label
from rayot.sweep import search
from rayot.terminal import fit
from rayot.typed import plain

if TYPE_CHECKING:
    from rayot.sweep.runner import SearchRun

_T = TypeVar("_T")

#: Trial states: pending (not started), waiting (its Tune trial waits for workers), running,
#: done, failed, skipped (finished before this run) and busy (another sweep holds its lease).
STATES = ("pending", "waiting", "running", "done", "failed", "skipped", "busy")


@dataclass
class TrialState:
    trial_id: str
    cfg: C.TrialConfig
    status: str = "pending"  # one of STATES
    epoch: int = 0
    error: str = ""
    log: str = ""
    started: float | None = None
    finished: float | None = None


def describe(cfg: C.TrialConfig, varying: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """The columns of a trial in the sweep's tables; ``settings``: its method's settings that
    differ between the sweep's trials of that method (:func:`varying_settings`)."""
    name = C.method_of(cfg).name
    keys = (varying or {}).get(name, ())
    own = plain(cfg.settings)
    return {
        "dataset": cfg.data.dataset,
        "protocol": cfg.data.protocol,
        "method": name,
        "seed": str(cfg.seed),
        "settings": " ".join(f"{setting_label(k)}={format_value(own[k])}" for k in keys),
    }


def varying_settings(cfgs: list[C.TrialConfig]) -> dict[str, tuple[str, ...]]:
    """For each method, its settings whose values differ between ``cfgs``' trials of it."""
    values: dict[str, dict[str, set[str]]] = {}
    for cfg in cfgs:
        name = C.method_of(cfg).name
        for key, value in plain(cfg.settings).items():
            values.setdefault(name, {}).setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return {name: tuple(k for k, seen in keys.items() if len(seen) > 1) for name, keys in values.items()}


def plan_table(states: list[TrialState], title: str, packs: dict[str, str] | None = None) -> Table:
    """The trials of a sweep; ``packs`` (trial id → its pack) adds a column saying which trials
    train together (rayot.packing)."""
    table = Table(title=title)
    varying = varying_settings([s.cfg for s in states])
    rows = [describe(s.cfg, varying) for s in states]
    shown = ("dataset", "protocol", "method", "seed", *(("settings",) if any(d["settings"] for d in rows) else ()))
    for col in ("trial", *shown, "status", *(("pack",) if packs else ())):
        table.add_column(col)
    for s, d in zip(states, rows, strict=True):
        pack = (packs.get(s.trial_id, "-"),) if packs else ()
        table.add_row(s.trial_id, *(d[col] for col in shown), s.status, *pack)
    return table


#: Above this many trials (or searches), ``--dry-run`` prints a summary, a row per dataset, protocol
#: and method, and the table of every trial only with ``--full``: a 100,000-trial table is 100,000
#: lines, about 11 MB, that nobody reads, while a few hundred rows still fit a scroll back.
PLAN_ROWS = 200


def plan_summary(states: list[TrialState], title: str) -> Table:
    """The trials of a large sweep, a row per dataset, protocol and method: how many, of how many
    seeds and settings, done and to run."""
    table = Table(title=title)
    for col in ("dataset", "protocol", "method", "trials", "seeds", "settings", "done", "to run"):
        table.add_column(col)
    varying = varying_settings([s.cfg for s in states])
    groups: dict[tuple[str, str, str], list[TrialState]] = {}
    for s in states:
        d = describe(s.cfg, varying)
        groups.setdefault((d["dataset"], d["protocol"], d["method"]), []).append(s)
    for (dataset, protocol, method), members in groups.items():
        seeds = len({m.cfg.seed for m in members})
        settings = len({describe(m.cfg, varying)["settings"] for m in members})
        done = sum(m.status == "done" for m in members)
        table.add_row(dataset, protocol, method, str(len(members)), str(seeds), str(settings), str(done),
                      str(len(members) - done))
    return table


def _one_line(s: TrialState, varying: Mapping[str, tuple[str, ...]]) -> str:
    d = describe(s.cfg, varying)
    settings = f" {d['settings']}" if d["settings"] else ""
    return f"{s.trial_id} ({d['dataset']} {d['method']} seed {d['seed']}{settings})"


class LiveView(tune.Callback):
    """The sweep as it runs, from Tune's trial events in the driver process.

    On a terminal a Rich view refreshed in place; elsewhere (``nohup``, CI logs, ``| tee``) one
    line per trial event, since a refreshed view would only print its last frame there.
    """

    def __init__(self, states: list[TrialState], concurrency: int, console: Console) -> None:
        self.by_id = {s.trial_id: s for s in states}
        self.states = states
        self.varying = varying_settings([s.cfg for s in states])
        self.concurrency = max(concurrency, 1)
        self.console = console
        self.t0 = time.monotonic()
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a console or live view cannot be
        return {**self.__dict__, "console": None, "live": None}

    def _states(self, trial: Any) -> list[TrialState]:
        """The trials of a Tune trial: one, or the members of its pack."""
        return [self.by_id[m["trial_id"]] for m in trial.config["trial"]["members"]]

    def _move(self, s: TrialState, status: str, note: str = "") -> None:
        changed = s.status != status
        s.status = status
        if changed and self.console is not None and not self.console.is_terminal:
            counts = self.counts()
            tally = f"[{counts['done'] + counts['skipped']}/{len(self.states)} done, {counts['failed']} failed]"
            self.console.print(f"{time.monotonic() - self.t0:6.0f}s {tally} {_one_line(s, self.varying)}: {status}"
                               + (f" {note}" if note else ""), highlight=False, soft_wrap=True)
        self.refresh()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for s in self._states(trial):
            s.started = time.monotonic()
            self._move(s, "waiting", "(for its workers)")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        members = result.get("members") if isinstance(result.get("members"), dict) else {}
        for s in self._states(trial):
            if "epoch" in result:
                s.epoch = int(result["epoch"])
            mine = members.get(s.trial_id, {})
            status = mine.get("status", result.get("status"))
            if status in ("done", "failed", "busy"):
                s.error = mine.get("error") or result.get("error") or s.error
                s.log = mine.get("log") or result.get("log") or s.log
                note = f"after {time.monotonic() - (s.started or self.t0):.0f}s"
                self._move(s, status, f"{note}: {s.error}" if s.error else note)
            elif status == "running" and s.status == "waiting":
                self._move(s, "running")
            else:
                self.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for s in self._states(trial):
            s.finished = time.monotonic()
        self.refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for s in self._states(trial):
            s.finished = time.monotonic()
            self._move(s, "failed", "(its Tune trial failed; the error is recorded at the end)")

    def counts(self) -> dict[str, int]:
        return {k: sum(s.status == k for s in self.states) for k in STATES}

    def eta(self) -> str:
        finished = [s for s in self.states if s.finished is not None and s.started is not None]
        left = sum(s.status in ("pending", "waiting", "running") for s in self.states)
        if not finished or not left:
            return "-"
        mean = sum(s.finished - s.started for s in finished) / len(finished)  # type: ignore[operator]
        return f"{mean * math.ceil(left / self.concurrency):.0f}s"

    def render(self) -> Group:
        head = Table.grid(padding=(0, 2))
        head.add_row(*(f"{k}: [bold]{v}[/]" for k, v in self.counts().items() if v or k in ("done", "failed")),
                     f"at once: {self.concurrency}",
                     f"elapsed: {time.monotonic() - self.t0:.0f}s", f"left: ~{self.eta()}")
        active = [s for s in self.states if s.status in ("waiting", "running")]
        if not active:
            return Group(head)
        running = Table(show_edge=False, box=None)
        for col in ("trial", "dataset", "method", "seed", "settings", "epoch"):
            running.add_column(col)
        for s in active:
            d = describe(s.cfg, self.varying)
            if s.status == "waiting":
                where = "waiting for workers"
            elif not C.method_of(s.cfg).trains or C.epochs_trained(s.cfg) == 0:
                where = "evaluating"
            else:
                where = f"{s.epoch}/{s.cfg.optim.epochs}"
            running.add_row(s.trial_id, d["dataset"], d["method"], d["seed"], d["settings"], where)
        return Group(head, running)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def showing(self, run: Callable[[], _T]) -> _T:
        """``run()`` with the view shown: on a terminal refreshed in place (and its last frame
        kept), elsewhere as the lines of :meth:`_move`."""
        if not self.console.is_terminal:
            return run()
        with Live(self.render(), console=self.console, refresh_per_second=2, transient=False) as live:
            self.live = live
            try:
                return run()
            finally:
                self.live = None
                live.update(self.render())


@dataclass
class SweepSummary:
    states: list[TrialState] = field(default_factory=list)

    @property
    def failed(self) -> list[TrialState]:
        return [s for s in self.states if s.status == "failed"]

    @property
    def busy(self) -> list[TrialState]:
        return [s for s in self.states if s.status == "busy"]


def summary_table(summary: SweepSummary) -> Table:
    table = Table(title="sweep summary")
    for col in ("status", "trials"):
        table.add_column(col)
    for status, label in (("done", "done"), ("skipped", "done before"),
                          ("busy", "running in another sweep"), ("failed", "failed")):
        n = sum(s.status == status for s in summary.states)
        if n or status in ("done", "failed"):
            table.add_row(label, str(n))
    return table


def failures_table(summary: SweepSummary) -> Table:
    table = Table(title="failed trials (a re-run retries them)")
    for col in ("trial", "dataset", "method", "seed", "error", "log"):
        table.add_column(col, overflow="fold")
    for s in summary.failed:
        d = describe(s.cfg)
        table.add_row(s.trial_id, d["dataset"], d["method"], d["seed"], s.error, s.log)
    return table


def _values(params: Mapping[str, Any]) -> str:
    """A sample's values as the tables show settings: ``λ=4.43``."""
    return " ".join(f"{setting_label(k.split('.', 1)[-1])}={format_value(v)}" for k, v in params.items())


def search_table(run: SearchRun, s: search.Search) -> Table:
    """Each search's choice: the chosen values, their validation score, how much training it took."""
    table = Table(title="search: the setting chosen on validation, per cell")
    for col in ("dataset", "protocol", "method", "chosen", "score", "samples", "epochs trained"):
        table.add_column(col)
    for c in run.cells:
        outcomes = run.outcomes[c.search_id]
        i = run.chosen[c.search_id]
        chosen = _values(c.samples[i]) if i is not None else "none (no sample finished)"
        score = f"{outcomes[i].score:.2f} ({c.metric})" if i is not None else "-"
        done = sum(o.status == "done" for o in outcomes)
        stopped = sum(o.stopped_at is not None for o in outcomes)
        trained = sum(o.epochs_trained or 0 for o in outcomes)
        full = len(outcomes) * C.epochs_trained(c.config)
        table.add_row(c.config.data.dataset, c.config.data.protocol, C.method_of(c.config).name, chosen, score,
                      f"{done}/{len(outcomes)} done, {stopped} stopped early", f"{trained} of {full}")
    return table


def search_plan(s: search.Search, cells: list[search.Cell], done: dict[str, str], *, full: bool = False) -> list[Any]:
    """``--dry-run``: each search (the first :data:`PLAN_ROWS` unless ``full``), its first samples
    and their state, and the epoch budget with and without early stopping.

    Its "scored on validation images only" is :func:`rayot.sweep.search.validation_only` of these
    very search trials, the check that refuses a space at load: a plan that could not say it is
    refused instead (ConfigError)."""
    method = C.method_of(cells[0].config).name
    problem = search.validation_only(s, method, [t for c in cells for t in c.trials])
    if problem:
        raise ConfigError(f"{problem}: the search would not be scored on validation images only")
    table = Table(title=f"searches: {len(cells)} (one per cell), {s.algorithm}, {s.sample_count} samples each")
    for col in ("search", "dataset", "protocol", "method", "metric", "samples", "done"):
        table.add_column(col)
    shown_cells = cells if full or len(cells) <= PLAN_ROWS else cells[:PLAN_ROWS]
    for c in shown_cells:
        shown = "; ".join(_values(p) for p in c.samples[:6]) + (" ..." if len(c.samples) > 6 else "")
        if s.rounds > 1:  # the later rounds are drawn once this one's scores are known
            shown = f"first round: {shown}"
        finished = sum(done.get(t) == "done" for t in c.trial_ids())
        table.add_row(c.search_id, c.config.data.dataset, c.config.data.protocol, C.method_of(c.config).name,
                      c.metric, shown, f"{finished}/{len(c.trials)}")
    epochs = C.epochs_trained(cells[0].config)
    full, expected = search.epoch_budget(s, epochs)
    sched = s.scheduler
    held = (f"trained without {s.holdout:.0%} of the base classes (held out as pseudo-novel)"
            if cells[0].config.data.protocol == "base2novel" and s.holdout > 0 else "trained on the few-shot subset")
    lines: list[Any] = [fit(table)]
    if len(shown_cells) < len(cells):
        lines.append(f"... and {len(cells) - len(shown_cells)} more searches (--full lists every one)")
    lines.append(f"search trials: seed {cells[0].config.seed}, {held}, scored on validation images only "
                 f"(the space varies training settings only: {', '.join(s.space)})")
    if search.make_scheduler(s, epochs) is None:
        lines.append(f"epoch budget: {len(cells)} x {full} = {len(cells) * full} epochs (no early stopping)")
    else:
        marks = ", ".join(map(str, search.milestones(s, epochs)))
        lines.append(f"epoch budget: {len(cells) * full} epochs without early stopping; about "
                     f"{len(cells) * expected:.0f} with {sched.type} (rungs after epochs {marks}, each keeping "
                     f"1/{sched.reduction_factor:g}; {expected / full:.0%} of the full budget)")
    seeds = sorted({n for c in cells for n in c.seeds})
    lines.append(f"then: the chosen setting of each search trained and tested for seeds {seeds} "
                 f"({len(cells) * len(seeds)} test trials)")
    return lines
