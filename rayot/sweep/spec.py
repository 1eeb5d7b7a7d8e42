"""Sweep specifications (`sweeps/*.yaml`): a base trial configuration and grid axes.

```yaml
name: smoke
base: {...}             # a trial configuration, inline, or a path relative to this file
grid:                   # axes common to every block: the cartesian product is taken
  seed: [1, 2]
  method: [method_a, method_b]
grids:                  # optional blocks, each a grid of its own; their trials are concatenated
  - {protocol: base2novel, dataset: [caltech101, dtd]}
  - {protocol: transfer, dataset: imagenet}
resources: {num_workers: 1, gpus_per_worker: 1, cpus_per_worker: 8, max_concurrent_trials: 0, pack: 8}
storage: {results: s3://bucket/results, checkpoints: s3://bucket/checkpoints}
tracking:               # optional: each tracker named is on (rayot.trackers has the defaults)
  mlflow: {tracking_uri: sqlite:///mlruns/mlflow.db, experiment: smoke}
  wandb: {project: rayot, mode: offline}
  tensorboard: {dir: tensorboard/smoke}
```

Grid keys are dotted trial-configuration keys (``optim.lr``, a method's setting such as
``<method>.<setting>``) or the short names ``dataset``, ``protocol`` and ``shots``. A grid value
that is not a list is one value. The grid values act as overrides over the base configuration and
the method's preset; a method's setting applies to that method's trials only (the others' trials
are the same trial for every value of it, and appear once). This module expands a specification
into trial configurations; it knows nothing about Ray.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayot import config as C
from rayot import methods
from rayot.errors import ConfigError
from rayot.metrics import VALIDATION_METRICS
from rayot.sweep.algorithms import ALGORITHMS, Algorithm
from rayot.trackers import Tracking, parse_tracking

ALIASES = C.ALIASES
_TOP_KEYS = ("name", "description", "base", "grid", "grids", "resources", "storage", "tracking", "search")
#: Grid axes a search cannot search: each cell of them gets its own search (docs/search.md).
CELL_AXES = ("data.dataset", "data.protocol", "data.shots", "seed", "method")
#: Ray Tune's sampling functions a search space may use, with the arguments each takes.
SAMPLERS: dict[str, str] = {
    "choice": "[values...]", "grid_search": "[values...]", "uniform": "[low, high]",
    "quniform": "[low, high, q]", "loguniform": "[low, high]", "qloguniform": "[low, high, q]",
    "randint": "[low, high]", "qrandint": "[low, high, q]", "lograndint": "[low, high]",
    "qlograndint": "[low, high, q]", "randn": "[mean, sd]", "qrandn": "[mean, sd, q]",
}
#: The configuration sections a search space may vary, besides the searched method's own settings
#: (``<method>.<setting>``): how a trial trains. An allowlist: any other key could change which
#: images a search trial reads or what it is scored on (docs/search.md §1).
SEARCHABLE_SECTIONS = ("optim", "prompt")
#: Why a section outside the allowlist is refused, in the one line that refuses it.
_NOT_SEARCHABLE: dict[str, str] = {
    "validation": "the search sets validation.* itself, so that its trials read validation images only "
                  "(search.holdout, search.holdout_seed)",
    "data": "data.* chooses which images a trial reads",
    "model": "model.* chooses the model, not how it trains",
}
#: The most samples one search may draw: num_samples times its grid_search combinations. Each is a
#: trial trained for the whole schedule, and the plan builds and checks every one before Ray starts
#: (about 1 ms each): 10,000 is more trials than a search on one cell is worth, planned in seconds.
MAX_SAMPLES = 10_000
#: The most search trials a sweep's searches may draw together (cells times samples per search).
MAX_SEARCH_TRIALS = 100_000
SCHEDULERS = ("none", "asha", "hyperband")
METRICS = VALIDATION_METRICS


@dataclass(frozen=True)
class Scheduler:
    """Early stopping of a search's trials on their validation score after each epoch: none, ASHA
    (Ray Tune's asynchronous successive halving) or asynchronous HyperBand (ASHA over brackets)."""

    type: str = "none"
    grace_period: int = 1  # epochs every trial trains before it can be stopped
    reduction_factor: float = 2.0  # each rung keeps the best 1/reduction_factor
    brackets: int = 1  # hyperband: its brackets (default 3)


@dataclass(frozen=True)
class _SearchKeys:
    """The plain keys of a ``search:`` section, typed and checked by rayot.typed."""

    method: str = ""  # whose grid trials form the cells (default: the sweep's one trained method)
    algorithm: str = "random"
    num_samples: int = 8
    seed: int = 0  # the search's own: the same seed draws the same samples
    metric: str = ""  # hm | seen | held_out (base-to-novel), accuracy (the others); default hm / accuracy
    trial_seed: int | None = None  # the training seed of the search's trials (default: the grid's first)
    holdout: float = 0.5  # base-to-novel: the fraction of the base classes held out as pseudo-novel
    holdout_seed: int = 0
    batch: int = 0  # samples per round (optuna learns between rounds); 0: all at once, or 4 for optuna
    run_grid: bool = True  # the searched method's own grid trials (the fixed settings) run too


@dataclass(frozen=True)
class Search(_SearchKeys):
    """A sweep's ``search:`` section: a search per cell of the grid (dataset × protocol × shots ×
    the searched method's other grid axes), on the validation objective, then the chosen setting
    trained for every seed of the cell and tested (docs/search.md)."""

    #: dotted key -> {Ray Tune sampler: its arguments}
    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    scheduler: Scheduler = field(default_factory=Scheduler)

    @property
    def algorithm_type(self) -> type[Algorithm]:
        """How its samples are drawn (rayot.sweep.algorithms)."""
        return ALGORITHMS[self.algorithm]

    @property
    def sample_count(self) -> int:
        """Samples one search draws: ``num_samples`` times over the space, each time every
        combination of its grid_search keys (with algorithm grid, of its choice keys too)."""
        return self.algorithm_type.sample_count(self)

    @property
    def round_size(self) -> int:
        """Samples drawn per round: optuna learns from each round's scores before the next."""
        return self.algorithm_type.round_size(self)

    @property
    def rounds(self) -> int:
        return math.ceil(self.sample_count / self.round_size)


@dataclass(frozen=True)
class Resources:
    num_workers: int = 1  # data-parallel world size of one trial
    gpus_per_worker: float = 0.0  # a fraction packs several single-worker trials on one GPU
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources fit
    max_failures: int = 2  # worker or node failures a trial survives, resuming from its checkpoint
    pack: int = 1  # up to this many trials that can share a computation train as one (rayot.packing)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]
    grid: dict[str, tuple[Any, ...]]
    grids: tuple[dict[str, tuple[Any, ...]], ...]
    resources: Resources = field(default_factory=Resources)
    storage: C.OutputConfig = field(default_factory=C.OutputConfig)  # results, checkpoints
    description: str = ""
    tracking: Tracking = field(default_factory=Tracking)  # trackers on for every run of the sweep
    search: Search | None = None  # a hyper-parameter search per cell of the grid (docs/search.md)


def _axes(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys to lists of values")
    axes: dict[str, tuple[Any, ...]] = {}
    spelled: dict[str, str] = {}
    for key, values in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a string")
        values = tuple(values) if isinstance(values, list) else (values,)
        if not values:
            raise ConfigError(f"{where}: key {key!r} has an empty list of values")
        dotted = C.canonical_key(key)
        if spelled.setdefault(dotted, key) != key:  # else one axis would silently replace the other
            raise ConfigError(f"{where}: {spelled[dotted]!r} and {key!r} are the same key ({dotted}); "
                              "give its values once")
        axes[dotted] = values
    return axes


def _name(raw: Any, path: Path) -> str:
    """The sweep's name (default: the file's stem). Ray Tune keeps its experiment state in a folder
    named after it, so it must be one plain folder name: a ``/`` or ``..`` would put that state
    outside the checkpoint location."""
    if raw is None:
        return path.stem
    name = str(raw)
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise ConfigError(f"sweep spec {path}: name {name!r}: must be a plain folder name (no '/', '\\', "
                          "not empty, '.' or '..'); Ray Tune keeps the sweep's state in a folder named after it")
    return name


def load_spec(path: str | Path) -> SweepSpec:
    """Load and check a sweep specification; every trial it expands to is validated too."""
    path = Path(path)
    raw = C.read_yaml(path, "sweep spec")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"sweep spec {path}: unknown key {unknown[0]!r} (known: {', '.join(_TOP_KEYS)})")
    base = raw.get("base", {})
    if isinstance(base, str):
        try:
            base = C.read_yaml((path.parent / base).resolve(), "base config")
        except ConfigError as exc:
            raise ConfigError(f"sweep spec {path}: {exc}") from exc
    if not isinstance(base, Mapping):
        raise ConfigError(f"sweep spec {path}: 'base' must be a mapping or a path to a YAML file")
    blocks = raw.get("grids") or []
    if not isinstance(blocks, list):
        raise ConfigError(f"sweep spec {path}: 'grids' must be a list of grids")
    try:
        resources = C.build_dataclass(Resources, raw.get("resources") or {}, "resources.")
        storage = C.build_dataclass(C.OutputConfig, raw.get("storage") or {}, "storage.")
        tracking = parse_tracking(raw.get("tracking"))
        search = parse_search(raw.get("search"))
    except ConfigError as exc:
        raise ConfigError(f"sweep spec {path}: {exc}") from exc
    spec = SweepSpec(
        name=_name(raw.get("name"), path),
        base=dict(base),
        grid=_axes(raw.get("grid"), f"sweep spec {path}: grid"),
        grids=tuple(_axes(b, f"sweep spec {path}: grids[{i}]") for i, b in enumerate(blocks)),
        resources=resources,
        storage=storage,
        description=str(raw.get("description") or ""),
        tracking=tracking,
        search=search,
    )
    _check_resources(spec.resources, path)
    try:
        trials = expand(spec)
        if search is not None:
            check_search(spec, trials)
    except ConfigError as exc:
        raise ConfigError(f"sweep spec {path}: {exc}") from exc
    return spec


def _check_resources(r: Resources, path: Path) -> None:
    if r.num_workers < 1:
        raise ConfigError(f"sweep spec {path}: resources.num_workers must be >= 1")
    if r.gpus_per_worker < 0 or r.cpus_per_worker <= 0:
        raise ConfigError(f"sweep spec {path}: resources need gpus_per_worker >= 0 and cpus_per_worker > 0")
    if 0 < r.gpus_per_worker < 1 and r.num_workers > 1:
        # NCCL refuses two ranks on one GPU ("Duplicate GPU detected")
        raise ConfigError(
            f"sweep spec {path}: fractional resources.gpus_per_worker needs num_workers == 1"
        )
    if r.gpus_per_worker > 1 and r.gpus_per_worker != int(r.gpus_per_worker):
        raise ConfigError(f"sweep spec {path}: resources.gpus_per_worker above 1 must be a whole number")
    if not isinstance(r.pack, int) or isinstance(r.pack, bool) or r.pack < 1:
        raise ConfigError(f"sweep spec {path}: resources.pack must be a whole number >= 1 (1: no packing)")
    if r.max_concurrent_trials < 0 or r.max_failures < -1:
        raise ConfigError(f"sweep spec {path}: max_concurrent_trials >= 0 and max_failures >= -1 needed")


def _output(key: str, flag: str | None, sets: Mapping[str, Any], default: str) -> str:
    """A storage location: the command-line flag, else ``--set output.X=``, else the spec's."""
    if flag:
        return flag
    if key in sets:
        value = sets[key]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"override {key}={value!r}: expected a path or URI")
        return value
    return default


