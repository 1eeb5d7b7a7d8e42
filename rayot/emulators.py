"""Object-store servers on loopback, for the tests, the reliability scripts and the benchmarks.

rayot writes results, checkpoints, failure logs and leases to ``s3://`` and ``gs://`` locations.
To run that path for real on one machine, this module starts the two protocols' servers as
child processes, each on a free port of 127.0.0.1, and says which environment variables point a
client at them (the same variables that point a client at any S3- or GCS-compatible endpoint):

- **S3**: moto's server (``moto[server]``, pure Python). It implements the S3 REST API with the
  conditional writes the leases rely on (``If-None-Match: *`` and ``If-Match: <ETag>`` on PUT,
  ``If-Match`` on DELETE). Clients: ``AWS_ENDPOINT_URL`` plus dummy credentials.
- **GCS**: ``gcp-storage-emulator`` (pure Python), the JSON API that google-cloud-storage and
  pyarrow's GCS filesystem speak. It ignores generation preconditions, so this module serves it
  with a request handler that enforces ``ifGenerationMatch`` (and ``ifGenerationNotMatch``) on
  object writes and deletes, answering 412 as GCS does; its server handles one request at a time,
  which makes check-and-write one step. Clients: ``STORAGE_EMULATOR_HOST``.

Either server can be put behind a :class:`Proxy` (``proxy=True``), whose :meth:`Proxy.down` and
:meth:`Proxy.up` take the store off the network and bring it back with its objects intact: the
"object store stopped for a while" fault. A server dies with the process that started it (and
:meth:`StoreServer.stop` stops it at once). ``python -m rayot.emulators s3|gcs`` runs one in the
foreground for manual use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from rayot.errors import RayotError

log = logging.getLogger(__name__)

#: Dummy credentials and region for the S3 server (moto accepts any).
S3_CLIENT_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM when the process that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Proxy:
    """A TCP forwarder from a port of 127.0.0.1 to ``target``; :meth:`down` closes its listening
    socket and every open connection (clients get "connection refused"), :meth:`up` listens again
    on the same port. ``delay_s`` holds every chunk a client sends that long: with a server that
    answers a request per connection (moto), a round trip added to every request, concurrent
    requests waiting side by side as on a network."""

    def __init__(self, target_port: int, port: int | None = None, *, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(128)
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True, name="rayot-proxy").start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b, delay in ((client, upstream, self.delay_s), (upstream, client, 0.0)):
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                threading.Thread(target=self._pipe, args=(a, b, delay), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delay: float = 0.0) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


@dataclass
class StoreServer:
    """A running object-store server: ``kind`` is ``"s3"`` or ``"gcs"``."""

    kind: str
    port: int  # where clients connect (the proxy's port when there is one)
    process: subprocess.Popen
    proxy: Proxy | None = None
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "s3" if self.kind == "s3" else "gs"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point a client (rayot, boto3, google-cloud-storage,
        pyarrow) at this server."""
        if self.kind == "s3":
            return {"AWS_ENDPOINT_URL": self.endpoint, **S3_CLIENT_ENV}
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def uri(self, bucket: str, path: str = "") -> str:
        return f"{self.scheme}://{bucket}/{path.strip('/')}".rstrip("/")

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (a valid bucket name: lower case, 3-63 characters); its URI."""
        if self.kind == "s3":
            req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        else:
            body = json.dumps({"name": name}).encode()
            req = urllib.request.Request(f"{self.endpoint}/storage/v1/b?project=rayot", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already there
                raise RayotError(f"{self.kind} server: cannot create bucket {name!r}: {exc}") from exc
        self.buckets.append(name)
        return self.uri(name)

    @contextlib.contextmanager
    def environment(self):
        """Set :attr:`env` in ``os.environ`` for the ``with`` block (and restore it after)."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.down()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> StoreServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_until_answering(url: str, process: subprocess.Popen, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RayotError(f"{what} exited at start-up with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers, if with an error
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RayotError(f"{what} did not answer at {url} within {timeout_s:g} s")


def _start(kind: str, argv: list[str], probe: str, port: int, proxy: bool, log_path: str | None) -> StoreServer:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if log_path:
        out.close()
    _wait_until_answering(f"http://127.0.0.1:{port}{probe}", process, f"the {kind} server")
    front = Proxy(port) if proxy else None
    server = StoreServer(kind, front.port if front else port, process, front)
    log.info("%s server on %s (pid %d)", kind, server.endpoint, process.pid)
    return server


