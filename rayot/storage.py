"""Where results, checkpoints, logs and leases are stored: local folders and object stores.

A location is a local path, a ``file://`` URI (a shared POSIX mount), or an object-store URI:
``s3://bucket/prefix`` (AWS S3 or any S3-compatible server) or ``gs://bucket/prefix`` (Google
Cloud Storage or its emulator). Endpoints and credentials are configured the way every client of
these stores is configured, by environment variables, on every node that reads or writes:

- S3: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for a server other than AWS (MinIO,
  SeaweedFS, moto), credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile
  or the node's instance role, region from ``AWS_DEFAULT_REGION`` or the bucket;
- GCS: ``STORAGE_EMULATOR_HOST`` (``http://host:port``) for an emulator, which is then spoken to
  anonymously; else Google's application-default credentials.

Three things are built here:

- :func:`filesystem`: the pyarrow filesystem of a location (cached), which every reader and
  writer of rayot and Ray Train's checkpoints use; on an object store it retries with the budget
  below;
- :func:`retrying`: bounded retries with exponential back-off for one storage operation of an
  object store, so that a store that stops answering for a while delays a sweep instead of
  failing its trials; past ``RAYOT_STORAGE_RETRY_S`` seconds (default 300) it raises one
  :class:`StorageUnavailable` naming the location, how long it tried and the last error;
- :func:`conditional_store`: the store's conditional writes for the leases (create-if-absent,
  replace-if-unchanged, delete-if-unchanged): S3's ``If-None-Match: *`` / ``If-Match: <ETag>``
  through boto3, GCS's ``ifGenerationMatch`` through google-cloud-storage (extras ``rayot[s3]``,
  ``rayot[gcs]``). :func:`lease_guarantee` says in one line when a location cannot have them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from rayot.errors import RayotError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The variables that configure the object stores' endpoints and credentials (forwarded to Ray's
#: workers with the sweep, see :func:`client_environment`).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST")
#: How long (seconds) an object-store operation is retried before the store counts as down.
RETRY_ENV = "RAYOT_STORAGE_RETRY_S"
_DEFAULT_RETRY_S = 300.0


class StorageUnavailable(RayotError):
    """An object store did not answer within the retry budget."""


def scheme_of(location: str) -> str:
    """``"s3"``, ``"gs"``, ``"file"`` (a path or ``file://``) or another URI scheme."""
    if "://" not in location:
        return "file"
    scheme = location.split("://", 1)[0].lower()
    return {"gcs": "gs", "s3a": "s3"}.get(scheme, scheme)


def is_remote(location: str) -> bool:
    return scheme_of(location) != "file"


def retry_budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, _DEFAULT_RETRY_S)))
    except ValueError as exc:
        raise RayotError(f"{RETRY_ENV}={os.environ[RETRY_ENV]!r}: not a number of seconds") from exc


def client_environment() -> dict[str, str]:
    """The object-store endpoint variables set in this process (to hand to Ray's workers)."""
    return {k: os.environ[k] for k in ENDPOINT_VARIABLES if os.environ.get(k)}


# ------------------------------------------------------------------------------ filesystems


def _bucket_and_path(location: str) -> tuple[str, str]:
    rest = location.split("://", 1)[1]
    return rest.split("/", 1)[0], rest


#: The clients' own retries inside one operation (measured against a store that refuses
#: connections: S3 standard retries with 6 attempts give up after about 18 s): long enough that
#: Ray Train's checkpoint uploads, which :func:`retrying` does not wrap, ride out a short outage.
#: A retry budget under a minute (``RAYOT_STORAGE_RETRY_S``) asks to fail fast: 2 attempts.
_S3_ATTEMPTS = 6
_GCS_RETRY_S = 20.0


@functools.lru_cache(maxsize=64)
def _object_filesystem(scheme: str, bucket: str, env: tuple[tuple[str, str], ...],
                       budget_s: float) -> pafs.FileSystem:
    settings = dict(env)
    if scheme == "gs":
        emulator = settings.get("STORAGE_EMULATOR_HOST")
        limit = _dt.timedelta(seconds=min(max(budget_s, 1.0), _GCS_RETRY_S))
        if emulator:
            endpoint = emulator if "://" in emulator else f"http://{emulator}"
            proto, host = endpoint.split("://", 1)
            return pafs.GcsFileSystem(anonymous=True, endpoint_override=host.rstrip("/"), scheme=proto,
                                      retry_time_limit=limit)
        return pafs.GcsFileSystem(retry_time_limit=limit)
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    if isinstance(fs, pafs.S3FileSystem):
        # the options from_uri resolved (region, endpoint), with more retries than pyarrow's 3
        try:
            options = dict(fs.__reduce__()[1][0])
            attempts = _S3_ATTEMPTS if budget_s >= 60 else 2  # a short budget asks to fail fast
            fs = pafs.S3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))
        except (TypeError, ValueError, IndexError, KeyError) as exc:  # another pyarrow's options
            log.debug("S3 filesystem with pyarrow's default retries (%s)", exc)
    return fs


