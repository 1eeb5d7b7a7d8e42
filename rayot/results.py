"""The results schema and its storage: one Parquet file per trial, written atomically.

This module is the single place where the schema of a result row is defined. `rayot train`
and `rayot sweep` build a trial's rows (:mod:`rayot.train.rows`) and write them with
:func:`write_trial_rows`; `rayot report` reads them back with :func:`read_results`. Nothing is
ever parsed from logs. The searches' records live beside the rows (:mod:`rayot.search_records`).

One row per (trial, evaluation): a base-to-novel trial writes a ``base`` and a ``novel`` row;
a cross-dataset or domain-generalization trial writes one ``all`` row per target dataset. A
trial that failed writes one row with ``status="failed"``, its error message, and no accuracy,
so that a sweep's summary can list it and a re-run retries it.

Storage: ``<results>/<trial_id>.parquet``, where ``<results>`` is a local path, a ``file://``
URI, or an ``s3://`` / ``gs://`` URI (any filesystem pyarrow knows). A file is first written
under a temporary name and then renamed, so a crash never leaves a half-written result and a
re-run replaces a trial's file instead of adding rows; on a local filesystem the file and its
folder are fsync'ed, so a result that was reported written survives a power loss.
:func:`clean_temporary_files` removes what a crashed writer left behind.

A result file that cannot be read (empty, truncated, foreign) never stops a sweep:
:func:`finished_trials` and :func:`trial_status` log it and count its trial as not done, and
:func:`unreadable_results` lists such files. A ``done`` result is never replaced by a failure
(:func:`write_failure_rows`). :func:`check_writable` probes a location before a sweep starts.
Per-trial leases (:mod:`rayot.sweep.leases`) live in the dot-folder ``<results>/.leases``, which the
readers here ignore.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayot import __version__, storage
from rayot.errors import RayotError

log = logging.getLogger(__name__)

#: The schema of a result row, with the meaning of each column.
SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),  # stable hash of the resolved config
        pa.field("status", pa.string(), nullable=False),  # "done" | "failed"
        pa.field("method", pa.string(), nullable=False),  # the method's name (rayot methods lists them)
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
        # the transport regulariser's settings as the trial id holds them (SETTING_ID_KEYS); null
        # for a method whose id holds none of them
        pa.field("lambda_ot", pa.float64()),
        pa.field("regularizer", pa.string()),  # the pairing of the transport regulariser
        pa.field("modality", pa.string()),  # joint | vision | text
        pa.field("solver", pa.string()),  # emd | sinkhorn | unbalanced
        pa.field("epsilon", pa.float64()),
        pa.field("epochs", pa.int64(), nullable=False),
        pa.field("sweep", pa.string()),  # name of the sweep that ran it, if any
        pa.field("config", pa.string(), nullable=False),  # the resolved configuration as JSON
        pa.field("train_seconds", pa.float64()),
        pa.field("error", pa.string()),  # the error message of a failed trial
        pa.field("rayot_version", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # JSON: every trained epoch's metrics, [{"epoch", "loss", "ce", "reg", "lr", "diag/<name>", ...}]
        # (the method's diagnostics, such as a transport plan's off-diagonal mass); added in 0.2
        pa.field("epoch_metrics", pa.string()),
        # a search trial that the search's scheduler stopped early: the epoch it stopped after
        # (its rows are its scores then); null for every other trial. Added in 0.3
        pa.field("stopped_at", pa.int64()),
        # what the report shows of the method, recorded at training time so that a report renders
        # without the method (or torch) installed: its display name, the fixed label after it
        # (e.g. "zero-shot"), where it sorts (its order) and whether it trains. Added in 0.4; null
        # in earlier files (the report then knows the built-ins of that time: rayot.report.names)
        pa.field("method_display", pa.string()),
        pa.field("method_label", pa.string()),
        pa.field("method_order", pa.int64()),
        pa.field("method_trains", pa.bool_()),
    ]
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
#: Columns added after the first files were written: a file without them reads them as null.
OPTIONAL_COLUMNS: tuple[str, ...] = ("epoch_metrics", "stopped_at", "method_display", "method_label",
                                     "method_order", "method_trains")
_REQUIRED = tuple(c for c in COLUMNS if c not in OPTIONAL_COLUMNS)
#: Result columns filled from the trial id's view of the method's settings (rayot.config.id_fields).
SETTING_ID_KEYS: dict[str, str] = {"lambda_ot": "loss.lambda_ot", "regularizer": "loss.regularizer",
                                   "modality": "loss.modality", "solver": "loss.solver", "epsilon": "loss.epsilon"}
_DEFAULTS: dict[str, Any] = {
    "rayot_version": __version__,
    "sweep": None,
    "error": None,
    "accuracy": None,
    "n_correct": None,
    "n_test": None,
    "n_classes": None,
    "train_seconds": None,
    "epoch_metrics": None,
    "stopped_at": None,
    "method_display": None,
    "method_label": None,
    "method_order": None,
    "method_trains": None,
    **dict.fromkeys(SETTING_ID_KEYS),
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


def filesystem(location: str, what: str = "results") -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a location and the path inside it (absolute for a local path);
    see :func:`rayot.storage.filesystem` for object stores' endpoints."""
    return storage.filesystem(location, what)


