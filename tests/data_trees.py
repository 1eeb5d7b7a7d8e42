"""Small on-disk dataset trees in the layouts of docs/protocol.md §1, for the data tests."""

from __future__ import annotations

import atexit
import functools
import json
import lzma
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from rayot.data.specs import DATASETS

#: The real CoOp split files and the published few-shot subsets, each xz-compressed
#: (fixtures/coop_splits/README.md says where they come from).
COOP_SPLITS_XZ = Path(__file__).resolve().parent / "fixtures" / "coop_splits"


@functools.cache
def coop_splits() -> Path:
    """The folder of :data:`COOP_SPLITS_XZ` decompressed: ``split_zhou_<Name>.json`` and
    ``published_fewshot/<dataset>/shot_<K>-seed_<S>.json``, byte for byte the published files.

    Decompressed once per test process into a temporary folder, removed when the process exits.
    """
    files = sorted(COOP_SPLITS_XZ.rglob("*.json.xz"))
    if not files:
        raise FileNotFoundError(f"no *.json.xz fixture under {COOP_SPLITS_XZ}")
    out = Path(tempfile.mkdtemp(prefix="rayot-coop-splits-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for xz in files:
        target = out / xz.relative_to(COOP_SPLITS_XZ).with_suffix("")  # drop ".xz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.decompress(xz.read_bytes()))
    return out


def write_image(path: Path, size: tuple[int, int] = (12, 9), value: int = 0) -> Path:
    """A real, decodable RGB image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, 40, 200)).save(path)
    return path


def split_entries(per_split: dict[str, Sequence[tuple[str, int]]]) -> dict[str, list[list]]:
    """{split: [(classname, label), ...]} -> split-file entries with unique paths."""
    out: dict[str, list[list]] = {}
    for split, pairs in per_split.items():
        out[split] = [[f"{name}/{split}_{i:03d}.jpg", label, name]
                      for i, (name, label) in enumerate(pairs)]
    return out


def make_split_dataset(root: Path, name: str, split: dict[str, list[list]], *,
                       images: bool = True) -> Path:
    """Write ``split`` as the split file of ``name`` (and its images when asked); returns the
    dataset folder."""
    spec = DATASETS[name]
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / spec.split_file).write_text(json.dumps(split))
    if images:
        base = folder / spec.image_root if spec.image_root else folder
        for entries in split.values():
            for i, (impath, label, _) in enumerate(entries):
                write_image(base / impath, value=label * 7 + i)
    return folder


def balanced_split(classnames: Sequence[str], per_class: tuple[int, int, int] = (5, 3, 2)) -> dict:
    """A split file grouped by ascending label with ``per_class`` train/val/test images."""
    pairs = {split: [(c, y) for y, c in enumerate(classnames) for _ in range(n)]
             for split, n in zip(("train", "val", "test"), per_class, strict=True)}
    return split_entries(pairs)


def make_fgvc(root: Path, variants: Sequence[str], lists: dict[str, Sequence[tuple[str, str]]],
              *, images: bool = True) -> Path:
    """fgvc_aircraft: variants.txt and images_variant_<split>.txt of (imageid, variant)."""
    folder = root / "fgvc_aircraft"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    for split, pairs in lists.items():
        (folder / f"images_variant_{split}.txt").write_text(
            "".join(f"{i} {v}\n" for i, v in pairs))
        if images:
            for imageid, _ in pairs:
                write_image(folder / "images" / f"{imageid}.jpg")
    return folder


def write_classnames(folder: Path, names: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in names.items()))


def make_imagenet(root: Path, names: dict[str, str], files: dict[str, tuple[list[str], list[str]]]) -> Path:
    """imagenet: classnames.txt, images/train/<wnid>/..., images/val/<wnid>/...
    ``files[wnid] = (train file names, val file names)``."""
    folder = root / "imagenet"
    write_classnames(folder, names)
    for wnid, (train, val) in files.items():
        (folder / "images" / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (folder / "images" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        for f in train:
            write_image(folder / "images" / "train" / wnid / f)
        for f in val:
            write_image(folder / "images" / "val" / wnid / f)
    return folder


def make_wnid_folders(root: Path, name: str, names: dict[str, str],
                      files: dict[str, list[str]]) -> Path:
    """imagenet_sketch / imagenet_a / imagenet_r: classnames.txt and <image root>/<wnid>/..."""
    spec = DATASETS[name]
    folder = root / spec.folder
    write_classnames(folder, names)
    for wnid, fnames in files.items():
        (folder / spec.image_root / wnid).mkdir(parents=True, exist_ok=True)
        for f in fnames:
            write_image(folder / spec.image_root / wnid / f)
    return folder


def make_imagenetv2(root: Path, names: dict[str, str], files: dict[int, list[str]]) -> Path:
    """imagenetv2: classnames.txt and <image root>/<label>/..."""
    spec = DATASETS["imagenetv2"]
    folder = root / spec.folder
    write_classnames(folder, names)
    for label, fnames in files.items():
        for f in fnames:
            write_image(folder / spec.image_root / str(label) / f)
    return folder
