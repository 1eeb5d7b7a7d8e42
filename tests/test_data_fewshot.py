"""Few-shot sampling (§2), base/novel split and relabelling (§3), tasks and protocols (§4)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from data_trees import make_split_dataset, make_wnid_folders, split_entries

from rayot.data import (
    DatasetSplits,
    Item,
    build_task,
    read_dataset,
    read_subset,
    sample_fewshot,
    subsample_classes,
    write_subset,
)
from rayot.errors import ConfigError


def _items(labels: list[int]) -> list[Item]:
    return [Item(f"c{y}/{i}.jpg", y, f"class_{y}") for i, y in enumerate(labels)]


def _reference(train: list[Item], val: list[Item], shots: int, seed: int):
    """The original procedure, written against the global `random` module as CoOp ran it."""
    def fs(items, k):
        groups: dict[int, list[Item]] = {}
        for it in items:
            groups.setdefault(it.label, []).append(it)
        return [x for g in groups.values() for x in (random.sample(g, k) if len(g) >= k else g)]
    state = random.getstate()
    try:
        random.seed(seed)
        return fs(train, shots), fs(val, min(shots, 4))
    finally:
        random.setstate(state)


def test_groups_in_order_of_first_appearance() -> None:
    # Labels interleaved and not ascending, as in the flowers and cars split files.
    train = _items([3, 3, 0, 3, 1, 0, 1, 3, 0, 1, 2, 2, 2, 0])
    val = _items([2, 0, 0, 2, 3, 1, 3, 1, 1, 2, 0, 3, 3])
    splits = DatasetSplits("x", Path("."), train, val, [], [f"class_{y}" for y in range(4)])
    fs_train, fs_val = sample_fewshot(splits, 2, seed=7)
    assert [it.label for it in fs_train] == [3, 3, 0, 0, 1, 1, 2, 2]
    assert [it.label for it in fs_val] == [2, 2, 0, 0, 3, 3, 1, 1]
    assert (fs_train, fs_val) == _reference(train, val, 2, 7)
    # The sorted-label order would consume the stream differently and give another subset.
    by_label = sorted(train, key=lambda it: it.label)
    other = sample_fewshot(DatasetSplits("x", Path("."), by_label, val, [], []), 2, 7)[0]
    assert set(other) != set(fs_train)


@pytest.mark.parametrize("shots", [1, 3, 8])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_global_random_reference(shots: int, seed: int) -> None:
    rng = random.Random(100 + seed)
    train = _items([rng.randrange(9) for _ in range(120)])
    val = _items([rng.randrange(9) for _ in range(40)])
    splits = DatasetSplits("x", Path("."), train, val, [], [])
    assert sample_fewshot(splits, shots, seed) == _reference(train, val, shots, seed)


def test_small_groups_kept_whole_and_val_capped_at_four() -> None:
    train = _items([0] * 20 + [1] * 2 + [2] * 20)
    val = _items([0] * 10 + [1] * 10 + [2] * 3)
    splits = DatasetSplits("x", Path("."), train, val, [], [])
    fs_train, fs_val = sample_fewshot(splits, 16, seed=1)
    assert [sum(it.label == y for it in fs_train) for y in range(3)] == [16, 2, 16]
    assert [sum(it.label == y for it in fs_val) for y in range(3)] == [4, 4, 3]
    assert len(set(fs_train)) == len(fs_train)  # without replacement


def test_sampling_leaves_global_random_alone() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    sample_fewshot(DatasetSplits("x", Path("."), _items([0, 0, 1, 1]), [], [], []), 1, 5)
    assert random.random() == expected


def test_shots_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="shots must be at least 1"):
        sample_fewshot(DatasetSplits("x", Path("."), [], [], [], []), 0, 1)


@pytest.mark.parametrize(("n_classes", "n_base"), [(37, 19), (47, 24), (10, 5), (101, 51), (1, 1)])
def test_base_novel_sizes(n_classes: int, n_base: int) -> None:
    items = _items(list(range(n_classes)))
    (base,), base_names = subsample_classes(items, subsample="base")
    (novel,), novel_names = subsample_classes(items, subsample="novel")
    assert len(base_names) == len(base) == n_base
    assert len(novel_names) == len(novel) == n_classes - n_base


def test_relabelling_uses_first_list_and_sorted_order() -> None:
    train = _items([4, 0, 2, 6, 8])  # labels present: 0 2 4 6 8 -> base 0 2 4, novel 6 8
    test = _items([8, 1, 6, 4, 9, 0])  # 1 and 9 are in neither half: not in train
    (tr, te), names = subsample_classes(train, test, subsample="novel")
    assert [(it.label, it.classname) for it in tr] == [(0, "class_6"), (1, "class_8")]
    assert [(it.label, it.classname) for it in te] == [(1, "class_8"), (0, "class_6")]
    assert names == ["class_6", "class_8"]
    (tr, te), names = subsample_classes(train, test, subsample="base")
    assert [it.label for it in tr] == [2, 0, 1]
    assert [it.label for it in te] == [2, 0]
    assert names == ["class_0", "class_2", "class_4"]
    (tr, te), names = subsample_classes(train, test, subsample="all")
    assert tr == train and te == test and names == [f"class_{y}" for y in (0, 2, 4, 6, 8)]
    with pytest.raises(ConfigError, match="subsample must be one of"):
        subsample_classes(train, subsample="half")


def test_halves_cut_the_datasets_labels_when_given() -> None:
    # A list that lacks label 1 must not move the cut: base stays {0, 1, 2}, novel {3, 4}.
    items = _items([0, 2, 3, 4])
    names = [f"class_{y}" for y in range(5)]
    (base,), base_names = subsample_classes(items, subsample="base", classnames=names)
    (novel,), novel_names = subsample_classes(items, subsample="novel", classnames=names)
    assert base_names == ["class_0", "class_1", "class_2"]
    assert novel_names == ["class_3", "class_4"]
    assert [(it.label, it.classname) for it in base] == [(0, "class_0"), (2, "class_2")]
    assert [(it.label, it.classname) for it in novel] == [(0, "class_3"), (1, "class_4")]


def _odd_dataset(tmp_path: Path) -> None:
    # 5 classes whose groups are not in ascending order; 6 train images each.
    order = [3, 1, 4, 0, 2]
    split = split_entries({
        "train": [(f"k{y}", y) for y in order for _ in range(6)],
        "val": [(f"k{y}", y) for y in order for _ in range(5)],
        "test": [(f"k{y}", y) for y in order for _ in range(2)],
    })
    make_split_dataset(tmp_path, "dtd", split, images=False)


def test_build_task_base_and_novel(tmp_path: Path) -> None:
    _odd_dataset(tmp_path)
    base = build_task("dtd", tmp_path, shots=2, seed=1, subsample="base")
    novel = build_task("dtd", tmp_path, shots=2, seed=1, subsample="novel")
    assert base.classnames == ["k0", "k1", "k2"] and novel.classnames == ["k3", "k4"]
    assert base.template == "{} texture."
    assert sorted({it.label for it in base.train}) == [0, 1, 2]
    assert [it.classname for it in novel.test] == ["k3", "k3", "k4", "k4"]
    assert [it.label for it in novel.test] == [0, 0, 1, 1]
    assert len(base.train) == 6 and len(base.val) == 6 and len(base.test) == 6
    # The same classes without sampling (evaluation-only use).
    for subsample, task in (("base", base), ("novel", novel)):
        bare = build_task("dtd", tmp_path, shots=0, seed=1, subsample=subsample)
        assert bare.train == [] and bare.val == []
        assert bare.classnames == task.classnames and bare.test == task.test
    # The subset equals the one drawn on all classes, filtered and relabelled.
    full = build_task("dtd", tmp_path, shots=2, seed=1)
    assert [it.impath for it in full.train if it.label >= 3] == [it.impath for it in novel.train]


def test_build_task_all_classes_keeps_names_by_label(tmp_path: Path) -> None:
    _odd_dataset(tmp_path)
    task = build_task("dtd", tmp_path, shots=1, seed=2)
    assert task.classnames == read_dataset("dtd", tmp_path).classnames == ["k0", "k1", "k2", "k3", "k4"]
    assert [it.label for it in task.train] == [3, 1, 4, 0, 2]
    assert len(task.test) == 10


def test_build_task_test_only_200_way(tmp_path: Path) -> None:
    names = {f"n{i:04d}": f"c{i}" for i in range(1000)}
    make_wnid_folders(tmp_path, "imagenet_r", names, {w: ["a.jpg"] for w in sorted(names)[:200]})
    task = build_task("imagenet_r", tmp_path, shots=16, seed=1)
    assert task.train == [] and len(task.classnames) == 200 and len(task.test) == 200


def test_subset_round_trip(tmp_path: Path) -> None:
    train, val = _items([1, 0]), _items([0])
    path = write_subset(tmp_path / "sub" / "s.json", train, val)
    assert read_subset(path) == (train, val)