def is_local(fs: pafs.FileSystem) -> bool:
    """Whether paths of ``fs`` are paths of this machine (a local path or a ``file://`` URI)."""
    return isinstance(fs, pafs.LocalFileSystem)


def trial_path(location: str, trial_id: str) -> tuple[pafs.FileSystem, str]:
    fs, base = filesystem(location)
    return fs, f"{base.rstrip('/')}/{trial_id}.parquet"


#: The folder under a results location that holds the searches' records (:mod:`rayot.search_records`),
#: not trial rows: the readers here leave it out.
SEARCHES = "searches"

#: The name of a temporary file of :func:`write_file` (``.<32 hex digits>.tmp``).
_TEMPORARY = re.compile(r"^\.[0-9a-f]{32}\.tmp$")


def _temporary_name(parent: str) -> str:
    return f"{parent}/.{uuid.uuid4().hex}.tmp"


def fsync_dir(path: str) -> None:
    """Make a rename or a removal in the local folder ``path`` durable (where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows, where a folder cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a folder
        log.debug("fsync of folder %s: %s", path, exc)
    finally:
        os.close(fd)


def write_local_file(path: str, data: bytes) -> None:
    """Write ``data`` to the local file ``path`` atomically and durably.

    The bytes go to a temporary file in the same folder (flushed and fsync'ed), which is then
    renamed onto ``path`` with ``os.replace`` and the folder fsync'ed: after a crash, ``path`` holds
    either its old content or ``data``, never a part. On any error the temporary file is removed.
    """
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = _temporary_name(parent)
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def write_file(location: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``<location>/<name>`` atomically (temporary name, then rename).

    Local paths and ``file://`` URIs: see :func:`write_local_file` (fsync, ``os.replace``, fsync of
    the folder). Object stores: a pyarrow output stream to a temporary name, then a move. Either
    way the temporary file is removed when the write fails; returns the final path.
    """
    fs, base = filesystem(location)
    path = f"{base.rstrip('/')}/{name}"
    if is_local(fs):
        write_local_file(path, data)
        return path
    parent = path.rsplit("/", 1)[0]

    def write() -> None:
        fs.create_dir(parent, recursive=True)
        tmp = _temporary_name(parent)
        try:
            with fs.open_output_stream(tmp) as out:
                out.write(data)
            fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_file(tmp)
            raise

    storage.retrying(write, location=location, what=f"writing {name} to the")
    return path


def clean_temporary_files(
    location: str,
    older_than_s: float = 600.0,
    *,
    subfolders: Sequence[str] = ("logs", ".leases"),
    now: float | None = None,
) -> list[str]:
    """Remove the temporary files a crashed writer left behind; returns the removed paths.

    Looks directly under ``location`` and under each of its ``subfolders`` (not deeper) for files
    named like :func:`write_file`'s temporaries (``.<32 hex digits>.tmp``) last modified more than
    ``older_than_s`` seconds before ``now`` (default: the current time). Younger ones may belong to
    a write in progress and are kept, as are files whose age the filesystem does not report.
    Call it at the start of a sweep, for the results and the checkpoint locations.
    """
    fs, base = filesystem(location)
    base = base.rstrip("/")
    now = time.time() if now is None else now
    removed: list[str] = []
    for folder in (base, *(f"{base}/{s.strip('/')}" for s in subfolders)):
        try:
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError as exc:
            log.warning("cannot list %s for temporary files: %s", folder, exc)
            continue
        for info in infos:
            if info.type != pafs.FileType.File or not _TEMPORARY.match(info.base_name):
                continue
            if info.mtime is None or now - info.mtime.timestamp() <= older_than_s:
                continue
            try:
                fs.delete_file(info.path)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:
                log.warning("cannot remove the leftover temporary file %s: %s", info.path, exc)
                continue
            log.info("removed the leftover temporary file %s (%.0f s old)", info.path,
                     now - info.mtime.timestamp())
            removed.append(info.path)
    return removed


def check_writable(location: str, what: str, *, timeout_s: float = 5.0) -> None:
    """Raise one :class:`RayotError` unless a small file can be written under ``location``.

    Creates the folder if needed, writes a probe file ``.rayot-probe-<hex>`` and deletes it. A
    local folder that cannot be created or written (``/proc/x``, read-only, a path under a file)
    fails at once; an object store that does not answer within ``timeout_s`` seconds (an
    unreachable endpoint, missing credentials that send the client to retry) fails then, naming
    ``what`` (e.g. ``"results"``, ``"checkpoint"``), the location and the problem. Call it before
    any training starts.
    """
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            fs, base = filesystem(location, what)
            base = base.rstrip("/")
            name = f"{base}/.rayot-probe-{uuid.uuid4().hex}"
            if is_local(fs):
                os.makedirs(base, exist_ok=True)
                with open(name, "wb") as out:
                    out.write(b"rayot\n")
                os.unlink(name)
            else:
                fs.create_dir(base, recursive=True)
                with fs.open_output_stream(name) as out:
                    out.write(b"rayot\n")
                fs.delete_file(name)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=probe, name=f"rayot-probe-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise RayotError(
            f"{what} location {location!r}: no answer within {timeout_s:g} s "
            "(unreachable storage or missing credentials?)"
        )
    exc = outcome[0]
    if exc is None:
        return
    if isinstance(exc, RayotError):
        raise exc
    if isinstance(exc, OSError):
        problem = str(exc)
        if isinstance(exc, FileExistsError):  # os.makedirs of a path that holds a file
            problem = f"it is a file, not a folder ({exc.filename})"
        elif exc.strerror:
            problem = exc.strerror + (f" ({exc.filename})" if exc.filename else "")
        raise RayotError(f"{what} location {location!r} is not writable: {problem}") from exc
    raise exc


