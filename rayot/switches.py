"""Test and fault switches: environment variables, all named ``RAYOT_TEST_*``, that the tests and
``scripts/reliability.py`` set to watch a run or to break it. None of them is a user setting
(those, such as ``RAYOT_LEASE_TTL_S`` and ``RAYOT_STORAGE_RETRY_S``, live beside what they set).

- ``RAYOT_TEST_FAULT=EPOCH:MARKER``: rank 0 of a trial writes ``killed after epoch EPOCH`` to the
  file MARKER and dies (``os._exit(1)``, as a lost node would) right after checkpointing EPOCH,
  once: not when MARKER exists. A run that resumes appends ``resumed after epoch N`` to MARKER.
  An EPOCH past the last kills nothing and only notes where runs resumed.
- ``RAYOT_TEST_RUN_LOG=FILE``: each Tune trial appends ``<trial id> <pid>`` for every trial it is
  about to train (not those it skips), to count how often a trial was run.
- ``RAYOT_TEST_IMAGE_READ_LOG=FILE``: every image :func:`rayot.data.dataset.load_image` is asked
  for, its absolute path, one line each (one append-mode write, so processes can share the file).
- ``RAYOT_TEST_SHUTDOWN_MARK=FILE``: created as a sweep begins to stop Ray after a Ctrl-C, so a
  test can send its second Ctrl-C while Ray stops.

A sweep may join a Ray that was started before it (a cluster, or a test session's shared Ray),
whose processes do not inherit the sweep's environment. So the sweep carries its switches with
every trial (:func:`carried`, in the trial's parameters), and each Tune trial and each training
rank takes them over (:func:`adopt`) before anything reads them. The test suite's marks of the
processes it starts (``RAYOT_TEST_SESSION``, ``RAYOT_TEST_CLUSTER``: tests/conftest.py) share the
prefix and travel the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

PREFIX = "RAYOT_TEST_"
FAULT = PREFIX + "FAULT"
RUN_LOG = PREFIX + "RUN_LOG"
IMAGE_READ_LOG = PREFIX + "IMAGE_READ_LOG"
SHUTDOWN_MARK = PREFIX + "SHUTDOWN_MARK"


def value(name: str) -> str | None:
    """The switch ``name``'s value; None when it is unset or empty."""
    return os.environ.get(name) or None


def carried() -> dict[str, str]:
    """Every switch set in this process, to travel with a trial."""
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


def adopt(switches: Mapping[str, str]) -> None:
    """Make ``switches`` (from :func:`carried`) this process's own, exactly: a switch that the
    process inherited from whoever started Ray and that the sweep did not set is removed."""
    for name in [k for k in os.environ if k.startswith(PREFIX) and k not in switches]:
        del os.environ[name]
    os.environ.update(switches)
