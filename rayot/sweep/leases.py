"""Per-trial leases in the results storage, so that two sweeps never run one trial at once.

A lease is a small JSON file ``<results>/.leases/<trial id>.json`` naming its owner (a unique
token, the host, the process id and a human-readable label such as the sweep's name) and when it
expires (wall-clock epoch seconds). An owner holds a trial while its lease is live; it keeps the
lease live by renewing it (:class:`Heartbeat` does so from a thread), and gives it up with
:meth:`Lease.release`. The lease of an owner that died expires after its time to live and is then
taken over by the next owner that asks.

Guarantees. Every lease operation is a conditional write, so of several owners racing for a
trial exactly one wins:

- a local filesystem (a path or a ``file://`` URI, including a shared POSIX mount with atomic
  ``link``/``rename``, such as NFS): a lease is created by hard-linking a fully written temporary
  file to its name, which fails when the name exists (``O_CREAT | O_EXCL`` where hard links are
  not supported); every change to an existing lease (renewal, take-over of an expired one,
  release) is a compare-and-swap under a lock file created with ``O_EXCL``;
- S3 (``s3://``, boto3 installed: ``rayot[s3]``): create with ``If-None-Match: *``, change and
  delete with ``If-Match: <the ETag read>``;
- GCS (``gs://``, google-cloud-storage installed: ``rayot[gcs]``): create with
  ``ifGenerationMatch=0``, change and delete with ``ifGenerationMatch=<the generation read>``.

Any other store (or an object store without its client) is best effort: a lease is written,
then read back after ``settle_s`` seconds and held only if it still carries this owner's token,
so two owners writing within the same instant can both believe they hold the trial;
:func:`rayot.storage.lease_guarantee` gives the one-line warning a sweep prints then. On an
object store every operation is retried while the store does not answer
(:func:`rayot.storage.retrying`).

Expiry compares wall clocks of different hosts: keep the time to live well above their skew.
The ``.leases`` folder is a dot-folder, which :func:`rayot.results.finished_trials` and
:func:`rayot.results.read_results` ignore.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TypeVar

import pyarrow.fs as pafs

from rayot import storage
from rayot.errors import RayotError
from rayot.results import filesystem, fsync_dir, is_local, scan_map, write_local_file
from rayot.storage import ConditionalStore, Stored

log = logging.getLogger(__name__)

#: The folder of the leases, under the results location.
LEASES = ".leases"
#: How many create / take-over rounds :func:`acquire` tries before it gives up (never in practice).
_ATTEMPTS = 200

Clock = Callable[[], float]
T = TypeVar("T")


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: a unique token, plus where it runs and a label for people."""

    token: str
    host: str
    pid: int
    label: str = ""

    @classmethod
    def new(cls, label: str = "") -> Owner:
        """A fresh owner of this process (a new token on every call)."""
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), label)

    def gone(self) -> bool:
        """True when the owner ran on this host and its process no longer exists (a killed or
        interrupted sweep), so its leases need not be waited out. Elsewhere: not known, False."""
        if self.pid <= 0 or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        name = self.label or "an unnamed owner"
        return f"{name} on {self.host} (pid {self.pid})"


@dataclass(frozen=True)
class LeaseHolder:
    """The content of a lease file: which trial, held by whom, until when (epoch seconds)."""

    trial_id: str
    owner: Owner
    expires_at: float

    def live(self, now: float) -> bool:
        """Not expired, and its owner not known to be gone (see :meth:`Owner.gone`)."""
        return self.expires_at > now and not self.owner.gone()

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return f"trial {self.trial_id} is held by {self.owner.describe()}, for {self.expires_at - now:.0f} s more"


