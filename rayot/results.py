"""The results schema and its storage: one Parquet file per trial, written atomically.

This module is the single place where the schema of a result row is defined. `rayot train`
and `rayot sweep` write rows with :func:`write_trial_rows`; `rayot report` reads them back with
:func:`read_results`. Nothing is ever parsed from logs.

One row per (trial, evaluation): a base-to-novel trial writes a ``base`` and a ``novel`` row;
a cross-dataset or domain-generalization trial writes one ``all`` row per target dataset. A
trial that failed writes one row with ``status="failed"``, its error message, and no accuracy,
so that a sweep's summary can list it and a re-run retries it.

Storage: ``<results>/<trial_id>.parquet``, where ``<results>`` is a local path, a ``file://``
URI, or an ``s3://`` / ``gs://`` URI (any filesystem pyarrow knows). A file is first written
under a temporary name and then renamed, so a crash never leaves a half-written result and a
re-run replaces a trial's file instead of adding rows.
"""

from __future__ import annotations

import datetime as _dt
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayot import __version__
from rayot.errors import RayotError

log = logging.getLogger(__name__)

#: The schema of a result row, with the meaning of each column.
SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),  # stable hash of the resolved config
        pa.field("status", pa.string(), nullable=False),  # "done" | "failed"
        pa.field("method", pa.string(), nullable=False),  # zeroshot | coop | ivlp | prompt_ot | ...
        pa.field("protocol", pa.string(), nullable=False),  # base2novel | cross_dataset | ...
        pa.field("dataset", pa.string(), nullable=False),  # the dataset trained on
        pa.field("eval_dataset", pa.string(), nullable=False),  # the dataset evaluated
        pa.field("split", pa.string(), nullable=False),  # base | novel | all ("" when failed)
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("shots", pa.int64(), nullable=False),
        pa.field("backbone", pa.string(), nullable=False),  # open_clip model name
        pa.field("pretrained", pa.string(), nullable=False),  # tag or checkpoint path
        pa.field("accuracy", pa.float64()),  # percent, top-1 per sample, full precision
        pa.field("n_correct", pa.int64()),
        pa.field("n_test", pa.int64()),
        pa.field("n_classes", pa.int64()),
        pa.field("lambda_ot", pa.float64(), nullable=False),
        pa.field("regularizer", pa.string(), nullable=False),  # ot | pointwise | none
        pa.field("modality", pa.string(), nullable=False),  # joint | vision | text
        pa.field("solver", pa.string(), nullable=False),  # emd | sinkhorn | unbalanced
        pa.field("epsilon", pa.float64(), nullable=False),
        pa.field("epochs", pa.int64(), nullable=False),
        pa.field("sweep", pa.string()),  # name of the sweep that ran it, if any
        pa.field("config", pa.string(), nullable=False),  # the resolved configuration as JSON
        pa.field("train_seconds", pa.float64()),
        pa.field("error", pa.string()),  # the error message of a failed trial
        pa.field("rayot_version", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
_DEFAULTS: dict[str, Any] = {
    "rayot_version": __version__,
    "sweep": None,
    "error": None,
    "accuracy": None,
    "n_correct": None,
    "n_test": None,
    "n_classes": None,
    "train_seconds": None,
}


def make_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Check rows against :data:`SCHEMA` and build a table; a missing or unknown column is an error."""
    now = _dt.datetime.now(_dt.timezone.utc)
    full = []
    for i, row in enumerate(rows):
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"result row {i}: unknown columns {sorted(unknown)}")
        rec = {**_DEFAULTS, "finished_at": now, **row}
        missing = [c for c in COLUMNS if c not in rec]
        if missing:
            raise ValueError(f"result row {i}: missing columns {missing}")
        full.append(rec)
    return pa.Table.from_pylist(full, schema=SCHEMA)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, ValueError):
        # a plain relative path
        import os

        return pafs.LocalFileSystem(), os.path.abspath(location)
    except OSError as exc:  # unreachable bucket, missing credentials
        raise RayotError(f"results location {location!r}: {exc}") from exc


def trial_path(location: str, trial_id: str) -> tuple[pafs.FileSystem, str]:
    fs, base = filesystem(location)
    return fs, f"{base.rstrip('/')}/{trial_id}.parquet"


def write_file(location: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``<location>/<name>`` atomically (temporary name, then rename)."""
    fs, base = filesystem(location)
    path = f"{base.rstrip('/')}/{name}"
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)
    return path


def write_trial_rows(location: str, trial_id: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write one trial's rows atomically (temporary name, then rename); returns the final path."""
    table = make_table(rows)
    if any(r != trial_id for r in table.column("trial_id").to_pylist()):
        raise ValueError(f"rows of trial {trial_id} carry another trial_id")
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    path = write_file(location, f"{trial_id}.parquet", buffer.getvalue().to_pybytes())
    log.debug("wrote %d result rows to %s", table.num_rows, path)
    return path


def _status(fs: pafs.FileSystem, path: str) -> str:
    """A trial is done only when every row of its file says so."""
    statuses = set(pq.read_table(path, columns=["status"], filesystem=fs).column(0).to_pylist())
    return "done" if statuses == {"done"} else "failed"


def trial_status(location: str, trial_id: str) -> str | None:
    """``"done"``, ``"failed"`` or ``None`` (no result file) for one trial."""
    fs, path = trial_path(location, trial_id)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return _status(fs, path)


def trial_error(location: str, trial_id: str) -> str | None:
    """The recorded error of a failed trial, if its result file holds one."""
    fs, path = trial_path(location, trial_id)
    errors = pq.read_table(path, columns=["error"], filesystem=fs).column(0).to_pylist()
    return next((e for e in errors if e), None)


def finished_trials(location: str) -> dict[str, str]:
    """Map every trial id with a result file under ``location`` to its status."""
    fs, base = filesystem(location)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return {}
    out: dict[str, str] = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=False)):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".parquet") and not name.startswith("."):
            out[name[: -len(".parquet")]] = _status(fs, info.path)
    return out


def read_results(locations: Iterable[str]) -> pa.Table:
    """Read every trial file under the given locations into one table of :data:`SCHEMA`."""
    tables = []
    for location in locations:
        fs, base = filesystem(location)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise RayotError(f"results location {location!r} does not exist")
        if info.type == pafs.FileType.File:
            paths = [base]
        else:
            paths = sorted(
                i.path
                for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                if i.type == pafs.FileType.File
                and i.base_name.endswith(".parquet")
                and not i.base_name.startswith(".")
            )
        for path in paths:
            try:
                table = pq.read_table(path, filesystem=fs)
            except (pa.ArrowInvalid, OSError) as exc:
                raise RayotError(f"results file {path}: not a readable Parquet file ({exc})") from exc
            missing = [c for c in COLUMNS if c not in table.column_names]
            if missing:
                raise RayotError(f"results file {path}: missing columns {missing}")
            tables.append(table.select(list(COLUMNS)).cast(SCHEMA))
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)
