"""Readers for every on-disk layout, on small generated trees, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_trees import (
    balanced_split,
    make_fgvc,
    make_imagenet,
    make_imagenetv2,
    make_split_dataset,
    make_wnid_folders,
    split_entries,
    write_classnames,
)

from rayot.data import DATASETS, Item, prompt_classname, read_dataset, template_for
from rayot.errors import DataError


def test_table_covers_protocol() -> None:
    assert len(DATASETS) == 16
    assert {s.name for s in DATASETS.values() if s.kind == "split_file"} == {
        "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "sun397",
        "dtd", "eurosat", "ucf101", "synthetic"}
    assert DATASETS["synthetic"].split_file == "split_rayot_Synthetic.json"
    assert DATASETS["synthetic"].num_classes is None
    assert DATASETS["imagenet_a"].num_classes == DATASETS["imagenet_r"].num_classes == 200
    assert DATASETS["stanford_cars"].image_root == ""


@pytest.mark.parametrize(("name", "template"), [
    ("oxford_pets", "a photo of a {}, a type of pet."),
    ("oxford_flowers", "a photo of a {}, a type of flower."),
    ("fgvc_aircraft", "a photo of a {}, a type of aircraft."),
    ("dtd", "{} texture."),
    ("eurosat", "a centered satellite photo of {}."),
    ("food101", "a photo of {}, a type of food."),
    ("ucf101", "a photo of a person doing {}."),
    ("imagenet_r", "a photo of a {}."),
    ("sun397", "a photo of a {}."),
    ("synthetic", "a photo of a {}."),
])
def test_templates(name: str, template: str) -> None:
    assert template_for(name) == template


def test_prompt_classname_only_changes_underscores() -> None:
    assert prompt_classname("Abyssinian_cat") == "Abyssinian cat"
    assert prompt_classname("Apply Eye-Makeup") == "Apply Eye-Makeup"


def test_split_file_reader(tmp_path: Path) -> None:
    split = balanced_split(["b_cat", "a_dog", "cow"])
    make_split_dataset(tmp_path, "oxford_pets", split, images=False)
    splits = read_dataset("oxford_pets", tmp_path)
    assert splits.classnames == ["b_cat", "a_dog", "cow"]  # as written, indexed by label
    assert splits.image_root == tmp_path / "oxford_pets" / "images"
    assert splits.train[0] == Item("b_cat/train_000.jpg", 0, "b_cat")
    assert [len(splits.train), len(splits.val), len(splits.test)] == [15, 9, 6]


def test_stanford_cars_image_root_is_the_folder(tmp_path: Path) -> None:
    make_split_dataset(tmp_path, "stanford_cars", balanced_split(["x", "y"]), images=False)
    assert read_dataset("stanford_cars", tmp_path).image_root == tmp_path / "stanford_cars"


def test_fgvc_reader_labels_follow_variants_file(tmp_path: Path) -> None:
    variants = ["737-300", "A340-500", "Cessna 172", "DHC-1"]  # file order, not sorted
    order = ["DHC-1", "737-300", "Cessna 172", "A340-500"]  # every variant in every list
    lists = {split: [(f"{k}{i:03d}", v) for i, v in enumerate(order)]
             for k, split in enumerate(("train", "val", "test"))}
    make_fgvc(tmp_path, variants, lists, images=False)
    splits = read_dataset("fgvc_aircraft", tmp_path)
    assert splits.classnames == variants
    assert splits.train == [Item("0000.jpg", 3, "DHC-1"), Item("0001.jpg", 0, "737-300"),
                            Item("0002.jpg", 2, "Cessna 172"), Item("0003.jpg", 1, "A340-500")]
    assert splits.test[2] == Item("2002.jpg", 2, "Cessna 172")
    assert splits.image_root == tmp_path / "fgvc_aircraft" / "images"


def test_fgvc_unknown_variant(tmp_path: Path) -> None:
    make_fgvc(tmp_path, ["A"], {"train": [("1", "A")], "val": [("2", "B")], "test": []},
              images=False)
    with pytest.raises(DataError, match=r"images_variant_val\.txt line 1: variant 'B'"):
        read_dataset("fgvc_aircraft", tmp_path)


def test_imagenet_scan(tmp_path: Path) -> None:
    names = {"n02": "goldfish", "n01": "tench", "n03": "great white shark"}
    make_imagenet(tmp_path, names, {
        "n02": (["b.JPEG", "a.JPEG"], ["v2.JPEG"]),
        "n01": (["z.JPEG", "c.JPEG", "m.JPEG"], ["v1.JPEG", "v0.JPEG"]),
        "n03": (["x.JPEG"], []),
    })
    (tmp_path / "imagenet" / "images" / "train" / "n01" / "notes.txt").write_text("not an image")
    splits = read_dataset("imagenet", tmp_path)
    # Labels index the sorted train folders; names come from classnames.txt by wnid.
    assert splits.classnames == ["tench", "goldfish", "great white shark"]
    assert splits.train == [
        Item("train/n01/c.JPEG", 0, "tench"), Item("train/n01/m.JPEG", 0, "tench"),
        Item("train/n01/z.JPEG", 0, "tench"), Item("train/n02/a.JPEG", 1, "goldfish"),
        Item("train/n02/b.JPEG", 1, "goldfish"), Item("train/n03/x.JPEG", 2, "great white shark")]
    assert splits.val == []
    assert splits.test == [Item("val/n01/v0.JPEG", 0, "tench"), Item("val/n01/v1.JPEG", 0, "tench"),
                           Item("val/n02/v2.JPEG", 1, "goldfish")]
    assert (splits.image_root / splits.test[0].impath).is_file()


def test_imagenet_a_is_200_way_over_present_folders(tmp_path: Path) -> None:
    names = {f"n{i:03d}": f"class {i}" for i in range(1000)}
    chosen = sorted(names)[::5][::-1]  # 200 wnids, created in reverse order
    make_wnid_folders(tmp_path, "imagenet_a", names, {w: ["0.jpg"] for w in chosen})
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("readme")
    splits = read_dataset("imagenet_a", tmp_path)
    assert len(splits.classnames) == 200
    assert splits.classnames[:2] == ["class 0", "class 5"]
    assert splits.test[1] == Item("n005/0.jpg", 1, "class 5")
    assert splits.train == [] and splits.val == []


def test_imagenet_sketch_and_r(tmp_path: Path) -> None:
    names = {"n2": "two", "n1": "one"}
    make_wnid_folders(tmp_path, "imagenet_sketch", names, {"n2": ["b.JPEG", "a.JPEG"], "n1": ["c.JPEG"]})
    splits = read_dataset("imagenet_sketch", tmp_path)
    assert splits.test == [Item("n1/c.JPEG", 0, "one"), Item("n2/a.JPEG", 1, "two"),
                           Item("n2/b.JPEG", 1, "two")]
    assert splits.image_root == tmp_path / "imagenet-sketch" / "images"
    make_wnid_folders(tmp_path, "imagenet_r", names, {"n2": ["a.jpg"]})
    assert read_dataset("imagenet_r", tmp_path).classnames == ["two"]


def test_imagenetv2_labels_are_folder_numbers(tmp_path: Path) -> None:
    names = {f"n{i}": f"name{i}" for i in range(12)}
    make_imagenetv2(tmp_path, names, {10: ["b.jpeg", "a.jpeg"], 2: ["x.jpeg"], 0: ["y.jpeg"]})
    splits = read_dataset("imagenetv2", tmp_path)
    assert splits.classnames == [f"name{i}" for i in range(12)]
    # Numeric folder order (2 before 10), file names sorted.
    assert splits.test == [Item("0/y.jpeg", 0, "name0"), Item("2/x.jpeg", 2, "name2"),
                           Item("10/a.jpeg", 10, "name10"), Item("10/b.jpeg", 10, "name10")]


# ----------------------------------------------------------------------------- bad input


def _write_split(tmp_path: Path, content: str) -> Path:
    folder = tmp_path / "dtd"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "split_zhou_DescribableTextures.json"
    path.write_text(content)
    return path


GOOD = {"train": [["a/1.jpg", 0, "a"], ["b/1.jpg", 1, "b"]], "val": [], "test": []}


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold an object"),
    (json.dumps({"train": [], "val": []}), "has no 'test' list"),
    (json.dumps({**GOOD, "val": {"a": 1}}), "'val' must be a list"),
    (json.dumps({**GOOD, "test": [["a/2.jpg", 0]]}), r"test\[0\] must be \[relative_path"),
    (json.dumps({**GOOD, "test": [["a/2.jpg", "0", "a"]]}), r"test\[0\] label must be an integer"),
    (json.dumps({**GOOD, "test": [["a/2.jpg", 0.0, "a"]]}), r"test\[0\] label must be an integer"),
    (json.dumps({**GOOD, "test": [["a/2.jpg", True, "a"]]}), r"test\[0\] label must be an integer"),
    (json.dumps({**GOOD, "test": [["", 0, "a"]]}), r"test\[0\] path must be"),
    (json.dumps({**GOOD, "test": [["a/2.jpg", 0, "b"]]}),
     r"label 0 is named 'a' at train\[0\] but 'b' at test\[0\]"),
    (json.dumps({**GOOD, "test": [["c/2.jpg", 2, "a"]]}),
     r"class 'a' has label 0 at train\[0\] but 2 at test\[0\]"),
    (json.dumps({**GOOD, "test": [["c/2.jpg", 3, "c"]]}), r"labels must be 0..n-1 \(labels \[2\]"),
    (json.dumps({**GOOD, "test": [["c/2.jpg", -1, "c"]]}), "negative label -1"),
])
def test_malformed_split_file(tmp_path: Path, content: str, problem: str) -> None:
    path = _write_split(tmp_path, content)
    with pytest.raises(DataError, match=problem) as info:
        read_dataset("dtd", tmp_path)
    assert str(info.value).startswith(f"dtd: split file {path}")


def test_missing_root_folder_and_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"dtd: data root {tmp_path / 'nope'} does not exist"):
        read_dataset("dtd", tmp_path / "nope")
    with pytest.raises(DataError, match=f"dtd: dataset folder {tmp_path / 'dtd'} does not exist"):
        read_dataset("dtd", tmp_path)
    (tmp_path / "dtd").mkdir()
    path = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    with pytest.raises(DataError, match=f"dtd: split file {path} does not exist"):
        read_dataset("dtd", tmp_path)


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet1k'; known datasets: imagenet, "
                                        r"caltech101, .*synthetic"):
        read_dataset("imagenet1k", tmp_path)


def test_folder_scan_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet-sketch"
    write_classnames(folder, {"n1": "one"})
    (folder / "images" / "n2").mkdir(parents=True)
    with pytest.raises(DataError, match=r"imagenet_sketch: class folders \['n2'\] have no line in "
                                        + str(folder / "classnames.txt")):
        read_dataset("imagenet_sketch", tmp_path)
    (folder / "classnames.txt").write_text("n1 one\nn2\n")
    with pytest.raises(DataError, match=r"classnames\.txt line 2 must be '<wnid> <class name>'"):
        read_dataset("imagenet_sketch", tmp_path)


def test_imagenetv2_bad_folder(tmp_path: Path) -> None:
    make_imagenetv2(tmp_path, {"n0": "zero"}, {0: ["a.jpeg"], 1: ["b.jpeg"]})
    with pytest.raises(DataError, match=r"folders \['1'\] in .* are not labels 0..0"):
        read_dataset("imagenetv2", tmp_path)


def test_split_entries_helper_groups() -> None:
    # Guard for the tree helper the other tests rely on.
    entries = split_entries({"train": [("a", 1), ("b", 0)]})
    assert entries["train"] == [["a/train_000.jpg", 1, "a"], ["b/train_001.jpg", 0, "b"]]
