"""Names the report shows: dataset order, method display names, setting labels.

What the report shows of a method (:class:`MethodFacts`) comes from its result rows, which record
it when the method trains (:func:`describe_methods`): the report imports no method, and a plug-in
not installed where the report runs keeps its name and place. Rows of versions before 0.4 record
none of it: a built-in of that time is then shown as it was (:mod:`rayot.report.earlier`), any
other method as it is spelled in the results. Datasets and settings unknown here are shown as
spelled too, so a new method needs no change here to appear in a report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from rayot.report.earlier import BUILTINS_BEFORE_0_4

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


#: Where a method sorts that its rows do not place: after every one they do.
UNKNOWN_ORDER = 10_000


@dataclass(frozen=True)
class MethodFacts:
    """What the report shows of a method: its ``display`` name, the fixed ``label`` after it
    (e.g. "zero-shot"), its ``order`` (baselines first, the method of the paper last) and whether
    it ``trains`` (one that does not is a reference line in the figures)."""

    name: str
    display: str
    label: str | None = None
    order: int = UNKNOWN_ORDER
    trains: bool = True

    @property
    def rank(self) -> tuple[int, str]:
        """The sort key of tables and figures: the order, then the name."""
        return (self.order, self.name)


def method_facts(method: str, described: Mapping[str, MethodFacts]) -> MethodFacts:
    """``method`` as its rows describe it (:func:`describe_methods`); else as a built-in of the
    versions before 0.4 was; else by its name alone, after every other method."""
    if method in described:
        return described[method]
    if method in BUILTINS_BEFORE_0_4:
        return MethodFacts(method, *BUILTINS_BEFORE_0_4[method])
    return MethodFacts(method, method)


def describe_methods(rows: pd.DataFrame) -> dict[str, MethodFacts]:
    """Every method of result rows (columns of :data:`rayot.results.SCHEMA`), as its newest row
    that records a display name describes it; one whose rows record none: :func:`method_facts`."""
    recorded = rows[rows["method_display"].notna()].sort_values("finished_at", kind="stable")
    newest = recorded.drop_duplicates("method", keep="last").set_index("method")
    out = {}
    for method in rows["method"].unique():
        if method not in newest.index:
            out[method] = method_facts(method, {})
            continue
        row = newest.loc[method]
        out[method] = MethodFacts(
            method,
            str(row["method_display"]),
            None if pd.isna(row["method_label"]) else str(row["method_label"]),
            UNKNOWN_ORDER if pd.isna(row["method_order"]) else int(row["method_order"]),
            True if pd.isna(row["method_trains"]) else bool(row["method_trains"]),
        )
    return out


def sort_methods(keys: Iterable[str], described: Mapping[str, MethodFacts]) -> list[str]:
    """Methods in their report order: baselines first, the method of the paper last."""
    return sorted(set(keys), key=lambda k: method_facts(k, described).rank)


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


def _labelled(method: MethodFacts, parts: Iterable[str]) -> str:
    """``Name (label, part, ...)``: the display name, the method's fixed label, then ``parts``."""
    shown = ([method.label] if method.label else []) + list(parts)
    return f"{method.display} ({', '.join(shown)})" if shown else method.display


def variant_label(method: MethodFacts, settings: Iterable[tuple[str, object]]) -> str:
    """The display name, the method's fixed label and the settings that distinguish the variant:
    ``Name (label, λ=1)``."""
    return _labelled(method, [f"{setting_label(k)}={format_value(v)}" for k, v in settings])


def searched_label(
    method: MethodFacts, keys: Iterable[str], settings: Iterable[tuple[str, object]] = ()
) -> str:
    """A method whose ``keys`` a search chose per dataset on validation, with the settings that
    tell it from another search of the same keys: ``Name (label, ε=0.1, λ chosen on validation)``."""
    searched = " and ".join(dict.fromkeys(setting_label(k) for k in keys))
    parts = [f"{setting_label(k)}={format_value(v)}" for k, v in settings]
    return _labelled(method, [*parts, f"{searched} chosen on validation"])