def write_trial_rows(location: str, trial_id: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write one trial's rows atomically (temporary name, then rename); returns the final path.

    This replaces any earlier file of the trial; use it for a trial's ``done`` rows, and
    :func:`write_failure_rows` for a failure.
    """
    table = make_table(rows)
    if any(r != trial_id for r in table.column("trial_id").to_pylist()):
        raise ValueError(f"rows of trial {trial_id} carry another trial_id")
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    path = write_file(location, f"{trial_id}.parquet", buffer.getvalue().to_pybytes())
    log.debug("wrote %d result rows to %s", table.num_rows, path)
    return path


def write_failure_rows(location: str, trial_id: str, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Write a failed trial's rows, unless the trial already has a ``done`` result.

    A ``done`` result is never replaced by a failure (for example a driver that records a failure
    after its worker wrote the trial's results, or a second run of the same trial): then nothing
    is written, the refusal is logged and ``None`` is returned. An earlier failure, an unreadable
    file or no file at all is replaced; returns the final path. The check and the write are two
    steps, not one atomic operation: the trial's lease (:mod:`rayot.sweep.leases`) is what keeps two
    writers of one trial apart.
    """
    if trial_status(location, trial_id, warn=False) == "done":
        log.warning("trial %s: not recording a failure over its done result %s", trial_id,
                    trial_path(location, trial_id)[1])
        return None
    return write_trial_rows(location, trial_id, rows)


def _not_a_result(columns: Sequence[str]) -> str | None:
    """Why a Parquet file with these columns is not a result file, or None where it is one."""
    missing = [c for c in _REQUIRED if c not in columns]
    if not missing:
        return None
    if len(missing) == len(_REQUIRED):  # another program's table: say what it holds instead
        shown = ", ".join(list(columns)[:5]) + (", ..." if len(columns) > 5 else "")
        return f"not a rayot result file (none of a result's columns; it has {shown or 'no columns'})"
    return f"not a rayot result file (missing columns {missing})"


def _inspect(fs: pafs.FileSystem, path: str, trial_id: str | None = None) -> tuple[str | None, str | None]:
    """``(status, None)`` for a readable result file, ``(None, problem)`` for an unreadable one.

    A trial is done only when every row of its file says so. A file that is empty, truncated, not
    Parquet, not of :data:`SCHEMA`, without rows, or with rows of another trial is unreadable.
    """
    return _judge(lambda: pq.ParquetFile(path, filesystem=fs), trial_id, in_store=True)


def _judge(open_file: Callable[[], pq.ParquetFile], trial_id: str | None, *,
           in_store: bool) -> tuple[str | None, str | None]:
    """:func:`_inspect` of the file ``open_file`` opens, in a store (where an error that says the
    store did not answer is raised: no verdict on the file) or already read into memory."""
    try:
        with open_file() as pf:
            foreign = _not_a_result(pf.schema_arrow.names)
            if foreign:
                return None, foreign
            table = pf.read(columns=["trial_id", "status"])
    except (pa.ArrowException, OSError) as exc:
        if in_store and storage.transient(exc):
            raise
        return None, f"not a readable Parquet file ({exc})"
    if table.num_rows == 0:
        return None, "holds no rows"
    ids = set(table.column("trial_id").to_pylist())
    if trial_id is not None and ids != {trial_id}:
        return None, f"rows of trial(s) {sorted(map(str, ids))}, not {trial_id}"
    statuses = set(table.column("status").to_pylist())
    if not statuses <= {"done", "failed"}:
        return None, f"unknown status {sorted(map(str, statuses - {'done', 'failed'}))}"
    return ("done" if statuses == {"done"} else "failed"), None


def _warn_unreadable(path: str, problem: str) -> None:
    log.warning("results file %s: %s; its trial counts as not done", path, problem)


def trial_status(location: str, trial_id: str, *, warn: bool = True) -> str | None:
    """``"done"``, ``"failed"`` or ``None`` (no result file, or an unreadable one: logged unless
    ``warn`` is False) for one trial. An object store that does not answer is retried
    (:func:`rayot.storage.retrying`)."""
    fs, path = trial_path(location, trial_id)

    def look() -> tuple[str | None, str | None]:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None, None
        return _inspect(fs, path, trial_id)

    status, problem = storage.retrying(look, location=location, what="results")
    if problem and warn:
        _warn_unreadable(path, problem)
    return status


def trial_error(location: str, trial_id: str) -> str | None:
    """The recorded error of a failed trial; ``None`` without a (readable) result file or error."""
    fs, path = trial_path(location, trial_id)
    try:
        errors = pq.read_table(path, columns=["error"], filesystem=fs).column(0).to_pylist()
    except (pa.ArrowException, OSError):
        return None
    return next((e for e in errors if e), None)


#: How many files a scan of an object store reads at once (:func:`scan_results`,
#: :func:`rayot.sweep.leases.holders`): a scan of N files takes about N round trips to the store
#: divided by this. 10 is the connection pool of the botocore and google-cloud-storage clients
#: that read them (:func:`rayot.storage.conditional_store`); more threads would overflow it.
SCAN_THREADS = 10
#: A result file up to this size is fetched whole, in one request, and judged in memory; a larger
#: one (rayot writes none: a trial's rows are kilobytes) is judged in place with ranged reads.
_FETCH_WHOLE_BYTES = 16 << 20

_In = TypeVar("_In")
_Out = TypeVar("_Out")


def scan_map(location: str, fn: Callable[[_In], _Out], items: Sequence[_In]) -> list[_Out]:
    """``[fn(x) for x in items]``, in order; on an object store :data:`SCAN_THREADS` at a time (a
    read there waits on the network, not on this machine). The first error is raised, once the
    calls under way have ended; the calls not yet started are cancelled."""
    if len(items) < 2 or SCAN_THREADS < 2 or not storage.is_remote(location):
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(SCAN_THREADS, len(items)), thread_name_prefix="rayot-scan") as pool:
        try:
            return list(pool.map(fn, items))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _trial_files(location: str) -> list[tuple[pafs.FileSystem, str, str, int | None]]:
    """``(fs, path, trial id, size)`` of every ``<trial id>.parquet`` directly under ``location``,
    from one listing (on an object store: one request per 1,000 files)."""
    fs, base = filesystem(location)
    remote = storage.is_remote(location)

    def listing() -> list[pafs.FileInfo]:
        if remote:  # a prefix that holds nothing lists as empty: no existence check first
            return fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        return fs.get_file_info(pafs.FileSelector(base, recursive=False))

    infos = storage.retrying(listing, location=location, what="results")
    out = []
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".parquet") and not name.startswith("."):
            out.append((fs, info.path, name[: -len(".parquet")], info.size))
    return sorted(out, key=lambda t: t[1])


