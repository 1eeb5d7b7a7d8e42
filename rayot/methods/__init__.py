"""The registry of methods: every built-in, and a researcher's own without a fork.

A configuration names its method by

- a built-in name (the table :data:`BUILTINS`, each a module of this package);
- the name of a plug-in installed as a Python entry point of the group ``rayot.methods``
  (``[project.entry-points."rayot.methods"] plot = "rayot_plot:PLOT"`` in its pyproject.toml),
  found the way pytest finds its plug-ins;
- a dotted path ``package.module:Class``, as torchtune's ``_component_`` does.

Nothing is registered by the side effect of an import. A missing, broken or misdeclared plug-in
is one :class:`~rayot.errors.ConfigError` naming it. :func:`get` returns the method's (stateless)
instance; :func:`available` lists every method that can be named without a dotted path.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rayot.errors import ConfigError, ModelError, RayotError
from rayot.methods.base import (
    DIAGNOSTIC_PREFIX,
    Batch,
    Method,
    NoSettings,
    Objective,
    Preset,
    References,
    StepHooks,
    class_rows,
    cross_entropy,
)
from rayot.methods.family import DeepPromptMethod, ModuleMethod, deep_prompt_shapes
from rayot.model.adapter import encode_image_prompted, encode_text_tokens
from rayot.model.loading import LoadedCLIP
from rayot.model.prompts import (
    FrozenCLIPPrompts,
    PromptedCLIP,
    PromptOutput,
    read_reference_tensors,
)
from rayot.typed import setting

if TYPE_CHECKING:  # served by __getattr__ below, imported when first asked for
    from rayot.checkpoints import from_reference, load_reference_file
    from rayot.config import PromptConfig, TrialConfig
    from rayot.transport import compute_dtype, no_autocast

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rayot.methods"

#: Built-in methods: name -> "module:class", in the order reports list them.
BUILTINS: dict[str, str] = {
    "zeroshot": "rayot.methods.zeroshot:ZeroShot",
    "coop": "rayot.methods.coop:CoOp",
    "cocoop": "rayot.methods.cocoop:CoCoOp",
    "kgcoop": "rayot.methods.kgcoop:KgCoOp",
    "maple": "rayot.methods.maple:MaPLe",
    "promptsrc": "rayot.methods.promptsrc:PromptSRC",
    "ivlp": "rayot.methods.ivlp:IVLP",
    "pointwise": "rayot.methods.pointwise:PointWise",
    "prompt_ot": "rayot.methods.prompt_ot:PromptOT",
}

#: The method of a configuration that names none: the one rayot is named after.
DEFAULT = "prompt_ot"

#: The keys every trial id held before methods owned their settings, at their defaults then.
_LEGACY_ID_DEFAULTS: Mapping[str, Any] = {
    "data.template": "default", "loss.lambda_ot": 10.0, "loss.regularizer": "ot", "loss.eta": 0.5,
    "loss.modality": "joint", "loss.solver": "emd", "loss.epsilon": 0.05, "loss.tau": 1.0,
    "loss.n_iters": 100, "loss.kg_weight": 0.0, "loss.text_l1": 0.0, "loss.image_l1": 0.0,
    "loss.logit_kl": 0.0, "optim.gpa_mean": 0.0, "optim.gpa_std": 0.0,
}
#: What a method without a regularizer of that kind held in those keys.
_NO_REGULARIZER_ID: Mapping[str, Any] = {"loss.lambda_ot": 0.0, "loss.regularizer": "none"}
#: The one table of legacy trial ids: what each built-in's trial ids held besides its settings
#: before methods owned them, so that its trials keep their ids. Its settings replace these entries
#: under their ``id_key`` (:meth:`Method.id_fields`); a plug-in, or a subclass of a built-in, has none.
LEGACY_IDS: dict[str, Mapping[str, Any]] = {name: {**_LEGACY_ID_DEFAULTS, **own} for name, own in {
    "zeroshot": _NO_REGULARIZER_ID,
    "coop": _NO_REGULARIZER_ID,
    "cocoop": _NO_REGULARIZER_ID,
    "kgcoop": _NO_REGULARIZER_ID,
    "maple": _NO_REGULARIZER_ID,
    "promptsrc": _NO_REGULARIZER_ID,
    "ivlp": _NO_REGULARIZER_ID,
    "pointwise": {"loss.regularizer": "pointwise"},
    "prompt_ot": {},  # every legacy key is a setting of its own
}.items()}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_loaded: dict[str, Method[Any]] = {}  # by every reference it was asked by, and by its name


def get(ref: str) -> Method[Any]:
    """The method a configuration names: a built-in name, an entry-point name or a dotted path
    ``package.module:Class``. ConfigError naming the reference when it cannot be found, imported
    or is not a proper method."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"config key 'method': expected a method name, got {ref!r}")
    if ref in _loaded:
        return _loaded[ref]
    if ref in BUILTINS:
        method = _load(BUILTINS[ref], f"built-in method {ref!r}", "built-in", ref)
    elif _DOTTED.match(ref):
        method = _load(ref, f"method {ref!r}", f"dotted path {ref}", ref)
    else:
        points = _entry_points()
        if ref not in points:
            raise ConfigError(_unknown(ref, points))
        point = points[ref]
        dist = _dist_name(point)
        method = _load(point.value, f"method plug-in {ref!r} (entry point {point.value!r} of {dist})",
                       f"entry point of {dist}", ref)
    if method.name != ref and ref in BUILTINS | _entry_points():
        raise ConfigError(f"method {ref!r}: the class it names declares name = {method.name!r}; "
                          "an installed method's entry-point name must be its name")
    clash = _loaded.get(method.name)
    if clash is None and method.name != ref and method.name in BUILTINS | _entry_points():
        clash = get(method.name)  # a dotted path to a class called as an installed method is
    if clash is not None and type(clash) is not type(method):
        raise ConfigError(f"method {ref!r} is called {method.name!r}, the name of another method "
                          f"({clash.origin}); give it a name of its own")
    method = clash or method  # one instance per method, however it was named
    _loaded[ref] = _loaded[method.name] = method
    return method


