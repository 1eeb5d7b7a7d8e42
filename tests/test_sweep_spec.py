"""Sweep specifications: loading, strict errors, grid expansion, trial ids."""

from __future__ import annotations

import os

import pytest
from conftest import rayot_cli

from rayot import config as C
from rayot.errors import ConfigError
from rayot.sweep.spec import expand, load_spec, plan_notes


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_the_shipped_sweep_files_load_with_their_documented_trial_counts():
    counts = {"full_benchmark": 288, "lambda_sweep": 165, "ablation_modality": 198, "peers_smoke": 18,
              "smoke": 6}
    for name, n in counts.items():
        spec = load_spec(f"sweeps/{name}.yaml")
        trials = expand(spec)
        assert len(trials) == n
        assert len({C.trial_id(t) for t in trials}) == n
        header = open(f"sweeps/{name}.yaml").read().split("\nname:")[0]
        assert f"{n} trials" in header  # the cost estimate names the trial count


def test_full_benchmark_trains_one_imagenet_model_per_seed_for_transfer():
    trials = expand(load_spec("sweeps/full_benchmark.yaml"))
    transfer = [t for t in trials if t.data.protocol == "transfer"]
    assert {(t.data.dataset, t.seed, t.method) for t in transfer} == {
        ("imagenet", s, m) for s in (1, 2, 3) for m in C.METHODS if m != "pointwise"
    }
    assert len(C.eval_targets(transfer[0])) == 15
    # the base sets no schedule: every method keeps its reference one, per protocol
    plans = {(t.method, t.data.protocol, t.data.dataset): (t.optim.epochs, C.epochs_trained(t)) for t in trials}
    assert plans[("zeroshot", "base2novel", "dtd")] == (0, 0)
    assert plans[("prompt_ot", "base2novel", "dtd")] == (40, 30)
    assert plans[("coop", "base2novel", "dtd")] == (200, 200)
    assert plans[("coop", "base2novel", "imagenet")] == (50, 50)
    assert plans[("maple", "transfer", "imagenet")] == (2, 2)


def test_grid_blocks_aliases_overrides_and_absolute_paths(tmp_path):
    path = _write(tmp_path, """
name: t
base: {data: {root: data}, model: {name: rayot-tiny, pretrained: null}}
grid: {seed: [1, 2], prompt_ot.lambda_ot: [0, 1]}
grids:
  - {dataset: synthetic, protocol: base2novel}
  - {dataset: imagenet, protocol: transfer}
storage: {results: res, checkpoints: s3://bucket/ckpt}
""")
    trials = expand(load_spec(path), sets={"data.shots": 4})
    assert len(trials) == 8
    assert {t.data.shots for t in trials} == {4}
    assert {t.data.root for t in trials} == {os.path.abspath("data")}
    assert {t.output.results for t in trials} == {os.path.abspath("res")}
    assert {t.output.checkpoints for t in trials} == {"s3://bucket/ckpt"}
    # the ids do not depend on where the data lives: the same as `rayot train` of that config
    plain = C.load_config(None, ["data.root=data", "model.name=rayot-tiny", "model.pretrained=null",
                                 "seed=1", "prompt_ot.lambda_ot=0", "data.dataset=synthetic", "data.shots=4"])
    assert C.trial_id(plain) in {C.trial_id(t) for t in trials}


def test_duplicate_trials_collapse(tmp_path):
    path = _write(tmp_path, "base: {}\ngrid: {seed: [1, 1], method: prompt_ot}\n")
    assert len(expand(load_spec(path))) == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("grid: {prompt_ot.lamda: [1]}\n", "prompt_ot.lamda"),
        ("grid: {loss.kg_weight: [1]}\n", "prompt_ot.kg_weight"),
        ("grid: {seed: [x]}\n", "'seed'"),
        ("grid: {method: [tip_adapter]}\n", "'method'"),
        ("gird: {seed: [1]}\n", "'gird'"),
        ("resources: {gpus_per_worker: 0.5, num_workers: 2}\n", "num_workers == 1"),
        ("resources: {num_gpus: 1}\n", "resources.num_gpus"),
        ("storage: {result: x}\n", "storage.result"),
        ("grid: {seed: []}\n", "empty list"),
        ("grid: {seed: [1]}\ngrids: [{seed: [2]}]\n", "both in 'grid'"),
        ("base: missing.yaml\n", "missing.yaml"),
        ("grid: {dataset: [dtd, dtdd]}\n", "'data.dataset': unknown dataset 'dtdd'"),
        ("grid: {device: [tpu]}\n", "'device': 'tpu' is not a device"),
        ("grid: {optim.lr: [0.1, .nan]}\n", "'optim.lr': expected a finite number, got nan"),
        ("resources: {gpus_per_worker: .inf}\n", "'resources.gpus_per_worker': expected a finite number"),
        ("grid: {seed: [1, 2]}\ngrid: {seed: [3]}\n", "key 'grid' is written twice (lines 1 and 2)"),
        ("grid: {seed: [1, 2}\n", "not valid YAML at line 1, column 19: expected ',' or ']', but got '}'"),
        ("grid: {shots: [1, 2], data.shots: [4, 8]}\n", "'shots' and 'data.shots' are the same key (data.shots)"),
        ("grids: [{data.protocol: few_shot, protocol: base2novel}]\n",
         "grids[0]: 'data.protocol' and 'protocol' are the same key"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_spec(_write(tmp_path, text))
    assert needle in str(err.value) and "s.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_base_config_file_with_a_key_written_twice_is_refused(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\noptim: {lr: 0.1}\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: base config .*base\.yaml: key 'seed' is written twice "
                                          r"\(lines 1 and 3\)"):
        load_spec(_write(tmp_path, "base: base.yaml\n"))


