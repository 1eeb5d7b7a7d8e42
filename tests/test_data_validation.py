"""A search trial's data (rayot.data.validation): no test image, no novel class, held-out base classes."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
from data_trees import balanced_split, coop_splits, make_imagenet, make_split_dataset

from rayot.data import (
    DatasetSplits,
    Item,
    SearchData,
    build_task,
    fewshot,
    read_dataset,
    sample_fewshot,
    search_data,
    template_for,
)
from rayot.data.readers import read_split_file
from rayot.data.validation import held_out_labels, validation_items
from rayot.errors import ConfigError, DataError

STEMS = {"oxford_pets": "OxfordPets", "dtd": "DescribableTextures", "eurosat": "EuroSAT"}


def _splits(name: str) -> DatasetSplits:
    train, val, test, classnames = read_split_file(coop_splits() / f"split_zhou_{STEMS[name]}.json", name)
    return DatasetSplits(name, Path("unused"), train, val, test, classnames)


def _paths(items) -> set[str]:
    return {it.impath for it in items}


# ----------------------------------------------------------------------------- held_out_labels


def test_held_out_labels_deterministic_sorted_and_sized() -> None:
    labels = held_out_labels(24, 0.5, 0, "synthetic")
    assert labels == held_out_labels(24, 0.5, 0, "synthetic")
    assert labels == sorted(set(labels)) and len(labels) == 12
    assert all(0 <= y < 24 for y in labels)
    # the documented stream: a string seed, stable across processes (no PYTHONHASHSEED)
    assert labels == sorted(random.Random("synthetic:0").sample(range(24), 12))
    assert held_out_labels(50, 0.3, 2, "dtd") == sorted(random.Random("dtd:2").sample(range(50), 15))


def test_held_out_labels_depend_on_seed_and_dataset() -> None:
    by_seed = {tuple(held_out_labels(24, 0.5, s, "synthetic")) for s in range(10)}
    assert len(by_seed) > 1
    assert held_out_labels(24, 0.5, 0, "synthetic") != held_out_labels(24, 0.5, 0, "dtd")


@pytest.mark.parametrize("n", [2, 3, 5, 10, 24, 47, 1000])
@pytest.mark.parametrize("holdout", [0.01, 0.25, 0.5, 0.9, 0.999])
def test_held_out_labels_count_and_bounds(n: int, holdout: float) -> None:
    labels = held_out_labels(n, holdout, 1, "x")
    assert len(labels) == min(max(round(holdout * n), 1), n - 1)
    assert 1 <= len(labels) <= n - 1


def test_held_out_labels_zero_and_errors() -> None:
    assert held_out_labels(24, 0.0, 3, "x") == []
    assert held_out_labels(1, 0.0, 3, "x") == []
    assert held_out_labels(2, 0.1, 0, "x") in ([0], [1])
    with pytest.raises(DataError, match="tiny.*1 class"):
        held_out_labels(1, 0.5, 0, "tiny")
    with pytest.raises(DataError, match="tiny"):
        held_out_labels(0, 0.5, 0, "tiny")
    for bad in (-0.1, 1.0, 1.5, math.nan):
        with pytest.raises(ConfigError, match="x: holdout"):
            held_out_labels(24, bad, 0, "x")


# ----------------------------------------------------------------------------- validation_items


@pytest.mark.parametrize("name", sorted(STEMS))
@pytest.mark.parametrize("shots", [1, 16])
def test_validation_items_is_the_fewshot_val_subset(name: str, shots: int) -> None:
    splits = _splits(name)
    for seed in (1, 2):
        train, val = sample_fewshot(splits, shots, seed)
        assert validation_items(splits, shots, seed, train) == val


def test_validation_items_reproduce_the_published_val_subset() -> None:
    splits = _splits("dtd")
    raw = json.loads((coop_splits() / "published_fewshot" / "dtd" / "shot_16-seed_1.json").read_text())
    published = [(e["impath"].rsplit("/", 1)[-1], e["label"]) for e in raw["val"]["data"]]
    train, _ = sample_fewshot(splits, 16, 1)
    got = validation_items(splits, 16, 1, train)
    assert [(it.impath.rsplit("/", 1)[-1], it.label) for it in got] == published


@pytest.mark.parametrize("val_is", ["empty", "test"])
@pytest.mark.parametrize("shots", [1, 2, 16])
def test_validation_items_without_a_val_split_draw_from_unused_train(val_is: str, shots: int) -> None:
    real = _splits("eurosat")
    splits = DatasetSplits("eurosat", Path("unused"), real.train, [] if val_is == "empty" else real.test,
                           real.test, real.classnames)
    train, _ = sample_fewshot(splits, shots, 1)
    val = validation_items(splits, shots, 1, train)
    assert Counter(it.label for it in val) == {y: min(shots, 4) for y in range(10)}
    assert _paths(val) <= _paths(real.train)
    assert not _paths(val) & _paths(train)
    assert not _paths(val) & _paths(real.test)
    assert len(_paths(val)) == len(val)
    pool = [it for it in real.train if it.impath not in _paths(train)]
    assert val == fewshot(pool, min(shots, 4), random.Random("validation:1"))
    assert val == validation_items(splits, shots, 1, train)  # deterministic
    assert val != validation_items(splits, shots, 2, sample_fewshot(splits, shots, 2)[0])


def test_validation_items_a_val_split_sharing_a_test_image_is_not_used() -> None:
    train = [Item(f"c{y}/tr{i}.jpg", y, f"c{y}") for y in range(3) for i in range(8)]
    test = [Item(f"c{y}/te{i}.jpg", y, f"c{y}") for y in range(3) for i in range(3)]
    val = [Item(f"c{y}/va{i}.jpg", y, f"c{y}") for y in range(3) for i in range(3)] + test[:1]
    splits = DatasetSplits("mixed", Path("."), train, val, test, ["c0", "c1", "c2"])
    fs_train, _ = sample_fewshot(splits, 2, 1)
    got = validation_items(splits, 2, 1, fs_train)
    assert _paths(got) <= _paths(train) and not _paths(got) & _paths(fs_train)


def test_validation_items_a_class_without_spare_train_images() -> None:
    train = [Item(f"c{y}/tr{i}.jpg", y, f"c{y}") for y, n in ((0, 6), (1, 2)) for i in range(n)]
    splits = DatasetSplits("small", Path("."), train, [], [], ["c0", "c1"])
    fs_train, _ = sample_fewshot(splits, 2, 1)
    with pytest.raises(DataError, match=r"small: .*classes \[1\]"):
        validation_items(splits, 2, 1, fs_train)


# ----------------------------------------------------------------------------- search_data


def _check_label_space(items: list[Item], classnames: list[str]) -> None:
    """Labels 0..len(classnames)-1, each item's class named by its label."""
    assert all(classnames[it.label] == it.classname for it in items)


