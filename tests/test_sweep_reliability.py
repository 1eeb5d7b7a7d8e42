"""The sweep layer's checks and bookkeeping without a Ray: cluster sizing and fit, concurrency,
storage guards, overrides of swept keys, trial ids by world size, cross-rank agreement on a
failure, resumption checks, training time over a resume, the live view, and failure records."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import tiny_overrides
from rich.console import Console

from rayot import config as C
from rayot import results
from rayot.errors import ConfigError, DataError, RayotError, TrainingError
from rayot.sweep import cluster
from rayot.sweep.runner import _reconcile, _tune_errors
from rayot.sweep.spec import Resources, expand, load_spec, replaced_axes
from rayot.sweep.view import LiveView, TrialState
from rayot.train import PeerFailure, TrialHooks, run_trial
from rayot.train.collectives import agree as _agree
from rayot.train.record import record_failure

# ----------------------------------------------------------------------------- cluster


def test_cgroup_quota_limits_the_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cluster._cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cluster._cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cluster._cgroup_cpu_quota(tmp_path) == 3.0
    assert 1 <= cluster.available_cpus() <= (__import__("os").cpu_count() or 1)


def test_probe_of_a_closed_port_fails_fast():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RayotError, match=rf"nothing answers at 127.0.0.1:{port}"):
        cluster._probe(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < cluster.PROBE_TIMEOUT_S + 1
    with pytest.raises(RayotError, match="expected host:port"):
        cluster._probe("nonsense")


def _capacity(total, largest, maximum=None):
    return cluster.Capacity(total, largest, maximum)


def test_a_trial_that_cannot_fit_is_refused_naming_the_numbers():
    two_cpus = _capacity({"CPU": 2.0}, {"CPU": 2.0, "GPU": 0.0})
    cluster.check_fits(Resources(num_workers=2, cpus_per_worker=1), two_cpus, embedded=True)
    with pytest.raises(RayotError, match=r"2 worker\(s\) × 1.5 CPU = 3 CPU, but the embedded Ray has 2"):
        cluster.check_fits(Resources(num_workers=2, cpus_per_worker=1.5), two_cpus, embedded=True)
    with pytest.raises(RayotError, match="worker needs 1 GPU but the largest node has 0"):
        cluster.check_fits(Resources(gpus_per_worker=1), two_cpus, embedded=False)
    # an autoscaling cluster: judged by what its node types can give, not by its head alone
    scaling = _capacity({"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 34.0, "GPU": 4.0})
    cluster.check_fits(Resources(num_workers=4, gpus_per_worker=1), scaling, embedded=False)
    with pytest.raises(RayotError, match="the cluster can grow to 4"):
        cluster.check_fits(Resources(num_workers=5, gpus_per_worker=1), scaling, embedded=False)


def test_concurrency_counts_workers_and_drivers():
    two_cpus = _capacity({"CPU": 2.0, "driver_slot": 1024.0}, {"CPU": 2.0})
    one_cpu_trial = Resources(num_workers=1, cpus_per_worker=1)
    assert cluster.concurrency(one_cpu_trial, two_cpus, {"driver_slot": 1}, None) == 2
    # drivers on CPU: 2 trials would need 2.02 CPUs
    assert cluster.concurrency(one_cpu_trial, two_cpus, {"CPU": 0.01}, None) == 1
    gpus = _capacity({"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0})
    # 8 GPUs fit 8 trials, but their workers' CPUs fit only 4
    assert cluster.concurrency(Resources(gpus_per_worker=1, cpus_per_worker=4), gpus, {"CPU": 0.01}, None) == 3
    assert cluster.concurrency(Resources(gpus_per_worker=1, cpus_per_worker=2), gpus, {}, None) == 8
    assert cluster.concurrency(one_cpu_trial, two_cpus, {}, 5) == 5


def test_a_cluster_refuses_local_paths():
    cluster.check_storage("results", "results", embedded=True)
    cluster.check_storage("s3://bucket/r", "results", embedded=False)
    with pytest.raises(RayotError, match="results location 'results' is a local path"):
        cluster.check_storage("results", "results", embedded=False)


# ----------------------------------------------------------------------------- sweep spec


def _spec_file(tmp_path, synth_root, grid, resources=None):
    base: dict = {}
    for item in tiny_overrides(synth_root, tmp_path):
        key, value = item.split("=", 1)
        C.set_dotted(base, key, yaml.safe_load(value))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": base, "grid": grid,
                                    "resources": resources or {"num_workers": 1}}))
    return load_spec(path)


def test_set_replaces_a_swept_axis_and_says_so(tmp_path, synth_root):
    spec = _spec_file(tmp_path, synth_root, {"seed": [1, 2], "method": ["zeroshot", "ivlp"]})
    assert len(expand(spec)) == 4
    sets = {"seed": 1, "output.results": str(tmp_path / "elsewhere")}
    trials = expand(spec, sets=sets)
    assert sorted((t.seed, t.method) for t in trials) == [(1, "ivlp"), (1, "zeroshot")]
    assert {t.output.results for t in trials} == {str(tmp_path / "elsewhere")}
    assert replaced_axes(spec, sets) == ["grid axis seed [1, 2] replaced by --set seed=1"]
    # the command-line flag wins over --set; an empty location is an error
    assert {t.output.results for t in expand(spec, results="/r", sets=sets)} == {"/r"}
    with pytest.raises(ConfigError, match="output.results"):
        expand(spec, sets={"output.results": ""})
    with pytest.raises(ConfigError, match="world_size"):
        expand(spec, sets={"world_size": 2})


def test_the_worker_count_is_not_part_of_the_trial_id(tmp_path, synth_root):
    # N workers run the one-worker experiment (tests/test_sharding.py): one id, that of `rayot train`
    (one,) = expand(_spec_file(tmp_path, synth_root, {"method": ["ivlp"]}))
    (two,) = expand(_spec_file(tmp_path, synth_root, {"method": ["ivlp"]}, {"num_workers": 2}))
    assert one.world_size == 1 and two.world_size == 2
    direct = C.load_config(None, tiny_overrides(synth_root, tmp_path, method="ivlp"))
    assert C.trial_id(one) == C.trial_id(direct) == C.trial_id(two)
    with pytest.raises(ConfigError, match="4 is not divisible by the 3 workers"):
        expand(_spec_file(tmp_path, synth_root, {"method": ["ivlp"]}, {"num_workers": 3}))


# ----------------------------------------------------------------------------- agreement


class _Ranks(TrialHooks):
    """A rank of a pretend 2-rank group whose collective result is given."""

    def __init__(self, rank: int, first_failed: int | None) -> None:
        self.rank, self.world_size, self.first = rank, 2, first_failed

    def first_failed_rank(self, failed: bool) -> int | None:
        return self.first


def test_agreement_raises_the_own_error_where_it_failed_and_peer_failure_elsewhere():
    error = DataError("synthetic: cannot decode image x.png")
    with pytest.raises(DataError, match="x.png"):
        _agree(_Ranks(1, 1), error)
    with pytest.raises(PeerFailure, match="rank 1 of this trial failed"):
        _agree(_Ranks(0, 1), None)
    _agree(_Ranks(0, None), None)  # nobody failed
    with pytest.raises(DataError):
        _agree(TrialHooks(), error)  # one process: its own error


class _Resume(TrialHooks):
    def __init__(self, state):
        self.state = state

    def resume_state(self):
        return self.state


def _trial(synth_root, tmp_path, **extra):
    return C.load_config(None, tiny_overrides(synth_root, tmp_path, **{"method": "ivlp", **extra}))


def test_a_checkpoint_of_another_trial_or_world_size_is_refused(synth_root, tmp_path):
    cfg = _trial(synth_root, tmp_path)
    foreign = {"trial_id": "0123456789ab", "world_size": 1, "epoch": 0, "prompt": {}, "optimizer": {}}
    with pytest.raises(TrainingError, match="epoch checkpoint of trial 0123456789ab"):
        run_trial(cfg, hooks=_Resume(foreign))
    old = {"epoch": 0, "prompt": {}, "optimizer": {}}  # written before checkpoints said whose
    with pytest.raises(TrainingError, match=r"\(unknown\)"):
        run_trial(cfg, hooks=_Resume(old))
    wrong_size = {**foreign, "trial_id": C.trial_id(cfg), "world_size": 2}
    with pytest.raises(TrainingError, match="on 2 worker"):
        run_trial(cfg, hooks=_Resume(wrong_size))


def test_training_time_sums_over_a_resume(synth_root, tmp_path):
    cfg = _trial(synth_root, tmp_path)
    saved = []

    class Keep(TrialHooks):
        def save_epoch(self, epoch, state, metrics):
            saved.append(state)

    first = run_trial(cfg, hooks=Keep())
    assert [s["epoch"] for s in saved] == [0, 1]
    assert saved[-1]["train_seconds"] == pytest.approx(first.train_seconds, rel=0.5)
    resumed_state = {**saved[0], "train_seconds": 1000.0}
    resumed = run_trial(cfg, hooks=_Resume(resumed_state))
    assert resumed.train_seconds > 1000.0
    assert resumed.prompt_state.keys() == first.prompt_state.keys()


def test_non_finite_loss_is_agreed_on(synth_root, tmp_path, monkeypatch):
    from rayot.methods import Objective
    from rayot.methods.ivlp import IVLP

    cfg = _trial(synth_root, tmp_path)
    asked = []

    class Ask(TrialHooks):
        def first_failed_rank(self, failed):
            asked.append(failed)
            return super().first_failed_rank(failed)

    def nan_loss(self, batch, settings):
        return Objective(batch.output.logits.sum() * float("nan"))

    monkeypatch.setattr(IVLP, "loss", nan_loss)
    with pytest.raises(TrainingError, match="non-finite loss at epoch 1"):
        run_trial(cfg, hooks=Ask())
    assert asked == [True]  # one process asks only on a failure, at the first loss check


# ----------------------------------------------------------------------------- live view


def _trial_obj(tid, members=None):
    """A Tune trial as the live view sees it: a pack of trials ``members`` (default: ``tid`` alone)."""
    return SimpleNamespace(config={"trial": {"trial_id": tid,
                                             "members": [{"trial_id": m} for m in members or [tid]]}})


def test_live_view_tells_waiting_running_and_evaluating_apart(synth_root, tmp_path):
    ivlp = _trial(synth_root, tmp_path)
    zs = _trial(synth_root, tmp_path, method="zeroshot")
    states = [TrialState("a", ivlp), TrialState("b", zs)]
    console = Console(record=True, width=200, force_terminal=False)
    view = LiveView(states, 2, console)
    view.on_trial_start(0, [], _trial_obj("a"))
    view.on_trial_start(0, [], _trial_obj("b"))
    assert [s.status for s in states] == ["waiting", "waiting"]
    shown = Console(record=True, width=200)
    shown.print(view.render())
    assert shown.export_text().count("waiting for workers") == 2
    view.on_trial_result(0, [], _trial_obj("a"), {"status": "running"})
    view.on_trial_result(0, [], _trial_obj("a"), {"status": "running", "epoch": 1})
    view.on_trial_result(0, [], _trial_obj("b"), {"status": "running"})
    shown = Console(record=True, width=200)
    shown.print(view.render())
    text = shown.export_text()
    assert "1/2" in text and "evaluating" in text and "0/0" not in text
    view.on_trial_result(0, [], _trial_obj("b"), {"status": "done"})
    view.on_trial_result(0, [], _trial_obj("a"), {"status": "failed", "error": "boom", "log": "/l"})
    lines = console.export_text().splitlines()  # off a terminal: one line per event
    assert len(lines) == 6 and lines[-1].endswith("failed after 0s: boom")
    assert "[1/2 done, 1 failed]" in lines[-1]


def test_live_view_follows_each_member_of_a_pack(synth_root, tmp_path):
    states = [TrialState(t, _trial(synth_root, tmp_path, seed=i)) for i, t in enumerate("abc", 1)]
    console = Console(record=True, width=200, force_terminal=False)
    view = LiveView(states, 2, console)
    pack = _trial_obj("pack-1", ["a", "b"])
    view.on_trial_start(0, [], pack)
    view.on_trial_start(0, [], _trial_obj("c"))
    assert [s.status for s in states] == ["waiting"] * 3
    view.on_trial_result(0, [], pack, {"status": "running"})
    view.on_trial_result(0, [], pack, {"status": "running", "epoch": 1,
                                       "members": {"a": {"loss": 1.0}, "b": {"loss": 2.0}}})
    assert [(s.status, s.epoch) for s in states] == [("running", 1), ("running", 1), ("waiting", 0)]
    view.on_trial_result(0, [], pack, {"status": "failed", "members": {
        "a": {"status": "done"}, "b": {"status": "failed", "error": "non-finite loss", "log": "/l/b.log"}}})
    assert [s.status for s in states[:2]] == ["done", "failed"]
    assert states[1].error == "non-finite loss" and states[1].log == "/l/b.log" and states[0].error == ""
    view.on_trial_error(0, [], _trial_obj("c"))
    assert states[2].status == "failed"


# ----------------------------------------------------------------------------- failure records


def test_a_failure_never_replaces_a_done_result_and_a_dead_driver_gets_a_row_and_a_log(synth_root, tmp_path):
    from rayot.train.rows import EvalResult, result_rows

    done_cfg, lost_cfg = _trial(synth_root, tmp_path), _trial(synth_root, tmp_path, seed=2)
    rows = result_rows(done_cfg, [EvalResult("base2novel", "synthetic", "base", 1, 2, 12)], train_seconds=1.0)
    results.write_trial_rows(done_cfg.output.results, C.trial_id(done_cfg), rows)
    path = record_failure(done_cfg, RayotError("late failure"), "t")
    assert results.trial_status(done_cfg.output.results, C.trial_id(done_cfg)) == "done"
    assert path is not None  # the log is still written

    states = [TrialState(C.trial_id(done_cfg), done_cfg, "running"), TrialState(C.trial_id(lost_cfg), lost_cfg, "running")]
    _reconcile(states, lost_cfg.output.results, {C.trial_id(lost_cfg): RuntimeError("driver died")}, "t")
    assert [s.status for s in states] == ["done", "failed"]
    lost = states[1]
    assert "driver died" in lost.error and (tmp_path / "checkpoints" / "logs" / f"{lost.trial_id}.log").is_file()
    row = pq.read_table(f"{tmp_path}/results/{lost.trial_id}.parquet").to_pylist()[0]
    assert row["status"] == "failed" and "driver died" in row["error"]


def test_recording_a_failure_on_a_broken_storage_does_not_raise(synth_root, tmp_path, caplog):
    cfg = C.replace(_trial(synth_root, tmp_path), **{"output.results": "/proc/x", "output.checkpoints": "/proc/y"})
    assert record_failure(cfg, RayotError("boom"), "t") is None
    assert "could not be recorded" in caplog.text


def test_a_tune_trial_that_failed_before_its_configuration_is_logged_not_a_crash(caplog):
    # Such a Tune trial (its actor could not import) comes back with config None; the sweep
    # used to stop on r.config["trial"] with a bare TypeError.
    boom, lost = RuntimeError("packed trial failed"), ImportError("no module named x")
    grid = [SimpleNamespace(error=None, config={"trial": {"members": [{"trial_id": "a"}]}}),
            SimpleNamespace(error=boom, config={"trial": {"members": [{"trial_id": "b"}, {"trial_id": "c"}]}}),
            SimpleNamespace(error=lost, config=None)]
    assert _tune_errors(grid) == {"b": boom, "c": boom}
    assert "before its configuration reached it: ImportError: no module named x" in caplog.text