def test_set_takes_the_grids_short_names(tmp_path):
    spec = load_spec(_write(tmp_path, "base: {}\ngrid: {shots: [1, 2], seed: [1]}\n"))
    short = expand(spec, sets={"shots": 3})
    assert [t.data.shots for t in short] == [3] and short == expand(spec, sets={"data.shots": 3})
    sets = C.flatten(C.parse_overrides(["shots=3"]))  # what `rayot sweep --set shots=3` passes
    assert sets == {"data.shots": 3}
    assert plan_notes(spec, sets) == ["grid axis data.shots [1, 2] replaced by --set data.shots=3"]
    with pytest.raises(ConfigError, match="data.shots is set twice"):
        expand(spec, sets={"shots": 3, "data.shots": 4})


def test_an_empty_grid_is_said_in_the_plan(tmp_path):
    empty = load_spec(_write(tmp_path, "base: {seed: 4}\n"))
    assert [t.seed for t in expand(empty)] == [4]
    assert plan_notes(empty, None) == ["the sweep has no grid axis: it runs the base configuration's one trial"]
    assert plan_notes(load_spec(_write(tmp_path, "base: {}\ngrid: {}\ngrids: [{}]\n")), None) == plan_notes(empty, None)
    assert plan_notes(load_spec(_write(tmp_path, "base: {}\ngrid: {seed: [1]}\n")), None) == []
    assert plan_notes(load_spec(_write(tmp_path, "base: {}\ngrids: [{seed: 1}]\n")), None) == []


@pytest.mark.parametrize("name", ["../x", "../../../x", "a/b", "/tmp/x", "a\\b", "''", "' '", ".", "..", "'a\\tb'"])
def test_a_sweep_name_that_is_not_one_folder_name_is_refused(tmp_path, name):
    # Ray Tune keeps the sweep's state in tune-<name> under the checkpoint location
    with pytest.raises(ConfigError, match="name .*: must be a plain folder name") as err:
        load_spec(_write(tmp_path, f"name: {name}\nbase: {{}}\n"))
    assert "s.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_sweep_name_may_be_any_one_folder_name(tmp_path):
    assert load_spec(_write(tmp_path, "name: λ sweep, v2.1\nbase: {}\n")).name == "λ sweep, v2.1"
    assert load_spec(_write(tmp_path, "base: {}\n")).name == "s"  # the file's stem
    assert load_spec(_write(tmp_path, "name: 12\nbase: {}\n")).name == "12"




@pytest.mark.parametrize(
    ("text", "sets", "needle"),
    [
        ("grid: {dataset: [dtdd]}\n", [], "unknown dataset 'dtdd'"),
        ("grid: {shots: [1, 2], data.shots: [4, 8]}\n", [], "'shots' and 'data.shots' are the same key"),
        ("name: ../x\n", [], "name '../x': must be a plain folder name"),
        ("grid: {seed: [1]}\n", ["shots=3", "data.shots=4"], "'shots' and 'data.shots' are the same key"),
        ("grid: {seed: [1]}\n", ["optim.lr=.nan"], "'optim.lr': expected a finite number"),
    ],
)
def test_the_dry_run_refuses_what_the_run_would_with_one_line_and_status_2(tmp_path, monkeypatch, capsys,
                                                                            text, sets, needle):
    path = _write(tmp_path, f"base: {{}}\nstorage: {{results: {tmp_path}/r, checkpoints: {tmp_path}/c}}\n{text}")
    code, out, err = rayot_cli(monkeypatch, capsys, "sweep", str(path), "--dry-run",
                            *[a for s in sets for a in ("--set", s)])
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_the_dry_run_takes_set_shots_and_says_when_there_is_no_grid(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path, f"base: {{}}\nstorage: {{results: {tmp_path}/r, checkpoints: {tmp_path}/c}}\n")
    code, out, err = rayot_cli(monkeypatch, capsys, "sweep", str(path), "--dry-run", "--set", "shots=3")
    assert code == 0, err
    assert "note: the sweep has no grid axis: it runs the base configuration's one trial" in out
    assert "1 trial, 0 already done, 1 to run" in out
