"""Published base-to-novel averages, kept as data (``published.json``) with the source of each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Published:
    """One published Average row: Base / Novel / HM in percent, and where it comes from."""

    key: str  # the rayot method it corresponds to (e.g. "coop"), or the paper's own name
    name: str
    base: float
    novel: float
    hm: float
    source: str


def load_published() -> tuple[str, list[Published]]:
    """The setting the numbers belong to, and the published rows in the order of the file."""
    text = resources.files("rayot.report").joinpath("published.json").read_text(encoding="utf-8")
    data = json.loads(text)
    rows = [
        Published(m["key"], m["name"], float(m["base"]), float(m["novel"]), float(m["hm"]), m["source"])
        for m in data["methods"]
    ]
    return data["setting"], rows