def filesystem(location: str, what: str = "results") -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a location and the path inside it (absolute for a local path).

    An object store's filesystem is built once per bucket and endpoint settings and cached.
    """
    scheme = scheme_of(location)
    try:
        if scheme in ("s3", "gs") and "?" not in location:  # (options in a query: pyarrow's own)
            bucket, path = _bucket_and_path(location)
            env = tuple(sorted((k, v) for k, v in os.environ.items() if k in ENDPOINT_VARIABLES or k.startswith("AWS_")))
            return _object_filesystem(scheme, bucket, env, retry_budget_s()), path.rstrip("/") or bucket
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, ValueError):
        # a plain relative path
        return pafs.LocalFileSystem(), os.path.abspath(location)
    except OSError as exc:  # unreachable bucket, missing credentials
        raise RayotError(f"{what} location {location!r}: {exc}") from exc


# ------------------------------------------------------------------------------ retries


#: Errors that retrying cannot mend (they are answers, not silence).
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, RayotError)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a store that did not answer (connection refused or reset, a
    timeout, a 5xx), rather than an answer (not found, denied, a precondition failed)."""
    if isinstance(exc, _PERMANENT):
        return False
    name = type(exc).__name__
    if name in ("PreconditionFailed", "NotFound", "Forbidden", "Unauthorized", "BadRequest"):
        return False
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                "ConnectTimeoutError", "ServiceUnavailable", "InternalServerError", "GatewayTimeout",
                "TooManyRequests", "RetryError", "ConnectionError", "Timeout", "ProtocolError"):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):  # pyarrow's: "When reading ...: AWS Error NETWORK_CONNECTION ..."
        return transient_text(str(exc), loose=True)
    return False


def transient_text(text: str, *, loose: bool = False) -> bool:
    """Whether an error's text says a store did not answer. Strict (default): the S3 and GCS
    clients' own words, for an error that another layer wrapped (Ray's); ``loose``: any mention of
    a connection, a timeout or a 5xx, for an error known to come from a storage client."""
    text = text.lower()
    words = ("network_connection", "could not connect to server", "failed to connect to",
             "connection refused", "service unavailable", "curlcode")
    if loose:  # (not "couldn't", nor bare numbers: a damaged Parquet file's errors use them)
        words += ("network", "connection", "connect to", "timed out", "timeout", "unavailable",
                  "refused", "curl", "response code: 50", "status code: 50", "slowdown", "internalerror")
    return any(w in text for w in words)


@dataclass
class _Outage:
    """The first transient failure of a store, to log a store that stopped answering once."""

    since: float
    logged: bool = False


_outages: dict[str, _Outage] = {}
_outages_lock = threading.Lock()


def retrying(op: Callable[[], T], *, location: str, what: str = "storage",
             budget_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """``op()``, retried while it fails transiently (:func:`transient`) on an object store, with
    exponential back-off (0.5 s doubling to 20 s, jittered) for at most ``budget_s`` seconds
    (default ``RAYOT_STORAGE_RETRY_S``, 300). A local location is never retried. Past the budget:
    one :class:`StorageUnavailable` naming ``what``, the location, the time tried and the error.
    A store that stops answering is logged once as a warning, and once again when it answers."""
    if not is_remote(location):
        return op()
    budget = retry_budget_s() if budget_s is None else budget_s
    start = time.monotonic()
    delay, tries = 0.5, 0
    key = location.split("://", 1)[-1].split("/", 1)[0]
    while True:
        tries += 1
        try:
            out = op()
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not transient(exc):
                raise
            waited = time.monotonic() - start
            with _outages_lock:
                outage = _outages.setdefault(key, _Outage(time.time()))
                first = not outage.logged
                outage.logged = True
            if first:
                log.warning("%s location %s does not answer (%s); retrying for up to %.0f s",
                            what, location, _short(exc), budget)
            if waited >= budget:
                raise StorageUnavailable(
                    f"{what} location {location!r}: the store did not answer for {waited:.0f} s "
                    f"({tries} tries; {RETRY_ENV}={budget:g}): {_short(exc)}") from exc
            sleep(min(delay * random.uniform(0.8, 1.2), max(0.05, budget - waited)))
            delay = min(delay * 2, 20.0)
            continue
        with _outages_lock:
            outage = _outages.pop(key, None)
        if outage is not None and outage.logged:
            log.warning("%s location %s answers again (after %.0f s)", what, location, time.time() - outage.since)
        return out


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ------------------------------------------------------------------------------ conditional writes


@dataclass(frozen=True)
class Stored:
    """An object as a conditional store read it: its bytes, its version (S3's ETag, GCS's
    generation) and when it last changed (epoch seconds)."""

    data: bytes
    version: str
    mtime: float | None


class ConditionalStore:
    """Create-if-absent, replace-if-unchanged and delete-if-unchanged on one bucket; every method
    returns ``None`` / ``False`` when its condition fails, and raises on a storage error."""

    #: said in logs: how the store makes a write conditional
    how = ""

    def read(self, key: str) -> Stored | None:
        raise NotImplementedError

    def create(self, key: str, data: bytes) -> str | None:
        """Write ``data`` at ``key`` unless an object is there; the new version, or ``None``."""
        raise NotImplementedError

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        """Write ``data`` at ``key`` if the object there is still ``version``; the new version."""
        raise NotImplementedError

    def delete(self, key: str, version: str) -> bool:
        """Delete ``key`` if the object there is still ``version``; whether it did."""
        raise NotImplementedError


class S3Store(ConditionalStore):
    """S3's conditional requests through boto3 (``AWS_ENDPOINT_URL`` and the usual credentials)."""

    how = "S3 If-None-Match / If-Match"

    def __init__(self, bucket: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.session.Session().client(
            "s3", config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30))

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def read(self, key: str) -> Stored | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        modified = got.get("LastModified")
        return Stored(got["Body"].read(), got["ETag"], modified.timestamp() if modified else None)

    def _put(self, key: str, data: bytes, **condition: str) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)["ETag"]
        except Exception as exc:
            # 412: the condition failed; 409: a concurrent conditional write to the key won
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise

    def create(self, key: str, data: bytes) -> str | None:
        return self._put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        return self._put(key, data, IfMatch=version)

    def delete(self, key: str, version: str) -> bool:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=version)
        except Exception as exc:
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409",
                                   "NoSuchKey", "404"):
                return False
            raise
        return True