def available() -> list[Method[Any]]:
    """Every built-in and every installed plug-in (entry point), loaded, in report order. A plug-in
    that cannot be loaded raises its ConfigError."""
    methods = [get(name) for name in BUILTINS]
    methods += [get(name) for name in plugin_names()]
    return sorted(methods, key=lambda m: (m.order, m.name))


def plugin_names() -> list[str]:
    """The names of the installed plug-ins (entry points of :data:`ENTRY_POINT_GROUP`), not loaded."""
    return sorted(set(_entry_points()) - set(BUILTINS))


def known(name: str) -> Method[Any] | None:
    """The method called ``name`` if it is built in, installed, or was loaded by its dotted path
    in this process; ``None`` otherwise (never raises: for reports, which show unknown names as
    they are)."""
    if name in _loaded:
        return _loaded[name]
    if name in BUILTINS or name in _entry_points():
        try:
            return get(name)
        except ConfigError as exc:
            log.debug("method %s: %s", name, exc)
    return None


def canonical(ref: str) -> str | None:
    """The registry's name of the method that a data file (a checkpoint, a results file) names,
    found by comparing text: never imports anything, so a file cannot run code by naming a module.

    ``ref`` may be a built-in's or an installed plug-in's name, what earlier files recorded for
    them (a built-in's ``module:Class`` path, an entry point's value), or a name or dotted path of
    a method this process has already loaded (the user's own configuration named it). ``None``
    when it is none of these: a method that is not installed here.
    """
    if not isinstance(ref, str) or not ref:
        return None
    if ref in _loaded:
        return _loaded[ref].name
    if ref in BUILTINS:
        return ref
    points = _entry_points()
    if ref in points:
        return ref
    for name, target in BUILTINS.items():
        if ref == target:
            return name
    for name, point in points.items():
        if ref == point.value:
            return name
    return None


def display_name(name: str) -> str:
    """A method's display name; an unknown method as it is spelled."""
    method = known(name)
    return method.display if method is not None else name


