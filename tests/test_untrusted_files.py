"""Files are data: a checkpoint never makes rayot import a module, a model file that holds pickled
objects is refused in one line, and a ``rayot:`` asset name stays inside the package's assets.

Each case is run as a user would (``rayot train`` through the console entry point): exit status 2
and one ``error:`` line naming the file and the problem, before any training.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

import rayot.cli
from rayot import config as C
from rayot import methods
from rayot.checkpoints import checkpoint_payload, init_prompts, load_checkpoint
from rayot.errors import ModelError
from rayot.train import build_model
from rayot.train.runtime import resolve_weights_path


def _rayot(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``rayot ARGS`` through the console entry point: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["rayot", *args])
    with pytest.raises(SystemExit) as info:
        rayot.cli.main()
    return info.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The one ``error:`` line that ends stderr (a tiny random model may log a warning before it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def _marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module on sys.path that, if ever imported, leaves a marker file (and its sys.modules entry)."""
    name = f"rayot_marker_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def _prompt_pt(path: Path, method: str, prompt: dict[str, torch.Tensor] | None = None) -> Path:
    """A rayot prompt.pt whose configuration names ``method`` as it is written."""
    tree = C.to_dict(C.load_config(None, []))
    torch.save({"prompt": prompt or {"text_prompts": torch.zeros(1)},
                "config": json.dumps({**tree, "method": method})}, path)
    return path


def test_a_checkpoint_naming_a_module_is_refused_by_name_and_never_imported(
        synth_root, tmp_path, monkeypatch, capsys):
    module, marker = _marker_module(tmp_path, monkeypatch)
    ckpt = _prompt_pt(tmp_path / "prompt.pt", f"{module}:X")
    config = tmp_path / "trial.yaml"
    config.write_text("method: prompt_ot\n")
    code, err = _rayot(monkeypatch, capsys, "train", str(config),
                       *tiny_overrides(synth_root, tmp_path, **{"optim.epochs": 0, "model.init_from": ckpt}))
    assert not marker.exists() and module not in sys.modules  # never imported
    assert err.count("\n") == 1  # refused before the model loads: nothing else said
    line = _one_error_line(err)
    assert code == 2
    assert f"checkpoint {ckpt}" in line and f"'{module}:X'" in line and "not installed" in line
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").glob("*.parquet"))
    # the Python reader of a prompt.pt refuses it the same way
    with pytest.raises(ModelError, match="not installed"):
        load_checkpoint(ckpt)
    assert not marker.exists() and module not in sys.modules


def test_a_method_named_in_a_file_is_compared_as_text():
    """Built-in and installed names, what earlier files recorded for them, and methods this process
    loaded from the user's own configuration; anything else is not installed (None)."""
    assert methods.canonical("coop") == "coop"
    assert methods.canonical(methods.BUILTINS["coop"]) == "coop"  # rayot.methods.coop:CoOp
    assert methods.canonical("nowhere_module:Method") is None
    assert methods.canonical("nowhere") is None and methods.canonical("") is None
    assert methods.canonical(None) is None  # type: ignore[arg-type]
    methods.get("projected_gradient:ProjectedGradient")  # the user's configuration named it
    assert methods.canonical("projected_gradient:ProjectedGradient") == "projected_gradient"
    assert methods.canonical("projected_gradient") == "projected_gradient"


def test_new_checkpoints_record_the_registrys_name_and_old_ones_still_load(synth_root, tmp_path):
    cfg = C.load_config(None, [*tiny_overrides(synth_root, tmp_path), "method=projected_gradient:ProjectedGradient"])
    saved = json.loads(checkpoint_payload(cfg, {})["config"])
    assert saved["method"] == "projected_gradient"
    # a checkpoint of an earlier version that recorded a built-in by its module path reads back
    # and initialises the prompts (compared as text with the registry, nothing imported)
    from rayot.model import load_clip

    cfg = C.load_config(None, tiny_overrides(synth_root, tmp_path, method="ivlp"))
    clip = load_clip(cfg.model.name, None)
    source = build_model(cfg, clip, ["a", "b"])
    state = {k: torch.randn_like(v) for k, v in source.prompt_state_dict().items()}
    old = tmp_path / "old.pt"
    torch.save({"prompt": state, "config": json.dumps({**C.to_dict(cfg), "method": methods.BUILTINS["ivlp"]})}, old)
    back, prompt = load_checkpoint(old)
    assert back.method == "ivlp" and C.trial_id(back) == C.trial_id(cfg)
    target = build_model(cfg, clip, ["a", "b"])
    init_prompts(target, cfg, str(old))
    for key, value in target.prompt_state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_model_checkpoint_holding_pickled_objects_is_one_line(synth_root, tmp_path, monkeypatch, capsys):
    """torch's own refusal spans eight lines and advises weights_only=False; rayot says what the
    file holds, in one line, and never loads it."""
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "scheduler": ModelError("an object")}, bad)
    config = tmp_path / "trial.yaml"
    config.write_text("method: prompt_ot\n")
    code, err = _rayot(monkeypatch, capsys, "train", str(config),
                       *tiny_overrides(synth_root, tmp_path, **{"model.checkpoint": bad}))
    line = _one_error_line(err)
    assert code == 2
    assert f"checkpoint {bad} cannot be read" in line and "rayot.errors.ModelError" in line
    assert "weights_only=False" in line and "Re-running" not in line


@pytest.mark.parametrize("name", ["rayot:../../x", "rayot:../__init__.py", "rayot:/etc/passwd", "rayot:"])
def test_an_asset_name_that_leads_out_of_the_assets_is_refused_at_load(tmp_path, monkeypatch, capsys, name):
    config = tmp_path / "trial.yaml"
    config.write_text(f"model:\n  checkpoint: {name!r}\n")
    code, err = _rayot(monkeypatch, capsys, "train", str(config), "--plan")
    line = _one_error_line(err)
    assert code == 2 and f"config key 'model.checkpoint': {name!r}" in line and "assets folder" in line
    assert Path(resolve_weights_path("rayot:demo-clip.pt")).is_file()  # the shipped one still resolves
