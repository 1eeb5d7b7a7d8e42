"""One typed configuration for a trial, loaded from YAML with ``key=value`` overrides.

The configuration is a tree of frozen dataclasses. :func:`load_config` resolves it in this order,
each layer overriding the one before:

1. the defaults below, which reproduce the reference code's settings (method.md);
2. the YAML file (in a sweep: the sweep's base configuration);
3. the preset of the chosen ``method`` (:data:`METHOD_PRESETS`): the few keys that define the
   method (zero-shot trains 0 epochs, CoOp has no vision prompts, ...), so that one base
   configuration serves every method of a sweep;
4. ``key=value`` overrides (dotted keys, values parsed as YAML; in a sweep: the grid values),
   which may still change a preset key on purpose.

An unknown key, a wrong type or a value outside its allowed set fails at load time with the
dotted path of the key. Derived values (the trial id, the evaluation targets, the prompt
template) come from functions, never from mutating the configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rayot.data import protocols as _protocols
from rayot.errors import ConfigError

METHODS = ("zeroshot", "coop", "ivlp", "prompt_ot", "pointwise")
PROTOCOLS = _protocols.PROTOCOLS
CROSS_DATASET_TARGETS = _protocols.CROSS_DATASET_TARGETS
DG_TARGETS = _protocols.DOMAIN_GENERALIZATION_TARGETS


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    root: str = "data"
    protocol: str = "base2novel"
    shots: int = 16
    #: evaluation targets besides the training dataset; empty = the protocol's own (protocol.md §4)
    targets: tuple[str, ...] = ()
    #: "default" = "a photo of a {}.", "dataset" = the per-dataset template (protocol.md §7),
    #: or a literal template containing "{}"
    template: str = "default"
    num_workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class PromptConfig:
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 12
    depth_vision: int = 12
    ctx_init: str = "a photo of a"


@dataclass(frozen=True)
class LossConfig:
    lambda_ot: float = 10.0
    regularizer: str = "ot"  # ot | pointwise | none
    eta: float = 0.5
    modality: str = "joint"  # joint | vision | text
    solver: str = "emd"  # emd | sinkhorn | unbalanced
    epsilon: float = 0.05  # entropic regularisation of the Sinkhorn solvers, in units of the cost
    tau: float = 1.0  # marginal relaxation of the unbalanced solver
    n_iters: int = 100  # Sinkhorn iterations (fixed: no host sync per step)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-4
    epochs: int = 20
    batch_size: int = 4
    eval_batch_size: int = 100
    log_every: int = 10  # steps between loss checks and progress updates


@dataclass(frozen=True)
class OutputConfig:
    results: str = "results"  # local path or s3:// / gs:// / file:// URI
    checkpoints: str = "checkpoints"


@dataclass(frozen=True)
class TrialConfig:
    method: str = "prompt_ot"
    seed: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    #: data-parallel workers the trial trains on; a sweep sets it from resources.num_workers.
    #: Today N workers take N per-worker batches per step, a different experiment from one
    #: worker, so a value other than 1 is part of the trial id (see :func:`trial_id`).
    world_size: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


#: Values each method sets before the YAML file and the overrides are applied.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # frozen CLIP with the hand-written per-dataset template: no training
    "zeroshot": {
        "optim.epochs": 0,
        "loss.lambda_ot": 0.0,
        "loss.regularizer": "none",
        "data.template": "dataset",
    },
    # CoOp: text-only, shallow context (CoCoOp's base-to-novel setting: 4 tokens from "a photo of a")
    "coop": {
        "prompt.depth_text": 1,
        "prompt.depth_vision": 0,
        "loss.lambda_ot": 0.0,
        "loss.regularizer": "none",
    },
    # independent vision-language deep prompts without regularizer (Prompt-OT at λ = 0)
    "ivlp": {"loss.lambda_ot": 0.0, "loss.regularizer": "none"},
    "prompt_ot": {},
    # the point-wise feature regularizer (PromptSRC-style) with the same strength
    "pointwise": {"loss.regularizer": "pointwise"},
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "precision": ("fp32", "bf16", "fp16"),
    "data.protocol": PROTOCOLS,
    "loss.regularizer": ("ot", "pointwise", "none"),
    "loss.modality": ("joint", "vision", "text"),
    "loss.solver": ("emd", "sinkhorn", "unbalanced"),
}
_NON_NEGATIVE = (
    "data.shots",
    "data.num_workers",
    "prompt.n_ctx_text",
    "prompt.n_ctx_vision",
    "prompt.depth_text",
    "prompt.depth_vision",
    "loss.lambda_ot",
    "loss.eta",
    "loss.epsilon",
    "optim.lr",
    "optim.weight_decay",
    "optim.warmup_epochs",
    "optim.epochs",
)
_POSITIVE = ("world_size", "optim.batch_size", "optim.eval_batch_size", "optim.log_every", "loss.tau", "loss.n_iters")

#: Keys that do not change a trial's results: left out of the trial id.
_NOT_IN_ID = ("device", "data.root", "data.num_workers", "model.cache_dir", "output", "optim.log_every")


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")  # a bug in this module


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"config key {prefix + str(unknown[0])!r}: unknown key (known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r}: is a value, not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["loss.lambda_ot=1", "seed=2"]`` → a nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        set_dotted(tree, key.strip(), value)
    return tree


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping, naming the file in every error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return data


def resolve_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrialConfig:
    """Build a :class:`TrialConfig`: defaults < ``base`` < method preset < ``overrides``."""
    overrides = overrides or {}
    method = overrides.get("method", base.get("method", TrialConfig.method))
    if method not in METHOD_PRESETS:
        raise ConfigError(f"config key 'method': {method!r} is not one of {', '.join(METHODS)}")
    preset: dict[str, Any] = {}
    for key, value in METHOD_PRESETS[method].items():
        set_dotted(preset, key, value)
    cfg = build_dataclass(TrialConfig, _merge(_merge(dict(base), preset), overrides))
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrialConfig:
    """Load a trial configuration from YAML (optional) plus ``key=value`` overrides."""
    base = read_yaml(path) if path is not None else {}
    return resolve_config(base, parse_overrides(overrides))


def validate(cfg: TrialConfig) -> None:
    flat = flatten(cfg)
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"config key {key!r}: {flat[key]!r} is not one of {', '.join(choices)}")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"config key {key!r}: must be >= 0, got {flat[key]!r}")
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"config key {key!r}: must be > 0, got {flat[key]!r}")
    if cfg.loss.solver != "emd" and cfg.loss.regularizer == "ot" and cfg.loss.epsilon <= 0:
        raise ConfigError(f"config key 'loss.epsilon': solver {cfg.loss.solver} needs epsilon > 0")
    if cfg.prompt.depth_text == 0 and cfg.method != "zeroshot":
        raise ConfigError("config key 'prompt.depth_text': must be >= 1 (the text prompt is learned)")
    template = cfg.data.template
    if template not in ("default", "dataset") and "{}" not in template:
        raise ConfigError(
            f"config key 'data.template': {template!r} is neither 'default', 'dataset' nor a template with {{}}"
        )
    if cfg.model.pretrained is None and cfg.model.checkpoint is None:
        pass  # random weights: allowed (tiny test models)


# ----------------------------------------------------------------------------- derived values


def to_dict(cfg: TrialConfig) -> dict[str, Any]:
    """The configuration as plain nested dicts and lists (JSON-ready)."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    return convert(dataclasses.asdict(cfg))


