"""The aggregation rules of docs/protocol.md §5, on finished rows tagged with their variant.

Per (variant, dataset): the mean over seeds of base accuracy B and of novel accuracy N, at full
precision, with the population standard deviation across seeds; HM = 2·B·N / (B + N) of those
means. The Average row: the arithmetic mean of B and of N over datasets, then the HM of those two
means (not the mean of per-dataset HMs). Cross-dataset and domain-generalization averages: the
mean over the targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rayot.metrics import harmonic_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stat:
    """Accuracy over seeds: mean and population std (percent), and the seeds measured."""

    mean: float
    std: float
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class B2NCell:
    """One dataset of a base-to-novel table; ``hm`` needs both means."""

    base: Stat | None
    novel: Stat | None

    @property
    def hm(self) -> float | None:
        if self.base is None or self.novel is None:
            return None
        return harmonic_mean(self.base.mean, self.novel.mean)

    @property
    def n(self) -> int:
        """Seeds behind the cell: the fewer of base and novel."""
        return min(s.n if s else 0 for s in (self.base, self.novel))


@dataclass(frozen=True)
class B2NAverage:
    """The Average row of one variant over the datasets it has (both B and N measured)."""

    base: float | None
    novel: float | None
    datasets: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def hm(self) -> float | None:
        if self.base is None or self.novel is None:
            return None
        return harmonic_mean(self.base, self.novel)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class MeanOver:
    """A plain mean over some datasets (cross-dataset targets, few-shot datasets)."""

    value: float | None
    datasets: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


def one_per_seed(
    rows: pd.DataFrame, keys: Sequence[str], prefer_protocol: str | None = None
) -> tuple[pd.DataFrame, int]:
    """Keep one accuracy per (keys, seed); also return how many true repeats were dropped.

    The same measurement can come from trials of several protocols (the imagenet source of a
    cross-dataset and of a domain-generalization trial): the row of ``prefer_protocol`` is kept,
    which is expected and not counted. Two trials of the same protocol, variant and seed (a re-run
    under a changed path, say) are not two seeds either: the latest is kept, and they are counted.
    """
    by = list(keys) + ["seed"]
    ranked = rows.assign(_pref=(rows["protocol"] == prefer_protocol).astype(int))
    ranked = ranked.sort_values(["_pref", "finished_at"], kind="stable")
    repeats = int(ranked.duplicated(by + ["protocol"], keep="last").sum())
    if repeats:
        log.warning(
            "%d result rows repeat a (variant, dataset, split, seed) of the same protocol measured "
            "by another trial; keeping the latest",
            repeats,
        )
    keep = ~ranked.duplicated(by, keep="last")
    return ranked[keep].drop(columns="_pref"), repeats


def seed_stats(rows: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, Stat]:
    """Mean and population std of ``accuracy`` over seeds, per group of ``keys``.

    ``rows`` must hold at most one row per (keys, seed) (see :func:`one_per_seed`).
    """
    out: dict[tuple, Stat] = {}
    for key, group in rows.groupby(list(keys), sort=False, dropna=False):
        acc = group["accuracy"].to_numpy(dtype=np.float64)  # (n_seeds,)
        key = key if isinstance(key, tuple) else (key,)
        # population std (ddof=0): the spread of the seeds we ran, as the papers report it
        out[key] = Stat(float(acc.mean()), float(acc.std(ddof=0)), tuple(sorted(int(s) for s in group["seed"])))
    return out


def b2n_average(cells: Mapping[str, B2NCell], datasets: Sequence[str]) -> B2NAverage:
    """HM of the averaged Base and Novel over the datasets that have both; the rest are missing."""
    have = [d for d in datasets if d in cells and cells[d].hm is not None]
    missing = tuple(d for d in datasets if d not in have)
    if not have:
        return B2NAverage(None, None, (), missing)
    base = float(np.mean([cells[d].base.mean for d in have]))  # type: ignore[union-attr]
    novel = float(np.mean([cells[d].novel.mean for d in have]))  # type: ignore[union-attr]
    return B2NAverage(base, novel, tuple(have), missing)


def mean_over(stats: Mapping[str, Stat], datasets: Sequence[str]) -> MeanOver:
    """Arithmetic mean of the per-dataset means over the datasets present."""
    have = [d for d in datasets if d in stats]
    missing = tuple(d for d in datasets if d not in stats)
    value = float(np.mean([stats[d].mean for d in have])) if have else None
    return MeanOver(value, tuple(have), missing)
