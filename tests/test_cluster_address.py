"""`rayot sweep --address` joins an already-started Ray cluster instead of starting its own,
with results and checkpoints behind `file://` URIs (the code path of s3:// and gs://)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import processes_marked, stop_marked, tiny_overrides

pytestmark = pytest.mark.slow

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head():
    """`ray start --head` on this machine; the sweep joins it as `--address auto` would on a
    cluster node (what the RayJob and docs/cluster.md do)."""
    port = _free_port()
    start = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats"]
    # every process of this cluster carries the mark: stopping it kills them and nothing else
    # (`ray stop --force` would kill every Ray of this user on the machine)
    mark = uuid.uuid4().hex
    env = {**os.environ, "RAYOT_TEST_CLUSTER": mark}
    started = subprocess.run(start, capture_output=True, text=True, timeout=120, env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield "auto", env
    finally:
        for _ in range(2):  # a raylet may start an agent while it is being killed: look twice
            for pid in processes_marked("RAYOT_TEST_CLUSTER", mark):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            stop_marked("RAYOT_TEST_CLUSTER", mark, grace_s=5)


def test_sweep_joins_a_running_cluster_with_uri_storage(head, tmp_path, synth_root):
    address, env = head
    base: dict = {}
    for item in tiny_overrides(synth_root, tmp_path, **{"optim.epochs": 1}):
        key, value = item.split("=", 1)
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    results_uri, ckpt_uri = f"file://{tmp_path}/res", f"file://{tmp_path}/ck"
    spec = {"name": "joined", "base": base, "grid": {"method": ["zeroshot", "ivlp"]},
            "resources": {"num_workers": 1, "cpus_per_worker": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "rayot", "sweep", str(tmp_path / "s.yaml"), "--address", address,
           "--results", results_uri, "--checkpoints", ckpt_uri]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert f"joining the Ray cluster at {address}" in text
    assert "Started a local Ray instance" not in text  # it did not start its own
    files = sorted((tmp_path / "res").glob("*.parquet"))
    assert len(files) == 2
    assert {r["status"] for f in files for r in pq.read_table(f).to_pylist()} == {"done"}
    # the prompts of each trial, via the URI, under <checkpoints>/<trial id>/ as with rayot train
    assert sorted(p.parent.name for p in (tmp_path / "ck").glob("*/prompt.pt")) == [f.stem for f in files]
    assert "Base" in text and "HM" in text  # the sweep ends with the table
