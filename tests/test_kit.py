"""The conformance kit (rayot.testing): every built-in method keeps every contract, a method that
breaks one fails naming it, and a missing, broken or misdeclared plug-in is one clear message."""

from __future__ import annotations

import importlib.metadata

import pytest

from rayot import config as C
from rayot import methods
from rayot.errors import ConfigError
from rayot.testing import (
    BASE,
    PROPERTIES,
    TOLERANCE,
    MethodCheckError,
    _same_run,
    check_method,
    check_property,
    kit_trial,
    parametrize_with_checks,
    tiny_overrides,
)

#: the built-in whose every property the fast loop checks: rayot's own method, which trains, packs,
#: shards, exports reference checkpoints and declares inert settings (the deliberately broken
#: methods below exercise IVLP's paths); every other built-in's run with the slow tests
FAST = "prompt_ot"


@parametrize_with_checks([FAST])
def test_prompt_ot_keeps_every_contract(method, check, kit):
    check(method, kit)


@pytest.mark.slow  # about 40 s for the 8 methods
@parametrize_with_checks([m for m in methods.BUILTINS if m != FAST])
def test_every_other_built_in_keeps_every_contract(method, check, kit):
    check(method, kit)


def test_a_wrong_packed_step_fails_the_kit_naming_the_property(kit):
    with pytest.raises(MethodCheckError) as err:
        check_method("broken_methods:WrongPackedStep",
                     properties=("registered", "deterministic", "packed_equals_alone"), kit=kit)
    message = str(err.value)
    assert "wrong_packed_step breaks 1 property" in message
    assert "packed_equals_alone: seed 2 packed against alone: the learned tensors differ by" in message


def test_a_method_that_trains_the_frozen_clip_fails_the_kit():
    result = check_property("broken_methods:TrainsTheCLIP", "trains_only_learned")
    assert not result.passed and "trainable_parameters() are not exactly" in result.detail


#: what the kit checked before it checked settings, mid-schedule resumption and every way of running
FORMER = ("registered", "bad_settings_refused", "trains_only_learned", "deterministic", "packed_equals_alone",
          "two_workers_equal_one")


def _fails_only(ref: str, prop: str, kit, former: tuple[str, ...]) -> str:
    """``ref`` keeps the ``former`` properties (of :data:`FORMER`, those that its runs could break)
    and breaks ``prop``: its message."""
    assert set(former) <= set(FORMER)
    assert all(r.passed for r in check_method(ref, properties=former, kit=kit))
    with pytest.raises(MethodCheckError) as err:
        check_method(ref, properties=(prop,), kit=kit)
    assert f"breaks 1 property:\n- {prop}: " in str(err.value)
    return str(err.value)


def test_a_setting_the_method_ignores_fails_settings_take_effect(kit):
    message = _fails_only("broken_methods:IgnoresItsTemperature", "settings_take_effect", kit,
                          former=FORMER[:3])  # it trains as IVLP does
    assert "ignores_its_temperature: temperature=2.0: no effect on the outputs, the step or the trial" in message


def test_hook_state_lost_after_the_warm_up_fails_resuming_mid_schedule(kit):
    ref = "broken_methods:ForgetsAfterWarmUp"
    cfg, after = kit_trial(ref)
    # the former resumption, after the warm-up epoch, ends right (the same run alone as below)
    _same_run("resumed after the warm-up", kit.resumed(cfg, 1), kit.alone(cfg), TOLERANCE)
    message = _fails_only(ref, "resume_mid_schedule", kit, former=("deterministic",))
    assert f"resumed after epoch {after} of 3 against uninterrupted: the learned tensors differ" in message


def test_an_unseeded_generator_in_a_rare_branch_fails_deterministic_every_way(kit):
    ref = "broken_methods:UnseededBranch"
    # the branch runs once, at step 16 of 18: the trial's own runs on its own seed (twice, on 2
    # ranks, resumed after step 12) draw the same number there (Python's generator, seeded per trial)
    message = _fails_only(ref, "deterministic_every_way", kit, former=("deterministic", "two_workers_equal_one"))
    assert check_property(ref, "resume_mid_schedule", kit=kit).passed
    assert "with the global generators in another state before each step" in message
    for way in ("packed behind another seed", "on 2 workers (rank 1)", "resumed after epoch 2"):
        assert f"{way}: the learned tensors differ" in message


def test_the_kit_reports_every_property_and_skips_what_does_not_apply():
    results = check_method("zeroshot", properties=("registered", "resume_equals_uninterrupted",
                                                   "reference_round_trip"))
    assert [(r.property, r.skipped) for r in results] == [
        ("registered", False), ("resume_mid_schedule", True), ("reference_round_trip", True)]
    with pytest.raises(ValueError, match="unknown property"):
        check_property("zeroshot", "fast")
    assert set(PROPERTIES) == {"registered", "bad_settings_refused", "trains_only_learned", "settings_take_effect",
                               "deterministic", "packed_equals_alone", "two_workers_equal_one",
                               "resume_mid_schedule", "deterministic_every_way", "reference_round_trip"}


def test_a_method_missing_from_the_tiny_table_gets_the_base_shapes():
    assert tiny_overrides("coop") == {**BASE, "method": "coop"}
    assert tiny_overrides("promptsrc")["promptsrc.gpa_mean"] == 1.0