def test_search_data_base_with_held_out_classes(synth_root: Path) -> None:
    splits = read_dataset("synthetic", synth_root)
    data = search_data("synthetic", synth_root, shots=2, seed=1, subsample="base", holdout=0.5,
                       holdout_seed=0)
    assert isinstance(data, SearchData) and data.held_out is not None
    n_base = math.ceil(len(splits.classnames) / 2)
    base_names = splits.classnames[:n_base]
    held = held_out_labels(n_base, 0.5, 0, "synthetic")
    trained = [y for y in range(n_base) if y not in held]
    train, seen, held_out = data.train, data.seen, data.held_out

    # label spaces: trained classes in original label order, shared by train and seen
    assert train.classnames == seen.classnames == [base_names[y] for y in trained]
    assert held_out.classnames == [base_names[y] for y in held]
    assert set(train.classnames) | set(held_out.classnames) == set(base_names)
    assert not set(train.classnames) & set(held_out.classnames)
    _check_label_space(train.train, train.classnames)
    _check_label_space(seen.test, seen.classnames)
    _check_label_space(held_out.test, held_out.classnames)

    # what each task holds, and nothing else
    assert train.val == train.test == seen.train == seen.val == held_out.train == held_out.val == []
    assert Counter(it.label for it in train.train) == {y: 2 for y in range(len(trained))}
    assert Counter(it.label for it in seen.test) == {y: 2 for y in range(len(trained))}
    assert Counter(it.label for it in held_out.test) == {y: 2 for y in range(len(held))}
    assert _paths(train.train) <= _paths(splits.train)
    assert _paths(seen.test) | _paths(held_out.test) <= _paths(splits.val)
    every = [*train.train, *seen.test, *held_out.test]
    assert not _paths(every) & _paths(splits.test)
    assert {it.classname for it in every} <= set(base_names)  # no novel class
    assert not {it.classname for it in train.train} & set(held_out.classnames)

    # the same few-shot subset as an ordinary base-to-novel trial, less the held-out classes
    task = build_task("synthetic", synth_root, shots=2, seed=1, subsample="base")
    assert [(p, c) for p, _, c in train.train] == [(p, c) for p, y, c in task.train if y in trained]
    assert [(p, c) for p, _, c in seen.test + held_out.test] == [
        *[(p, c) for p, y, c in task.val if y in trained], *[(p, c) for p, y, c in task.val if y in held]]
    for t in (train, seen, held_out):
        assert t.dataset == "synthetic" and t.template == template_for("synthetic")
        assert t.image_root == splits.image_root


