"""`rayot data check`: exact missing paths, counts, undecodable images, exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_trees import (
    balanced_split,
    make_fgvc,
    make_imagenet,
    make_imagenetv2,
    make_split_dataset,
    write_image,
)
from typer.testing import CliRunner

from rayot.cli import app
from rayot.data.check import check_dataset
from rayot.data.task import build_task
from rayot.errors import DataError


def _run(*args: str):
    return CliRunner().invoke(app, ["data", "check", *args])


def _synthetic(root: Path) -> Path:
    return make_split_dataset(root, "synthetic", balanced_split(["red", "green", "blue"]))


def test_complete_dataset_is_ok(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    report = check_dataset("synthetic", tmp_path)
    assert report.ok, report.problems
    assert report.counts == {"train": (15, 15), "val": (9, 9), "test": (6, 6)}
    assert report.num_classes == 3
    result = _run("--root", str(tmp_path), "synthetic")
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_partly_missing_dataset_names_each_path(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    lost_image = folder / "images" / "red" / "train_001.jpg"
    lost_image.unlink()
    for f in (folder / "images" / "blue").iterdir():
        f.unlink()
    (folder / "images" / "blue").rmdir()
    report = check_dataset("synthetic", tmp_path)
    missing = {p.path: p.message for p in report.problems if p.kind == "missing"}
    assert missing == {lost_image: "missing image",
                       folder / "images" / "blue": "missing folder (10 listed images)"}
    assert report.counts == {"train": (9, 15), "val": (6, 9), "test": (4, 6)}

    result = _run("--root", str(tmp_path), "synthetic", "eurosat")
    assert result.exit_code == 1
    assert str(lost_image) in result.output
    assert str(folder / "images" / "blue") in result.output
    assert f"dataset folder missing: {tmp_path / 'eurosat'}" in result.output


def test_missing_split_file_and_image_root(tmp_path: Path) -> None:
    (tmp_path / "oxford_flowers").mkdir()
    report = check_dataset("oxford_flowers", tmp_path)
    assert [p.path for p in report.problems] == [
        tmp_path / "oxford_flowers" / "split_zhou_OxfordFlowers.json",
        tmp_path / "oxford_flowers" / "jpg"]


def test_images_missing_under_absent_image_root_listed_once(tmp_path: Path) -> None:
    make_split_dataset(tmp_path, "synthetic", balanced_split(["a", "b"]), images=False)
    report = check_dataset("synthetic", tmp_path)
    assert [(p.kind, p.path) for p in report.problems] == [
        ("missing", tmp_path / "synthetic" / "images")]


def test_counts_against_protocol(tmp_path: Path) -> None:
    make_split_dataset(tmp_path, "eurosat", balanced_split([f"c{i}" for i in range(9)]))
    report = check_dataset("eurosat", tmp_path)
    messages = [p.message for p in report.problems if p.kind == "count"]
    assert messages[0] == "9 classes, expected 10"
    assert "train: the split lists 45 images, docs/protocol.md expects 13500" in messages


def test_undecodable_images(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    garbage = folder / "images" / "red" / "train_000.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    truncated = folder / "images" / "green" / "val_004.jpg"
    write_image(truncated, size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    report = check_dataset("synthetic", tmp_path, workers=2)
    bad = {p.path for p in report.problems if p.kind == "undecodable"}
    assert bad == {garbage, truncated}
    assert check_dataset("synthetic", tmp_path, decode=False).ok
    result = _run("--root", str(tmp_path), "synthetic")
    assert result.exit_code == 1 and str(truncated) in result.output


def test_fgvc_missing_lists(tmp_path: Path) -> None:
    folder = make_fgvc(tmp_path, ["A", "B"], {"train": [("1", "A")], "test": [("2", "B")]})
    report = check_dataset("fgvc_aircraft", tmp_path)
    assert [p.path for p in report.problems] == [folder / "images_variant_val.txt"]


def test_imagenet_missing_class_folder(tmp_path: Path) -> None:
    folder = make_imagenet(tmp_path, {"n1": "one", "n2": "two"},
                           {"n1": (["a.JPEG"], ["b.JPEG"]), "n2": (["c.JPEG"], [])})
    (folder / "images" / "val" / "n2").rmdir()
    report = check_dataset("imagenet", tmp_path)
    assert folder / "images" / "val" / "n2" in {p.path for p in report.problems}
    assert report.counts["test"] == (1, 50_000)


def test_imagenetv2_missing_label_folders(tmp_path: Path) -> None:
    folder = make_imagenetv2(tmp_path, {f"n{i}": f"c{i}" for i in range(1000)},
                             {i: ["a.jpeg"] for i in range(1000) if i != 7})
    report = check_dataset("imagenetv2", tmp_path, decode=False)
    assert [p.path for p in report.problems if p.kind == "missing"] == [
        folder / "imagenetv2-matched-frequency-format-val" / "7"]


def test_all_datasets_reports_present_ones(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    result = _run("--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "absent" in result.output and "synthetic" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--root", str(empty))
    assert result.exit_code == 1
    assert "no dataset folder found" in result.output


def test_malformed_split_file_is_reported_with_its_path(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    (folder / "split_rayot_Synthetic.json").write_text('{"train": [["a.jpg", "0", "a"]]}')
    report = check_dataset("synthetic", tmp_path)
    assert [p.kind for p in report.problems] == ["malformed"]
    assert str(folder / "split_rayot_Synthetic.json") in report.problems[0].message
    result = _run("--root", str(tmp_path), "synthetic")
    assert result.exit_code == 1 and "train[0] label must be an integer" in result.output


def test_class_missing_from_a_split_is_an_error_not_a_new_split(tmp_path: Path) -> None:
    # Without the check the halves come from the train labels {0, 2, 3}: novel class "blue"
    # (label 2) would become a base class under the same trial id.
    split = balanced_split(["red", "green", "blue", "grey"])
    split["train"] = [entry for entry in split["train"] if entry[2] != "green"]
    folder = make_split_dataset(tmp_path, "synthetic", split)
    report = check_dataset("synthetic", tmp_path)
    assert [p.kind for p in report.problems] == ["malformed"]
    message = report.problems[0].message
    assert "train split has no image of class 'green' (label 1)" in message
    assert str(folder / "split_rayot_Synthetic.json") in message
    result = _run("--root", str(tmp_path), "synthetic")
    assert result.exit_code == 1 and "no image of class 'green'" in result.output
    # The same error before any training: the task a trial builds first.
    with pytest.raises(DataError, match="train split has no image of class 'green'"):
        build_task("synthetic", tmp_path, shots=1, seed=1, subsample="base")
