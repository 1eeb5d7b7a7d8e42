"""Resumable HTTP downloads and checksums for `rayot data prepare` (standard library only).

A download writes ``<name>.part`` next to its destination and renames it only when every byte
has arrived. An interrupted download resumes with an HTTP range request (``Range: bytes=N-``);
a server that ignores the range (status 200) restarts it from zero. Nothing here decides what a
file should contain: :func:`verify_checksum` compares a recorded sum and deletes what fails.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rayot.errors import DataError

log = logging.getLogger(__name__)

# (stage, label, bytes done, bytes in all or None): stage is "download", "verify" or "extract".
Progress = Callable[[str, str, int, "int | None"], None]

CHUNK = 1 << 20
USER_AGENT = "rayot-data-prepare (+https://github.com/; python urllib)"


def drive_url(file_id: str) -> str:
    """The direct-download address of a public Google Drive file (large files included)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def drive_page(file_id: str) -> str:
    """The page where a person downloads a Google Drive file by hand."""
    return f"https://drive.google.com/file/d/{file_id}/view"


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(urls: tuple[str, ...], dest: Path, *, label: str, progress: Progress | None = None,
             retries: int = 3, timeout: float = 60.0, pause: float = 1.0) -> Path:
    """Fetch the first of ``urls`` that answers into ``dest``, resuming ``dest.part`` if present.

    A cut connection is retried ``retries`` times, each time resuming from the bytes already on
    disk. On failure the partial file is kept (the next run resumes from it) and a DataError names
    every address tried and what went wrong.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    errors: dict[str, str] = {}  # address -> its last failure
    for url in urls:
        for attempt in range(1, retries + 1):
            try:
                _fetch(url, part, label=label, progress=progress, timeout=timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and part.exists():
                    # The server cannot serve the range asked for: the part is stale; start over.
                    log.warning("%s: %s refused to resume (HTTP 416); restarting", label, url)
                    part.unlink()
                    continue
                errors[url] = f"HTTP {exc.code} {exc.reason}"
                break  # a 404 or 403 will not change on retry: next address
            except _DriveRefused as exc:
                errors[url] = str(exc)
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                have = part.stat().st_size if part.exists() else 0
                errors[url] = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                then = "" if attempt == retries else (
                    f"; resuming from {_human(have)}" if have else "; retrying")
                log.warning("%s: attempt %d of %d failed (%s)%s", label, attempt, retries,
                            errors[url], then)
                if attempt < retries:
                    time.sleep(pause * attempt)
                continue
            os.replace(part, dest)
            return dest
    kept = (f"; the partial file {part} ({_human(part.stat().st_size)}) is kept and the next run "
            "resumes from it") if part.exists() and part.stat().st_size else ""
    tried = "; ".join(f"{url}: {why}" for url, why in errors.items()) or "no address"
    raise DataError(f"{label}: download failed ({tried}){kept}")


class _DriveRefused(Exception):
    """Google Drive answered with a web page (quota exceeded, sign-in) instead of the file."""


def _fetch(url: str, part: Path, *, label: str, progress: Progress | None, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        ctype = resp.headers.get("Content-Type", "")
        if "google.com" in url and ctype.startswith("text/html"):
            raise _DriveRefused("Google Drive answered with a web page instead of the file "
                                "(download quota exceeded or sign-in asked)")
        resumed = have > 0 and resp.status == 206
        if have and not resumed:
            log.info("%s: %s does not resume (HTTP %d); restarting from zero", label, url,
                     resp.status)
        start = have if resumed else 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        if resumed:
            log.info("%s: resuming at %s", label, _human(start))
        else:
            log.info("%s: downloading %s%s", label, url, f" ({_human(total)})" if total else "")
        done = start
        with open(part, "ab" if resumed else "wb") as out:
            if progress is not None:
                progress("download", label, done, total)
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress("download", label, done, total)
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def file_digest(path: Path, algorithm: str, *, label: str, progress: Progress | None = None) -> str:
    """Hex digest of ``path`` (read in 1 MiB chunks, reported as stage "verify")."""
    digest = hashlib.new(algorithm)
    total, done = path.stat().st_size, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress("verify", label, done, total)
    return digest.hexdigest()


def verify_checksum(path: Path, checksum: str, *, label: str, delete: bool,
                    progress: Progress | None = None) -> None:
    """Compare ``path`` with ``checksum`` ("md5:<hex>" or "sha256:<hex>").

    On a mismatch the file is deleted when ``delete`` (a download of ours, never a user's file)
    and a DataError names the file, the expected and the actual sum.
    """
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm, label=label, progress=progress)
    if actual.lower() == expected.lower():
        log.debug("%s: %s %s ok", label, algorithm, actual)
        return
    what = "deleted it" if delete else "left it in place"
    if delete:
        path.unlink(missing_ok=True)
    raise DataError(f"{label}: checksum mismatch for {path}: expected {algorithm} {expected}, "
                    f"got {actual}; {what}")


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
