"""One typed configuration for a trial, loaded from YAML with ``key=value`` overrides.

The configuration is a tree of frozen dataclasses: general sections (``data``, ``model``,
``prompt`` (the prompt shapes), ``optim``, ``output``) and top-level keys, and the settings of the
trial's method in a section named after it (``<method>: {<setting>: value}``; override
``<method>.<setting>=value``), typed by the method (:mod:`rayot.methods`). A file may hold the
sections of several methods: only the trial's method's applies (the others are checked), so one
base configuration serves every method of a sweep. :func:`load_config` resolves it in this order,
each layer overriding the one before:

1. the defaults below, and the method's own settings' defaults;
2. the method's reference preset (:meth:`rayot.methods.Method.preset`): its published run's
   schedule, batch size, token counts, depths and settings, per protocol and dataset
   (docs/peers.md, docs/method.md), where the YAML file leaves them unsaid;
3. the YAML file (in a sweep: the sweep's base configuration);
4. the keys that define the method (``defines``: zero-shot trains 0 epochs, a text-context method
   has no vision prompts, ...), so that no base can turn one method into another;
5. ``key=value`` overrides (dotted keys, values parsed as YAML; in a sweep: the grid values),
   which may still change a preset key on purpose.

An unknown key, a wrong type or a value outside its allowed set fails at load time with the
dotted path of the key. The keys that methods' settings replaced (``loss.*``,
``optim.gpa_mean``, ``optim.gpa_std``, ``data.template``) still load, each moved to the method's
section with a warning that names the new spelling, or fail saying it. Derived values (the trial
id, the evaluation targets) come from functions, never from mutating the configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rayot import methods
from rayot.data import protocols as _protocols
from rayot.data.specs import DATASETS
from rayot.errors import ConfigError
from rayot.metrics import VALIDATION_SPLIT
from rayot.typed import (
    build_dataclass,
    dotted_tree,
    flatten_tree,
    merge,
    plain,
    set_dotted,
    setting,
)

log = logging.getLogger(__name__)

#: The built-in methods' names (plug-ins: :func:`rayot.methods.available`).
METHODS = tuple(methods.BUILTINS)
PROTOCOLS = _protocols.PROTOCOLS
CROSS_DATASET_TARGETS = _protocols.CROSS_DATASET_TARGETS
DG_TARGETS = _protocols.DOMAIN_GENERALIZATION_TARGETS
#: Short names of configuration keys, accepted wherever a dotted key is (``key=value`` overrides,
#: ``--set``, a sweep's grid and search space).
ALIASES = {"dataset": "data.dataset", "protocol": "data.protocol", "shots": "data.shots"}
#: What ``device`` may say; whether the machine has it is checked where the trial runs
#: (:func:`rayot.train.resolve_device`).
DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def _known_dataset(name: str, key: str) -> None:
    """A dataset name of the registry (rayot.data.specs): a typo fails at load, not in every trial."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key {key!r}: unknown dataset {name!r} (known: {', '.join(DATASETS)}){hint}")


def _known_datasets(names: tuple[str, ...], key: str) -> None:
    for i, name in enumerate(names):
        _known_dataset(name, f"{key}[{i}]")