def lease_path(location: str, trial_id: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``location`` and the path of the lease file of ``trial_id``."""
    fs, base = filesystem(location)
    return fs, f"{base.rstrip('/')}/{LEASES}/{trial_id}.json"


def _encode(trial_id: str, owner: Owner, expires_at: float) -> bytes:
    return json.dumps(
        {"trial_id": trial_id, "owner": asdict(owner), "expires_at": expires_at}, sort_keys=True
    ).encode()


def _decode(raw: bytes, trial_id: str) -> LeaseHolder | None:
    """The lease in ``raw``, or ``None`` when it is not a lease of ``trial_id``."""
    try:
        d = json.loads(raw)
        o = d["owner"]
        owner = Owner(str(o["token"]), str(o["host"]), int(o["pid"]), str(o.get("label", "")))
        holder = LeaseHolder(str(d["trial_id"]), owner, float(d["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return None
    return holder if holder.trial_id == trial_id and owner.token else None


#: the holder of a lease that cannot be decoded, when only its token matters
_NOBODY = LeaseHolder("", Owner("", "?", 0), 0.0)


def _unreadable(trial_id: str, path: str, mtime: float | None, ttl_s: float) -> LeaseHolder:
    """An unreadable lease file (being written, or damaged) counts as held for ``ttl_s`` after its
    last change; an unknown owner holds it."""
    return LeaseHolder(trial_id, Owner("", "?", 0, f"an unreadable lease file {path}"),
                       (mtime or 0.0) + ttl_s)


# --- the storage operations: local and object stores (conditional writes), others (best effort) 


def _read(fs: pafs.FileSystem, path: str) -> tuple[bytes, float | None] | None:
    """The raw content and modification time of a lease file; ``None`` when there is none."""
    if is_local(fs):
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return raw, info.mtime.timestamp() if info.mtime else None


def _current(fs: pafs.FileSystem, path: str, trial_id: str, ttl_s: float
             ) -> tuple[LeaseHolder, bytes] | None:
    got = _read(fs, path)
    if got is None:
        return None
    raw, mtime = got
    return (_decode(raw, trial_id) or _unreadable(trial_id, path, mtime, ttl_s)), raw


def _create_local(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists, atomically; whether it was created."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails when path exists: a lease appears whole
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(folder)
    return True


#: A take-over lock older than this was left by a process that died holding it (it is held for
#: the microseconds of one compare-and-swap).
_LOCK_STALE_S = 10.0


def _replace_local_if(path: str, expected: bytes, data: bytes | None) -> bool:
    """Compare-and-swap on a lease file: if ``path`` still holds ``expected``, replace it whole with
    ``data`` (or delete it when ``data`` is None); whether it did.

    Every change to an existing lease file (renewal, take-over, release) goes through here under
    one lock file (``<path>.lock``, created with O_EXCL), so the check and the change are one step
    for every process; a new lease is created only where no file is (:func:`_create_local`). A busy
    lock returns False: the caller reads the lease again and decides again.
    """
    lock = f"{path}.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - os.stat(lock).st_mtime > _LOCK_STALE_S:
                os.unlink(lock)
        return False
    os.close(fd)
    try:
        try:
            with open(path, "rb") as f:
                if f.read() != expected:
                    return False
        except FileNotFoundError:
            return False
        if data is None:
            os.unlink(path)
        else:
            write_local_file(path, data)  # temporary name, fsync, os.replace: whole or not at all
        fsync_dir(os.path.dirname(path))
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a lease file on an object store whole (a single PUT)."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


class _LocalStore(ConditionalStore):
    """The local filesystem as a conditional store: a version is the lease file's bytes."""

    how = "local create-if-absent and compare-and-swap"

    def read(self, key: str) -> Stored | None:
        try:
            with open(key, "rb") as f:
                raw = f.read()
                return Stored(raw, raw.decode("latin-1"), os.fstat(f.fileno()).st_mtime)
        except FileNotFoundError:
            return None

    def create(self, key: str, data: bytes) -> str | None:
        return data.decode("latin-1") if _create_local(key, data) else None

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        return data.decode("latin-1") if _replace_local_if(key, version.encode("latin-1"), data) else None

    def delete(self, key: str, version: str) -> bool:
        return _replace_local_if(key, version.encode("latin-1"), None)


_LOCAL = _LocalStore()


def _store(location: str, trial_id: str) -> tuple[ConditionalStore, str, str] | None:
    """The conditional store of ``location``, the key of ``trial_id``'s lease in it and the
    location to retry against; ``None`` where leases are best effort."""
    fs, path = lease_path(location, trial_id)
    if is_local(fs):
        return _LOCAL, path, "file"
    got = storage.conditional_store(location)
    if got is None:
        return None
    store, prefix = got
    return store, "/".join(p for p in (prefix, LEASES, f"{trial_id}.json") if p), location


def _call(location: str, op: Callable[..., T], *args: object) -> T:
    """``op(*args)``, retried while the store at ``location`` does not answer."""
    return storage.retrying(lambda: op(*args), location=location, what="lease")


# --- the API ----------------------------------------------------------------------------------------


class Lease:
    """A lease this process holds (as ``owner``). Use it as a context manager to release it."""

    def __init__(self, location: str, trial_id: str, owner: Owner, ttl_s: float, expires_at: float,
                 *, clock: Clock = time.time, settle_s: float = 0.5) -> None:
        self.location = location
        self.trial_id = trial_id
        self.owner = owner
        self.ttl_s = ttl_s
        self.expires_at = expires_at
        self.clock = clock
        self.settle_s = settle_s
        #: set once a renewal found the lease held by another owner; it is not renewed again
        self.lost = False
        #: the owner that held the lease when it was found lost
        self.lost_to: LeaseHolder | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return lease_path(self.location, self.trial_id)[1]

    def renew(self) -> bool:
        """Extend the lease by ``ttl_s`` from now; ``False`` (and :attr:`lost` set) when it is lost.

        A lease that expired but that nobody took is renewed (through the same race-safe take-over
        as :func:`acquire`); one another owner holds now is lost, and logged as a warning.
        """
        with self._lock:
            if self.lost:
                return False
            got = acquire(self.location, self.trial_id, self.owner, self.ttl_s,
                          clock=self.clock, settle_s=self.settle_s)
            if isinstance(got, Lease):
                self.expires_at = got.expires_at
                return True
            self.lost, self.lost_to = True, got
            log.warning("lost the lease of trial %s: %s", self.trial_id, got.describe(self.clock()))
            return False

    def release(self) -> bool:
        """Delete the lease file if it is still ours; whether it was deleted."""
        with self._lock:
            conditional = _store(self.location, self.trial_id)
            if conditional is not None:
                store, key, where = conditional
                current = _call(where, store.read, key)
                if current is None or (_decode(current.data, self.trial_id) or _NOBODY).owner.token != self.owner.token:
                    log.debug("lease of trial %s: not ours any more, left in place", self.trial_id)
                    return False
                released = _call(where, store.delete, key, current.version)
            else:
                fs, path = lease_path(self.location, self.trial_id)
                current = _current(fs, path, self.trial_id, self.ttl_s)
                if current is None or current[0].owner.token != self.owner.token:
                    log.debug("lease of trial %s: not ours any more, left in place", self.trial_id)
                    return False
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(path)
                released = True
            if released:
                log.debug("released the lease of trial %s", self.trial_id)
            return released

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.trial_id!r}, {self.owner.describe()}, expires_at={self.expires_at:.1f})"