def plan_notes(spec: SweepSpec, sets: Mapping[str, Any] | None) -> list[str]:
    """What the plan should say about the grid: that there is none (the base configuration's one
    trial), and the axes ``--set`` replaces (:func:`replaced_axes`)."""
    notes = replaced_axes(spec, sets)
    if not spec.grid and not any(spec.grids):
        notes.insert(0, "the sweep has no grid axis: it runs the base configuration's one trial")
    return notes


def replaced_axes(spec: SweepSpec, sets: Mapping[str, Any] | None) -> list[str]:
    """Grid axes that a ``--set`` override replaces by its one value, said in the plan."""
    notes = []
    for block in (spec.grid, *spec.grids):
        for key, values in block.items():
            if sets and key in sets and len(values) > 1:
                note = f"grid axis {key} {list(values)} replaced by --set {key}={sets[key]!r}"
                if note not in notes:
                    notes.append(note)
    return notes


def expand(spec: SweepSpec, *, results: str | None = None, checkpoints: str | None = None,
           sets: Mapping[str, Any] | None = None) -> list[C.TrialConfig]:
    """Every trial of the sweep, in grid order, without duplicates (same trial id).

    ``sets`` (``--set`` on the command line) applies to every trial; a set key that is also a
    grid axis replaces the axis by its one value (:func:`replaced_axes` says so). Each trial's
    ``world_size`` is ``resources.num_workers``.
    """
    given, sets = sets or {}, {}
    for key, value in given.items():  # a short name, as in the grid (dataset, shots, ...)
        if C.canonical_key(key) in sets:
            raise ConfigError(f"override {key}={value!r}: {C.canonical_key(key)} is set twice")
        sets[C.canonical_key(key)] = value
    _load_methods(spec, sets)
    if "world_size" in sets or "world_size" in spec.base:
        raise ConfigError("config key 'world_size' is set by the sweep from resources.num_workers")
    results_at = _output("output.results", results, sets, spec.storage.results)
    checkpoints_at = _output("output.checkpoints", checkpoints, sets, spec.storage.checkpoints)
    trials: dict[str, C.TrialConfig] = {}
    for block in spec.grids or ({},):
        overlap = set(block) & set(spec.grid)
        if overlap:
            raise ConfigError(f"grid key {sorted(overlap)[0]!r} is both in 'grid' and in a block of 'grids'")
        axes = {**block, **spec.grid}
        if "world_size" in axes:
            raise ConfigError("grid key 'world_size' is set by the sweep from resources.num_workers")
        axes = {k: (sets[k],) if k in sets else v for k, v in axes.items()}
        for combo in itertools.product(*axes.values()):
            flat = dict(zip(axes, combo, strict=True))
            flat.update(sets)
            flat["output.results"] = results_at
            flat["output.checkpoints"] = checkpoints_at
            flat["world_size"] = spec.resources.num_workers
            tree: dict[str, Any] = {}
            for key, value in flat.items():
                C.set_dotted(tree, key, value)
            cfg = _absolute_paths(C.resolve_config(spec.base, tree))
            trials.setdefault(C.trial_id(cfg), cfg)
    return list(trials.values())


