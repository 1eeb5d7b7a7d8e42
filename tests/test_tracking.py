"""Experiment tracking: `rayot train --log` and `rayot sweep --log` into TensorBoard, MLflow and W&B.

Everything stays on this machine: MLflow writes a local SQLite store, W&B runs offline
(WANDB_MODE=offline, WANDB_DIR in tmp; no login), TensorBoard writes event files. Each store is
read back with the tracker's own reader where it has one (MLflow's client, TensorBoard's
EventAccumulator); W&B has no public reader of offline runs, so :func:`wandb_runs` decodes the
run's ``.wandb`` log (LevelDB-style records of wandb's own protobuf messages).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides, use_token_authentication
from typer.testing import CliRunner

from rayot import config as C
from rayot import trackers as T
from rayot.errors import ConfigError

mlflow = pytest.importorskip("mlflow", reason='the tracker tests need pip install -e ".[test]" (mlflow-skinny)')
pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy (in the test extra)")
pytest.importorskip("wandb", reason='the tracker tests need pip install -e ".[test]" (wandb)')
pytest.importorskip("tensorboard", reason='the tracker tests need pip install -e ".[test]" (tensorboard)')


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No tracker may reach the network, and none may write outside tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-env"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


# Readers -------------------------------------------------------------------------------------


def mlflow_runs(uri: str, experiment: str) -> dict[str, dict]:
    """``{run name: {status, params, tags, metrics: {key: [(step, value), ...]}}}``, MLflow's client."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        series = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                  for key in run.data.metrics}
        out[run.info.run_name] = {"status": run.info.status, "params": run.data.params,
                                  "tags": run.data.tags, "metrics": series}
    return out