def _device(value: str, key: str) -> None:
    if not DEVICE_SYNTAX.fullmatch(value):
        raise ConfigError(f"config key {key!r}: {value!r} is not a device (auto, cpu, cuda, cuda:N or mps)")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("synthetic", check=_known_dataset)
    root: str = "data"
    protocol: str = setting("base2novel", choices=PROTOCOLS)
    shots: int = setting(16, minimum=0)
    #: evaluation targets besides the training dataset; empty = the protocol's own (docs/protocol.md §4)
    targets: tuple[str, ...] = setting((), check=_known_datasets)
    num_workers: int = setting(2, minimum=0)


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
    """The prompt shapes; each method builds its module from those it uses (and may fix some)."""

    n_ctx_text: int = setting(4, minimum=0)
    n_ctx_vision: int = setting(4, minimum=0)
    depth_text: int = setting(12, minimum=0)
    depth_vision: int = setting(12, minimum=0)
    ctx_init: str = "a photo of a"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = setting(0.005, minimum=0)
    momentum: float = 0.9
    weight_decay: float = setting(5e-4, minimum=0)
    warmup_epochs: int = setting(1, minimum=0)
    warmup_lr: float = 1e-4
    epochs: int = setting(20, minimum=0)  # E: the length of the cosine schedule
    #: S: train the first S epochs of the E-epoch schedule, then evaluate (None: all E)
    stop_epoch: int | None = None
    batch_size: int = setting(4, positive=True)
    eval_batch_size: int = setting(100, positive=True)
    log_every: int = setting(10, positive=True)  # steps between loss checks and progress updates


@dataclass(frozen=True)
class ValidationConfig:
    """A search trial (a sweep's ``search:`` section, docs/search.md): trained and scored without
    any test image or novel class.

    Enabled, the trial trains on its few-shot subset less the held-out classes and is evaluated,
    after every epoch and at the end, on the few-shot validation subset only (rayot.data.validation):
    the validation images of the classes it trained on (split ``val_seen``, or ``val`` outside
    base-to-novel) and, for base-to-novel, those of the held-out base classes, which stand in for
    the novel ones (split ``val_held_out``). Disabled (the default), the section is not part of
    the trial id.
    """

    enabled: bool = False
    #: base-to-novel: the fraction of the base classes held out of training as pseudo-novel
    holdout: float = 0.5
    #: which base classes are held out: the same for every trial of a search
    holdout_seed: int = 0


@dataclass(frozen=True)
class OutputConfig:
    results: str = "results"  # local path or s3:// / gs:// / file:// URI
    checkpoints: str = "checkpoints"


@dataclass(frozen=True)
class TrialConfig:
    #: the method: a built-in name, an installed plug-in's name or a dotted path (rayot.methods)
    method: str = methods.DEFAULT
    seed: int = 1
    precision: str = setting("fp32", choices=("fp32", "bf16", "fp16"))
    device: str = setting("auto", check=_device)  # auto | cpu | cuda | cuda:N | mps
    #: data-parallel workers the trial trains on; a sweep sets it from resources.num_workers.
    #: N workers run the one-worker experiment divided up (each takes 1/N of every global batch
    #: of optim.batch_size, of the classes and of the test set), so it is not part of the trial id.
    world_size: int = setting(1, positive=True)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: a search trial's validation (off for an ordinary trial, evaluated on the test splits)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    #: the method's settings (its ``Settings`` dataclass); in YAML, the section named after it
    settings: Any = None


#: The top-level keys of the general configuration (everything else is a method's section).
GENERAL_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialConfig) if f.name != "settings")
#: Keys that do not change a trial's results: left out of the trial id.
NOT_IN_ID = ("device", "world_size", "data.root", "data.num_workers", "model.cache_dir", "output", "optim.log_every")
#: Keys that methods' settings replaced: the old key -> the setting's name in the method's section
#: (``loss`` as a whole: each of its keys keeps its name).
LEGACY_KEYS: dict[str, str] = {"loss": "", "optim.gpa_mean": "gpa_mean", "optim.gpa_std": "gpa_std",
                               "data.template": "template"}
_warned: set[str] = set()


