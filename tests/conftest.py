"""Fixtures shared by the training and sweep tests: a small synthetic world and a tiny model."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


def load_script(name: str):
    """``scripts/<name>.py`` of the repository imported as the module ``name`` (scripts/ is not a
    package); registered in ``sys.modules``, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# One intra-op thread: the tiny models gain nothing from more, and on a 2-core machine shared
# with Ray workers, two threads per process oversubscribe the cores (100x slower steps).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A data root holding a small rendering of the synthetic world (24 classes)."""
    from rayot.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, seed=0, n_train=6, n_val=2, n_test=6)
    return root


def tiny_overrides(root: Path, tmp: Path, **extra: object) -> list[str]:
    """Overrides for a seconds-long trial (the kit's tiny shapes, rayot.testing.tiny_overrides, of
    the method in ``extra``): tiny random model, 2 shots, 2 epochs; data in ``root``, output in
    ``tmp``."""
    from rayot.testing import tiny_overrides as tiny

    base = {**tiny(extra.get("method")), "data.root": str(root), "output.results": str(tmp / "results"),
            "output.checkpoints": str(tmp / "checkpoints"), **extra}
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def kit() -> Iterator[object]:
    """The conformance kit's shared runs (rayot.testing.Kit) for the whole session: each run the
    properties compare is made once, and one pair of rank processes serves every two-rank run,
    the kit's and test_sharding's and test_packing's."""
    from rayot.testing import Kit

    with Kit() as shared:
        yield shared


