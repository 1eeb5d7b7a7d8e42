"""`rayot data fewshot/synth` and how bad data input reaches the user (one line, exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from data_trees import make_split_dataset, split_entries
from typer.testing import CliRunner

import rayot.cli
from rayot.cli import app
from rayot.data import build_task, read_dataset
from rayot.errors import DataError


def _tree(root: Path) -> None:
    order = [2, 0, 1]
    make_split_dataset(root, "oxford_pets", split_entries({
        "train": [(f"pet_{y}", y) for y in order for _ in range(5)],
        "val": [(f"pet_{y}", y) for y in order for _ in range(5)],
        "test": [(f"pet_{y}", y) for y in order],
    }), images=False)


def test_fewshot_writes_relabelled_subset(tmp_path: Path) -> None:
    _tree(tmp_path)
    out = tmp_path / "out" / "novel.json"
    result = CliRunner().invoke(app, ["data", "fewshot", "oxford_pets", "--root", str(tmp_path),
                                      "--shots", "2", "--seed", "3", "--subsample", "novel",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    task = build_task("oxford_pets", tmp_path, shots=2, seed=3, subsample="novel")
    assert written == {"train": [list(it) for it in task.train], "val": [list(it) for it in task.val]}
    assert {label for _, label, _ in written["train"]} == {0}  # pet_2 relabelled to 0
    assert all(path.startswith("pet_2/") for path, _, _ in written["train"])


def test_fewshot_rejects_bad_options(tmp_path: Path) -> None:
    _tree(tmp_path)
    runner = CliRunner()
    base = ["data", "fewshot", "oxford_pets", "--root", str(tmp_path), "--seed", "1",
            "--out", str(tmp_path / "o.json")]
    assert runner.invoke(app, [*base, "--shots", "0"]).exit_code == 2
    assert runner.invoke(app, [*base, "--shots", "1", "--subsample", "half"]).exit_code == 2


@pytest.mark.parametrize(("args", "expected"), [
    (["data", "fewshot", "petz", "--shots", "1", "--seed", "1", "--out", "o.json"],
     "unknown dataset 'petz'; known datasets: imagenet,"),
    (["data", "fewshot", "dtd", "--shots", "1", "--seed", "1", "--out", "o.json"],
     "dtd: dataset folder {root}/dtd does not exist"),
    (["data", "fewshot", "oxford_pets", "--shots", "1", "--seed", "1", "--out", "o.json"],
     "oxford_pets: split file {root}/oxford_pets/split_zhou_OxfordPets.json is not valid JSON"),
    (["data", "fewshot", "imagenet_a", "--shots", "1", "--seed", "1", "--out", "o.json"],
     "imagenet_a: has no train split"),
    (["data", "check", "petz"], "unknown dataset 'petz'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], args: list[str],
                                          expected: str) -> None:
    (tmp_path / "oxford_pets").mkdir()
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text('{"train": [')
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "n1").mkdir(parents=True)
    (tmp_path / "imagenet-adversarial" / "classnames.txt").write_text("n1 one\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rayot", *args, "--root", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        rayot.cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and expected.format(root=tmp_path) in err


def test_cli_raises_data_error_not_other_exceptions(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "check", "dtd", "--root", str(tmp_path / "none")])
    assert isinstance(result.exception, DataError)
    assert str(tmp_path / "none") in str(result.exception)


def test_synth_writes_the_world_and_refuses_to_overwrite_silently(tmp_path: Path) -> None:
    args = ["data", "synth", "--root", str(tmp_path), "--seed", "4"]
    assert CliRunner().invoke(app, args).exit_code == 0
    split = json.loads((tmp_path / "synthetic" / "split_rayot_Synthetic.json").read_text())
    assert set(split) == {"train", "val", "test"}
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, DataError) and "--overwrite" in str(again.exception)
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert read_dataset("synthetic", tmp_path).classnames[0] == "red circle"
