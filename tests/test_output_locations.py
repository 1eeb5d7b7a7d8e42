"""Where results, prompts and reports go is checked before the work, and a ``done`` row promises
saved prompts.

The tests run as root, for whom a folder made read-only with chmod is still writable. A folder
that refuses writes is therefore simulated: ``open`` in :mod:`rayot.results` (which writes every
local result, prompt and probe file) raises ``PermissionError`` for paths under it, as the
operating system would for a read-only folder or file system. A location that is a file, or lies
under one, is refused for real, root or not.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import rayot_cli, tiny_overrides

from rayot import config as C
from rayot import results
from rayot.checkpoints import save_checkpoint
from rayot.results import trials_without_prompts
from rayot.sweep.spec import expand, load_spec
from rayot.train.rows import EvalResult, result_rows


def _one_error_line(err: str) -> str:
    """The one ``error:`` line that ends stderr (a tiny random model may log a warning before it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Writes under ``folder`` fail as in a read-only folder (see the module's docstring)."""
    real = builtins.open

    def refusing(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+") and Path(file).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(results, "open", refusing, raising=False)


def _train(synth_root, tmp_path, monkeypatch, capsys, **extra) -> tuple[int, str, str]:
    config = tmp_path / "trial.yaml"
    config.write_text("method: prompt_ot\n")
    return rayot_cli(monkeypatch, capsys, "train", str(config),
                  *tiny_overrides(synth_root, tmp_path, **{"optim.epochs": 1, **extra}))


# ----------------------------------------------------------------------------- rayot train


def test_train_refuses_a_results_location_that_is_a_file_before_training(synth_root, tmp_path, monkeypatch, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes\n")
    code, out, err = _train(synth_root, tmp_path, monkeypatch, capsys, **{"output.results": taken})
    line = _one_error_line(err)
    assert code == 2 and f"results location '{taken}' is not writable: it is a file, not a folder" in line
    assert "trial " not in out and not (tmp_path / "checkpoints").exists()  # nothing trained
    assert taken.read_text() == "someone's notes\n"  # nothing lost


def test_train_refuses_a_results_location_under_a_file(synth_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("")
    code, out, err = _train(synth_root, tmp_path, monkeypatch, capsys,
                            **{"output.results": tmp_path / "afile" / "results"})
    assert code == 2 and "is not writable: Not a directory" in _one_error_line(err)
    assert "trial " not in out


def test_train_refuses_read_only_checkpoints_before_training(synth_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").mkdir()
    _read_only(monkeypatch, tmp_path / "checkpoints")
    code, out, err = _train(synth_root, tmp_path, monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and f"checkpoint location '{tmp_path / 'checkpoints'}' is not writable: Permission denied" in line
    assert "trial " not in out and not list((tmp_path / "results").glob("*.parquet"))


def test_a_prompt_save_that_fails_after_training_is_a_failed_trial_not_a_done_one(
        synth_root, tmp_path, monkeypatch, capsys):
    """The checkpoint folder refuses the prompts only after the check (it filled up, its mount went
    read-only): the trial is recorded as failed, never done, in one line."""
    import rayot.checkpoints

    def refused(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(rayot.checkpoints, "save_checkpoint", refused)
    code, out, err = _train(synth_root, tmp_path, monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and "saving its prompts to" in line and "Read-only file system" in line
    assert "recorded as failed, not done" in line
    (written,) = (tmp_path / "results").glob("*.parquet")
    assert {r["status"] for r in pq.read_table(written).to_pylist()} == {"failed"}


# ----------------------------------------------------------------------------- rayot report --out


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_report_refuses_an_out_it_cannot_write_before_reading(tmp_path, monkeypatch, capsys, where):
    (tmp_path / "afile").write_text("kept\n")
    out_dir = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "report",
               "read_only": tmp_path / "reports"}[where]
    if where == "read_only":
        out_dir.mkdir()
        _read_only(monkeypatch, out_dir)
    # the results location does not exist: the --out check comes first
    code, _, err = rayot_cli(monkeypatch, capsys, "report", "-r", str(tmp_path / "none"), "--out", str(out_dir))
    line = _one_error_line(err)
    assert code == 2 and line.startswith(f"error: --out location '{out_dir}' is not writable")
    assert (tmp_path / "afile").read_text() == "kept\n"


# ----------------------------------------------------------------------------- done rows of earlier versions


def _legacy_sweep(synth_root: Path, tmp_path: Path) -> tuple[Path, list[C.TrialConfig]]:
    """A sweep of two zero-shot trials, both ``done``: seed 1's rows as earlier versions wrote them
    into a checkpoint folder that refused its prompts (no prompt.pt), seed 2's with its prompts."""
    base: dict = {}
    for item in tiny_overrides(synth_root, tmp_path):
        key, value = item.split("=", 1)
        C.set_dotted(base, key, yaml.safe_load(value))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"name": "legacy", "base": base, "grid": {"seed": [1, 2]},
                                    "grids": [{"method": "zeroshot"}]}))
    trials = expand(load_spec(spec))
    for cfg in trials:
        evals = [EvalResult("base2novel", "synthetic", split, 3, 6, 12) for split in ("base", "novel")]
        results.write_trial_rows(cfg.output.results, C.trial_id(cfg), result_rows(cfg, evals, train_seconds=0.0))
    save_checkpoint(trials[1].output.checkpoints, f"{C.trial_id(trials[1])}/prompt.pt", trials[1], {})
    return spec, trials


def test_done_rows_without_prompts_are_found_and_run_again(synth_root, tmp_path, monkeypatch, capsys):
    spec, (lost, kept) = _legacy_sweep(synth_root, tmp_path)
    assert trials_without_prompts(lost.output.checkpoints, [C.trial_id(lost), C.trial_id(kept)]) == [C.trial_id(lost)]
    code, out, err = rayot_cli(monkeypatch, capsys, "sweep", str(spec), "--dry-run")
    assert code == 0, err
    (warning,) = [line for line in out.splitlines() if "no saved prompts" in line]
    assert warning.startswith("warning: 1 trial(s) have a done result but no saved prompts")
    assert C.trial_id(lost) in warning and C.trial_id(kept) not in warning and "run again" in warning
    assert "2 trials, 1 already done, 1 to run" in out


def test_report_names_done_rows_without_prompts_in_one_warning(synth_root, tmp_path, monkeypatch, capsys):
    _, (lost, kept) = _legacy_sweep(synth_root, tmp_path)
    code, _, err = rayot_cli(monkeypatch, capsys, "report", "-r", lost.output.results, "--out",
                          str(tmp_path / "report"), "--no-figures", "-f", "md")
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "no saved prompts" in line]
    assert warning.startswith("warning: 1 trial(s) have a done result") and C.trial_id(lost) in warning
    assert C.trial_id(kept) not in warning
    assert (tmp_path / "report" / "report.md").is_file()
