"""Published base-to-novel averages, kept as data (``published.json``) with the source of each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

from rayot.report.names import DATASETS


@dataclass(frozen=True)
class Published:
    """One published Average row: Base / Novel / HM in percent, and where it comes from.

    ``datasets`` are the datasets the row averages over: the 11 of the base-to-novel benchmark
    unless the file says otherwise (a ``datasets`` list in the file or in the row).
    """

    key: str  # the name of the rayot method it corresponds to, or the paper's own name
    name: str
    base: float
    novel: float
    hm: float
    source: str
    datasets: tuple[str, ...] = field(default=DATASETS)


def load_published() -> tuple[str, list[Published]]:
    """The setting the numbers belong to, and the published rows in the order of the file."""
    text = resources.files("rayot.report").joinpath("published.json").read_text(encoding="utf-8")
    data = json.loads(text)
    default = tuple(data.get("datasets", DATASETS))
    rows = [
        Published(
            m["key"],
            m["name"],
            float(m["base"]),
            float(m["novel"]),
            float(m["hm"]),
            m["source"],
            tuple(m.get("datasets", default)),
        )
        for m in data["methods"]
    ]
    return data["setting"], rows
