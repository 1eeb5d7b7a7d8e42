"""One typed configuration for a trial, loaded from YAML with ``key=value`` overrides.

The configuration is a tree of frozen dataclasses. :func:`load_config` resolves it in this order,
each layer overriding the one before:

1. the defaults below;
2. the chosen ``method``'s reference settings (:func:`method_preset`, ``reference``): its
   published run's schedule, batch size, token counts, depths and loss weights, per protocol
   (peers.md, method.md), where the YAML file leaves them unsaid;
3. the YAML file (in a sweep: the sweep's base configuration);
4. the keys that define the method (``defines``: zero-shot trains 0 epochs, CoOp has no vision
   prompts, IVLP has no regulariser, ...), so that one base configuration serves every method
   of a sweep and no base can turn one method into another;
5. ``key=value`` overrides (dotted keys, values parsed as YAML; in a sweep: the grid values),
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

METHODS = ("zeroshot", "coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc", "prompt_ot", "pointwise")
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
    #: a checkpoint saved by the method's reference code (or a rayot prompt.pt) to start from;
    #: with optim.epochs=0 the imported prompts are evaluated as they are
    init_from: str | None = None


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
    #: KgCoOp: weight W of 1 - mean_c cos(t_c, w_c) against the hand-made class text features
    kg_weight: float = 0.0
    #: PromptSRC: L1 weights of the text and image features against the frozen ones, and of
    #: the logit KL (divided by B·C as the reference does)
    text_l1: float = 0.0
    image_l1: float = 0.0
    logit_kl: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-4
    epochs: int = 20  # E: the length of the cosine schedule
    #: S: train the first S epochs of the E-epoch schedule, then evaluate (None: all E)
    stop_epoch: int | None = None
    batch_size: int = 4
    eval_batch_size: int = 100
    log_every: int = 10  # steps between loss checks and progress updates
    #: PromptSRC's Gaussian prompt aggregation over epochs 1..S (mean, std; std 0 = off)
    gpa_mean: float = 0.0
    gpa_std: float = 0.0


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
    #: N workers run the one-worker experiment divided up (each takes 1/N of every global batch
    #: of optim.batch_size, of the classes and of the test set), so it is not part of the trial id.
    world_size: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


#: The toolbox's warm-up rate of the peers (Dassl's WARMUP_CONS_LR); Prompt-OT's is 1e-4.
_PEER_WARMUP = {"optim.warmup_epochs": 1, "optim.warmup_lr": 1e-5}
_NO_REG = {"loss.lambda_ot": 0.0, "loss.regularizer": "none"}
_TRANSFER = ("cross_dataset", "domain_generalization", "transfer")
#: PromptSRC's few-shot GPA (mean, std) by dataset (peers.md §6.4)
_SRC_FEW_SHOT_GPA = {d: (45.0, 5.0) for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")}


@dataclass(frozen=True)
class Preset:
    """What a method sets: ``reference`` under the YAML file, ``defines`` over it."""

    reference: dict[str, Any]
    defines: dict[str, Any]


def method_preset(method: str, protocol: str = "base2novel", dataset: str = "") -> Preset:
    """The reference configuration of ``method`` for a protocol and dataset (peers.md, method.md).

    ``reference`` is the published run's schedule and shapes; ``defines`` the keys without which
    the method would be another one.
    """
    transfer, few_shot = protocol in _TRANSFER, protocol == "few_shot"
    match method:
        case "zeroshot":  # frozen CLIP with the hand-written per-dataset template
            return Preset({"data.template": "dataset"},
                          {"optim.epochs": 0, "optim.stop_epoch": None, **_NO_REG})
        case "coop":  # learned text context, 4 tokens from "a photo of a" (CoCoOp's b2n CoOp)
            epochs = 50 if dataset == "imagenet" else 200
            return Preset({**_PEER_WARMUP, "optim.lr": 0.002, "optim.batch_size": 32,
                           "optim.epochs": epochs, "prompt.n_ctx_text": 4},
                          {"prompt.depth_text": 1, "prompt.depth_vision": 0, **_NO_REG})
        case "cocoop":
            return Preset({**_PEER_WARMUP, "optim.lr": 0.002, "optim.batch_size": 1,
                           "optim.epochs": 10, "prompt.n_ctx_text": 4},
                          {"prompt.depth_text": 1, "prompt.depth_vision": 0, **_NO_REG})
        case "kgcoop":
            return Preset({**_PEER_WARMUP, "optim.lr": 0.002, "optim.batch_size": 128,
                           "optim.epochs": 100, "prompt.n_ctx_text": 4, "loss.kg_weight": 8.0,
                           "data.template": "kgcoop"},
                          {"prompt.depth_text": 1, "prompt.depth_vision": 0, **_NO_REG})
        case "maple":  # coupled prompts: vision prompts are projections of the text ones
            return Preset({**_PEER_WARMUP, "optim.lr": 0.0026 if transfer else 0.0035,
                           "optim.batch_size": 4, "optim.epochs": 2 if transfer else 5,
                           "prompt.n_ctx_text": 2, "prompt.depth_text": 3 if transfer else 9},
                          {"prompt.n_ctx_vision": 0, "prompt.depth_vision": 0, **_NO_REG})
        case "ivlp":  # PromptSRC's IVLP baseline: deep prompts, cross-entropy only
            return Preset({**_PEER_WARMUP, "optim.lr": 0.0025, "optim.batch_size": 4,
                           "optim.epochs": 20, "prompt.n_ctx_text": 4, "prompt.n_ctx_vision": 4,
                           "prompt.depth_text": 9, "prompt.depth_vision": 9}, dict(_NO_REG))
        case "promptsrc":
            depth = 3 if transfer else 9
            if few_shot:
                mean, std = _SRC_FEW_SHOT_GPA.get(dataset, (30.0, 30.0))
            else:
                mean, std = (6.0, 10.0) if transfer else (15.0, 1.0)
            return Preset({**_PEER_WARMUP, "optim.lr": 0.0025, "optim.batch_size": 4,
                           "optim.epochs": 50 if few_shot else 20, "prompt.n_ctx_text": 4,
                           "prompt.n_ctx_vision": 4, "prompt.depth_text": depth,
                           "prompt.depth_vision": depth, "loss.text_l1": 25.0, "loss.image_l1": 10.0,
                           "loss.logit_kl": 1.0, "optim.gpa_mean": mean, "optim.gpa_std": std,
                           "data.template": "ensemble"}, dict(_NO_REG))
        case "prompt_ot" | "pointwise":  # method.md: E = 40, evaluated after epoch S = 30
            reference = {"optim.lr": 0.005, "optim.batch_size": 4, "optim.epochs": 40,
                         "optim.stop_epoch": 30, "optim.warmup_epochs": 1, "optim.warmup_lr": 1e-4,
                         "prompt.n_ctx_text": 4, "prompt.n_ctx_vision": 4, "prompt.depth_text": 12,
                         "prompt.depth_vision": 12, "loss.lambda_ot": 10.0, "loss.eta": 0.5}
            regularizer = "ot" if method == "prompt_ot" else "pointwise"
            return Preset(reference, {"loss.regularizer": regularizer})
    raise ConfigError(f"config key 'method': {method!r} is not one of {', '.join(METHODS)}")


#: Named reference text features: "default" = "a photo of a {}.", "dataset" = the per-dataset
#: template, "kgcoop" = KgCoOp's per-dataset table, "ensemble" = PromptSRC's 60 templates averaged.
TEMPLATE_CHOICES = ("default", "dataset", "kgcoop", "ensemble")

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
    "loss.kg_weight",
    "loss.text_l1",
    "loss.image_l1",
    "loss.logit_kl",
    "optim.gpa_mean",
    "optim.gpa_std",
)
_POSITIVE = ("world_size", "optim.batch_size", "optim.eval_batch_size", "optim.log_every", "loss.tau", "loss.n_iters")

#: Keys that do not change a trial's results: left out of the trial id.
_NOT_IN_ID = ("device", "world_size", "data.root", "data.num_workers", "model.cache_dir", "output", "optim.log_every")


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


def _dotted_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(tree, key, value)
    return tree


def resolve_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrialConfig:
    """Build a :class:`TrialConfig`: defaults < method reference < ``base`` < method-defining keys
    < ``overrides``."""
    overrides = overrides or {}
    given = _merge(dict(base), overrides)
    method = given.get("method", TrialConfig.method)
    if method not in METHODS:
        raise ConfigError(f"config key 'method': {method!r} is not one of {', '.join(METHODS)}")
    data = given.get("data") if isinstance(given.get("data"), Mapping) else {}
    preset = method_preset(method, data.get("protocol", DataConfig.protocol), data.get("dataset", ""))
    reference = dict(preset.reference)
    optim = given.get("optim") if isinstance(given.get("optim"), Mapping) else {}
    if "epochs" in optim and "stop_epoch" not in optim:
        # a schedule of another length: evaluate after all of it, unless told otherwise
        reference.pop("optim.stop_epoch", None)
    tree = _merge(_merge(_merge(_dotted_tree(reference), dict(base)), _dotted_tree(preset.defines)),
                  overrides)
    cfg = build_dataclass(TrialConfig, tree)
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
    if cfg.optim.batch_size % cfg.world_size:
        raise ConfigError(
            f"config key 'optim.batch_size': {cfg.optim.batch_size} is not divisible by the "
            f"{cfg.world_size} workers (world_size, the sweep's resources.num_workers); each worker "
            "takes an equal slice of every global batch"
        )
    if cfg.loss.solver != "emd" and cfg.loss.regularizer == "ot" and cfg.loss.epsilon <= 0:
        raise ConfigError(f"config key 'loss.epsilon': solver {cfg.loss.solver} needs epsilon > 0")
    if cfg.prompt.depth_text == 0 and cfg.method != "zeroshot":
        raise ConfigError("config key 'prompt.depth_text': must be >= 1 (the text prompt is learned)")
    template = cfg.data.template
    if template not in TEMPLATE_CHOICES and "{}" not in template:
        raise ConfigError(
            f"config key 'data.template': {template!r} is neither one of {', '.join(TEMPLATE_CHOICES)} "
            "nor a template with {}"
        )
    if cfg.method == "cocoop" and (cfg.loss.kg_weight or cfg.loss.text_l1 or cfg.loss.logit_kl):
        raise ConfigError("config keys 'loss.kg_weight', 'loss.text_l1', 'loss.logit_kl': cocoop's class "
                          "text features depend on each image; these terms need fixed ones")
    o = cfg.optim
    if o.stop_epoch is not None and not (0 <= o.stop_epoch <= o.epochs):
        raise ConfigError(
            f"config key 'optim.stop_epoch': {o.stop_epoch} is outside 0..optim.epochs ({o.epochs}); "
            "null trains every epoch of the schedule"
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


def epochs_trained(cfg: TrialConfig) -> int:
    """S: the epochs a trial trains (of its E-epoch schedule) before it is evaluated."""
    o = cfg.optim
    return o.epochs if o.stop_epoch is None else o.stop_epoch


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
