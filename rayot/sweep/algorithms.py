"""The search algorithms (``search.algorithm``), behind one interface: a cell's algorithm is asked
for samples and told their scores, in rounds (docs/search.md).

- ``random``: Ray Tune's variant generator, seeded, ``num_samples`` times over the space;
- ``grid``: the same, with every ``choice`` enumerated like a ``grid_search``;
- ``optuna``: Ray Tune's Optuna integration (TPE, seeded), asked for ``batch`` samples a round and
  told each round's scores before the next.

What the section's checks and the plan need is known from the class, before anything is drawn; Ray
and Optuna are imported only when samples are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from rayot.errors import ConfigError

if TYPE_CHECKING:
    from rayot.sweep.spec import Search


class Algorithm:
    """One cell's search algorithm: :meth:`ask` for samples ``start .. start + n - 1`` ({dotted
    key: value}), :meth:`tell` their final validation scores (None: the sample failed)."""

    #: the samplers of which every pass over the space takes every value (the others are drawn from)
    enumerates: ClassVar[tuple[str, ...]] = ("grid_search",)
    #: ``num_samples`` when the section gives none
    default_num_samples: ClassVar[int] = 8

    def __init__(self, search: Search, metric: str) -> None:
        self.search = search
        self.metric = metric

    @classmethod
    def sample_count(cls, search: Search) -> int:
        """Samples one search draws: ``num_samples`` passes over the space, each pass every
        combination of the enumerated samplers' values."""
        return search.num_samples * math.prod(len(args) for sampler in search.space.values()
                                              for name, args in sampler.items() if name in cls.enumerates)

    @classmethod
    def round_size(cls, search: Search) -> int:
        """Samples drawn a round: every one at once, for an algorithm that learns nothing from scores."""
        return cls.sample_count(search)

    @classmethod
    def space_problem(cls, sampler: str) -> str | None:
        """Why a key of the space cannot use ``sampler`` with this algorithm, or None."""
        return None

    def ask(self, n: int, start: int) -> list[dict[str, Any]]:
        drawn = _variant_samples(self.search, _domains(self.search, self.enumerates))
        return drawn[start:start + n]

    def tell(self, start: int, scores: list[float | None]) -> None:
        """Scores are nothing to an algorithm that draws every sample at once."""


class Random(Algorithm):
    pass


class Grid(Algorithm):
    enumerates = ("choice", "grid_search")
    default_num_samples = 1  # each pass over the grid draws the same trials again

    @classmethod
    def space_problem(cls, sampler: str) -> str | None:
        if sampler in cls.enumerates:
            return None
        return f"algorithm grid needs a finite list of values (choice or grid_search), not {sampler}"


class Optuna(Algorithm):
    enumerates = ()
    #: samples a round when ``batch`` is 0
    default_batch: ClassVar[int] = 4

    def __init__(self, search: Search, metric: str) -> None:
        super().__init__(search, metric)
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:
            raise ConfigError("search.algorithm optuna needs Optuna: pip install 'rayot[optuna]'") from exc
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.searcher = OptunaSearch(space=_domains(search, self.enumerates), metric=metric, mode="max",
                                     sampler=optuna.samplers.TPESampler(seed=search.seed))

    @classmethod
    def round_size(cls, search: Search) -> int:
        return search.batch or cls.default_batch

    @classmethod
    def space_problem(cls, sampler: str) -> str | None:
        if sampler == "grid_search":
            return "algorithm optuna draws from distributions; use choice, not grid_search"
        return None

    def ask(self, n: int, start: int) -> list[dict[str, Any]]:
        return [{k: _plain(v) for k, v in self.searcher.suggest(f"sample-{start + i}").items()} for i in range(n)]

    def tell(self, start: int, scores: list[float | None]) -> None:
        for i, score in enumerate(scores):
            result = None if score is None else {self.metric: score}
            self.searcher.on_trial_complete(f"sample-{start + i}", result=result, error=score is None)


#: ``search.algorithm`` -> its class
ALGORITHMS: dict[str, type[Algorithm]] = {"random": Random, "grid": Grid, "optuna": Optuna}


def _domains(search: Search, enumerates: tuple[str, ...]) -> dict[str, Any]:
    """The space as Ray Tune's domain objects, an enumerated ``choice`` as a ``grid_search``."""
    from ray import tune

    out = {}
    for key, sampler in search.space.items():
        (name, args), = sampler.items()
        if name in ("choice", "grid_search"):
            out[key] = tune.grid_search(args) if name == "grid_search" or name in enumerates else tune.choice(args)
        else:
            out[key] = getattr(tune, name)(*args)
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _variant_samples(search: Search, space: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Tune's variant generator, ``num_samples`` times over ``space`` (every grid_search
    combination each time), from a random state seeded with the search's seed."""
    from ray.tune.search.variant_generator import generate_variants

    rng = np.random.RandomState(search.seed)
    samples = []
    for _ in range(search.num_samples):
        for _, resolved in generate_variants(dict(space), random_state=rng):
            samples.append({k: _plain(resolved[k]) for k in search.space})
    return samples