def start_s3(*, buckets: tuple[str, ...] = (), proxy: bool = False, log_path: str | None = None) -> StoreServer:
    """moto's S3 server on a free port (``pip install 'moto[server]'``), with ``buckets`` made."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise RayotError("the S3 test server needs moto: pip install 'moto[server]'") from exc
    port = free_port()
    server = _start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    "/moto-api/", port, proxy, log_path)
    return _with_buckets(server, buckets)


def start_gcs(*, buckets: tuple[str, ...] = (), proxy: bool = False, log_path: str | None = None) -> StoreServer:
    """The GCS emulator, with generation preconditions enforced, on a free port
    (``pip install gcp-storage-emulator``), with ``buckets`` made."""
    try:
        import gcp_storage_emulator  # noqa: F401
    except ImportError as exc:
        raise RayotError("the GCS test server needs gcp-storage-emulator: pip install gcp-storage-emulator") from exc
    port = free_port()
    server = _start("gcs", [sys.executable, "-m", "rayot.emulators", "gcs", "--port", str(port)],
                    "/storage/v1/b?project=rayot", port, proxy, log_path)
    return _with_buckets(server, buckets)


def _with_buckets(server: StoreServer, buckets: tuple[str, ...]) -> StoreServer:
    """``server`` with ``buckets`` made; stopped when one cannot be made (a bad name)."""
    try:
        for b in buckets:
            server.make_bucket(b)
    except BaseException:
        server.stop()
        raise
    return server


def start(kind: str, **kwargs) -> StoreServer:
    """:func:`start_s3` or :func:`start_gcs` by ``kind`` (``"s3"`` or ``"gcs"``)."""
    return {"s3": start_s3, "gcs": start_gcs}[kind](**kwargs)


# ------------------------------------------------------------------ the GCS emulator's preconditions


class _PreconditionFailed(Exception):
    pass


def _serve_gcs(port: int) -> None:  # pragma: no cover - runs in the server's process
    """Run gcp-storage-emulator on 127.0.0.1:``port`` with generation preconditions enforced."""
    from gcp_storage_emulator import server as gse
    from gcp_storage_emulator.storage import Storage

    current: dict[str, list[str]] = {}  # the query of the request being handled (one at a time)

    def check(storage: Storage, bucket: str, name: str) -> None:
        obj = storage.objects.get(bucket, {}).get(name)
        generation = obj["generation"] if obj else "0"
        want = current.get("ifGenerationMatch")
        if want and want[0] != generation:
            raise _PreconditionFailed
        unwanted = current.get("ifGenerationNotMatch")
        if unwanted and unwanted[0] == generation:
            raise _PreconditionFailed

    create, delete = Storage.create_file, Storage.delete_file

    def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
        check(self, bucket_name, file_name)
        return create(self, bucket_name, file_name, content, file_obj, file_id)

    def delete_file(self, bucket_name, file_name):
        check(self, bucket_name, file_name)
        return delete(self, bucket_name, file_name)

    Storage.create_file, Storage.delete_file = create_file, delete_file

    class Handler(gse.RequestHandler):
        def _route(self, method: str) -> None:
            current.clear()
            current.update(urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query))
            try:
                gse.Router(self).handle(method)
            except _PreconditionFailed:
                body = json.dumps({"error": {"code": 412, "message": "conditionNotMet",
                                             "errors": [{"reason": "conditionNotMet"}]}}).encode()
                self.send_response(412)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def do_GET(self):
            self._route(gse.GET)

        def do_POST(self):
            self._route(gse.POST)

        def do_DELETE(self):
            self._route(gse.DELETE)

        def do_PUT(self):
            self._route(gse.PUT)

        def do_PATCH(self):
            self._route(gse.PATCH)

    gse.RequestHandler = Handler  # what the emulator's server thread builds its handlers from
    logging.basicConfig(level=logging.WARNING)
    gse.create_server("127.0.0.1", port, in_memory=True).run()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a manual tool
    p = argparse.ArgumentParser(prog="python -m rayot.emulators", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=("s3", "gcs"))
    p.add_argument("--port", type=int, default=0, help="serve on this port (gcs: in this process)")
    p.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = p.parse_args(argv)
    if args.kind == "gcs" and args.port and not args.bucket:
        _serve_gcs(args.port)
        return
    server = start(args.kind, buckets=tuple(args.bucket))
    print(" ".join(f"{k}={v}" for k, v in server.env.items()), flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