@dataclass(frozen=True)
class ResultScan:
    """One scan of a results location: the status of every trial with a readable result file, and
    the problem of every unreadable one (by path)."""

    statuses: dict[str, str]
    problems: dict[str, str]


def scan_results(location: str) -> ResultScan:
    """Read every result file directly under ``location`` once; nothing is logged.

    One listing, then one read per file. On S3 and GCS (with their clients installed) a file is
    fetched whole in one GET and judged in memory, :data:`SCAN_THREADS` files at a time, so a scan
    of N trials costs N / 1000 listing requests and N GETs, and takes about N / SCAN_THREADS round
    trips; elsewhere each file is judged in place (:func:`_inspect`). A store that does not answer
    is retried (:func:`rayot.storage.retrying`); a file removed since the listing is left out.
    """
    files = _trial_files(location)
    got = storage.conditional_store(location) if files and storage.is_remote(location) else None

    def look(entry: tuple[pafs.FileSystem, str, str, int | None]) -> tuple[str | None, str | None] | None:
        fs, path, trial_id, size = entry
        if got is None or (size or 0) > _FETCH_WHOLE_BYTES:
            return _inspect(fs, path, trial_id)
        store, prefix = got
        try:
            fetched = store.read("/".join(p for p in (prefix, f"{trial_id}.parquet") if p))
        except Exception as exc:  # noqa: BLE001 - an answer (denied, ...) is a verdict on the file
            if storage.transient(exc):
                raise
            return None, f"not a readable Parquet file ({exc})"
        if fetched is None:
            return None
        return _judge(lambda: pq.ParquetFile(pa.BufferReader(fetched.data)), trial_id, in_store=False)

    verdicts = scan_map(location, lambda e: storage.retrying(lambda: look(e), location=location, what="results"),
                        files)
    statuses: dict[str, str] = {}
    problems: dict[str, str] = {}
    for (_, path, trial_id, _), verdict in zip(files, verdicts, strict=True):
        if verdict is None:
            log.debug("results file %s: removed during the scan", path)
            continue
        status, problem = verdict
        if problem:
            problems[path] = problem
        elif status is not None:
            statuses[trial_id] = status
    return ResultScan(statuses, problems)