def _load_methods(spec: SweepSpec, sets: Mapping[str, Any]) -> None:
    """Find every method the sweep names before any trial resolves: a method given by a dotted path
    is then known by its name, and its settings' section in the base is recognised as such."""
    refs = {spec.base.get("method", methods.DEFAULT), *([sets["method"]] if "method" in sets else [])}
    for block in (spec.grid, *spec.grids):
        refs.update(block.get("method", ()))
    for ref in refs:
        methods.get(ref)


def _absolute_paths(cfg: C.TrialConfig) -> C.TrialConfig:
    """Ray runs trials in other working directories: local paths become absolute.

    Only keys left out of the trial id are touched, so the ids match those of `rayot train`; the
    resolved configuration is copied with them, not built again (a path has no rule to check).
    """

    def local(path: str | None) -> str | None:
        return os.path.abspath(path) if path and "://" not in path else path

    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=local(cfg.data.root)),
        model=dataclasses.replace(cfg.model, cache_dir=local(cfg.model.cache_dir)),
        output=dataclasses.replace(cfg.output, results=local(cfg.output.results),
                                   checkpoints=local(cfg.output.checkpoints)),
    )


def storage_of(spec: SweepSpec, trials: list[C.TrialConfig]) -> C.OutputConfig:
    """Where the sweep's results and checkpoints go: the expanded trials' (overrides applied)."""
    return trials[0].output if trials else spec.storage


