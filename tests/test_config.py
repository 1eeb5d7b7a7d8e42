"""The typed configuration: defaults, presets, overrides, strict errors, trial ids."""

from __future__ import annotations

import pytest

from rayot import config as C
from rayot.errors import ConfigError


def test_defaults_reproduce_the_reference_settings():
    cfg = C.load_config()
    assert cfg.method == "prompt_ot"
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.005, 0.9, 5e-4)
    assert (cfg.optim.warmup_epochs, cfg.optim.warmup_lr, cfg.optim.epochs, cfg.optim.batch_size) == (1, 1e-4, 20, 4)
    assert (cfg.loss.lambda_ot, cfg.loss.eta, cfg.loss.solver, cfg.loss.modality) == (10.0, 0.5, "emd", "joint")
    assert (cfg.prompt.n_ctx_text, cfg.prompt.n_ctx_vision, cfg.prompt.depth_text) == (4, 4, 12)
    assert (cfg.model.name, cfg.model.pretrained, cfg.data.shots) == ("ViT-B-16", "openai", 16)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nloss:\n  lambda_ot: 2\ndata:\n  dataset: dtd\n")
    cfg = C.load_config(path, ["loss.eta=0.25", "data.targets=[a, b]", "model.pretrained=null"])
    assert cfg.seed == 3 and cfg.loss.lambda_ot == 2.0 and isinstance(cfg.loss.lambda_ot, float)
    assert cfg.loss.eta == 0.25 and cfg.data.dataset == "dtd" and cfg.data.targets == ("a", "b")
    assert cfg.model.pretrained is None


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss.lamda=1"], "loss.lamda"),
        (["optim.epochs=1.5"], "optim.epochs"),
        (["seed=abc"], "seed"),
        (["loss.solver=simplex"], "loss.solver"),
        (["method=maple"], "method"),
        (["optim.batch_size=0"], "optim.batch_size"),
        (["data=3"], "data"),
        (["loss.eta=-1"], "loss.eta"),
        (["precision=fp8"], "precision"),
        (["data.template=hello"], "data.template"),
        (["data.targets=dtd"], "data.targets"),
    ],
)
def test_bad_keys_and_types_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        C.load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        C.load_config(None, ["seed"])


def test_presets_sit_between_the_file_and_the_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: zeroshot\noptim:\n  epochs: 20\nloss:\n  lambda_ot: 10\n")
    cfg = C.load_config(path)
    assert cfg.optim.epochs == 0 and cfg.loss.regularizer == "none" and cfg.data.template == "dataset"
    coop = C.load_config(path, ["method=coop"])
    assert (coop.prompt.depth_text, coop.prompt.depth_vision, coop.optim.epochs) == (1, 0, 20)
    forced = C.load_config(path, ["method=ivlp", "loss.lambda_ot=3"])
    assert forced.loss.lambda_ot == 3.0 and forced.loss.regularizer == "none"


def test_trial_id_is_stable_and_ignores_placement_only_keys():
    a = C.load_config(None, ["seed=1"])
    assert C.trial_id(a) == C.trial_id(C.load_config(None, ["seed=1"]))
    assert len(C.trial_id(a)) == 12
    same = C.replace(a, **{"data.root": "/elsewhere", "device": "cpu", "output.results": "s3://b/r",
                           "data.num_workers": 7})
    assert C.trial_id(same) == C.trial_id(a)
    assert C.trial_id(C.replace(a, seed=2)) != C.trial_id(a)
    assert C.trial_id(C.replace(a, **{"loss.lambda_ot": 1.0})) != C.trial_id(a)


def test_json_round_trip_keeps_overrides_that_beat_the_preset():
    cfg = C.load_config(None, ["method=ivlp", "loss.regularizer=ot", "loss.lambda_ot=1"])
    import json

    back = C.from_dict(json.loads(C.to_json(cfg)))
    assert back == cfg and C.trial_id(back) == C.trial_id(cfg)


def test_eval_targets_follow_the_protocols():
    b2n = C.load_config(None, ["data.dataset=dtd"])
    assert C.eval_targets(b2n) == [("base2novel", "dtd", "base"), ("base2novel", "dtd", "novel")]
    xd = C.load_config(None, ["data.dataset=imagenet", "data.protocol=cross_dataset"])
    assert [t[1] for t in C.eval_targets(xd)] == ["imagenet", *C.CROSS_DATASET_TARGETS]
    dg = C.load_config(None, ["data.dataset=imagenet", "data.protocol=domain_generalization"])
    assert [t[1] for t in C.eval_targets(dg)] == ["imagenet", *C.DG_TARGETS]
    tr = C.eval_targets(C.load_config(None, ["data.dataset=imagenet", "data.protocol=transfer"]))
    assert len(tr) == 15
    assert {p for p, d, _ in tr if d in C.DG_TARGETS} == {"domain_generalization"}
    assert {p for p, d, _ in tr if d not in C.DG_TARGETS} == {"cross_dataset"}


def test_loss_choices_are_the_loss_function_s_own():
    # the config validates names without importing torch; they must not drift from the loss
    from rayot import losses

    assert C._CHOICES["loss.solver"] == losses.SOLVERS
    assert C._CHOICES["loss.modality"] == losses.MODALITIES
    assert C._CHOICES["loss.regularizer"] == losses.REGULARIZERS