def test_search_data_all_classes_and_no_holdout(synth_root: Path) -> None:
    splits = read_dataset("synthetic", synth_root)
    data = search_data("synthetic", synth_root, shots=4, seed=2, subsample="all", holdout=0.5,
                       holdout_seed=0)
    assert data.held_out is None
    train, val = sample_fewshot(splits, 4, 2)
    assert data.train.classnames == data.seen.classnames == splits.classnames
    assert data.train.train == train and data.seen.test == val
    assert not _paths(data.seen.test) & _paths(splits.test)

    base = search_data("synthetic", synth_root, shots=2, seed=1, subsample="base", holdout=0.0,
                       holdout_seed=0)
    assert base.held_out is None
    assert base.train.classnames == splits.classnames[:math.ceil(len(splits.classnames) / 2)]
    task = build_task("synthetic", synth_root, shots=2, seed=1, subsample="base")
    assert base.train.train == task.train and base.seen.test == task.val


def test_search_data_refuses_the_novel_half(synth_root: Path) -> None:
    with pytest.raises(ConfigError, match="synthetic: .*'novel'"):
        search_data("synthetic", synth_root, shots=2, seed=1, subsample="novel", holdout=0.5,
                    holdout_seed=0)


def test_search_data_without_a_val_split_validates_on_spare_train_images(tmp_path: Path) -> None:
    # a split file whose val is its test split: the validation images come from train
    split = balanced_split([f"class_{y}" for y in range(6)], (5, 3, 3))
    split["val"] = split["test"]
    make_split_dataset(tmp_path, "dtd", split, images=False)
    data = search_data("dtd", tmp_path, shots=2, seed=1, subsample="base", holdout=0.34, holdout_seed=0)
    assert data.held_out is not None and len(data.held_out.classnames) == 1
    train_paths = {p for p, _, _ in split["train"]}
    val = [*data.seen.test, *data.held_out.test]
    assert len(val) == 3 * 2 and _paths(val) <= train_paths
    assert not _paths(val) & _paths(data.train.train)
    assert not _paths(val) & {p for p, _, _ in split["test"]}
    assert data.train.template == template_for("dtd")


def test_search_data_on_imagenet_layout(tmp_path: Path) -> None:
    names = {f"n{y:08d}": f"thing {y}" for y in range(4)}
    make_imagenet(tmp_path, names, {w: ([f"{i}.jpg" for i in range(4)], ["v.jpg"]) for w in names})
    data = search_data("imagenet", tmp_path, shots=2, seed=1, subsample="all", holdout=0.5, holdout_seed=0)
    assert data.held_out is None
    assert all(p.startswith("train/") for p in _paths(data.seen.test))
    assert not _paths(data.seen.test) & _paths(data.train.train)
    assert Counter(it.label for it in data.seen.test) == {y: 2 for y in range(4)}
    with pytest.raises(DataError, match="imagenet: .*no train image outside the 4-shot"):
        search_data("imagenet", tmp_path, shots=4, seed=1, subsample="all", holdout=0.0, holdout_seed=0)


# ----------------------------------------------------------------------------- the read log


def test_read_log_appends_absolute_paths(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    from rayot.data.dataset import load_image

    splits = read_dataset("synthetic", synth_root)
    first, second = (splits.image_root / it.impath for it in splits.train[:2])
    log = tmp_path / "reads.log"
    monkeypatch.setenv("RAYOT_TEST_IMAGE_READ_LOG", str(log))
    load_image(first, "synthetic")
    load_image(second, "synthetic")
    assert log.read_text().splitlines() == [str(first.absolute()), str(second.absolute())]
    with pytest.raises(DataError):
        load_image(splits.image_root / "missing.png", "synthetic")  # a failed read is logged too
    assert log.read_text().splitlines()[-1] == str((splits.image_root / "missing.png").absolute())

    monkeypatch.delenv("RAYOT_TEST_IMAGE_READ_LOG")
    load_image(first, "synthetic")
    assert len(log.read_text().splitlines()) == 3


@pytest.mark.parametrize("value", [None, ""])
def test_read_log_unset_writes_nothing(synth_root: Path, tmp_path: Path, monkeypatch,
                                       value: str | None) -> None:
    from rayot.data.dataset import load_image

    if value is None:
        monkeypatch.delenv("RAYOT_TEST_IMAGE_READ_LOG", raising=False)
    else:
        monkeypatch.setenv("RAYOT_TEST_IMAGE_READ_LOG", value)
    monkeypatch.chdir(tmp_path)
    splits = read_dataset("synthetic", synth_root)
    load_image(splits.image_root / splits.train[0].impath, "synthetic")
    assert list(tmp_path.iterdir()) == []
