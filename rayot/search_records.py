"""The searches' records: one Parquet file per hyper-parameter search (a sweep's ``search:``
section, docs/search.md), under ``<results>/searches/<search id>.parquet``, beside the trial rows
of :mod:`rayot.results` (whose readers leave that folder out).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayot.metrics import VALIDATION_SPLIT
from rayot.results import SEARCHES, filesystem, read_results, write_file

log = logging.getLogger(__name__)

#: One row per sample of a search (a sweep's ``search:`` section, docs/search.md): what was tried,
#: how it scored on validation, and which sample the search chose. Written after the search, under
#: ``<results>/searches/<search id>.parquet``.
SEARCH_SCHEMA = pa.schema(
    [
        pa.field("search_id", pa.string(), nullable=False),  # hash of the cell and of the search section
        pa.field("sweep", pa.string()),
        pa.field("method", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("shots", pa.int64(), nullable=False),
        pa.field("cell", pa.string(), nullable=False),  # JSON: the cell's configuration (seed: the search's)
        pa.field("space", pa.string(), nullable=False),  # JSON: the space as the sweep file says it
        pa.field("algorithm", pa.string(), nullable=False),  # random | grid | optuna
        pa.field("scheduler", pa.string(), nullable=False),  # JSON: {"type": "asha", ...} or {"type": "none"}
        pa.field("metric", pa.string(), nullable=False),  # hm | seen | held_out | accuracy
        pa.field("search_seed", pa.int64(), nullable=False),
        pa.field("sample", pa.int64(), nullable=False),  # 0-based, in the order the algorithm drew them
        pa.field("trial_id", pa.string(), nullable=False),  # the sample's search trial
        pa.field("params", pa.string(), nullable=False),  # JSON: {dotted key: value} of the space
        pa.field("status", pa.string(), nullable=False),  # done | failed | missing
        pa.field("score", pa.float64()),  # the metric after the sample's last epoch (percent)
        pa.field("epochs_trained", pa.int64()),
        pa.field("epochs", pa.int64(), nullable=False),  # the schedule's length (what no early stop trains)
        pa.field("stopped_at", pa.int64()),  # the scheduler stopped it after this epoch
        pa.field("chosen", pa.bool_(), nullable=False),
        pa.field("retrain_trial_ids", pa.string(), nullable=False),  # JSON: the chosen setting's test trials
        pa.field("written_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def write_search_record(location: str, search_id: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write a search's record (one row per sample, :data:`SEARCH_SCHEMA`) atomically, replacing
    an earlier one; returns its path."""
    now = _dt.datetime.now(_dt.timezone.utc)
    table = pa.Table.from_pylist([{"written_at": now, **row} for row in rows], schema=SEARCH_SCHEMA)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return write_file(location, f"{SEARCHES}/{search_id}.parquet", buffer.getvalue().to_pybytes())


def read_search_records(locations: Iterable[str]) -> pa.Table:
    """Every search record under the given results locations (``<location>/searches/*.parquet``);
    an unreadable record is logged and left out."""
    tables = []
    for location in locations:
        fs, base = filesystem(location)
        info = fs.get_file_info(base)
        if info.type != pafs.FileType.Directory:
            continue
        folder = f"{base.rstrip('/')}/{SEARCHES}"
        for entry in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if entry.type != pafs.FileType.File or not entry.base_name.endswith(".parquet"):
                continue
            try:
                tables.append(pq.read_table(entry.path, filesystem=fs).select(SEARCH_SCHEMA.names).cast(SEARCH_SCHEMA))
            except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
                log.warning("search record %s: not readable (%s); left out", entry.path, exc)
    if not tables:
        return SEARCH_SCHEMA.empty_table()
    return pa.concat_tables(tables)


# ----------------------------------------------------------------------------- search samples tested


def _values(table: Any, name: str) -> list[Any]:
    """A column of a pyarrow table or a pandas frame as a list."""
    column = table[name]
    return column.to_pylist() if hasattr(column, "to_pylist") else column.tolist()


def search_samples_with_test_rows(rows: Any, records: Any) -> dict[str, str]:
    """Trials that a search record lists as samples but whose finished rows are test evaluations
    (split ``base``, ``novel`` or ``all``): trial id -> ``sample N of search S (sweep W)``.

    A search trial is scored on validation splits only. Before a search space was limited to
    training keys, a space could switch ``validation`` off: its samples then read the test images
    and wrote test rows, with the id and rows of an ordinary trial of the same settings; the search
    record that lists them is what tells them apart. Such rows are no result of the sweep's plan
    (test numbers of settings a search drew), so the report leaves them out and the sweep's dry run
    names them. A trial that a record also lists as a retrain trial (a chosen setting's test trial)
    is not one of them. ``rows``: result rows (:data:`rayot.results.SCHEMA`), ``records``: search records
    (:data:`SEARCH_SCHEMA`), either as pyarrow tables or pandas frames.
    """
    if len(records) == 0 or len(rows) == 0:
        return {}
    retrain: set[str] = set()
    for text in set(_values(records, "retrain_trial_ids")):
        try:
            retrain.update(json.loads(text or "[]"))
        except (json.JSONDecodeError, TypeError):
            continue  # a malformed record names no retrain trial
    sample_of = {}
    for tid, sample, search_id, sweep in zip(_values(records, "trial_id"), _values(records, "sample"),
                                             _values(records, "search_id"), _values(records, "sweep"), strict=True):
        sample_of.setdefault(tid, f"sample {sample} of search {search_id}" + (f" (sweep {sweep})" if sweep else ""))
    tested = {tid for tid, status, split in zip(_values(rows, "trial_id"), _values(rows, "status"),
                                                _values(rows, "split"), strict=True)
              if status == "done" and split and split not in VALIDATION_SPLIT.values()}
    return {tid: sample_of[tid] for tid in sorted(tested & set(sample_of)) if tid not in retrain}


def tested_search_samples(location: str, statuses: Mapping[str, str]) -> dict[str, str]:
    """:func:`search_samples_with_test_rows` under one results location, reading the search records
    and the result files of their samples only: result file path -> which sample wrote it.
    ``statuses``: the location's trials with a readable result file (:func:`rayot.results.scan_results`)."""
    records = read_search_records([location])
    sampled = sorted(set(_values(records, "trial_id")) & set(statuses))
    if not sampled:
        return {}
    paths = {tid: f"{location.rstrip('/')}/{tid}.parquet" for tid in sampled}
    rows = read_results(paths.values(), skip_unreadable=True)
    return {paths[tid]: what for tid, what in search_samples_with_test_rows(rows, records).items()}