def finished_trials(location: str) -> dict[str, str]:
    """Map every trial id with a readable result file under ``location`` to its status.

    An unreadable file (see :func:`unreadable_results`) is logged as a warning naming the file
    and its problem, and its trial is left out: it counts as not done, so a sweep runs it again.
    One scan (:func:`scan_results`): one listing, one read per file, concurrent on an object store.
    """
    scan = scan_results(location)
    for path, problem in scan.problems.items():
        _warn_unreadable(path, problem)
    return scan.statuses


def unreadable_results(location: str) -> dict[str, str]:
    """Map every unreadable result file directly under ``location`` to its problem.

    Unreadable: empty, truncated, not Parquet, not of :data:`SCHEMA`, without rows, rows of
    another trial than the file's name, or an unknown status. Nothing is logged. A caller that
    also needs :func:`finished_trials` gets both from one :func:`scan_results`.
    """
    return scan_results(location).problems


def _result_paths(fs: pafs.FileSystem, base: str) -> list[str]:
    """Every ``*.parquet`` file under ``base``, at any depth, outside dot-folders and dot-files."""
    base = base.rstrip("/")
    paths = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        relative = info.path[len(base) + 1 :] if info.path.startswith(base + "/") else info.base_name
        if any(part.startswith(".") for part in relative.split("/")):
            continue  # .leases/, temporaries, hidden files
        if relative.split("/")[0] == SEARCHES:
            continue  # the searches' records: read_search_records
        paths.append(info.path)
    return sorted(paths)


