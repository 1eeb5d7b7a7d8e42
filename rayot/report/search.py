"""Hyper-parameter searches in the report: what each search tried and chose, and the row of the
setting it chose beside the method's own rows.

A sweep's search (docs/search.md) scores samples of a space on validation, chooses one per cell
(dataset × protocol × method) and retrains the chosen setting for every seed as ordinary test
trials. Its record (:data:`rayot.search_records.SEARCH_SCHEMA`, one row per sample) is what this module
reads; the search trials' own result rows are validation scores and never enter a table of test
results (:func:`rayot.report.frame.search_trial_ids`). The rows a search contributes to the
base-to-novel tables are the test results of its retrain trials, seed-averaged like every row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from rayot.errors import RayotError
from rayot.report.aggregate import B2NCell, b2n_average, one_per_seed, seed_stats
from rayot.report.frame import (
    _MISSING,
    SearchedVariant,
    _determined,
    _ignored,
    _parse_method_spec,
    _plain,
    flatten,
)
from rayot.report.model import Cell, Column, ReportTable, Row
from rayot.report.names import (
    MethodFacts,
    dataset_name,
    format_value,
    method_facts,
    setting_label,
    sort_datasets,
    variant_label,
)
from rayot.report.tables import B2N, SECTIONS, B2NResults, b2n_rows
from rayot.search_records import SEARCH_SCHEMA

log = logging.getLogger(__name__)

#: How the search table names a search's metric (unknown ones as spelled).
METRIC_NAMES: dict[str, str] = {
    "hm": "HM (seen, held-out)",
    "seen": "seen classes",
    "held_out": "held-out classes",
    "accuracy": "accuracy",
}
#: How a figure's axis names a search's metric (unknown ones as spelled).
METRIC_AXES: dict[str, str] = {
    "hm": "HM",
    "seen": "seen-class accuracy",
    "held_out": "held-out-class accuracy",
    "accuracy": "accuracy",
}
#: Fields of the search section that can tell two searches of the same cell apart.
_SEARCH_FIELDS: tuple[str, ...] = ("algorithm", "metric", "scheduler", "search_seed")
_DATASET = "\0dataset"  # a column name no configuration key can take


@dataclass(frozen=True)
class Sample:
    """One sample of a search: its values of the searched keys and how it scored on validation."""

    sample: int
    trial_id: str
    params: Mapping[str, object]
    status: str  # done | failed | missing
    score: float | None  # percent, after the sample's last epoch
    epochs_trained: int | None
    epochs: int  # the schedule's length
    stopped_at: int | None  # the scheduler stopped it after this epoch
    chosen: bool

    @property
    def finished(self) -> bool:
        return self.status == "done" and self.score is not None


@dataclass(frozen=True, eq=False)
class Search:
    """One search's record: its cell, its section (space, algorithm, scheduler, metric), its samples
    and the test trials that retrained the chosen setting (one per seed)."""

    search_id: str
    sweep: str | None
    method: str
    dataset: str
    protocol: str
    shots: int
    cell: Mapping[str, object]  # the cell's configuration, flattened to dotted keys
    space: Mapping[str, object]
    algorithm: str
    scheduler: Mapping[str, object]
    metric: str
    search_seed: int
    samples: tuple[Sample, ...]
    retrain: tuple[str, ...]
    written_at: pd.Timestamp

    @property
    def keys(self) -> tuple[str, ...]:
        """The searched (dotted) configuration keys, sorted."""
        found = set(self.space)
        for s in self.samples:
            found.update(s.params)
        return tuple(sorted(found))

    @property
    def chosen(self) -> Sample | None:
        return next((s for s in self.samples if s.chosen), None)

    @property
    def finished(self) -> list[Sample]:
        return [s for s in self.samples if s.finished]

    @property
    def epochs_trained(self) -> int:
        """Epochs trained by every sample together."""
        return sum(s.epochs_trained or 0 for s in self.samples)

    @property
    def epochs_budget(self) -> int:
        """What training every sample to the end of its schedule would have taken."""
        return sum(s.epochs for s in self.samples)

    @property
    def epochs_saved(self) -> int:
        """The epochs the scheduler saved: those of the stopped samples' schedules not trained."""
        return sum(max(0, s.epochs - (s.epochs_trained or 0)) for s in self.samples if s.stopped_at is not None)

    def is_log(self, key: str) -> bool:
        """Whether the space samples ``key`` on a log scale (``loguniform``, ``qloguniform``, ...)."""
        spec = self.space.get(key)
        return spec is not None and "log" in json.dumps(spec, default=str).lower()


