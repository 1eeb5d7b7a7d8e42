"""The real CoOp split files and the subsets the original code published (tests/fixtures/coop_splits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_trees import coop_splits
from typer.testing import CliRunner

from rayot.cli import app
from rayot.data import DATASETS, DatasetSplits, read_dataset, sample_fewshot
from rayot.data.readers import read_split_file

STEMS = {"oxford_pets": "OxfordPets", "dtd": "DescribableTextures", "eurosat": "EuroSAT"}


def _splits(name: str) -> DatasetSplits:
    path = coop_splits() / f"split_zhou_{STEMS[name]}.json"
    train, val, test, classnames = read_split_file(path, name)
    return DatasetSplits(name, Path("unused"), train, val, test, classnames)


def _published(name: str, shots: int, seed: int) -> dict[str, list[tuple[str, int, str]]]:
    raw = json.loads((coop_splits() / "published_fewshot" / name / f"shot_{shots}-seed_{seed}.json")
                     .read_text())
    return {split: [(e["impath"].rsplit("/", 1)[-1], e["label"], e["classname"])
                    for e in raw[split]["data"]] for split in ("train", "val")}


def _key(items) -> list[tuple[str, int, str]]:
    return [(impath.rsplit("/", 1)[-1], label, classname) for impath, label, classname in items]


@pytest.mark.parametrize("name", sorted(STEMS))
def test_split_files_match_protocol_sizes(name: str) -> None:
    splits = _splits(name)
    spec = DATASETS[name]
    assert (len(splits.train), len(splits.val), len(splits.test)) == spec.sizes
    assert len(splits.classnames) == spec.num_classes


@pytest.mark.parametrize("name", sorted(STEMS))
@pytest.mark.parametrize("shots", [1, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_published_subsets_reproduced(name: str, shots: int, seed: int) -> None:
    train, val = sample_fewshot(_splits(name), shots, seed)
    published = _published(name, shots, seed)
    assert _key(train) == published["train"]
    assert _key(val) == published["val"]
    assert len(val) == DATASETS[name].num_classes * min(shots, 4)


@pytest.mark.parametrize(("name", "shots", "seed"), [("oxford_pets", 16, 2), ("dtd", 1, 3)])
def test_cli_fewshot_reproduces_published_file(tmp_path: Path, name: str, shots: int,
                                               seed: int) -> None:
    # The split file is linked, not copied: the CLI reads it in place through a data root.
    folder = tmp_path / "data" / DATASETS[name].folder
    folder.mkdir(parents=True)
    (folder / DATASETS[name].split_file).symlink_to(coop_splits() / f"split_zhou_{STEMS[name]}.json")
    out = tmp_path / "subset.json"
    result = CliRunner().invoke(app, ["data", "fewshot", name, "--root", str(tmp_path / "data"),
                                      "--shots", str(shots), "--seed", str(seed), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    published = _published(name, shots, seed)
    for split in ("train", "val"):
        assert _key(written[split]) == published[split]
    # Paths are written as in the split file, not rewritten.
    split_paths = {it.impath for it in read_dataset(name, tmp_path / "data").train}
    assert {p for p, _, _ in written["train"]} <= split_paths