def acquire(location: str, trial_id: str, owner: Owner, ttl_s: float = 120.0, *,
            clock: Clock = time.time, settle_s: float = 0.5) -> Lease | LeaseHolder:
    """Take the lease of ``trial_id`` for ``owner``: a :class:`Lease` when ``owner`` now holds it,
    else the :class:`LeaseHolder` of the live lease of another owner.

    No lease, or an expired one (a dead owner's): ``owner`` takes it, for ``ttl_s`` seconds.
    A live lease of ``owner`` itself: it is renewed. ``clock`` gives epoch seconds (injectable for
    tests); ``settle_s`` is how long an object store is given before the read-back check.
    """
    conditional = _store(location, trial_id)
    if conditional is None:
        fs, path = lease_path(location, trial_id)
        return _acquire_object_store(fs, path, location, trial_id, owner, ttl_s, clock, settle_s)
    store, key, where = conditional
    for _ in range(_ATTEMPTS):
        expires_at = clock() + ttl_s
        if _call(where, store.create, key, _encode(trial_id, owner, expires_at)) is not None:
            log.debug("took the lease of trial %s until %.1f", trial_id, expires_at)
            return Lease(location, trial_id, owner, ttl_s, expires_at, clock=clock, settle_s=settle_s)
        current = _call(where, store.read, key)
        if current is None:
            continue  # released meanwhile: create again
        held = _decode(current.data, trial_id) or _unreadable(trial_id, key, current.mtime, ttl_s)
        now = clock()
        if held.live(now) and held.owner.token != owner.token:
            return held
        # ours (a renewal), or expired (a take-over): swap it for ours if it is still what was read
        expires_at = now + ttl_s
        if _call(where, store.replace, key, _encode(trial_id, owner, expires_at), current.version) is not None:
            if held.owner.token != owner.token:
                log.info("took over the expired lease of trial %s from %s", trial_id, held.owner.describe())
            return Lease(location, trial_id, owner, ttl_s, expires_at, clock=clock, settle_s=settle_s)
        time.sleep(random.uniform(0.001, 0.01))  # another owner changed it: read it again
    raise RayotError(f"lease of trial {trial_id} at {key}: still contended after {_ATTEMPTS} attempts")


def _acquire_object_store(fs: pafs.FileSystem, path: str, location: str, trial_id: str, owner: Owner,
                          ttl_s: float, clock: Clock, settle_s: float) -> Lease | LeaseHolder:
    """Best effort (a store without conditional writes): write the lease unless another live one
    is there, then read it back."""
    for _ in range(_ATTEMPTS):
        current = _current(fs, path, trial_id, ttl_s)
        if current is not None and current[0].live(clock()) and current[0].owner.token != owner.token:
            return current[0]
        if current is not None and current[0].owner.token != owner.token:
            log.info("taking over the expired lease of trial %s from %s", trial_id,
                     current[0].owner.describe())
        expires_at = clock() + ttl_s
        _write(fs, path, _encode(trial_id, owner, expires_at))
        if settle_s > 0:
            time.sleep(settle_s)
        after = _current(fs, path, trial_id, ttl_s)
        if after is None:
            continue  # deleted meanwhile: try again
        if after[0].owner.token == owner.token:
            return Lease(location, trial_id, owner, ttl_s, after[0].expires_at, clock=clock,
                         settle_s=settle_s)
        return after[0]
    raise RayotError(f"lease of trial {trial_id} at {path}: still contended after {_ATTEMPTS} attempts")


