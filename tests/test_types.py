"""The face rayot shows a method's author (``rayot.methods``): it type-checks, a type checker
catches a misspelt setting, and what a plug-in imported or overrode before 0.4.0 still works,
with a DeprecationWarning where it moved (deprecated in 0.4.0, removed in 0.6.0).

mypy runs as pyproject.toml's ``[tool.mypy]`` says (rayot/methods and examples/plot, not following
into torch, open_clip or Ray): measured on the 2-core development machine, a cold run (no
.mypy_cache) takes 2.9 s of CPU (8.8 to 19.5 s of wall time while other jobs loaded the cores 6
to 7 times over), a warm one 0.2 s of CPU (0.5 to 1.3 s): not slow.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from rayot import methods
from rayot.methods import (
    DeepPromptMethod,
    FrozenCLIPPrompts,
    LoadedCLIP,
    Method,
    NoSettings,
    PromptedCLIP,
    setting,
)

ROOT = Path(__file__).resolve().parents[1]

#: A plug-in's settings and loss, ``{name}`` the setting its loss reads.
PLUGIN = '''
from dataclasses import dataclass

from rayot.methods import Batch, DeepPromptMethod, Objective, cross_entropy, setting


@dataclass(frozen=True)
class Settings:
    lam: float = setting(1.0, minimum=0, help="the weight of the logits' squared norm")


class Mine(DeepPromptMethod[Settings]):
    name = "mine"
    display = "Mine"

    def loss(self, batch: Batch, settings: Settings) -> Objective:
        ce = cross_entropy(batch.output.logits, batch.labels)
        return Objective(ce + settings.{name} * batch.output.logits.pow(2).mean())
'''


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_methods_and_the_plot_example_type_check():
    done = _mypy()
    assert done.returncode == 0 and "Success" in done.stdout, done.stdout + done.stderr


def test_a_misspelt_setting_is_a_type_error(tmp_path):
    (tmp_path / "right.py").write_text(PLUGIN.format(name="lam"))
    (tmp_path / "misspelt.py").write_text(PLUGIN.format(name="lamda"))
    done = _mypy("--config-file", str(ROOT / "pyproject.toml"), str(tmp_path / "right.py"),
                 str(tmp_path / "misspelt.py"))
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, done.stdout + done.stderr
    assert "misspelt.py:18: error:" in errors[0] and 'has no attribute "lamda"' in errors[0]


#: What examples/plot, its tests and docs/methods.md imported before 0.4.0, where it did not move.
KEPT = {
    "rayot.errors": ["ConfigError", "ModelError"],
    "rayot.methods": ["Batch", "Method", "NoSettings", "Objective", "Preset", "References", "StepHooks",
                      "cross_entropy", "get"],
    "rayot.methods.base": ["Batch", "Method", "NoSettings", "Objective", "Preset", "References", "StepHooks",
                           "DIAGNOSTIC_PREFIX", "class_rows", "cross_entropy"],
    "rayot.model": ["FrozenCLIPPrompts", "LoadedCLIP", "PromptOutput", "PromptedCLIP"],
    "rayot.model.adapter": ["encode_image_prompted", "encode_text_tokens"],
    "rayot.model.loading": ["LoadedCLIP"],
    "rayot.model.prompts": ["FrozenCLIPPrompts", "PromptOutput", "read_reference_tensors"],
    "rayot.transport": ["no_autocast"],
    "rayot.typed": ["setting"],
    "rayot.checkpoints": ["from_reference", "load_reference_file"],
    "rayot.config": ["load_config"],
    "rayot.testing": ["check_method", "parametrize_with_checks"],
}
#: Names that moved out of the contract module (rayot.methods.base) -> where they are now.
MOVED = {name: "rayot.methods.family" for name in (
    "DASSL_WARMUP", "TRANSFER_PROTOCOLS", "named_templates", "check_template", "template_setting",
    "deep_prompt_shapes", "DeepPromptMethod", "ModuleMethod")}


def test_every_name_a_plugin_imported_still_imports():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for module, names in KEPT.items():
            for name in names:
                assert getattr(importlib.import_module(module), name) is not None, f"{module}.{name}"
    base = importlib.import_module("rayot.methods.base")
    for name, now in MOVED.items():
        with pytest.deprecated_call(match=f"base.{name} is deprecated since 0.4.0 and will be removed in 0.6.0"):
            assert getattr(base, name) is getattr(importlib.import_module(now), name)
    with pytest.deprecated_call():
        assert base.NO_REGULARIZER_ID == {"loss.lambda_ot": 0.0, "loss.regularizer": "none"}
    with pytest.raises(AttributeError):
        base.no_such_name  # noqa: B018
    # what PLOT needs, from the one face: served on first use where importing it costs (POT, the config)
    for name in ("no_autocast", "from_reference", "load_reference_file", "TrialConfig", "PromptConfig"):
        assert name in methods.__all__ and getattr(methods, name) is not None


@pytest.fixture(scope="module")
def tiny_clip() -> LoadedCLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=16, layers=1, width=16, head_width=8, patch_size=8),
                           text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1)).eval()
    return LoadedCLIP(model=model, tokenizer=open_clip.get_tokenizer("rayot-tiny"), image_size=16,
                      model_name="tiny", pretrained=None)


def test_a_prompt_module_written_before_0_4_still_works(tiny_clip):
    """The private names a subclass overrode and called (``_adopt``, ``_init_classes``,
    ``_learned``, ``_prompt_token_ids``) serve the public ones, each with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning) as overridden:
        class OldStyle(FrozenCLIPPrompts):
            def __init__(self, clip: LoadedCLIP, classnames: list[str]) -> None:
                super().__init__()
                _, dtype = self._adopt(clip)
                self.ctx = nn.Parameter(torch.zeros(2, clip.model.transformer.width, dtype=dtype))
                self._init_classes(classnames)

            def _prompt_token_ids(self, names: list[str]) -> list[list[int]]:
                return [self.tokenizer.encode(f"X X {n}.") for n in names]

            def _learned(self) -> dict[str, nn.Parameter]:
                return {"ctx": self.ctx}

    assert sorted(str(w.message).split(" is ")[0].rsplit(".", 1)[1] for w in overridden) == [
        "_learned", "_prompt_token_ids"]
    with pytest.warns(DeprecationWarning) as called:
        model = OldStyle(tiny_clip, ["cat", "dog"])
    assert ["_adopt" in str(called[0].message), "_init_classes" in str(called[1].message)] == [True, True]
    assert model.clip is tiny_clip.model and model.trainable_parameters() == [model.ctx]
    assert model.learned() == {"ctx": model.ctx} and list(model.prompt_state_dict()) == ["ctx"]
    assert model.text_tokens.shape[0] == 2 and not model.training and not model.clip.training
    new = PromptedCLIP(tiny_clip, ["cat"], n_ctx_text=2, depth_text=1, depth_vision=0)
    with pytest.deprecated_call(match="use learned"):  # a module of 0.4.0 called by an old name
        assert new._learned() == new.learned() == {"text_prompts": new.text_prompts}
    with pytest.deprecated_call(match="use prompt_token_ids"):
        assert new._prompt_token_ids(["cat"]) == new.prompt_token_ids(["cat"])


