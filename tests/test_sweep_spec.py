"""Sweep specifications: loading, strict errors, grid expansion, trial ids."""

from __future__ import annotations

import os

import pytest

from rayot import config as C
from rayot.errors import ConfigError
from rayot.sweep.spec import expand, load_spec


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
    ],
)
def test_bad_specs_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_spec(_write(tmp_path, text))
    assert needle in str(err.value) and "s.yaml" in str(err.value)
