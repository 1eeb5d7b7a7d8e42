"""`rayot sweep --address` joins an already-started Ray cluster instead of starting its own,
with results and checkpoints behind `file://` URIs (the code path of s3:// and gs://)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import tiny_overrides

pytestmark = pytest.mark.slow


def test_sweep_joins_a_running_cluster_with_uri_storage(ray_head, tmp_path, synth_root):
    # the session's `ray start --head` (tests/conftest.py); the sweep joins it as `--address auto`
    # does on a cluster node (what the RayJob and docs/cluster.md do)
    address, env = "auto", {**os.environ, **ray_head.env}
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