def _look_up(location: str, trial_id: str, ttl_s: float) -> LeaseHolder | None:
    """The lease file of ``trial_id`` as it is now (live or not), ``None`` when there is none.

    With a conditional store (a local folder, S3, GCS) one read: one GET on an object store
    (the path through pyarrow costs a HEAD, another HEAD and a GET). An unreadable lease file is
    held by an unknown owner until ``ttl_s`` after its last change (:func:`_unreadable`).
    """
    conditional = _store(location, trial_id)
    if conditional is None:
        fs, path = lease_path(location, trial_id)
        current = _current(fs, path, trial_id, ttl_s)
        return None if current is None else current[0]
    store, key, where = conditional
    got = _call(where, store.read, key)
    if got is None:
        return None
    decoded = _decode(got.data, trial_id)
    if decoded is not None:
        return decoded
    fs, path = lease_path(location, trial_id)
    mtime = got.mtime
    if mtime is None:  # a GCS read does not say when the object changed: ask (only for a damaged lease)
        info = _call(where, fs.get_file_info, path)
        mtime = info.mtime.timestamp() if info.mtime else None
    return _unreadable(trial_id, path, mtime, ttl_s)


def holder(location: str, trial_id: str, *, clock: Clock = time.time) -> LeaseHolder | None:
    """The live lease of ``trial_id``, or ``None`` when nobody holds it (no lease, or expired).

    An unreadable lease file counts as live for 120 s after its last change.
    """
    found = _look_up(location, trial_id, 120.0)
    if found is None or not found.live(clock()):
        return None
    return found


def holders(location: str, *, clock: Clock = time.time) -> dict[str, LeaseHolder]:
    """Every live lease under ``location``, by trial id.

    One listing of ``<location>/.leases``, then one read per lease file (:func:`holder`), on an
    object store :data:`rayot.results.SCAN_THREADS` at a time (:func:`rayot.results.scan_map`).
    """
    fs, base = filesystem(location)
    folder = f"{base.rstrip('/')}/{LEASES}"
    infos = storage.retrying(lambda: fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)),
                             location=location, what="lease")
    trial_ids = sorted(info.base_name[: -len(".json")] for info in infos
                       if info.type == pafs.FileType.File and info.base_name.endswith(".json")
                       and not info.base_name.startswith("."))
    found = scan_map(location, lambda trial_id: holder(location, trial_id, clock=clock), trial_ids)
    return {h.trial_id: h for h in found if h is not None}


class Heartbeat:
    """Renew leases from a daemon thread, every ``interval_s`` (default: a third of the shortest
    time to live), until :meth:`stop` or the end of the ``with`` block.

    A renewal that finds a lease held by another owner logs a warning, sets that lease's
    :attr:`Lease.lost` and this heartbeat's :attr:`lost`, and stops renewing it; the others go
    on. A renewal that fails (a storage error) is logged and retried at the next beat. Leases can
    be added and removed while it runs. It does not release the leases: a :class:`Lease` is
    itself a context manager for that.
    """

    def __init__(self, leases: Lease | Iterable[Lease] = (), interval_s: float | None = None) -> None:
        self._leases: list[Lease] = [leases] if isinstance(leases, Lease) else list(leases)
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: True once any lease was found held by another owner
        self.lost = False
        #: the leases found lost
        self.lost_leases: list[Lease] = []
        #: how many renewals succeeded, and how many failed with a storage error
        self.renewals = 0
        self.errors = 0

    @property
    def interval_s(self) -> float:
        if self._interval_s is not None:
            return self._interval_s
        with self._lock:
            return min((lease.ttl_s for lease in self._leases), default=120.0) / 3

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.append(lease)

    def discard(self, lease: Lease) -> None:
        with self._lock:
            if lease in self._leases:
                self._leases.remove(lease)

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rayot-lease-heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def beat(self) -> None:
        """Renew every lease once (what the thread does at each beat)."""
        with self._lock:
            leases = list(self._leases)
        for lease in leases:
            if self._stop.is_set():
                return
            try:
                ok = lease.renew()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                self.errors += 1
                log.warning("renewing the lease of trial %s failed (%s); retrying", lease.trial_id, exc)
                continue
            if ok:
                self.renewals += 1
            else:
                self.lost = True
                self.lost_leases.append(lease)
                self.discard(lease)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