# ----------------------------------------------------------------------------- loading


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping key written twice in one YAML mapping."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        where = (f"lines {first.line + 1} and {second.line + 1}" if first.line != second.line
                 else f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}")
        super().__init__(problem=f"key {key!r} is written twice ({where})", problem_mark=second)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error: PyYAML
    keeps the last value without a word, and a sweep or configuration would silently lose one.
    Keys that a merge (``<<: *anchor``) brings in may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where (line, column). Its own text spans
    several lines and quotes the source."""
    if isinstance(exc, DuplicateKeyError):
        return f"{exc.problem}; YAML would keep only the last, so keep one"
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if problem is None:
        return " ".join(str(exc).split())
    out = f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
    context, at = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and at is not None:
        out += f" ({context} at line {at.line + 1}, column {at.column + 1})"
    elif context:
        out += f" ({context})"
    return out


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML by :class:`StrictLoader` (safe; no key written twice)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def canonical_key(key: str) -> str:
    """The dotted key of a configuration key or its short name (``shots`` -> ``data.shots``)."""
    return ALIASES.get(key, key)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=0.01", "seed=2"]`` → a nested dict; values are parsed as YAML. A key may be
    a short name (``shots=4`` is ``data.shots=4``), as in a sweep's grid; the two spellings of one
    key in one command line are refused, not one silently dropped."""
    tree: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: its value: {yaml_problem(exc)}") from exc
        dotted = canonical_key(key)
        if spelled.setdefault(dotted, key) != key:
            raise ConfigError(f"override {item!r}: {spelled[dotted]!r} and {key!r} are the same key ({dotted}); "
                              "give it once")
        set_dotted(tree, dotted, value)
    return tree


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping, naming the file in every error (one line, with the line and column)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: not found")
    try:
        data = load_yaml(path.read_text())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: {yaml_problem(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return data


def _method_of(tree: Mapping[str, Any]) -> methods.Method:
    ref = tree.get("method", methods.DEFAULT)
    if isinstance(ref, Mapping):
        raise ConfigError("config key 'method': expected the method's name; its settings go in a section "
                          f"named after it (for example {methods.DEFAULT}: {{...}}), not under 'method'")
    return methods.get(ref)


def _translate_legacy(tree: Mapping[str, Any], method: methods.Method, *, strict: bool) -> dict[str, Any]:
    """``tree`` with the keys that methods' settings replaced moved into ``method``'s section.

    ``strict`` (what a user wrote): a key the method has no setting for is a ConfigError saying
    the new spelling. Otherwise (an already resolved configuration of an earlier version, whose
    every trial held every such key): such a key is dropped.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in tree.items()}
    fields = {f.name for f in dataclasses.fields(method.Settings)}
    moved: dict[str, Any] = {}
    for old, new in LEGACY_KEYS.items():
        section, _, key = old.partition(".")
        holder = out if not key else out.get(section)
        if not isinstance(holder, dict) or (key or section) not in holder:
            continue
        value = holder.pop(key or section)
        items = value.items() if not key and isinstance(value, Mapping) else [(new, value)]
        for name, v in items:
            where = f"{old}.{name}" if not key else old
            if name in fields:
                moved[name] = v
                if strict and where not in _warned:
                    _warned.add(where)
                    log.warning("config key %r is now %r: a method's settings live in a section named "
                                "after it", where, f"{method.name}.{name}")
            elif strict:
                own = ", ".join(sorted(fields)) or "none"
                raise ConfigError(f"config key {where!r}: a method's settings now live in a section named "
                                  f"after it ('{method.name}.{name}'), and method {method.name!r} has no "
                                  f"setting {name!r} (its settings: {own})")
        if key and not holder:
            out.pop(section)
    if moved:
        section = out.get(method.name)
        out[method.name] = {**moved, **(dict(section) if isinstance(section, Mapping) else {})}
    return out


def _split(tree: Mapping[str, Any], method: methods.Method) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the general keys of ``tree``, ``method``'s section); every other section is checked to be a
    known method's and ignored."""
    general, own = {}, {}
    for key, value in tree.items():
        if key in GENERAL_KEYS:
            general[key] = value
        elif key == method.name:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r}: expected the settings of method {key} (a mapping), "
                                  f"got {value!r}")
            own = dict(value)
        else:
            other = methods.known(key)
            if other is None:
                raise ConfigError(f"config key {key!r}: unknown key (known: {', '.join(sorted(GENERAL_KEYS))}; "
                                  "or a method's settings, in a section named after the method)")
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r}: expected the settings of method {key} (a mapping)")
            build_dataclass(other.Settings, value, f"{key}.")  # checked, not used by this trial
    return general, own