class GcsStore(ConditionalStore):
    """GCS's generation preconditions through google-cloud-storage (``STORAGE_EMULATOR_HOST`` for
    an emulator, spoken to anonymously; else application-default credentials)."""

    how = "GCS ifGenerationMatch"

    def __init__(self, bucket: str) -> None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="rayot", credentials=AnonymousCredentials())
        else:
            client = storage.Client()
        self.bucket = client.bucket(bucket)
        from google.api_core import exceptions

        self._failed = (exceptions.PreconditionFailed, exceptions.Conflict)
        self._missing = exceptions.NotFound

    def read(self, key: str) -> Stored | None:
        for _ in range(10):  # the metadata, then that generation's bytes (unless it changed meanwhile)
            blob = self.bucket.get_blob(key)
            if blob is None:
                return None
            generation, updated = blob.generation, blob.updated
            try:
                data = blob.download_as_bytes(if_generation_match=generation)
            except self._missing:
                return None
            except self._failed:
                continue  # replaced between the two requests: read again
            return Stored(data, str(generation), updated.timestamp() if updated else None)
        raise RayotError(f"gs://{self.bucket.name}/{key}: changed at every read")

    def _upload(self, key: str, data: bytes, generation: int) -> str | None:
        blob = self.bucket.blob(key)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
        except self._failed:
            return None
        return str(blob.generation)

    def create(self, key: str, data: bytes) -> str | None:
        return self._upload(key, data, 0)

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        return self._upload(key, data, int(version))

    def delete(self, key: str, version: str) -> bool:
        try:
            self.bucket.blob(key).delete(if_generation_match=int(version))
        except (*self._failed, self._missing):
            return False
        return True


_EXTRA = {"s3": ("boto3", "rayot[s3]"), "gs": ("google.cloud.storage", "rayot[gcs]")}
_stores: dict[tuple[str, str, tuple[tuple[str, str], ...]], ConditionalStore] = {}
_stores_lock = threading.Lock()


def conditional_store(location: str) -> tuple[ConditionalStore, str] | None:
    """The conditional store of an ``s3://`` or ``gs://`` location and the key prefix inside its
    bucket; ``None`` for any other location, or when the store's client is not installed."""
    scheme = scheme_of(location)
    if scheme not in _EXTRA:
        return None
    bucket, path = _bucket_and_path(location)
    prefix = path[len(bucket):].strip("/")
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k in ENDPOINT_VARIABLES))
    key = (scheme, bucket, env)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            try:
                store = S3Store(bucket) if scheme == "s3" else GcsStore(bucket)
            except ImportError:
                return None
            _stores[key] = store
    return store, prefix


def lease_guarantee(location: str) -> str | None:
    """``None`` when leases under ``location`` are atomic (a local folder, or an object store
    with its client installed); else the one line that says why they are best effort."""
    scheme = scheme_of(location)
    if scheme == "file":
        return None
    if scheme in _EXTRA:
        module, extra = _EXTRA[scheme]
        try:
            __import__(module)
        except ImportError:
            return (f"leases on {location} are best effort: without {module} (pip install '{extra}') "
                    "two sweeps writing in the same instant can both run a trial")
        return None
    return (f"leases on {location} are best effort: {scheme}:// has no conditional writes here, so two "
            "sweeps writing in the same instant can both run a trial")


def describe_store(location: str) -> str:
    """How leases under ``location`` are made atomic, for logs."""
    got = conditional_store(location)
    return got[0].how if got else ("local create-if-absent" if not is_remote(location) else "best effort")

