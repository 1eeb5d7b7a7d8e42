"""The typed configuration: defaults, presets, overrides, strict errors, trial ids."""

from __future__ import annotations

import pytest

from rayot import config as C
from rayot.errors import ConfigError


def test_defaults_reproduce_the_reference_settings():
    cfg = C.load_config()
    assert cfg.method == "prompt_ot"
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.005, 0.9, 5e-4)
    assert (cfg.optim.warmup_epochs, cfg.optim.warmup_lr, cfg.optim.batch_size) == (1, 1e-4, 4)
    assert (cfg.optim.epochs, cfg.optim.stop_epoch, C.epochs_trained(cfg)) == (40, 30, 30)  # docs/method.md
    s = cfg.settings
    assert (s.lambda_ot, s.eta, s.solver, s.modality, s.regularizer) == (10.0, 0.5, "emd", "joint", "ot")
    assert (cfg.prompt.n_ctx_text, cfg.prompt.n_ctx_vision, cfg.prompt.depth_text) == (4, 4, 12)
    assert (cfg.model.name, cfg.model.pretrained, cfg.data.shots) == ("ViT-B-16", "openai", 16)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nprompt_ot:\n  lambda_ot: 2\ndata:\n  dataset: dtd\n")
    cfg = C.load_config(path, ["prompt_ot.eta=0.25", "data.targets=[dtd, eurosat]", "model.pretrained=null"])
    s = cfg.settings
    assert cfg.seed == 3 and s.lambda_ot == 2.0 and isinstance(s.lambda_ot, float)
    assert s.eta == 0.25 and cfg.data.dataset == "dtd" and cfg.data.targets == ("dtd", "eurosat")
    assert cfg.model.pretrained is None
    assert C.to_dict(cfg)["prompt_ot"]["lambda_ot"] == 2.0  # the method's settings under its name