def rayot_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``rayot ARGS`` through the console entry point, as a user runs it: (exit status, stdout,
    stderr). 300 columns, so that only the table layout, never a line, depends on the width."""
    import rayot.cli

    monkeypatch.setattr(sys, "argv", ["rayot", *args])
    monkeypatch.setenv("COLUMNS", "300")
    code = 0
    try:
        rayot.cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_a_step_trains_only_the_learned_tensors(m, loss_of) -> None:
    """One SGD step on ``loss_of(m)``: the frozen CLIP stays in eval mode, gets no gradient and is
    unchanged; every learned tensor (and only those) gets a gradient and moves."""
    m.train()
    assert m.training and not m.clip.training
    before = {k: v.clone() for k, v in m.clip.state_dict().items()}
    learned_before = m.prompt_state_dict()
    params = m.trainable_parameters()
    assert {id(p) for p in params} == {id(p) for p in m.parameters() if p.requires_grad}
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    loss_of(m).backward()
    for name, p in m.clip.named_parameters():
        assert p.grad is None, name
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    opt.step()
    after = m.clip.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    for key, value in m.prompt_state_dict().items():
        assert not torch.equal(value, learned_before[key]), key


# --- one Ray for the session's sweeps --------------------------------------------------------------
#
# Starting a Ray takes 10-30 s on 2 cores. The tests whose claim is not about starting one (or
# about an embedded Ray) share a single `ray start --head` on loopback, started at its first use
# and stopped when the session ends: in-process sweeps connect to it (`ray_session`), `rayot
# sweep` joins it (`--address auto` with the client environment of `ray_head`). It has the
# embedded Ray's resources (every CPU this process may use, and driver slots), so a sweep runs on
# it as on its own embedded Ray. Its processes do not inherit a test's environment: a sweep
# carries the test switches with each trial (rayot.switches). It has Ray's token authentication
# with Ray's own token (~/.ray/auth_token), as every embedded Ray of this user has: each client
# says so (RAY_AUTH_MODE=token), which a client that names an address must.

HEAD_MARK = "RAYOT_TEST_CLUSTER"  # marks every process of one Ray started here (value: a token)


@dataclass(frozen=True)
class RayHead:
    address: str  # host:port of its GCS
    env: dict[str, str]  # what a client of it sets: RAY_ADDRESS (`--address auto` finds it), RAY_AUTH_MODE


def kill_marked(variable: str, value: str) -> None:
    """SIGKILL every process of a Ray started here (a raylet may start an agent while it is being
    killed: looked at twice), then wait for them to go."""
    for _ in range(2):
        for pid in processes_marked(variable, value):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        stop_marked(variable, value, grace_s=5)


def _node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def use_token_authentication() -> None:
    """Make this process a client of a Ray with token authentication, as an embedded ``ray.init``
    makes it (Ray reads the mode into its cached configuration, hence the refresh)."""
    from ray._raylet import Config

    if os.environ.get("RAY_AUTH_MODE") != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> Iterator[RayHead]:
    from rayot.emulators import free_port
    from rayot.sweep.cluster import DRIVER_SLOT, EMBEDDED_DRIVER_SLOTS, available_cpus

    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    port, mark = free_port(), uuid.uuid4().hex
    # a short folder of its own (Ray's Unix sockets live under it); free ports for what would
    # otherwise take fixed ones, which another Ray on this machine may hold
    temp_dir = tempfile.mkdtemp(prefix="rayot-t-", dir="/tmp")
    cmd = [ray, "start", "--head", f"--port={port}",
           f"--temp-dir={temp_dir}", f"--num-cpus={available_cpus()}",
           f"--resources={json.dumps({DRIVER_SLOT: EMBEDDED_DRIVER_SLOTS})}", "--include-dashboard=false",
           f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    address = f"{_node_ip()}:{port}"  # as Ray names it (a loopback address is resolved to it)
    client = {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                             env={**env, **client, HEAD_MARK: mark})
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield RayHead(address, client)
    finally:
        kill_marked(HEAD_MARK, mark)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_session(ray_head: RayHead) -> Iterator[RayHead]:
    """This process connected to the session's Ray for a module's in-process sweeps (which then
    run as on an embedded Ray: `run_sweep(address=None)` uses the Ray already connected)."""
    import ray

    use_token_authentication()
    ray.init(address=ray_head.address, log_to_driver=False)
    try:
        yield ray_head
    finally:
        ray.shutdown()


# --- no process of the test session outlives it ---------------------------------------------------
#
# Every process the tests start (sweeps, their embedded or joined Ray, Ray's workers and agents,
# Train controllers, object-store servers, local clusters) inherits this variable. When the session
# ends, whatever still carries it and no longer descends from this process (an orphan: its parent
# died or let it go) is given a grace period to exit and is then killed, and named in the summary:
# a leftover is seen and stopped at once, not found running an hour later.

SESSION_VARIABLE = "RAYOT_TEST_SESSION"
#: how long leftovers may take to exit on their own (Ray's agents outlive a killed Ray by a minute)
_GRACE_S = 10.0
_stopped: list[str] = []


def _parent(pid: int) -> int:
    try:  # the field after the command name, which may itself hold spaces and parentheses
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descends_from_me(pid: int) -> bool:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def processes_marked(variable: str, value: str, *, orphans_only: bool = False) -> dict[int, str]:
    """Live processes of this user whose environment holds ``variable=value`` (Linux /proc), by
    pid, with their command names; this process excluded, and with ``orphans_only`` its
    descendants too (what it started and still owns, such as an in-process Ray or wandb's service,
    is stopped by its own exit handlers)."""
    want = f"{variable}={value}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if want in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:  # gone, or another user's
            continue
    if orphans_only:
        found = {pid: name for pid, name in found.items() if not _descends_from_me(pid)}
    return found


def stop_marked(variable: str, value: str, grace_s: float, *, orphans_only: bool = False) -> dict[int, str]:
    """Wait up to ``grace_s`` for the marked processes to exit, SIGKILL those left; returns them."""
    deadline = time.monotonic() + grace_s
    left = processes_marked(variable, value, orphans_only=orphans_only)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_marked(variable, value, orphans_only=orphans_only)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ.setdefault(SESSION_VARIABLE, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if Path("/proc/self/environ").exists() and os.environ.get(SESSION_VARIABLE):
        left = stop_marked(SESSION_VARIABLE, os.environ[SESSION_VARIABLE], _GRACE_S, orphans_only=True)
        _stopped.extend(f"{name} (pid {pid})" for pid, name in sorted(left.items()))


def pytest_terminal_summary(terminalreporter) -> None:
    if _stopped:
        terminalreporter.write_line(
            f"stopped {len(_stopped)} process(es) that outlived the tests by {_GRACE_S:g} s: "
            + ", ".join(_stopped), yellow=True)