# ----------------------------------------------------------------------------- search: section


def parse_search(raw: Any) -> Search | None:
    """The ``search:`` section, checked for what needs no trial (its keys, algorithm, scheduler,
    the shape of its space); :func:`check_search` checks it against the sweep's trials."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError("search: expected a mapping (space, algorithm, num_samples, ...)")
    known = {f.name for f in dataclasses.fields(Search)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"search: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    space_raw = raw.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError("search.space: empty; give at least one configuration key and its Ray Tune sampler, "
                          "for example <method>.<setting>: {loguniform: [0.1, 100]}")
    space = {}
    named = raw.get("method")  # compared as text here; check_search loads it with the trials
    searched = methods.canonical(named) if isinstance(named, str) else None
    for key, sampler in space_raw.items():
        problem = space_key_problem(str(key), searched)
        if problem:
            raise ConfigError(f"search.space.{key}: {problem}")
        space[ALIASES.get(str(key), str(key))] = _sampler(str(key), sampler)
    scheduler_raw = raw.get("scheduler", "none")
    if isinstance(scheduler_raw, str):
        scheduler_raw = {"type": scheduler_raw}
    if not isinstance(scheduler_raw, Mapping):
        raise ConfigError("search.scheduler: expected none, asha, hyperband or a mapping {type: asha, grace_period: ...}")
    scheduler_raw = dict(scheduler_raw)
    if scheduler_raw.get("type", "none") == "hyperband":
        scheduler_raw.setdefault("brackets", 3)
    rest = {k: v for k, v in raw.items() if k not in ("space", "scheduler")}
    keys = C.build_dataclass(_SearchKeys, rest, "search.")
    if keys.algorithm not in ALGORITHMS:
        raise ConfigError(f"search.algorithm: unknown algorithm {keys.algorithm!r} "
                          f"(known: {', '.join(ALGORITHMS)}; optuna needs `pip install rayot[optuna]`)")
    if "num_samples" not in rest:
        keys = dataclasses.replace(keys, num_samples=ALGORITHMS[keys.algorithm].default_num_samples)
    scheduler = C.build_dataclass(Scheduler, scheduler_raw, "search.scheduler.")
    search = Search(**dataclasses.asdict(keys), space=space, scheduler=scheduler)
    if scheduler.type not in SCHEDULERS:
        raise ConfigError(f"search.scheduler.type: unknown scheduler {scheduler.type!r} (known: {', '.join(SCHEDULERS)})")
    if scheduler.grace_period < 1 or scheduler.reduction_factor <= 1 or scheduler.brackets < 1:
        raise ConfigError("search.scheduler: grace_period >= 1, reduction_factor > 1 and brackets >= 1 needed")
    if scheduler.type == "asha" and scheduler.brackets != 1:
        raise ConfigError("search.scheduler: asha has one bracket; several brackets is type: hyperband")
    if search.num_samples < 1 or search.batch < 0:
        raise ConfigError("search: num_samples must be >= 1 and batch >= 0")
    if search.sample_count > MAX_SAMPLES:
        raise ConfigError(f"search.num_samples: {search.num_samples} draws {search.sample_count:,} samples per search, "
                          f"above the limit of {MAX_SAMPLES:,} (each is a trial trained to the end of its schedule; "
                          "docs/search.md §7)")
    if search.metric and search.metric not in METRICS:
        raise ConfigError(f"search.metric: unknown metric {search.metric!r} (known: {', '.join(METRICS)}: the "
                          "validation score's harmonic mean, its seen or held-out classes' accuracy, or the accuracy "
                          "outside base-to-novel)")
    if not 0 <= search.holdout < 1:
        raise ConfigError(f"search.holdout: {search.holdout} is outside [0, 1)")
    for key, sampler in space.items():
        problem = search.algorithm_type.space_problem(next(iter(sampler)))
        if problem:
            raise ConfigError(f"search.space.{key}: {problem}")
    return search


def space_key_problem(key: str, method: str | None = None) -> str | None:
    """Why ``key`` cannot be in a search space, or None: the one check behind both the refusal and
    the plan's "scored on validation images only".

    A space holds only what changes how a trial trains: the searched method's settings
    (``<method>.<setting>``; ``method`` is its name, None before the trials are known: any method's
    section then), ``optim.*`` and ``prompt.*`` (:data:`SEARCHABLE_SECTIONS`). A cell axis, a key
    left out of the trial id and every other key are refused, each saying why.
    """
    name = ALIASES.get(key, key)
    if name in CELL_AXES:
        return (f"{key} is a grid axis; the grid's cells ({', '.join(CELL_AXES)}) each get their own search, "
                "so it cannot be searched: give its values in grid: instead")
    if name in ("world_size", "device") or any(name == k or name.startswith(k + ".") for k in C.NOT_IN_ID):
        return "it does not change a trial's results; nothing to search"
    section, dot, _ = name.partition(".")
    if dot and section in SEARCHABLE_SECTIONS:
        return None
    if dot and (section == method if method else methods.known(section) is not None):
        return None
    allowed = f"{method}.<setting>" if method else "<method>.<setting>"
    why = _NOT_SEARCHABLE.get(section) or (
        f"{section}.* are another method's settings" if dot and methods.known(section)
        else f"{name} is not a training setting")
    return (f"{why}; a search space holds only training settings: the searched method's ({allowed}), "
            f"{', '.join(s + '.*' for s in SEARCHABLE_SECTIONS)}")


def _sampler(key: str, sampler: Any) -> dict[str, list[Any]]:
    where = f"search.space.{key}"
    if not isinstance(sampler, Mapping) or len(sampler) != 1:
        raise ConfigError(f"{where}: expected one Ray Tune sampler, for example {{loguniform: [0.1, 100]}} "
                          f"(samplers: {', '.join(SAMPLERS)})")
    (name, args), = sampler.items()
    if name not in SAMPLERS:
        raise ConfigError(f"{where}: unknown sampler {name!r} (Ray Tune's: {', '.join(SAMPLERS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {name} takes a list {SAMPLERS[name]}, got {args!r}")
    if name not in ("choice", "grid_search"):
        wanted = SAMPLERS[name].count(",") + 1
        if len(args) != wanted or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: {name} takes {SAMPLERS[name]} (numbers), got {args!r}")
        if name not in ("randn", "qrandn") and not args[0] < args[1]:
            raise ConfigError(f"{where}: {name}: low must be below high, got {args!r}")
        if "log" in name and args[0] <= 0:
            raise ConfigError(f"{where}: {name} needs a positive low bound, got {args[0]!r}")
    return {name: list(args)}


def searched_method(spec: SweepSpec, trials: list[C.TrialConfig]) -> str:
    """The method whose grid trials the search takes its cells from."""
    assert spec.search is not None
    names = list(dict.fromkeys(C.method_of(c).name for c in trials))
    if spec.search.method:
        name = methods.get(spec.search.method).name
        if name not in names:
            raise ConfigError(f"search.method: {spec.search.method!r} has no trial in the grid (its methods: "
                              f"{', '.join(names)}); the search takes its cells from that method's grid trials")
        return name
    trained = [n for n in names if methods.get(n).trains]
    if len(trained) != 1:
        raise ConfigError(f"search.method: say which method to search (the grid's trained methods: "
                          f"{', '.join(trained) or 'none'})")
    return trained[0]


def check_search(spec: SweepSpec, trials: list[C.TrialConfig]) -> None:
    """Check the search against the sweep's trials: its method has trials, each space key is a
    configuration key of that method's trials that changes a trial (one clear message each)."""
    assert spec.search is not None
    name = searched_method(spec, trials)
    cfg = next(c for c in trials if C.method_of(c).name == name)
    if not C.method_of(cfg).trains:
        raise ConfigError(f"search.method: {name} does not train; there is nothing to search")
    flat = C.flatten(cfg)
    for key in spec.search.space:
        problem = space_key_problem(key, name)
        if problem:
            raise ConfigError(f"search.space.{key}: {problem}")
        if key not in flat:
            raise ConfigError(f"search.space.{key}: unknown configuration key for method {name}'s trials "
                              f"(a general key such as optim.lr, or one of its settings, {name}.<setting>)")
    metric = spec.search.metric
    if metric:
        wanted = "accuracy" if cfg.data.protocol != "base2novel" else None
        if wanted and metric != wanted or not wanted and metric == "accuracy":
            raise ConfigError(f"search.metric: {metric} does not apply to protocol {cfg.data.protocol} (use "
                              f"{wanted or 'hm, seen or held_out'})")
        if metric in ("hm", "held_out") and spec.search.holdout == 0:
            raise ConfigError(f"search.metric: {metric} needs held-out classes (search.holdout > 0)")