def test_a_file_holds_several_methods_sections_and_each_trial_takes_its_own(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompt_ot: {lambda_ot: 1}\npromptsrc: {gpa_mean: 3}\n")
    ot = C.load_config(path)
    src = C.load_config(path, ["method=promptsrc"])
    assert ot.settings.lambda_ot == 1.0 and src.settings.gpa_mean == 3.0 and src.settings.text_l1 == 25.0
    assert C.trial_id(C.load_config(path, ["method=coop"])) == C.trial_id(C.load_config(None, ["method=coop"]))
    path.write_text("promptsrc: {gpa_meen: 3}\n")  # another method's section is still checked
    with pytest.raises(ConfigError, match="'promptsrc.gpa_meen'"):
        C.load_config(path)


def test_the_old_spelling_loads_with_a_warning_naming_the_new_one(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  lambda_ot: 2\n  solver: sinkhorn\noptim: {epochs: 3}\n")
    with caplog.at_level("WARNING"):
        old = C.load_config(path, ["loss.eta=0.25"])
    new = C.load_config(None, ["prompt_ot.lambda_ot=2", "prompt_ot.solver=sinkhorn", "optim.epochs=3",
                               "prompt_ot.eta=0.25"])
    assert old == new and C.trial_id(old) == C.trial_id(new)
    assert "'prompt_ot.eta'" in caplog.text
    src = C.load_config(None, ["method=promptsrc", "optim.gpa_mean=2", "data.template=default"])
    assert (src.settings.gpa_mean, src.settings.template) == (2.0, "default")
    with pytest.raises(ConfigError, match=r"'loss\.kg_weight'.*'coop\.kg_weight'.*no setting 'kg_weight'"):
        C.load_config(None, ["method=coop", "loss.kg_weight=1"])


def test_a_method_named_with_settings_under_method_says_where_they_go():
    with pytest.raises(ConfigError, match="section named after it"):
        C.resolve_config({"method": {"name": "prompt_ot", "lambda_ot": 1}})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["prompt_ot.lamda=1"], "prompt_ot.lamda"),
        (["optim.epochs=1.5"], "optim.epochs"),
        (["seed=abc"], "seed"),
        (["prompt_ot.solver=simplex"], "prompt_ot.solver"),
        (["method=tip_adapter"], "method"),
        (["optim.stop_epoch=50"], "optim.stop_epoch"),
        (["method=cocoop", "cocoop.kg_weight=1"], "cocoop.kg_weight"),
        (["method=cocoop", "loss.kg_weight=1"], "loss.kg_weight"),
        (["optim.batch_size=0"], "optim.batch_size"),
        (["data=3"], "data"),
        (["prompt_ot.eta=-1"], "prompt_ot.eta"),
        (["precision=fp8"], "precision"),
        (["prompt_ot.template=hello"], "prompt_ot.template"),
        (["data.targets=dtd"], "data.targets"),
        (["prompt_ot.solver=sinkhorn", "prompt_ot.epsilon=0"], "prompt_ot.epsilon"),
        (["prompt_oot.lambda_ot=1"], "prompt_oot"),
        (["prompt_ot=1"], "prompt_ot"),
        (["settings.lambda_ot=1"], "settings"),
        (["method=ivlp", "prompt.depth_text=0"], "prompt.depth_text"),
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


def test_presets_layers_reference_file_defining_keys_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: zeroshot\noptim:\n  epochs: 20\nprompt_ot:\n  lambda_ot: 3\n")
    cfg = C.load_config(path)
    assert cfg.optim.epochs == 0 and cfg.settings.template == "dataset"
    # the file's epochs win over CoOp's reference 200; its defining depths win over the file
    coop = C.load_config(path, ["method=coop"])
    assert (coop.prompt.depth_text, coop.prompt.depth_vision, coop.optim.epochs) == (1, 0, 20)
    assert (coop.optim.lr, coop.optim.batch_size, coop.optim.warmup_lr) == (0.002, 32, 1e-5)
    assert C.load_config(path, ["method=prompt_ot"]).settings.lambda_ot == 3.0  # its section applies
    # a file that sets the schedule length evaluates after all of it, unless it says otherwise
    ot = C.load_config(path, ["method=prompt_ot"])
    assert (ot.optim.epochs, ot.optim.stop_epoch, C.epochs_trained(ot)) == (20, None, 20)
    assert C.epochs_trained(C.load_config(path, ["method=prompt_ot", "optim.stop_epoch=15"])) == 15


#: Each preset against its reference configuration (docs/peers.md §2-§7, docs/method.md): schedule
#: (E, S, batch, lr, warm-up rate), shapes (tokens, depths) and the method's settings.
REFERENCE = {
    ("zeroshot", "base2novel"): dict(E=0, S=0, template="dataset"),
    ("coop", "base2novel"): dict(E=200, S=200, bs=32, lr=0.002, wlr=1e-5, ctx=(4, 1, 0)),
    ("cocoop", "base2novel"): dict(E=10, S=10, bs=1, lr=0.002, wlr=1e-5, ctx=(4, 1, 0)),
    ("kgcoop", "base2novel"): dict(E=100, S=100, bs=128, lr=0.002, wlr=1e-5, ctx=(4, 1, 0), kg=8.0,
                                   template="kgcoop"),
    ("maple", "base2novel"): dict(E=5, S=5, bs=4, lr=0.0035, wlr=1e-5, ctx=(2, 9, 0)),
    ("maple", "transfer"): dict(E=2, S=2, bs=4, lr=0.0026, wlr=1e-5, ctx=(2, 3, 0)),
    ("ivlp", "base2novel"): dict(E=20, S=20, bs=4, lr=0.0025, wlr=1e-5, ctx=(4, 9, 9)),
    ("promptsrc", "base2novel"): dict(E=20, S=20, bs=4, lr=0.0025, wlr=1e-5, ctx=(4, 9, 9),
                                      src=(25.0, 10.0, 1.0), gpa=(15.0, 1.0), template="ensemble"),
    ("promptsrc", "transfer"): dict(E=20, S=20, ctx=(4, 3, 3), src=(25.0, 10.0, 1.0), gpa=(6.0, 10.0),
                                    template="ensemble"),
    ("promptsrc", "few_shot"): dict(E=50, S=50, src=(25.0, 10.0, 1.0), gpa=(30.0, 30.0),
                                    template="ensemble"),
    ("prompt_ot", "base2novel"): dict(E=40, S=30, bs=4, lr=0.005, wlr=1e-4, ctx=(4, 12, 12), lam=10.0,
                                      template="default"),
    ("pointwise", "base2novel"): dict(E=40, S=30, bs=4, lr=0.005, wlr=1e-4, ctx=(4, 12, 12), lam=10.0,
                                      template="default"),
}


@pytest.mark.parametrize(("method", "protocol"), list(REFERENCE))
def test_each_preset_is_its_reference_configuration(method, protocol):
    ref = REFERENCE[(method, protocol)]
    cfg = C.load_config(None, [f"method={method}", f"data.protocol={protocol}", "data.dataset=caltech101"])
    o, p, s = cfg.optim, cfg.prompt, cfg.settings
    assert (o.epochs, C.epochs_trained(cfg)) == (ref["E"], ref["S"])
    if "bs" in ref:
        assert o.batch_size == ref["bs"]
    if "lr" in ref:
        assert (o.lr, o.warmup_epochs, o.warmup_lr) == (ref["lr"], 1, ref["wlr"])
    if "ctx" in ref:
        n_ctx, depth_t, depth_v = ref["ctx"]
        assert (p.n_ctx_text, p.depth_text, p.depth_vision) == (n_ctx, depth_t, depth_v)
    if "lam" in ref:
        assert s.lambda_ot == ref["lam"]
    if "kg" in ref:
        assert s.kg_weight == ref["kg"]
    if "src" in ref:
        assert (s.text_l1, s.image_l1, s.logit_kl) == ref["src"]
        assert (s.gpa_mean, s.gpa_std) == ref["gpa"]
    assert getattr(s, "template", None) == ref.get("template", getattr(s, "template", None))
    assert (p.ctx_init, o.momentum, o.weight_decay) == ("a photo of a", 0.9, 5e-4)


def test_dataset_dependent_presets():
    coop_in = C.load_config(None, ["method=coop", "data.dataset=imagenet"])
    assert coop_in.optim.epochs == 50  # CoOp's ep50 config on ImageNet
    cars = C.load_config(None, ["method=promptsrc", "data.protocol=few_shot", "data.dataset=stanford_cars"])
    assert (cars.settings.gpa_mean, cars.settings.gpa_std) == (45.0, 5.0)


def test_trial_id_is_stable_and_ignores_placement_only_keys():
    a = C.load_config(None, ["seed=1"])
    assert C.trial_id(a) == C.trial_id(C.load_config(None, ["seed=1"]))
    assert len(C.trial_id(a)) == 12
    same = C.replace(a, **{"data.root": "/elsewhere", "device": "cpu", "output.results": "s3://b/r",
                           "data.num_workers": 7})
    assert C.trial_id(same) == C.trial_id(a)
    assert C.trial_id(C.replace(a, seed=2)) != C.trial_id(a)
    assert C.trial_id(C.replace(a, **{"prompt_ot.lambda_ot": 1.0})) != C.trial_id(a)


def test_json_round_trip_keeps_overrides_that_beat_the_preset():
    cfg = C.load_config(None, ["method=promptsrc", "promptsrc.gpa_std=0", "optim.lr=1"])
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


def test_the_regulariser_choices_are_the_transport_module_s_own():
    from rayot.methods.prompt_ot import Settings
    from rayot.transport import MODALITIES, SOLVERS

    fields = {f.name: f.metadata["choices"] for f in __import__("dataclasses").fields(Settings)}
    assert fields["solver"] == SOLVERS and fields["modality"] == MODALITIES


def test_a_configuration_of_an_earlier_version_loads(tmp_path):
    """A resolved configuration written before methods owned their settings (every loss key,
    GPA and template in it) loads as the same trial."""
    import json

    old = json.loads(C.to_json(C.load_config(None, ["method=coop"])))
    old["loss"] = {"lambda_ot": 0.0, "regularizer": "none", "eta": 0.5, "kg_weight": 0.0}
    old["data"]["template"] = "default"
    old["optim"].update(gpa_mean=0.0, gpa_std=0.0)
    assert C.trial_id(C.from_dict(old)) == C.trial_id(C.load_config(None, ["method=coop"]))


# ----------------------------------------------------------------------------- refused at load


def _refused(overrides: list[str], path=None) -> str:
    """The one-line message of a configuration refused at load."""
    with pytest.raises(ConfigError) as err:
        C.load_config(path, overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_dataset_names_are_checked_against_the_registry():
    message = _refused(["data.dataset=dtdd"])
    assert "'data.dataset': unknown dataset 'dtdd'" in message and "did you mean 'dtd'?" in message
    assert "eurosat" in message  # the known names are listed
    assert "'data.targets[1]': unknown dataset 'nowhere'" in _refused(["data.targets=[dtd, nowhere]"])
    assert C.load_config(None, ["data.targets=[dtd, imagenet_r]"]).data.targets == ("dtd", "imagenet_r")


@pytest.mark.parametrize("device", ["tpu", "gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda 0", ""])
def test_a_device_that_is_not_spelled_as_one_is_refused_at_load(device):
    assert f"'device': {device!r} is not a device" in _refused([f"device={device!r}"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_every_device_spelling_loads_whatever_this_machine_has(device):
    # whether the machine has it is checked where the trial runs (resolve_device), not by a plan
    assert C.load_config(None, [f"device={device}"]).device == device


def test_a_device_this_machine_lacks_is_one_line_where_the_trial_runs():
    import torch

    from rayot.train import resolve_device

    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or the first of none
    with pytest.raises(ConfigError, match=f"config key 'device': '{absent}', but this machine has") as err:
        resolve_device(absent)
    assert "\n" not in str(err.value)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.momentum=-.inf", "optim.momentum"),
        ("validation.holdout=.nan", "validation.holdout"),
        ("prompt_ot.eta=.NaN", "prompt_ot.eta"),  # a method's setting: the same loader
        ("prompt_ot.lambda_ot=.inf", "prompt_ot.lambda_ot"),
    ],
)
def test_non_finite_numbers_are_refused_in_every_float_setting(override, key):
    assert f"config key '{key}': expected a finite number, got" in _refused([override])


def test_the_typed_loader_refuses_non_finite_numbers_in_optional_and_list_fields():
    import dataclasses

    from rayot.typed import build_dataclass

    @dataclasses.dataclass(frozen=True)
    class Settings:
        scale: float | None = None
        weights: tuple[float, ...] = ()

    assert build_dataclass(Settings, {"scale": 2, "weights": [1, 0.5]}) == Settings(2.0, (1.0, 0.5))
    with pytest.raises(ConfigError, match="'x.scale': expected a finite number, got nan"):
        build_dataclass(Settings, {"scale": float("nan")}, "x.")
    with pytest.raises(ConfigError, match=r"'x.weights\[1\]': expected a finite number, got inf"):
        build_dataclass(Settings, {"weights": [1, float("inf")]}, "x.")


def test_short_names_work_as_overrides_as_in_a_grid():
    short = C.load_config(None, ["shots=4", "dataset=dtd", "protocol=few_shot"])
    assert short == C.load_config(None, ["data.shots=4", "data.dataset=dtd", "data.protocol=few_shot"])
    assert C.parse_overrides(["shots=4"]) == {"data": {"shots": 4}}
    message = _refused(["shots=4", "data.shots=8"])
    assert "'shots' and 'data.shots' are the same key (data.shots)" in message


def test_a_yaml_key_written_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("seed: 1\ndata:\n  dataset: dtd\n  shots: 4\n  shots: 8\n")
    message = _refused([], path)
    assert str(path) in message and "key 'shots' is written twice (lines 4 and 5)" in message
    path.write_text("data: {shots: 4, shots: 8}\n")
    assert "key 'shots' is written twice (line 1, columns 8 and 18)" in _refused([], path)
    assert "key 'name' is written twice" in _refused(["model={name: a, name: b}"])
    # a key a merge brings in may be overridden: that is what a merge is for
    path.write_text("x: &shared {shots: 4, dataset: dtd}\n")
    assert C.read_yaml(path) == {"x": {"shots": 4, "dataset": "dtd"}}
    path.write_text("data:\n  <<: {shots: 4, dataset: dtd}\n  shots: 8\n")
    assert C.load_config(path).data.shots == 8


def test_malformed_yaml_is_one_line_with_its_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ndata:\n  dataset: dtd\n  shots 4\noptim: {lr: 0.1}\n")
    message = _refused([], path)
    assert message.startswith(f"config file {path}: not valid YAML at line 5, column 1: could not find expected ':'")
    assert "while scanning a simple key at line 4, column 3" in message
    message = _refused(["data.targets=[dtd,"])
    assert message.startswith("override 'data.targets=[dtd,': its value: not valid YAML at line 1, column 6")
    path.write_bytes(b"seed: \xff\n")
    assert "not UTF-8 text" in _refused([], path)
