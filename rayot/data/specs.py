"""One table describing every benchmark dataset (docs/protocol.md §1 and §7).

Readers, checks and templates all read this table; nothing else hard-codes a folder name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayot.errors import DataError

# How the train/val/test lists of a dataset are obtained.
SplitKind = Literal[
    "split_file",  # split_zhou_<Name>.json with [path, label, classname] entries
    "fgvc_lists",  # fgvc_aircraft: variants.txt + images_variant_{train,val,test}.txt
    "imagenet",  # images/train and images/val scanned, wnid folders, classnames.txt
    "imagenetv2",  # test only, folders 0..999 named by label, classnames.txt by line
    "wnid_folders",  # test only, sorted wnid folders, names from classnames.txt (sketch, -A, -R)
]

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data root and how to read it.

    ``image_root`` is relative to the dataset folder ("" is the folder itself); item paths are
    relative to it. ``sizes`` are the expected (train, val, test) counts, None where not fixed.
    """

    name: str
    folder: str
    image_root: str
    kind: SplitKind
    split_file: str | None
    num_classes: int | None
    template: str
    sizes: tuple[int | None, int | None, int | None]

    @property
    def has_train(self) -> bool:
        """False for the evaluation-only imagenet variants."""
        return self.kind in ("split_file", "fgvc_lists", "imagenet")


def _split(name: str, folder: str, image_root: str, stem: str, classes: int,
           sizes: tuple[int, int, int], template: str = DEFAULT_TEMPLATE) -> DatasetSpec:
    return DatasetSpec(name, folder, image_root, "split_file", f"split_zhou_{stem}.json",
                       classes, template, sizes)


_SPECS = [
    DatasetSpec("imagenet", "imagenet", "images", "imagenet", None, 1000, DEFAULT_TEMPLATE,
                (1_281_167, None, 50_000)),
    _split("caltech101", "caltech-101", "101_ObjectCategories", "Caltech101", 100,
           (4128, 1649, 2465)),
    _split("oxford_pets", "oxford_pets", "images", "OxfordPets", 37, (2944, 736, 3669),
           "a photo of a {}, a type of pet."),
    _split("stanford_cars", "stanford_cars", "", "StanfordCars", 196, (6509, 1635, 8041)),
    _split("oxford_flowers", "oxford_flowers", "jpg", "OxfordFlowers", 102, (4093, 1633, 2463),
           "a photo of a {}, a type of flower."),
    _split("food101", "food-101", "images", "Food101", 101, (50500, 20200, 30300),
           "a photo of {}, a type of food."),
    DatasetSpec("fgvc_aircraft", "fgvc_aircraft", "images", "fgvc_lists", None, 100,
                "a photo of a {}, a type of aircraft.", (3334, 3333, 3333)),
    _split("sun397", "sun397", "SUN397", "SUN397", 397, (15880, 3970, 19850)),
    _split("dtd", "dtd", "images", "DescribableTextures", 47, (2820, 1128, 1692), "{} texture."),
    _split("eurosat", "eurosat", "2750", "EuroSAT", 10, (13500, 5400, 8100),
           "a centered satellite photo of {}."),
    _split("ucf101", "ucf101", "UCF-101-midframes", "UCF101", 101, (7639, 1898, 3783),
           "a photo of a person doing {}."),
    DatasetSpec("imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val",
                "imagenetv2", None, 1000, DEFAULT_TEMPLATE, (None, None, 10_000)),
    DatasetSpec("imagenet_sketch", "imagenet-sketch", "images", "wnid_folders", None, 1000,
                DEFAULT_TEMPLATE, (None, None, 50_889)),
    DatasetSpec("imagenet_a", "imagenet-adversarial", "imagenet-a", "wnid_folders", None, 200,
                DEFAULT_TEMPLATE, (None, None, 7_500)),
    DatasetSpec("imagenet_r", "imagenet-rendition", "imagenet-r", "wnid_folders", None, 200,
                DEFAULT_TEMPLATE, (None, None, 30_000)),
    # Written by `rayot data synth`; any number of classes and images.
    DatasetSpec("synthetic", "synthetic", "images", "split_file", "split_rayot_Synthetic.json",
                None, DEFAULT_TEMPLATE, (None, None, None)),
]

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}

# Files every folder-scanned dataset keeps next to its images.
CLASSNAMES_FILE = "classnames.txt"
FGVC_VARIANTS_FILE = "variants.txt"
FGVC_LIST_FILE = "images_variant_{split}.txt"


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; a DataError listing the known names if there is none."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


def template_for(name: str) -> str:
    """The zero-shot text template of dataset ``name`` (docs/protocol.md §7), with one ``{}``."""
    return get_spec(name).template


def prompt_classname(classname: str) -> str:
    """A class name as it appears in a prompt: underscores become spaces (docs/protocol.md §1)."""
    return classname.replace("_", " ")