def legacy_ids(method: Method[Any]) -> Mapping[str, Any]:
    """The entries of :data:`LEGACY_IDS` that ``method``'s trial ids hold: its row if it is the
    built-in class of its name (however it was loaded), none otherwise."""
    cls = type(method)
    if BUILTINS.get(method.name) != f"{cls.__module__}:{cls.__qualname__}":
        return {}
    return LEGACY_IDS[method.name]


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _dist_name(point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an installed package"


def _unknown(ref: str, points: Mapping[str, importlib.metadata.EntryPoint]) -> str:
    plugins = ", ".join(sorted(set(points) - set(BUILTINS))) or "none installed"
    return (f"config key 'method': {ref!r} is not a method (built-in: {', '.join(BUILTINS)}; "
            f"plug-ins: {plugins}; or a dotted path 'package.module:Class')")


def _load(target: str, what: str, origin: str, ref: str) -> Method[Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import the plug-in is its problem
        raise ConfigError(f"{what}: importing module {module_name!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    method = _instance(obj, what)
    _check(method, what)
    method.origin, method.ref = origin, ref
    return method


def _instance(obj: object, what: str) -> Method[Any]:
    if inspect.isclass(obj) and issubclass(obj, Method):
        try:
            return obj()
        except Exception as exc:  # noqa: BLE001 - a constructor that fails is the plug-in's problem
            raise ConfigError(f"{what}: {obj.__name__}() failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Method):
        return obj
    raise ConfigError(f"{what}: {obj!r} is not a rayot.methods.Method subclass or instance")


def _check(method: Method[Any], what: str) -> None:
    """A misdeclared method is refused here, naming what is wrong."""
    if not isinstance(method.name, str) or not _NAME.match(method.name):
        raise ConfigError(f"{what}: name = {method.name!r} must be a lowercase identifier ([a-z][a-z0-9_]*)")
    if not method.display:
        raise ConfigError(f"{what}: display (the name shown in reports) is empty")
    settings = method.Settings
    if not (dataclasses.is_dataclass(settings) and isinstance(settings, type)):
        raise ConfigError(f"{what}: Settings must be a dataclass, got {settings!r}")
    if not settings.__dataclass_params__.frozen:  # type: ignore[attr-defined]  # (private to dataclasses)
        raise ConfigError(f"{what}: Settings must be a frozen dataclass (@dataclass(frozen=True))")
    for f in dataclasses.fields(settings):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{what}: setting {f.name!r} has no default")
    if method.trains and type(method).build is Method.build:
        raise ConfigError(f"{what}: it trains but does not override build() (how its model is made)")
    if method.reference_format is not None and (type(method).export_reference is Method.export_reference
                                                or type(method).import_reference is Method.import_reference):
        raise ConfigError(f"{what}: it declares a reference_format but does not override export_reference() "
                          "and import_reference()")


#: Names served on first use: rayot.config (and rayot.checkpoints, through it) imports this
#: registry, and rayot.transport imports POT, which importing the registry need not pay for.
_LAZY = {"PromptConfig": "rayot.config", "TrialConfig": "rayot.config", "from_reference": "rayot.checkpoints",
         "load_reference_file": "rayot.checkpoints", "compute_dtype": "rayot.transport",
         "no_autocast": "rayot.transport"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


#: Everything a method of one's own needs (docs/methods.md), and the registry.
__all__ = [
    # the registry
    "BUILTINS",
    "DEFAULT",
    "ENTRY_POINT_GROUP",
    "LEGACY_IDS",
    "available",
    "canonical",
    "display_name",
    "get",
    "known",
    "legacy_ids",
    "plugin_names",
    # the contract (rayot.methods.base) and the configuration a method sees
    "DIAGNOSTIC_PREFIX",
    "PromptConfig",
    "TrialConfig",
    "Batch",
    "Method",
    "NoSettings",
    "Objective",
    "Preset",
    "References",
    "StepHooks",
    "class_rows",
    "cross_entropy",
    "setting",
    # the model around the frozen CLIP
    "FrozenCLIPPrompts",
    "LoadedCLIP",
    "PromptOutput",
    "PromptedCLIP",
    "encode_image_prompted",
    "encode_text_tokens",
    "read_reference_tensors",
    # reusing a built-in's model
    "DeepPromptMethod",
    "ModuleMethod",
    "deep_prompt_shapes",
    # errors, numerics and reference checkpoints
    "ConfigError",
    "ModelError",
    "RayotError",
    "compute_dtype",
    "from_reference",
    "load_reference_file",
    "no_autocast",
]