@pytest.mark.parametrize(("ref", "needle"), [
    ("no_such_method", "'no_such_method' is not a method (built-in: zeroshot"),
    ("missing_package.plot:PLOT", "importing module 'missing_package.plot' failed: ModuleNotFoundError"),
    ("broken_methods:Nothing", "module 'broken_methods' has no attribute 'Nothing'"),
    ("broken_methods:NOT_A_METHOD", "is not a rayot.methods.Method subclass or instance"),
    ("broken_methods:MutableSettings", "Settings must be a frozen dataclass"),
    ("broken_methods:NoBuild", "it trains but does not override build()"),
    ("broken_methods:BadName", "name = 'Bad-Name' must be a lowercase identifier"),
    ("broken_methods:CalledCoOp", "is called 'coop', the name of another method (built-in)"),
])
def test_a_missing_broken_or_misdeclared_method_is_one_message_naming_it(ref, needle):
    with pytest.raises(ConfigError) as err:
        C.load_config(None, [f"method={ref}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_plug_in_is_found_by_its_entry_point(monkeypatch):
    found = {
        "wrong_packed_step": importlib.metadata.EntryPoint(
            "wrong_packed_step", "broken_methods:WrongPackedStep", methods.ENTRY_POINT_GROUP),
        "misnamed": importlib.metadata.EntryPoint("misnamed", "broken_methods:TrainsTheCLIP", methods.ENTRY_POINT_GROUP),
        "broken": importlib.metadata.EntryPoint("broken", "missing_package:PLOT", methods.ENTRY_POINT_GROUP),
    }
    monkeypatch.setattr(methods, "_entry_points", lambda: found)
    monkeypatch.setattr(methods, "_loaded", {})
    cfg = C.load_config(None, ["method=wrong_packed_step"])
    assert C.method_of(cfg).origin.startswith("entry point of")
    with pytest.raises(ConfigError, match="entry-point name must be its name"):
        methods.get("misnamed")
    with pytest.raises(ConfigError, match=r"method plug-in 'broken' \(entry point 'missing_package:PLOT'"):
        methods.get("broken")


def test_a_dotted_path_names_the_same_method_as_its_registry_name():
    by_path = C.load_config(None, ["method=rayot.methods.prompt_ot:PromptOT"])
    assert C.trial_id(by_path) == C.trial_id(C.load_config(None, []))
    assert C.method_of(by_path) is methods.get("prompt_ot")


def test_rayot_methods_lists_every_method_and_shows_one_with_its_presets(monkeypatch):
    from typer.testing import CliRunner

    from rayot.cli import app

    out = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for name in methods.BUILTINS:
        assert f"│ {name} " in out.output
    one = CliRunner().invoke(app, ["methods", "promptsrc"], env={"COLUMNS": "200"})
    assert one.exit_code == 0, one.output
    assert "gpa_mean" in one.output and "muzairkhattak/PromptSRC@bb95c77b" in one.output
    assert "few_shot" in one.output and "gpa_mean=45.0" in one.output  # the dataset-dependent preset
    broken = {"broken": importlib.metadata.EntryPoint("broken", "missing_package:PLOT", methods.ENTRY_POINT_GROUP)}
    monkeypatch.setattr(methods, "_entry_points", lambda: broken)
    out = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "cannot be loaded" in out.output and "missing_package" in out.output


@pytest.mark.slow  # 20 s
def test_a_gradient_projection_is_a_method_too(kit):
    """ProGrad's step (tests/projected_gradient.py): the loss gives the KL to the frozen model as an
    aux term, the step hooks project the cross-entropy gradient off its gradient. It keeps every
    contract (the two gradients summed over two ranks before the projection), the hook changes the
    gradient exactly as the rule says, and a trial's prompts differ from plain cross-entropy's."""
    import torch
    from projected_gradient import Projection

    ref = "projected_gradient:ProjectedGradient"
    results = check_method(ref, properties=("deterministic", "packed_equals_alone", "two_workers_equal_one",
                                            "resume_mid_schedule", "deterministic_every_way"), kit=kit)
    assert all(r.passed for r in results)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2, generator=g)) for _ in range(2)]
    g_d = [torch.randn(3, 2, generator=g) for _ in range(2)]
    g_g = [-d + 0.1 * torch.randn(3, 2, generator=g) for d in g_d]  # conflicting: d · g < 0
    for p, d in zip(params, g_d, strict=True):
        p.grad = d.clone()
    hooks = Projection()
    hooks.gradients(params, {"kl": g_g})
    flat_d, flat_g = torch.cat([d.reshape(-1) for d in g_d]), torch.cat([x.reshape(-1) for x in g_g])
    want = flat_d - (flat_d @ flat_g) / (flat_g @ flat_g) * flat_g
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params]), want)
    assert abs(float(want @ flat_g)) < 1e-5 and hooks.projected == 1  # orthogonal to the KL gradient now
    projected = kit.alone(kit_trial(ref)[0])
    plain = kit.alone(kit_trial("ivlp")[0])
    assert projected.saved[-1][1]["projected"] > 0  # the hook's state is in the epoch checkpoint
    assert any(not torch.equal(projected.prompt[k], plain.prompt[k]) for k in plain.prompt)