def resolve_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrialConfig:
    """Build a :class:`TrialConfig`: defaults < method preset < ``base`` < method-defining keys
    < ``overrides``."""
    overrides = overrides or {}
    method = _method_of(merge(dict(base), overrides))
    base = _translate_legacy(base, method, strict=True)
    overrides = _translate_legacy(overrides, method, strict=True)
    given = merge(base, overrides)
    data = given.get("data") if isinstance(given.get("data"), Mapping) else {}
    shots = data.get("shots", DataConfig.shots)
    preset = method.preset(data.get("protocol", DataConfig.protocol), data.get("dataset", ""),
                           shots if isinstance(shots, int) and not isinstance(shots, bool) else DataConfig.shots)
    reference = dict(preset.reference)
    optim = given.get("optim") if isinstance(given.get("optim"), Mapping) else {}
    if "epochs" in optim and "stop_epoch" not in optim:
        # a schedule of another length: evaluate after all of it, unless told otherwise
        reference.pop("optim.stop_epoch", None)
    general_base, own_base = _split(base, method)
    general_over, own_over = _split(overrides, method)
    tree = merge(merge(merge(dotted_tree(reference), general_base), dotted_tree(preset.defines)), general_over)
    own = merge(merge(dotted_tree(preset.settings), own_base), own_over)
    return _build(tree, method, own)


def _build(tree: Mapping[str, Any], method: methods.Method, own: Mapping[str, Any]) -> TrialConfig:
    if "settings" in tree:
        raise ConfigError(f"config key 'settings': unknown key (a method's settings go in a section named "
                          f"after it: {method.name}: {{...}})")
    cfg = build_dataclass(TrialConfig, tree)
    settings = build_dataclass(method.Settings, own, f"{method.name}.")
    cfg = dataclasses.replace(cfg, settings=settings)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrialConfig:
    """Load a trial configuration from YAML (optional) plus ``key=value`` overrides."""
    base = read_yaml(path) if path is not None else {}
    return resolve_config(base, parse_overrides(overrides))


def validate(cfg: TrialConfig) -> None:
    """The rules across keys; each key's own type and range were checked when it was built."""
    if cfg.optim.batch_size % cfg.world_size:
        raise ConfigError(
            f"config key 'optim.batch_size': {cfg.optim.batch_size} is not divisible by the "
            f"{cfg.world_size} workers (world_size, the sweep's resources.num_workers); each worker "
            "takes an equal slice of every global batch"
        )
    o = cfg.optim
    if o.stop_epoch is not None and not (0 <= o.stop_epoch <= o.epochs):
        raise ConfigError(
            f"config key 'optim.stop_epoch': {o.stop_epoch} is outside 0..optim.epochs ({o.epochs}); "
            "null trains every epoch of the schedule"
        )
    v = cfg.validation
    if not 0 <= v.holdout < 1:
        raise ConfigError(f"config key 'validation.holdout': {v.holdout} is outside [0, 1): the fraction of "
                          "the base classes held out of a search trial's training as pseudo-novel")
    if cfg.model.checkpoint and cfg.model.checkpoint.startswith("rayot:"):
        from rayot.train.runtime import resolve_weights_path

        resolve_weights_path(cfg.model.checkpoint)  # an asset name that leads out of the assets
    method_of(cfg).check(cfg)


# ----------------------------------------------------------------------------- derived values


def method_of(cfg: TrialConfig) -> methods.Method:
    """The trial's method (:mod:`rayot.methods`)."""
    return methods.get(cfg.method)


