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

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayot import config as C
from rayot import methods
from rayot.errors import ConfigError
from rayot.trackers import Tracking, parse_tracking

ALIASES = {"dataset": "data.dataset", "protocol": "data.protocol", "shots": "data.shots"}
_TOP_KEYS = ("name", "description", "base", "grid", "grids", "resources", "storage", "tracking")


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


def _axes(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys to lists of values")
    axes = {}
    for key, values in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a string")
        values = tuple(values) if isinstance(values, list) else (values,)
        if not values:
            raise ConfigError(f"{where}: key {key!r} has an empty list of values")
        axes[ALIASES.get(key, key)] = values
    return axes


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
    except ConfigError as exc:
        raise ConfigError(f"sweep spec {path}: {exc}") from exc
    spec = SweepSpec(
        name=str(raw.get("name") or path.stem),
        base=dict(base),
        grid=_axes(raw.get("grid"), f"sweep spec {path}: grid"),
        grids=tuple(_axes(b, f"sweep spec {path}: grids[{i}]") for i, b in enumerate(blocks)),
        resources=resources,
        storage=storage,
        description=str(raw.get("description") or ""),
        tracking=tracking,
    )
    _check_resources(spec.resources, path)
    try:
        expand(spec)
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
    sets = dict(sets or {})
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

    Only keys left out of the trial id are touched, so the ids match those of `rayot train`.
    """
    keys = ("data.root", "output.results", "output.checkpoints", "model.cache_dir")
    flat = C.flatten(cfg)
    updates = {
        k: os.path.abspath(flat[k]) for k in keys if flat[k] and "://" not in flat[k]
    }
    return C.replace(cfg, **updates)


def storage_of(spec: SweepSpec, trials: list[C.TrialConfig]) -> C.OutputConfig:
    """Where the sweep's results and checkpoints go: the expanded trials' (overrides applied)."""
    return trials[0].output if trials else spec.storage
