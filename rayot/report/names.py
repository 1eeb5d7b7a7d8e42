"""Names the report shows: dataset order, method display names, setting labels.

Method names come from the methods themselves (:mod:`rayot.methods`); unknown methods (a plug-in
not installed where the report runs), datasets and settings are shown as they are spelled in the
results, so a new method needs no change here to appear in a report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rayot import methods

#: The usual order of the base-to-novel benchmark (docs/protocol.md §1).
DATASETS: tuple[str, ...] = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
SOURCE = "imagenet"
#: Cross-dataset targets: the 10 datasets other than imagenet.
CROSS_TARGETS: tuple[str, ...] = DATASETS[1:]
#: Domain-generalization targets: the imagenet variants.
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

DATASET_NAMES: dict[str, str] = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
    "synthetic": "Synthetic",
}

#: Short labels of settings (result columns or flattened config keys).
SETTING_LABELS: dict[str, str] = {
    "lambda_ot": "λ",
    "epsilon": "ε",
    "modality": "modality",
    "regularizer": "regularizer",
    "solver": "solver",
    "shots": "shots",
    "backbone": "backbone",
    "pretrained": "pretrained",
    "epochs": "epochs",
}


def dataset_name(key: str) -> str:
    """Display name of a dataset (unknown ones as spelled)."""
    return DATASET_NAMES.get(key, key)


def sort_datasets(keys: Iterable[str], order: Iterable[str] = DATASETS + DG_TARGETS) -> list[str]:
    """Datasets in the usual order, then any others alphabetically."""
    rank = {k: i for i, k in enumerate(order)}
    return sorted(set(keys), key=lambda k: (rank.get(k, len(rank)), k))


def method_rank(method: str) -> int:
    """Where a method sorts in tables (its ``order``; unknown methods after every known one)."""
    known = methods.known(method)
    return known.order if known is not None else 10_000


def sort_methods(keys: Iterable[str]) -> list[str]:
    """Methods in their report order: baselines first, the method of the paper last."""
    return sorted(set(keys), key=lambda k: (method_rank(k), k))


def format_value(value: object) -> str:
    """A setting value as a short string: 10.0 -> "10", 0.05 -> "0.05", None -> "none"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_label(key: str) -> str:
    """Label of a setting: λ, ε, ... for result columns; a config key as its dotted path."""
    return SETTING_LABELS.get(key, SETTING_LABELS.get(key.rsplit(".", 1)[-1], key))


def method_name(method: str) -> str:
    """Display name of a method without its settings (its ``display``); unknown ones as spelled."""
    return methods.display_name(method)


def _labelled(method: str, parts: Iterable[str]) -> str:
    """``Name (label, part, ...)``: the display name, the method's fixed label, then ``parts``."""
    known = methods.known(method)
    name, fixed = (known.display, known.label) if known is not None else (method, None)
    shown = ([fixed] if fixed else []) + list(parts)
    return f"{name} ({', '.join(shown)})" if shown else name


def variant_label(method: str, settings: Iterable[tuple[str, object]]) -> str:
    """The display name, the method's fixed label and the settings that distinguish the variant:
    ``Name (label, λ=1)``."""
    return _labelled(method, [f"{setting_label(k)}={format_value(v)}" for k, v in settings])


def searched_label(
    method: str, keys: Iterable[str], settings: Iterable[tuple[str, object]] = ()
) -> str:
    """A method whose ``keys`` a search chose per dataset on validation, with the settings that
    tell it from another search of the same keys: ``Name (label, ε=0.1, λ chosen on validation)``."""
    searched = " and ".join(dict.fromkeys(setting_label(k) for k in keys))
    parts = [f"{setting_label(k)}={format_value(v)}" for k, v in settings]
    return _labelled(method, [*parts, f"{searched} chosen on validation"])