def tensorboard_scalars(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """The scalar series and text tags of one run folder, read by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    texts = [t for t in tags["tensors"]]
    texts_values = []
    for t in texts:
        for e in acc.Tensors(t):
            texts_values.append(f"{t}={b''.join(e.tensor_proto.string_val).decode()}")
    return scalars, texts_values


def _wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def wandb_runs(root: Path) -> dict[str, dict]:
    """``{run name: {group, config, history: {key: [(step, value)]}, summary, exit_code}}`` of the
    offline runs under ``root/wandb``."""
    out = {}
    for path in sorted(root.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"history": {}, "summary": {}, "config": {}, "exit_code": None}
        for r in _wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run["name"], run["group"] = r.run.display_name, r.run.run_group
                run["config"].update({_key(u): json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "history":
                values = {_key(i): json.loads(i.value_json) for i in r.history.item}
                for k, v in values.items():
                    if not k.startswith("_"):
                        run["history"].setdefault(k, []).append((values["_step"], v))
            elif kind == "summary":
                run["summary"].update({_key(u): json.loads(u.value_json) for u in r.summary.update})
            elif kind == "exit":
                run["exit_code"] = r.exit.exit_code
        out[run["name"]] = run
    return out


# Options, defaults, messages -----------------------------------------------------------------


def test_defaults_are_local_and_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_DIR")
    results = str(tmp_path / "results" / "smoke")
    t = T.resolve(T.Tracking().with_log(["mlflow", "wandb,tensorboard"]), results=results, name="smoke")
    assert t.enabled == ("tensorboard", "mlflow", "wandb")
    root = tmp_path / "results"
    assert t.mlflow == T.MLflowOptions(f"sqlite:///{root}/mlruns/mlflow.db", "smoke")
    assert t.wandb.mode == "offline" and t.wandb.dir == str(root) and t.wandb.project == "rayot"
    assert t.wandb.group == "smoke"
    assert t.tensorboard.dir == str(root / "tensorboard" / "smoke")
    # the user's environment, then explicit options, win over the defaults
    env = {"WANDB_MODE": "online", "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    t = T.resolve(T.Tracking().with_log(["wandb", "mlflow"]), results=results, name="s", environ=env)
    assert t.wandb.mode == "online" and t.mlflow.tracking_uri == "http://mlflow.example:5000"
    t = T.resolve(T.Tracking(wandb=T.WandbOptions(mode="disabled")), results=results, name="s", environ=env)
    assert t.wandb.mode == "disabled"
    # remote results: the stores go to the current folder
    monkeypatch.chdir(tmp_path)
    t = T.resolve(T.Tracking().with_log(["tensorboard"]), results="s3://bucket/results", name="s")
    assert t.tensorboard.dir == str(tmp_path / "tensorboard" / "s")


def test_sweep_file_tracking_section_is_strict(tmp_path):
    from rayot.sweep.spec import load_spec

    base = "name: t\nbase: {model: {name: rayot-tiny, pretrained: null}}\ngrid: {seed: [1]}\n"
    path = tmp_path / "s.yaml"
    path.write_text(base + "tracking:\n  mlflow: {experiment: exp, tracking_uri: sqlite:///db/m.db}\n"
                    "  tensorboard:\n  wandb: {project: p, mode: offline}\n")
    t = load_spec(path).tracking
    assert t.enabled == ("tensorboard", "mlflow", "wandb")
    assert t.mlflow.experiment == "exp" and t.wandb.project == "p" and t.tensorboard == T.TensorBoardOptions()
    resolved = T.resolve(t, results=str(tmp_path / "r"), name="t")
    assert resolved.mlflow.tracking_uri.startswith("sqlite:////")  # relative paths made absolute
    for bad, key in (("tracking: {neptune: {}}", "tracking.neptune"),
                     ("tracking: {mlflow: {uri: x}}", "tracking.mlflow.uri"),
                     ("tracking: {wandb: {mode: cloud}}", "tracking.wandb.mode"),
                     ("tracking: [mlflow]", "tracking")):
        path.write_text(base + bad + "\n")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_spec(path)
    assert load_spec(_plain(tmp_path, base)).tracking.enabled == ()
    with pytest.raises(ConfigError, match="--log 'neptune': unknown tracker"):
        T.parse_log(["mlflow", "neptune"])


def _plain(tmp_path, text):
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("tracker,module", [("mlflow", "mlflow"), ("wandb", "wandb"),
                                            ("tensorboard", "tensorboardX"), ("mlflow", "sqlalchemy")])
def test_a_missing_package_is_one_message_with_the_install_command(tmp_path, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    t = T.resolve(T.Tracking().with_log([tracker]), results=str(tmp_path / "r"), name="s")
    with pytest.raises(ConfigError) as info:
        T.check_available(t)
    assert str(info.value) == T.missing_message(tracker, module)
    assert f'pip install -e ".[{tracker}]"' in str(info.value) and f"'{module}' is not installed" in str(info.value)
    # through the command line: exit status 2 and that one line, before any training
    from rayot.cli import main

    monkeypatch.setattr(sys, "argv", ["rayot", "train", "configs/demo_prompt_ot.yaml",
                                      f"output.results={tmp_path / 'r'}", "--log", tracker])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert not (tmp_path / "r").exists()


def test_final_metrics_base_novel_hm_and_per_target():
    from rayot.report import harmonic_mean

    rows = [{"protocol": "base2novel", "eval_dataset": "dtd", "split": "base", "accuracy": 80.0},
            {"protocol": "base2novel", "eval_dataset": "dtd", "split": "novel", "accuracy": 60.0}]
    assert T.final_metrics(rows) == {"base": 80.0, "novel": 60.0, "hm": harmonic_mean(80.0, 60.0)}
    rows = [{"protocol": "cross_dataset", "eval_dataset": "imagenet", "split": "all", "accuracy": 70.0},
            {"protocol": "domain_generalization", "eval_dataset": "imagenet_sketch", "split": "all",
             "accuracy": 48.0}]
    assert T.final_metrics(rows) == {"acc/imagenet": 70.0, "acc/imagenet_sketch": 48.0}
    assert T.final_metrics([{"status": "failed", "protocol": "few_shot", "eval_dataset": "dtd",
                             "split": "", "accuracy": None}]) == {}


# One trial: `rayot train --log` ---------------------------------------------------------------


def _trial_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text("method: prompt_ot\n")
    return path


def test_rayot_train_logs_to_all_three_trackers(tmp_path, synth_root):
    from rayot.cli import app

    overrides = tiny_overrides(synth_root, tmp_path, method="prompt_ot")
    result = CliRunner().invoke(app, ["train", str(_trial_yaml(tmp_path)), *overrides,
                                      "--log", "mlflow", "--log", "wandb", "--log", "tensorboard"])
    assert result.exit_code == 0, result.output
    cfg = C.load_config(_trial_yaml(tmp_path), overrides)
    tid = C.trial_id(cfg)
    rows = pq.read_table(tmp_path / "results" / f"{tid}.parquet").to_pylist()
    final = T.final_metrics(rows)
    assert set(final) == {"base", "novel", "hm"}
    expected_params = T.params(cfg)

    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "rayot-train")
    assert list(runs) == [tid]
    run = runs[tid]
    assert run["status"] == "FINISHED"
    assert run["params"] == {k: str(v) for k, v in expected_params.items()}
    assert [s for s, _ in run["metrics"]["loss"]] == [1, 2] and set(run["metrics"]) >= {"loss", "ce", "reg", "lr"}
    assert {k: run["metrics"][k] for k in final} == {k: [(2, pytest.approx(v))] for k, v in final.items()}
    # Prompt-OT's diagnostics, per epoch, in the tracker and in the result rows
    history = json.loads(rows[0]["epoch_metrics"])
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("diag/ot_offdiag_mass", "diag/ot_nonidentity_frac"):
        assert [s for s, _ in run["metrics"][key]] == [1, 2]
        assert [v for _, v in run["metrics"][key]] == pytest.approx([h[key] for h in history])
        assert all(0.0 <= h[key] <= 1.0 for h in history)

    wb = wandb_runs(tmp_path / "wandb-env")  # WANDB_DIR of the environment
    assert list(wb) == [tid]
    assert wb[tid]["exit_code"] == 0 and wb[tid]["group"] == "rayot-train"
    assert wb[tid]["config"]["prompt_ot.lambda_ot"] == cfg.settings.lambda_ot
    assert [s for s, _ in wb[tid]["history"]["loss"]] == [1, 2]
    assert {k: wb[tid]["summary"][k] for k in final} == pytest.approx(final)

    scalars, texts = tensorboard_scalars(tmp_path / "tensorboard" / "rayot-train" / tid)
    assert [s for s, _ in scalars["loss"]] == [1, 2] and set(scalars) >= {"loss", "ce", "reg", "lr", *final}
    assert scalars["hm"] == [(2, pytest.approx(final["hm"], rel=1e-6))]
    assert "status/text_summary=done" in texts


def test_rayot_train_failure_is_marked_failed(tmp_path, synth_root):
    from rayot.cli import app

    overrides = tiny_overrides(synth_root, tmp_path, method="prompt_ot", **{"data.dataset": "dtd"})
    result = CliRunner().invoke(app, ["train", str(_trial_yaml(tmp_path)), *overrides,
                                      "--log", "mlflow", "--log", "wandb", "--log", "tensorboard"])
    assert result.exit_code != 0
    tid = C.trial_id(C.load_config(_trial_yaml(tmp_path), overrides))
    run = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "rayot-train")[tid]
    assert run["status"] == "FAILED" and "dtd" in run["tags"]["error"] and run["tags"]["status"] == "failed"
    wb = wandb_runs(tmp_path / "wandb-env")[tid]
    assert wb["exit_code"] == 1 and "dtd" in wb["summary"]["error"]
    _, texts = tensorboard_scalars(tmp_path / "tensorboard" / "rayot-train" / tid)
    assert any(t.startswith("status/text_summary=failed: ") and "dtd" in t for t in texts)


# A sweep on a local Ray: `rayot sweep --log` ----------------------------------------------------


@pytest.fixture
def local_ray(_offline, ray_head):
    import os

    import ray

    # the session's Ray (tests/conftest.py), whose processes did not inherit this test's offline
    # environment: W&B's logging actors get it with the job
    wandb = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    use_token_authentication()
    ray.init(address=ray_head.address, log_to_driver=False, runtime_env={"env_vars": wandb})
    yield
    ray.shutdown()


@pytest.mark.slow
def test_sweep_logs_every_trial_to_all_three_trackers(local_ray, tmp_path, synth_root):
    import yaml
    from rich.console import Console

    from rayot.sweep.runner import run_sweep
    from rayot.sweep.spec import expand, load_spec

    base: dict = {}
    for item in tiny_overrides(synth_root, tmp_path):
        key, value = item.split("=", 1)
        C.set_dotted(base, key, yaml.safe_load(value))
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "t", "base": base,
        "grid": {"method": ["prompt_ot"]}, "grids": [{"dataset": "synthetic"}, {"dataset": "dtd"}],
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "storage": {"results": str(tmp_path / "results"), "checkpoints": str(tmp_path / "ckpt")},
        # options from the file for two trackers, the third one on with its defaults (as --log does)
        "tracking": {"wandb": {"project": "rayot-test", "dir": str(tmp_path / "wb")},
                     "tensorboard": {"dir": str(tmp_path / "tb")}},
    }))
    spec = load_spec(spec_file)
    trials = expand(spec)
    tracking = T.resolve(spec.tracking.with_log(["mlflow"]), results=str(tmp_path / "results"), name=spec.name)
    summary = run_sweep(spec, trials, address=None, console=Console(quiet=True), tracking=tracking)
    status = {s.cfg.data.dataset: s for s in summary.states}
    assert {k: s.status for k, s in status.items()} == {"synthetic": "done", "dtd": "failed"}
    ok, bad = status["synthetic"], status["dtd"]
    final = T.final_metrics(pq.read_table(tmp_path / "results" / f"{ok.trial_id}.parquet").to_pylist())
    assert set(final) == {"base", "novel", "hm"}

    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "t")
    assert set(runs) == {ok.trial_id, bad.trial_id}  # one run per trial, named by its id
    run = runs[ok.trial_id]
    assert run["status"] == "FINISHED" and run["tags"]["sweep"] == "t"
    assert run["params"] == {k: str(v) for k, v in T.params(ok.cfg).items()}
    assert {k: [s for s, _ in run["metrics"][k]] for k in T.EPOCH_METRICS} == {k: [1, 2] for k in T.EPOCH_METRICS}
    assert {k: run["metrics"][k] for k in final} == {k: [(2, pytest.approx(v))] for k, v in final.items()}
    failed = runs[bad.trial_id]
    assert failed["status"] == "FAILED" and "dtd" in failed["tags"]["error"]

    wb = wandb_runs(tmp_path / "wb")
    assert set(wb) == {ok.trial_id, bad.trial_id}
    assert wb[ok.trial_id]["exit_code"] == 0 and wb[ok.trial_id]["group"] == "t"
    assert wb[ok.trial_id]["config"]["prompt_ot.lambda_ot"] == ok.cfg.settings.lambda_ot
    assert [s for s, _ in wb[ok.trial_id]["history"]["loss"]] == [1, 2]
    assert {k: wb[ok.trial_id]["summary"][k] for k in final} == pytest.approx(final)
    assert wb[bad.trial_id]["exit_code"] == 1 and "dtd" in wb[bad.trial_id]["summary"]["error"]

    scalars, texts = tensorboard_scalars(tmp_path / "tb" / ok.trial_id)
    assert {k: [s for s, _ in scalars[k]] for k in T.EPOCH_METRICS} == {k: [1, 2] for k in T.EPOCH_METRICS}
    assert scalars["hm"] == [(2, pytest.approx(final["hm"], rel=1e-6))] and "status/text_summary=done" in texts
    _, texts = tensorboard_scalars(tmp_path / "tb" / bad.trial_id)
    assert any(t.startswith("status/text_summary=failed: ") and "dtd" in t for t in texts)


# The sweep's callbacks, driven by hand: packs of trials --------------------------------------


class FakeTuneTrial:
    """What the tracker callbacks read of a Tune trial: its config (a pack of rayot trials, the
    shape of :func:`rayot.sweep.runner.run_sweep`), its folder and its error."""

    def __init__(self, cfgs: list[C.TrialConfig], folder: Path, error: str | None = None) -> None:
        from rayot.sweep.packs import pack_id

        self.config = {"trial": {"trial_id": pack_id(cfgs),
                                 "members": [{"trial_id": C.trial_id(c), "config": c} for c in cfgs],
                                 "resources": {}, "sweep": "t", "owner": {}, "switches": {}}}
        self.local_path = str(folder / self.config["trial"]["trial_id"])
        self.error = error

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)

    def get_error(self) -> str | None:
        return self.error


FINAL = {"base": 80.0, "novel": 60.0, "hm": 68.57142857142857}


def _epoch_metrics(seed: int, epoch: int) -> dict[str, float]:
    return {"loss": seed + epoch / 10, "ce": seed + epoch / 100, "reg": epoch / 1000, "lr": 0.002 / epoch,
            "diag/ot_offdiag_mass": epoch / 4}


def _drive(callbacks: list, cfgs: dict[str, C.TrialConfig], tmp_path: Path) -> None:
    """Tune's calls for three Tune trials, as :func:`rayot.sweep.worker.tune_driver` reports them.

    ``ok`` and ``bad`` train as a pack: both log epoch 1, ``bad`` fails in epoch 2 and ``ok`` goes
    on; ``busy`` is a trial alone that another sweep runs; ``lost1`` and ``lost2`` are a pack whose
    driver died after epoch 1 (a Tune-level failure).
    """
    ok, bad = C.trial_id(cfgs["ok"]), C.trial_id(cfgs["bad"])
    lost = [C.trial_id(cfgs[k]) for k in ("lost1", "lost2")]
    pack = FakeTuneTrial([cfgs["ok"], cfgs["bad"]], tmp_path / "tune")
    alone = FakeTuneTrial([cfgs["busy"]], tmp_path / "tune")
    died = FakeTuneTrial([cfgs["lost1"], cfgs["lost2"]], tmp_path / "tune", error="RayActorError: the driver died")
    seed = {C.trial_id(c): c.seed for c in cfgs.values()}
    reports = {
        pack: [{"status": "running"},
               {"epoch": 1, "status": "running", "members": {t: _epoch_metrics(seed[t], 1) for t in (ok, bad)}},
               {"epoch": 2, "status": "running", "members": {ok: _epoch_metrics(seed[ok], 2)}},
               {"status": "done"},  # the Train workers' own last report: nothing per member
               {"status": "failed", "members": {ok: {"status": "done", "final": FINAL},
                                                bad: {"status": "failed", "error": "trial: NaN loss in epoch 2",
                                                      "log": "logs/bad.log"}}}],
        alone: [{"status": "busy", "error": "another sweep holds its lease"}],
        died: [{"status": "running"},
               {"epoch": 1, "status": "running", "members": {t: _epoch_metrics(seed[t], 1) for t in lost}}],
    }
    for cb in callbacks:
        for trial, results in reports.items():
            cb.log_trial_start(trial)
            for i, result in enumerate(results):
                cb.log_trial_result(i + 1, trial, result)
        for trial in reports:
            cb.log_trial_end(trial, failed=trial is died)
        cb.on_experiment_end(trials=list(reports))


@pytest.fixture
def pack_cfgs(tmp_path) -> dict[str, C.TrialConfig]:
    names = ("ok", "bad", "busy", "lost1", "lost2")
    return {name: C.load_config(None, tiny_overrides(tmp_path, tmp_path, method="prompt_ot", seed=i + 1))
            for i, name in enumerate(names)}


def test_a_pack_logs_one_mlflow_and_tensorboard_run_per_trial(tmp_path, pack_cfgs):
    from rayot.sweep.tune_callbacks import MLflowCallback, TensorBoardCallback

    tracking = T.resolve(T.Tracking().with_log(["mlflow", "tensorboard"]), results=str(tmp_path / "results"),
                         name="t")
    T.prepare(tracking)
    callbacks = [MLflowCallback(tracking.mlflow, "t"), TensorBoardCallback(tracking.tensorboard)]
    for cb in callbacks:
        cb.setup()
    _drive(callbacks, pack_cfgs, tmp_path)
    tid = {name: C.trial_id(cfg) for name, cfg in pack_cfgs.items()}
    seed = {name: cfg.seed for name, cfg in pack_cfgs.items()}

    runs = mlflow_runs(tracking.mlflow.tracking_uri, "t")
    assert set(runs) == {tid["ok"], tid["bad"], tid["lost1"], tid["lost2"]}  # the busy run is deleted
    for name in ("ok", "bad", "lost1", "lost2"):
        run = runs[tid[name]]
        assert run["params"] == {k: str(v) for k, v in T.params(pack_cfgs[name]).items()}
        assert run["tags"]["trial_id"] == tid[name] and run["tags"]["sweep"] == "t"
    ok = runs[tid["ok"]]
    assert ok["status"] == "FINISHED" and ok["tags"]["status"] == "done"
    assert ok["metrics"]["loss"] == [(1, pytest.approx(seed["ok"] + 0.1)), (2, pytest.approx(seed["ok"] + 0.2))]
    assert ok["metrics"]["diag/ot_offdiag_mass"] == [(1, 0.25), (2, 0.5)]  # a method's diagnostic, per epoch
    assert {k: ok["metrics"][k] for k in FINAL} == {k: [(2, pytest.approx(v))] for k, v in FINAL.items()}
    bad = runs[tid["bad"]]
    assert bad["status"] == "FAILED" and bad["tags"]["status"] == "failed"
    assert bad["tags"]["error"] == "trial: NaN loss in epoch 2"
    assert {k: [s for s, _ in bad["metrics"][k]] for k in T.EPOCH_METRICS} == {k: [1] for k in T.EPOCH_METRICS}
    assert bad["metrics"]["loss"] == [(1, pytest.approx(seed["bad"] + 0.1))] and "hm" not in bad["metrics"]
    for name in ("lost1", "lost2"):
        run = runs[tid[name]]
        assert run["status"] == "FAILED" and run["tags"]["error"] == "its Tune trial failed: RayActorError: the driver died"
        assert run["metrics"]["loss"] == [(1, pytest.approx(seed[name] + 0.1))]

    folders = {p.name for p in Path(tracking.tensorboard.dir).iterdir()}
    assert folders == set(tid.values())  # no folder for a pack
    scalars, texts = tensorboard_scalars(Path(tracking.tensorboard.dir) / tid["ok"])
    assert scalars["loss"] == [(1, pytest.approx(seed["ok"] + 0.1)), (2, pytest.approx(seed["ok"] + 0.2))]
    assert scalars["hm"] == [(2, pytest.approx(FINAL["hm"], rel=1e-6))] and "status/text_summary=done" in texts
    scalars, texts = tensorboard_scalars(Path(tracking.tensorboard.dir) / tid["bad"])
    assert scalars["loss"] == [(1, pytest.approx(seed["bad"] + 0.1))] and "hm" not in scalars
    assert "status/text_summary=failed: trial: NaN loss in epoch 2" in texts
    for name in ("lost1", "lost2"):
        _, texts = tensorboard_scalars(Path(tracking.tensorboard.dir) / tid[name])
        assert "status/text_summary=failed: its Tune trial failed: RayActorError: the driver died" in texts


@pytest.mark.slow
def test_a_pack_logs_one_wandb_run_per_trial(local_ray, tmp_path, pack_cfgs):
    from rayot.sweep.tune_callbacks import WandbCallback

    tracking = T.resolve(T.Tracking(wandb=T.WandbOptions(dir=str(tmp_path / "wb"))),
                         results=str(tmp_path / "results"), name="t")
    cb = WandbCallback(tracking.wandb)
    cb.setup()
    _drive([cb], pack_cfgs, tmp_path)
    assert not cb._trial_logging_actors and not cb._trial_queues  # every actor ended and cleaned up
    tid = {name: C.trial_id(cfg) for name, cfg in pack_cfgs.items()}
    seed = {name: cfg.seed for name, cfg in pack_cfgs.items()}

    assert len(list((tmp_path / "wb").glob("wandb/offline-run-*"))) == len(pack_cfgs)
    wb = wandb_runs(tmp_path / "wb")
    assert set(wb) == set(tid.values())  # one run per trial, none per pack
    for name, cfg in pack_cfgs.items():
        assert wb[tid[name]]["group"] == "t" and wb[tid[name]]["config"]["seed"] == cfg.seed
    ok, bad = wb[tid["ok"]], wb[tid["bad"]]
    assert ok["exit_code"] == 0 and ok["summary"]["status"] == "done"
    assert ok["history"]["loss"] == [(1, pytest.approx(seed["ok"] + 0.1)), (2, pytest.approx(seed["ok"] + 0.2))]
    assert {k: ok["summary"][k] for k in FINAL} == pytest.approx(FINAL)
    assert bad["exit_code"] == 1 and bad["summary"]["error"] == "trial: NaN loss in epoch 2"
    assert bad["history"]["loss"] == [(1, pytest.approx(seed["bad"] + 0.1))] and "hm" not in bad["summary"]
    assert wb[tid["busy"]]["exit_code"] == 0 and "loss" not in wb[tid["busy"]]["history"]
    for name in ("lost1", "lost2"):
        run = wb[tid[name]]
        assert run["exit_code"] == 1 and run["summary"]["error"] == "its Tune trial failed: RayActorError: the driver died"
        assert run["history"]["loss"] == [(1, pytest.approx(seed[name] + 0.1))]