def _json(text: object, default: object, what: str) -> object:
    if not isinstance(text, str) or not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        log.warning("a search record's %s is not JSON; read as %r", what, default)
        return default


def _int(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)  # type: ignore[arg-type]


def _float(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]


def read_searches(table: pa.Table | pd.DataFrame) -> list[Search]:
    """Search records (:data:`rayot.search_records.SEARCH_SCHEMA`, e.g. from ``read_search_records``) as
    one :class:`Search` each; a sample recorded twice (a location read twice, a record rewritten)
    counts once, the latest."""
    df = table.to_pandas() if isinstance(table, pa.Table) else table.copy()
    missing = [c for c in SEARCH_SCHEMA.names if c not in df.columns]
    if missing:
        raise RayotError(f"search records: missing columns {missing}")
    if df.empty:
        return []
    df = df.sort_values("written_at", kind="stable").drop_duplicates(["search_id", "sample"], keep="last")
    searches = []
    for search_id, rows in df.groupby("search_id", sort=True):
        rows = rows.sort_values("sample")
        head = rows.iloc[int(rows["written_at"].to_numpy().argmax())]
        samples = []
        for r in rows.itertuples(index=False):
            params = _json(r.params, {}, "params")
            samples.append(
                Sample(
                    sample=int(r.sample),
                    trial_id=str(r.trial_id),
                    params=params if isinstance(params, dict) else {},
                    status=str(r.status),
                    score=_float(r.score),
                    epochs_trained=_int(r.epochs_trained),
                    epochs=int(r.epochs),
                    stopped_at=_int(r.stopped_at),
                    chosen=bool(r.chosen),
                )
            )
        chosen = [s for s in samples if s.chosen]
        if len(chosen) > 1:  # a malformed record: keep the best-scoring as the choice
            keep = max(chosen, key=lambda s: -1.0 if s.score is None else s.score)
            log.warning("search %s: %d samples are marked chosen; keeping sample %d, the best scored",
                        search_id, len(chosen), keep.sample)
            samples = [s if s is keep or not s.chosen else _unchosen(s) for s in samples]
        cell = _json(head["cell"], {}, "cell")
        space = _json(head["space"], {}, "space")
        scheduler = _json(head["scheduler"], {"type": "none"}, "scheduler")
        if isinstance(scheduler, str):
            scheduler = {"type": scheduler}
        retrain = _json(head["retrain_trial_ids"], [], "retrain_trial_ids")
        searches.append(
            Search(
                search_id=str(search_id),
                sweep=None if pd.isna(head["sweep"]) else str(head["sweep"]),
                method=str(head["method"]),
                dataset=str(head["dataset"]),
                protocol=str(head["protocol"]),
                shots=int(head["shots"]),
                cell=flatten(cell) if isinstance(cell, dict) else {},
                space=space if isinstance(space, dict) else {},
                algorithm=str(head["algorithm"]),
                scheduler=scheduler if isinstance(scheduler, dict) else {"type": "none"},
                metric=str(head["metric"]),
                search_seed=int(head["search_seed"]),
                samples=tuple(samples),
                retrain=tuple(str(t) for t in retrain) if isinstance(retrain, list) else (),
                written_at=pd.Timestamp(rows["written_at"].max()),
            )
        )
    return searches


def _unchosen(s: Sample) -> Sample:
    return Sample(s.sample, s.trial_id, s.params, s.status, s.score, s.epochs_trained, s.epochs,
                  s.stopped_at, False)


