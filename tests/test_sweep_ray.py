"""Sweeps on a real local Ray: results, failures, idempotence, parity with `rayot train`,
resumption after a killed worker, and two data-parallel workers (gloo) giving the one-worker result."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides
from rich.console import Console

from rayot import config as C
from rayot import results
from rayot.sweep.runner import run_sweep
from rayot.sweep.spec import expand, load_spec
from rayot.switches import FAULT
from rayot.train import run_trial

pytestmark = pytest.mark.slow


def _spec(tmp_path, synth_root, grid: str, resources: str = "{num_workers: 1, cpus_per_worker: 1}"):
    base = {}
    for item in tiny_overrides(synth_root, tmp_path):
        key, value = item.split("=", 1)
        C.set_dotted(base, key, None if value == "null" else value)
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t"}) + "base: " + yaml.safe_dump(_typed(base), default_flow_style=True)
                    + grid + f"resources: {resources}\n"
                    + f"storage: {{results: {tmp_path / 'results'}, checkpoints: {tmp_path / 'ckpt'}}}\n")
    return load_spec(path)


def _typed(tree):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = _typed(v)
        elif isinstance(v, str) and v.isdigit():
            out[k] = int(v)
        else:
            out[k] = v
    return out


def _accuracies(location, tid):
    rows = pq.read_table(f"{location}/{tid}.parquet").to_pylist()
    return {r["split"]: (r["n_correct"], r["n_test"]) for r in rows}


def test_sweep_records_failures_matches_train_and_second_run_is_a_no_op(ray_session, tmp_path, synth_root):
    spec = _spec(tmp_path, synth_root, "grid: {method: [zeroshot, ivlp]}\n"
                 "grids: [{dataset: synthetic}, {dataset: dtd}]\n")
    trials = expand(spec)
    assert len(trials) == 4
    summary = run_sweep(spec, trials, address=None, console=Console(quiet=True))
    status = {(s.cfg.data.dataset, s.cfg.method): s.status for s in summary.states}
    assert status == {("synthetic", "zeroshot"): "done", ("synthetic", "ivlp"): "done",
                      ("dtd", "zeroshot"): "failed", ("dtd", "ivlp"): "failed"}
    for s in summary.failed:  # recorded with the error and a log, the others finished
        assert "dtd" in s.error and os.path.isfile(s.log)
        row = pq.read_table(f"{tmp_path}/results/{s.trial_id}.parquet").to_pylist()[0]
        assert row["status"] == "failed" and "dtd" in row["error"]

    # the sweep's trial gives the same accuracy as `rayot train` of the same configuration
    ivlp = next(t for t in trials if t.method == "ivlp" and t.data.dataset == "synthetic")
    direct = run_trial(ivlp)
    assert _accuracies(f"{tmp_path}/results", C.trial_id(ivlp)) == {
        e.split: (e.n_correct, e.n_test) for e in direct.evals
    }

    # a second run touches nothing that is done; failed trials are retried unless skipped
    before = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "results").glob("*.parquet")}
    again = run_sweep(spec, trials, address=None, console=Console(quiet=True), retry_failed=False)
    assert {s.status for s in again.states} == {"skipped"}
    assert {p: os.stat(p).st_mtime_ns for p in (tmp_path / "results").glob("*.parquet")} == before
    assert results.finished_trials(str(tmp_path / "results")) == {
        s.trial_id: s.status for s in summary.states
    }


def test_a_killed_worker_resumes_from_its_checkpoint_and_two_workers_give_the_one_worker_result(
        ray_session, tmp_path, synth_root, monkeypatch):
    """A trial whose worker is killed after epoch 1 resumes from that checkpoint and ends where
    `rayot train` of it ends. `num_workers: 2` shares the trial's batches, classes and test set
    between two Ray Train workers (gloo): the same experiment as that one worker, to float32
    rounding. (One sweep of each: the resumed one-worker run is the reference of both claims.)"""
    import torch

    found = {}
    for n, resources in ((1, "{num_workers: 1, cpus_per_worker: 1}"), (2, "{num_workers: 2, cpus_per_worker: 0.5}")):
        (tmp_path / str(n)).mkdir()
        spec = _spec(tmp_path / str(n), synth_root, "grid: {method: [prompt_ot]}\n", resources=resources)
        (trial,) = expand(spec)
        assert trial.world_size == n
        marker = tmp_path / "fault.txt"
        if n == 1:
            monkeypatch.setenv(FAULT, f"1:{marker}")
        else:
            monkeypatch.delenv(FAULT)
        summary = run_sweep(spec, [trial], address=None, console=Console(quiet=True))
        assert [s.status for s in summary.states] == ["done"], summary.states[0].error
        tid = C.trial_id(trial)
        rows = pq.read_table(f"{tmp_path / str(n)}/results/{tid}.parquet").to_pylist()
        prompt = torch.load(tmp_path / str(n) / "ckpt" / tid / "prompt.pt", weights_only=True)["prompt"]
        found[n] = (tid, rows, prompt)
        if n == 1:
            assert marker.read_text().splitlines() == ["killed after epoch 1", "resumed after epoch 1"]
            direct = run_trial(trial)  # uninterrupted: the resumed run ends in the same place
            assert _accuracies(f"{tmp_path / '1'}/results", tid) == {
                e.split: (e.n_correct, e.n_test) for e in direct.evals
            }
    (tid1, rows1, prompt1), (tid2, rows2, prompt2) = found[1], found[2]
    assert tid1 == tid2  # one experiment, one id
    keys = ("protocol", "split", "n_correct", "n_test", "n_classes", "accuracy", "status")
    assert [{k: r[k] for k in keys} for r in rows2] == [{k: r[k] for k in keys} for r in rows1]
    assert {r["split"] for r in rows2} == {"base", "novel"} and all(r["n_test"] == 72 for r in rows2)
    assert prompt1.keys() == prompt2.keys()
    assert max((prompt1[k] - prompt2[k]).abs().max().item() for k in prompt1) <= 1e-5
