"""A search run by `rayot sweep` on a running Ray (the session's, joined with `--address`), as a
user runs it: it reads no test image and
no image of a novel class (nor a held-out class's training image), the same seed gives the same
samples, stops and choice, an interrupted search resumes instead of starting again, and the
chosen setting is then tested and reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rayot import search_records
from rayot.data import read_dataset
from rayot.data.validation import held_out_labels

pytestmark = pytest.mark.slow


def _write_spec(tmp: Path, root: Path) -> Path:
    spec = {
        "name": "search_test",
        "base": {"method": "prompt_ot", "device": "cpu",
                 "data": {"dataset": "synthetic", "root": str(root), "protocol": "base2novel", "shots": 2,
                          "num_workers": 0},
                 "model": {"name": "rayot-tiny", "pretrained": None},
                 "prompt": {"depth_text": 2, "depth_vision": 2},
                 "optim": {"epochs": 6, "batch_size": 4, "eval_batch_size": 64}},
        "grid": {"seed": [1, 2]},
        "grids": [{"method": "prompt_ot", "prompt_ot.lambda_ot": [0]}],
        "search": {"method": "prompt_ot", "space": {"prompt_ot.lambda_ot": {"loguniform": [0.1, 100]}},
                   "num_samples": 4, "seed": 7, "metric": "hm",
                   "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "pack": 2},
        # URIs: the sweep joins a Ray that it did not start (on a cluster, one of shared storage)
        "storage": {"results": f"file://{tmp / 'results'}", "checkpoints": f"file://{tmp / 'ckpt'}"},
    }
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def _sweep(head, spec: Path, *args: str, env: dict | None = None, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "rayot", "sweep", str(spec), "--address", "auto", *args]
    full_env = {**os.environ, **head.env, "COLUMNS": "200", **(env or {})}
    if popen:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)


def _record(location: Path) -> list[dict]:
    rows = search_records.read_search_records([str(location)]).to_pylist()
    return sorted(rows, key=lambda r: r["sample"])


def _summary(rows: list[dict]) -> list[tuple]:
    return [(r["params"], r["trial_id"], r["stopped_at"], r["epochs_trained"], r["chosen"]) for r in rows]


def test_a_search_reads_no_test_image_and_the_same_seed_gives_the_same_choice_even_when_interrupted(
        ray_head, tmp_path, synth_root):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    spec_a, spec_b = _write_spec(a, synth_root), _write_spec(b, synth_root)

    reads = tmp_path / "reads.log"
    out = _sweep(ray_head, spec_a, "--search-only", env={"RAYOT_TEST_IMAGE_READ_LOG": str(reads)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "chosen on validation" in out.stdout
    record = _record(a / "results")
    assert len(record) == 4 and sum(r["chosen"] for r in record) == 1
    for r in record:  # the search trials' rows: validation scores only
        rows = pq.read_table(a / "results" / f"{r['trial_id']}.parquet").to_pylist()
        assert {row["split"] for row in rows} == {"val_seen", "val_held_out"}
        assert (r["stopped_at"] is None) == (r["epochs_trained"] == 6)

    # no test image, no novel-class image, no training image of a held-out class was read
    splits = read_dataset("synthetic", synth_root)
    n_base = (len(splits.classnames) + 1) // 2
    held = set(held_out_labels(n_base, 0.5, 0, "synthetic"))
    read = set(reads.read_text().split())
    assert read, "the read log is empty: the instrumentation did not reach the Ray workers"

    def path(item):
        return str((splits.image_root / item.impath).resolve())

    assert not read & {path(it) for it in splits.test}
    assert not read & {path(it) for it in splits.train + splits.val if it.label >= n_base}
    assert not read & {path(it) for it in splits.train if it.label in held}
    assert read & {path(it) for it in splits.val if it.label in held}  # the held-out classes were scored

    # the same sweep in another folder, interrupted (Ctrl-C) in its search once its first trials
    # finished, then run again: the search resumes, then the grid and the chosen setting are tested
    proc = _sweep(ray_head, spec_b, popen=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((b / "results").glob("*.parquet")):
        time.sleep(0.5)
    assert list((b / "results").glob("*.parquet")), "no search trial finished within 300 s"
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    before = {p.name: p.stat().st_mtime_ns for p in (b / "results").glob("*.parquet")}
    assert 0 < len(before) < 4 or not _record(b / "results")  # interrupted before the search ended
    again = _sweep(ray_head, spec_b)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for name, mtime in before.items():  # what finished before the interruption was not run again
        assert (b / "results" / name).stat().st_mtime_ns == mtime, name
    resumed = _record(b / "results")
    assert _summary(resumed) == _summary(record)  # same samples, stops and choice as the first folder's

    chosen = next(r for r in resumed if r["chosen"])
    retrain = json.loads(chosen["retrain_trial_ids"])
    assert len(retrain) == 2
    for tid in retrain:
        rows = pq.read_table(b / "results" / f"{tid}.parquet").to_pylist()
        assert {r["split"] for r in rows} == {"base", "novel"}
        assert json.loads(rows[0]["config"])["prompt_ot"]["lambda_ot"] == json.loads(chosen["params"])["prompt_ot.lambda_ot"]
    assert "chosen on validation" in again.stdout  # the sweep's closing table has the row