def select_searches(
    searches: Sequence[Search],
    *,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> list[Search]:
    """The searches of the methods and datasets kept (:func:`rayot.report.frame.select`'s filters).

    A method spec that fixes settings (``name:key=value``) picks the method's variants of those
    settings; a searched row chooses its settings per dataset, so it is kept only by a spec that
    names the method alone.
    """
    out = list(searches)
    if methods:
        plain, fixed = set(), set()
        for spec in methods:
            method, conditions = _parse_method_spec(spec)
            (fixed if conditions else plain).add(method)
        for method in sorted({s.method for s in out if s.method not in plain} & fixed):
            log.info("--methods fixes settings of %s: its searches are left out", method)
        out = [s for s in out if s.method in plain]
    if datasets:
        wanted = set(datasets)
        out = [s for s in out if s.dataset in wanted]
    return out


def _searched(column: str, keys: Iterable[str]) -> bool:
    """Whether a cell's configuration key is one of the searched ones (by path or last name)."""
    keys = list(keys)
    return column in keys or column.rsplit(".", 1)[-1] in {k.rsplit(".", 1)[-1] for k in keys}


def _distinguishing(group: Sequence[Search]) -> list[str]:
    """What tells apart searches of one method and keys beyond their dataset: the cell's settings
    and the search section's fields that take several values on one dataset (fewest first)."""
    keys = group[0].keys
    records = []
    for s in group:
        fields = {"algorithm": s.algorithm, "metric": s.metric, "search_seed": s.search_seed,
                  "scheduler": str(s.scheduler.get("type", "none")), "shots": s.shots}
        records.append({**s.cell, **fields, _DATASET: s.dataset})
    frame = pd.DataFrame.from_records(records)
    frame = frame.astype(object).where(frame.notna(), _MISSING)
    candidates = [
        c
        for c in frame.columns
        if c != _DATASET
        and not _ignored(c)
        and not _searched(c, keys)
        and frame[c].nunique(dropna=False) > 1
        and not _determined(frame, [_DATASET], c)
    ]
    candidates.sort(key=lambda k: (k not in _SEARCH_FIELDS, frame[k].nunique(dropna=False), k.count("."), k))
    kept: list[str] = []
    for key in candidates:
        if not _determined(frame, [_DATASET, *kept], key):
            kept.append(key)
    return kept


def _value(s: Search, key: str) -> object:
    fields = {"algorithm": s.algorithm, "metric": s.metric, "search_seed": s.search_seed,
              "scheduler": str(s.scheduler.get("type", "none")), "shots": s.shots}
    value = fields[key] if key in fields else s.cell.get(key)
    return _plain(value) if value is not None else None


def group_searches(searches: Sequence[Search],
                   described: Mapping[str, MethodFacts]) -> dict[SearchedVariant, list[Search]]:
    """The searched rows: the searches of one method, protocol and searched keys (and whatever else
    tells them apart), one per dataset (the latest written when a cell was searched twice), in the
    report's method order. ``described``: the methods as result rows describe them
    (:func:`rayot.report.names.describe_methods`)."""
    by_base: dict[tuple, list[Search]] = {}
    for s in searches:
        by_base.setdefault((s.method, s.protocol, s.keys), []).append(s)
    groups: dict[SearchedVariant, list[Search]] = {}
    for (method, protocol, keys), group in by_base.items():
        others = _distinguishing(group)
        for s in group:
            sv = SearchedVariant(method, protocol, keys, tuple((k, _value(s, k)) for k in others),
                                 about=method_facts(method, described))
            groups.setdefault(sv, []).append(s)
    out: dict[SearchedVariant, list[Search]] = {}
    for sv in sorted(groups, key=lambda v: (*v.about.rank, v.protocol, v.label)):
        latest: dict[str, Search] = {}
        for s in sorted(groups[sv], key=lambda s: s.written_at):
            if s.dataset in latest:
                log.warning("%s on %s: searched twice (%s, %s); the report uses the later record",
                            sv.label, s.dataset, latest[s.dataset].search_id, s.search_id)
            latest[s.dataset] = s
        out[sv] = [latest[d] for d in sort_datasets(latest)]
    return out


def chosen_text(s: Search) -> str | None:
    """``"λ=3.7"``: the chosen sample's values of the searched keys; None when nothing was chosen."""
    chosen = s.chosen
    if chosen is None:
        return None
    return ", ".join(f"{setting_label(k)}={format_value(chosen.params.get(k))}" for k in s.keys)


# ------------------------------------------------------------------------- base-to-novel rows


def add_to_b2n(res: B2NResults, done: pd.DataFrame, groups: Mapping[SearchedVariant, Sequence[Search]]) -> None:
    """Add a searched row per base-to-novel group to ``res``: per dataset, the seed means of the test
    results of the trials that retrained the setting its search chose, and its Average over the
    table's datasets; a note says what is missing (no search, nothing chosen, retrain trials without
    results)."""
    rows = b2n_rows(done)
    for sv, group in groups.items():
        if sv.protocol != B2N:
            continue
        cells: dict[str, B2NCell] = {}
        notes: list[str] = []
        chosen: dict[str, str] = {}
        for s in group:
            text = chosen_text(s)
            if text is None:
                notes.append(f"{sv.label}: its search on {dataset_name(s.dataset)} chose nothing "
                             f"(no sample of {len(s.samples)} finished).")
                continue
            chosen[s.dataset] = text
            if not s.retrain:
                notes.append(f"{sv.label}: its search on {dataset_name(s.dataset)} chose {text} but "
                             "records no retrain trial.")
                continue
            mine = rows[rows["trial_id"].isin(set(s.retrain)) & (rows["eval_dataset"] == s.dataset)]
            tested = set(mine["trial_id"])
            untested = [t for t in s.retrain if t not in tested]
            if untested:
                notes.append(
                    f"{sv.label}: on {dataset_name(s.dataset)}, {len(untested)} of the {len(s.retrain)} "
                    f"trials that retrain {text} have no test results yet ({', '.join(untested)})."
                )
            if mine.empty:
                continue
            mine, _ = one_per_seed(mine, ["eval_dataset", "split"], B2N)
            stats = seed_stats(mine, ["split"])
            cells[s.dataset] = B2NCell(stats.get(("base",)), stats.get(("novel",)))
        unsearched = [d for d in res.datasets if d not in {s.dataset for s in group}]
        if unsearched:
            notes.append(f"{sv.label}: no search on {', '.join(map(dataset_name, unsearched))}.")
        res.searched.append(sv)
        res.cells[sv] = cells
        res.averages[sv] = b2n_average(cells, res.datasets)
        res.notes[sv] = notes
        res.chosen[sv] = chosen
        res.expected = max([res.expected, *(c.n for c in cells.values())])


# ------------------------------------------------------------------------------ search table


def _scheduler_text(scheduler: Mapping[str, object]) -> str:
    kind = str(scheduler.get("type", "none"))
    rest = [f"{k}={format_value(v)}" for k, v in scheduler.items() if k != "type"]
    return f"{kind} ({', '.join(rest)})" if rest and kind != "none" else kind


def search_table(groups: Mapping[SearchedVariant, Sequence[Search]], tested: set[str]) -> ReportTable:
    """One row per search: its cell, what it searched and chose, the chosen sample's validation
    score, how many samples finished, the epochs they trained against samples × epochs (what early
    stopping saved), its algorithm and scheduler, and how many retrain trials have test results
    (``tested``: the trial ids with finished test rows)."""
    n = sum(len(g) for g in groups.values())
    table = ReportTable(
        key="searches",
        section=SECTIONS["searches"],
        title=f"Hyper-parameter search{'es' if n != 1 else ''}: the setting chosen on validation",
        row_header="Dataset",
        columns=[
            Column("method", "Method"),
            Column("protocol", "Protocol"),
            Column("searched", "Searched"),
            Column("chosen", "Chosen"),
            Column("score", "Validation score"),
            Column("metric", "Metric"),
            Column("samples", "Samples finished"),
            Column("epochs", "Epochs trained"),
            Column("algorithm", "Algorithm"),
            Column("scheduler", "Scheduler"),
            Column("retrain", "Retrain trials tested"),
        ],
    )
    for i, (sv, group) in enumerate(groups.items()):
        for j, s in enumerate(group):
            chosen = s.chosen
            finished = s.finished
            stopped = sum(1 for x in finished if x.stopped_at is not None)
            samples = f"{len(finished)}/{len(s.samples)}" + (f", {stopped} stopped early" if stopped else "")
            budget, saved = s.epochs_budget, s.epochs_saved
            epochs = f"{s.epochs_trained}/{budget}"
            if budget and saved:
                epochs += f" ({round(100 * saved / budget)}% saved by early stopping)"
            retrain = (
                f"{len(tested & set(s.retrain))}/{len(s.retrain)}" if s.retrain else None
            )
            text = chosen_text(s)
            cells = [
                Cell(text=variant_label(sv.about, sv.settings)),
                Cell(text=s.protocol),
                Cell(text=", ".join(s.keys)),
                Cell(text=text) if text is not None else Cell(),
                Cell(chosen.score, comparable=False) if chosen is not None and chosen.score is not None else Cell(),
                Cell(text=METRIC_NAMES.get(s.metric, s.metric)),
                Cell(text=samples),
                Cell(text=epochs),
                Cell(text=s.algorithm),
                Cell(text=_scheduler_text(s.scheduler)),
                Cell(text=retrain) if retrain is not None else Cell(),
            ]
            meta = {"search_id": s.search_id, "variant": sv.label, "method": s.method,
                    "dataset": s.dataset, "protocol": s.protocol}
            table.rows.append(Row(dataset_name(s.dataset), cells, meta, rule_before=i > 0 and j == 0))
    table.notes += [
        "Validation score: the search's metric on the few-shot validation subset (never a test image "
        "or a novel class), of the chosen sample after its last epoch trained. Samples finished: of "
        "those drawn (a sample stopped early by the scheduler is finished, scored when it stopped).",
        "Epochs trained: by every sample together, against samples × epochs (what training every "
        "sample to the end would take); of the difference, the share the scheduler saved by stopping "
        "samples early (the rest: samples that failed).",
        "Retrain trials tested: of the trials that retrained the chosen setting on the full training "
        "subset (one per seed), those with test results; their seed means are the rows '… chosen on "
        "validation' of the base-to-novel tables. The search trials' own rows (validation scores) "
        "are in no other table.",
    ]
    return table
