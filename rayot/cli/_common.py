"""Small pieces shared by the CLI commands."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def ensure_synthetic(roots: Iterable[str]) -> None:
    """Render the offline demo world where a trial needs it and the data root lacks it.

    The world is deterministic (seed 0), so rendering it on first use gives every machine the
    same images; `rayot data synth --root ROOT` does the same explicitly.
    """
    from rayot.data.synth import DATASET_FOLDER, SPLIT_FILE, write_synthetic

    for root in sorted(set(roots)):
        if "://" in root or (Path(root) / DATASET_FOLDER / SPLIT_FILE).is_file():
            continue
        log.info("the synthetic dataset is not under %s yet: rendering it (seed 0)", root)
        write_synthetic(Path(root), seed=0)