@dataclass(frozen=True)
class _Settings:
    weight: float = setting(1.0, minimum=0)


def test_the_settings_type_is_the_type_argument_unless_the_class_sets_it():
    class Typed(Method[_Settings]):
        pass

    class Reused(DeepPromptMethod[_Settings]):
        pass

    class Untyped(Method):  # written before 0.4.0
        Settings = _Settings

    class Plain(Method[NoSettings]):
        pass

    assert Typed.Settings is Reused.Settings is Untyped.Settings is _Settings
    assert Plain.Settings is Method.Settings is NoSettings


def test_legacy_trial_id_entries_are_the_built_ins_own():
    """A built-in's row of the one legacy table, however it was loaded; a subclass of it (another
    method) and a plug-in have none."""
    ivlp = methods.get("ivlp")
    assert methods.legacy_ids(ivlp) == methods.LEGACY_IDS["ivlp"]
    assert methods.legacy_ids(methods.get("rayot.methods.ivlp:IVLP")) == methods.LEGACY_IDS["ivlp"]
    assert set(methods.LEGACY_IDS) == set(methods.BUILTINS)

    class Derived(type(ivlp)):  # type: ignore[misc]
        name = "derived"

    assert methods.legacy_ids(Derived()) == {} and methods.legacy_ids(methods.get("plot")) == {}
    assert Derived().id_fields(NoSettings()) == {}