def to_dict(cfg: TrialConfig) -> dict[str, Any]:
    """The configuration as plain nested dicts and lists (JSON-ready); the method's settings under
    its name."""
    tree = {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name != "settings"}
    own = plain(cfg.settings) if cfg.settings is not None else {}
    if own:
        tree[method_of(cfg).name] = own
    return tree


def flatten(cfg: TrialConfig | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.005, "<method>.<setting>": value, ...}``: every leaf under its dotted key."""
    return flatten_tree(to_dict(cfg) if isinstance(cfg, TrialConfig) else cfg, prefix)


def to_json(cfg: TrialConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def id_fields(cfg: TrialConfig) -> dict[str, Any]:
    """What the trial id hashes: every general setting that can change the results, the method's
    name and its settings as it says they enter the id (:meth:`rayot.methods.Method.id_fields`)."""
    method = method_of(cfg)
    general = {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name != "settings"}
    flat = {
        k: v
        for k, v in flatten_tree(general).items()
        if not any(k == skip or k.startswith(skip + ".") for skip in NOT_IN_ID)
    }
    if not cfg.validation.enabled:  # an ordinary trial: its id is that of earlier versions
        flat = {k: v for k, v in flat.items() if not k.startswith("validation.")}
    flat["method"] = method.name
    flat.update(method.id_fields(cfg.settings))
    return flat


def trial_id(cfg: TrialConfig) -> str:
    """A stable 12-hex-digit hash of every setting that can change the trial's results."""
    blob = json.dumps(id_fields(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def eval_targets(cfg: TrialConfig) -> list[tuple[str, str, str]]:
    """The evaluations of a trial: ``(protocol, eval_dataset, split)`` per docs/protocol.md §4.

    ``transfer`` is cross-dataset and domain generalization at once: one imagenet-trained model
    evaluated on every target, each row labelled with the protocol whose table it belongs to.
    """
    d = cfg.data
    if cfg.validation.enabled:
        return [(d.protocol, d.dataset, split) for split in validation_splits(cfg)]
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


#: The splits of a search trial's rows (never those of a test evaluation).
VALIDATION_SPLITS: tuple[str, ...] = tuple(VALIDATION_SPLIT.values())


def validation_splits(cfg: TrialConfig) -> tuple[str, ...]:
    """What a search trial is scored on: the validation images of the classes it trained on and,
    for base-to-novel with held-out classes, those of the held-out ones; ``val`` (every class)
    for the other protocols."""
    if cfg.data.protocol == "base2novel":
        return ("val_seen", "val_held_out") if cfg.validation.holdout > 0 else ("val_seen",)
    return ("val",)


def epochs_trained(cfg: TrialConfig) -> int:
    """S: the epochs a trial trains (of its E-epoch schedule) before it is evaluated."""
    o = cfg.optim
    return o.epochs if o.stop_epoch is None else o.stop_epoch


def train_subsample(cfg: TrialConfig) -> str:
    """Which classes the training subset holds: the base half for base-to-novel, else all."""
    return "base" if cfg.data.protocol == "base2novel" else "all"


def from_dict(tree: Mapping[str, Any]) -> TrialConfig:
    """Rebuild an already resolved configuration (e.g. from a checkpoint's JSON): no preset
    applied. A configuration of an earlier version (``loss.*``, ...) loads too."""
    method = _method_of(tree)
    general, own = _split(_translate_legacy(tree, method, strict=False), method)
    return _build(general, method, own)


def replace(cfg: TrialConfig, **flat_updates: Any) -> TrialConfig:
    """A copy with dotted-key updates (``replace(cfg, **{"optim.epochs": 0})``), re-validated.

    No preset is applied: the copy differs from ``cfg`` in exactly the given keys (a new method
    starts from its settings' defaults).
    """
    updates = dotted_tree(flat_updates)
    method = _method_of(merge(to_dict(cfg), updates))
    return from_dict(merge(to_dict(cfg), _translate_legacy(updates, method, strict=True)))