def flatten(cfg: TrialConfig | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss.lambda_ot": 10.0, ...}``: every leaf under its dotted key."""
    tree = to_dict(cfg) if isinstance(cfg, TrialConfig) else cfg
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def to_json(cfg: TrialConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def trial_id(cfg: TrialConfig) -> str:
    """A stable 12-hex-digit hash of every setting that can change the trial's results."""
    flat = {
        k: v
        for k, v in flatten(cfg).items()
        if not any(k == skip or k.startswith(skip + ".") for skip in _NOT_IN_ID)
    }
    if flat["world_size"] == 1:  # single-worker ids stay those of `rayot train`
        del flat["world_size"]
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def eval_targets(cfg: TrialConfig) -> list[tuple[str, str, str]]:
    """The evaluations of a trial: ``(protocol, eval_dataset, split)`` per protocol.md §4.

    ``transfer`` is cross-dataset and domain generalization at once: one imagenet-trained model
    evaluated on every target, each row labelled with the protocol whose table it belongs to.
    """
    d = cfg.data
    match d.protocol:
        case "base2novel":
            return [("base2novel", d.dataset, "base"), ("base2novel", d.dataset, "novel")]
        case "few_shot":
            return [("few_shot", d.dataset, "all")]
        case "cross_dataset":
            targets = d.targets or CROSS_DATASET_TARGETS
            return [("cross_dataset", d.dataset, "all")] + [("cross_dataset", t, "all") for t in targets]
        case "domain_generalization":
            targets = d.targets or DG_TARGETS
            return [("domain_generalization", d.dataset, "all")] + [
                ("domain_generalization", t, "all") for t in targets
            ]
        case "transfer":
            targets = d.targets or CROSS_DATASET_TARGETS + DG_TARGETS
            return [("cross_dataset", d.dataset, "all")] + [
                ("domain_generalization" if t in DG_TARGETS else "cross_dataset", t, "all")
                for t in targets
            ]
    raise AssertionError(d.protocol)  # validate() rejects other protocols


def train_subsample(cfg: TrialConfig) -> str:
    """Which classes the training subset holds: the base half for base-to-novel, else all."""
    return "base" if cfg.data.protocol == "base2novel" else "all"


def from_dict(tree: Mapping[str, Any]) -> TrialConfig:
    """Rebuild an already resolved configuration (e.g. from a checkpoint's JSON): no preset applied."""
    cfg = build_dataclass(TrialConfig, tree)
    validate(cfg)
    return cfg


def replace(cfg: TrialConfig, **flat_updates: Any) -> TrialConfig:
    """A copy with dotted-key updates (``replace(cfg, **{"loss.lambda_ot": 0.0})``), re-validated.

    No preset is applied: the copy differs from ``cfg`` in exactly the given keys.
    """
    tree: dict[str, Any] = {}
    for key, value in flat_updates.items():
        set_dotted(tree, key, value)
    return from_dict(_merge(to_dict(cfg), tree))