def read_results(locations: Iterable[str], *, skip_unreadable: bool = False) -> pa.Table:
    """Read every trial file under the given locations into one table of :data:`SCHEMA`.

    A location is a result file or a folder, read recursively (dot-folders such as ``.leases``
    and dot-files are ignored). An unreadable file raises a :class:`RayotError` naming it; with
    ``skip_unreadable=True`` it is logged as a warning and left out instead.
    """
    table, unreadable = read_readable_results(locations)
    for exc in unreadable.values():
        if not skip_unreadable:
            raise exc
        log.warning("%s; skipped", exc)
    return table


def read_readable_results(locations: Iterable[str]) -> tuple[pa.Table, dict[str, RayotError]]:
    """Every readable trial file under the given locations as one table of :data:`SCHEMA`, and
    the error of every unreadable one by path, in the order read; nothing is logged.

    Unreadable: not Parquet (empty, truncated, foreign bytes), without the columns of
    :data:`SCHEMA` or with columns of another type. Each error names its file and the problem
    (``results file PATH: ...``), so a caller can refuse on the first one or report each and go
    on with the rest (``rayot report`` does either). A location that does not exist is an error
    at once.
    """
    tables = []
    unreadable: dict[str, RayotError] = {}
    for location in locations:
        fs, base = filesystem(location)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise RayotError(f"results location {location!r} does not exist")
        paths = [base] if info.type == pafs.FileType.File else _result_paths(fs, base)
        remote = storage.is_remote(location)
        for path in paths:
            try:  # a store that does not answer is retried, then an error: never a file skipped
                tables.append(storage.retrying(functools.partial(_read_one, fs, path, remote=remote),
                                               location=location, what="results"))
            except _Unreadable as exc:
                unreadable[path] = exc
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()), unreadable


class _Unreadable(RayotError):
    """A result file's own problem (its bytes, its columns), not the store's: a reader may skip it."""


def _read_one(fs: pafs.FileSystem, path: str, *, remote: bool = False) -> pa.Table:
    try:
        table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowException, OSError) as exc:
        if remote and storage.transient(exc):  # the store did not answer: not a verdict on the file
            raise
        raise _Unreadable(f"results file {path}: not a readable Parquet file ({exc})") from exc
    foreign = _not_a_result(table.column_names)
    if foreign:
        raise _Unreadable(f"results file {path}: {foreign}")
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:  # a file of an earlier version
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    try:
        return table.select(list(COLUMNS)).cast(SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise _Unreadable(f"results file {path}: columns of the wrong type ({exc})") from exc


# ----------------------------------------------------------------------------- saved prompts


def prompt_checkpoint_name(trial_id: str) -> str:
    """Where a trial's final prompts go under the checkpoint location, for `rayot train` and sweeps."""
    return f"{trial_id}/prompt.pt"


def trials_without_prompts(location: str, trial_ids: Iterable[str]) -> list[str]:
    """The trials of ``trial_ids`` whose final prompts are not under the checkpoint ``location``
    (no ``<location>/<trial id>/prompt.pt``), sorted.

    A ``done`` result promises saved prompts: rayot saves them before it writes a trial's done
    rows. Rows of earlier versions may break the promise (they were written first, and a checkpoint
    folder that refused the prompts left them alone); a sweep runs such a trial again and a report
    names it. One look per trial, :data:`SCAN_THREADS` at a time on an object store. A scan of
    files, not a read of them: torch is not needed (the report runs without it).
    """
    ids = sorted(set(trial_ids))
    if not ids:
        return []
    fs, base = filesystem(location, "checkpoint")

    def saved(tid: str) -> bool:
        path = f"{base.rstrip('/')}/{prompt_checkpoint_name(tid)}"
        return storage.retrying(lambda: fs.get_file_info(path).type == pafs.FileType.File,
                                location=location, what="checkpoint")

    found = scan_map(location, saved, ids)
    return [tid for tid, ok in zip(ids, found, strict=True) if not ok]


def without_prompts_line(location: str, trial_ids: Sequence[str], consequence: str) -> str:
    """One line naming the ``done`` trials whose prompts are not saved, and what follows from it."""
    shown = ", ".join(trial_ids[:5]) + (f" (+{len(trial_ids) - 5} more)" if len(trial_ids) > 5 else "")
    return (f"{len(trial_ids)} trial(s) have a done result but no saved prompts under {location} "
            f"(rows written before rayot saved the prompts first): {shown}; {consequence}")
