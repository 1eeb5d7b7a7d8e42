"""Typed, frozen configuration trees: build dataclasses from plain mappings, checking every key.

The trial configuration (:mod:`rayot.config`), a method's settings (:mod:`rayot.methods`) and a
sweep's sections are frozen dataclasses built with :func:`build_dataclass`: an unknown key, a
wrong type or a value outside what a field allows fails with the dotted path of the key.
A field may say more than its type in its metadata (:func:`setting`): its allowed values, its
lower bound, what it means. This module knows nothing of trials, methods or Ray.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from rayot.errors import ConfigError


def setting(default: Any, *, choices: tuple[Any, ...] | None = None, minimum: float | None = None,
            positive: bool = False, help: str = "", id_key: str | None = None,
            check: Callable[[Any, str], None] | None = None, test_value: Any = None,
            inert: str | None = None, tiny: Any = None) -> Any:
    """A dataclass field with what :func:`check_fields` enforces and ``rayot methods`` shows.

    ``choices``: the allowed values; ``minimum``: the least allowed value (``>=``); ``positive``:
    ``> 0``; ``help``: one line on what it does. ``id_key``: the dotted key under which the value
    enters a trial id, where it differs from the field's own key (a built-in method keeps the ids
    its trials had before it owned its settings). ``check(value, key)``: any other rule on the value
    alone, raising ConfigError naming ``key``.

    For the conformance kit (:mod:`rayot.testing`, ``settings_take_effect``): ``test_value``, the
    other value to try where neither ``choices`` nor a range gives one (a free-form string, say);
    ``inert``, why the setting's effect cannot show in the kit's tiny trial (it is then not tried);
    ``tiny``, the value in that trial and in rayot's tests' tiny trials where the default does not
    fit a few-epoch trial (a schedule point at epoch 15, say).
    """
    meta = {"choices": choices, "minimum": minimum, "positive": positive, "help": help, "id_key": id_key,
            "check": check, "test_value": test_value, "inert": inert,
            "tiny": tiny}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a setting's default must be immutable (a tuple, not a list)")
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats.

    A non-finite number (YAML's ``.nan``, ``.inf``) is refused whatever the annotation: no setting
    means anything by it, a range check lets NaN through (every comparison with it is false), and
    a plan holding it is not valid JSON.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key {key!r}: {value!r} is not one of "
                              f"{', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
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
    raise TypeError(f"unsupported annotation {tp} for {key}")  # a bug in the dataclass, not bad input


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls(**values)`` with every key and value checked (nested dataclasses built in turn), then
    each field's metadata (:func:`check_fields`). Errors name ``prefix + key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"config key {prefix + str(unknown[0])!r}: unknown key (known: {known})")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, tp, prefix + name)
    obj = cls(**kwargs)
    check_fields(obj, prefix)
    return obj


def check_fields(obj: Any, prefix: str = "") -> None:
    """The ``choices``, ``minimum``, ``positive`` and ``check`` of each field of ``obj`` (:func:`setting`)."""
    for f in dataclasses.fields(obj):
        value, meta, key = getattr(obj, f.name), f.metadata, prefix + f.name
        if value is None:
            continue
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, choices))}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ConfigError(f"config key {key!r}: must be >= {meta['minimum']:g}, got {value!r}")
        if meta.get("positive") and value <= 0:
            raise ConfigError(f"config key {key!r}: must be > 0, got {value!r}")
        if meta.get("check") is not None:
            meta["check"](value, key)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree["a"]["b"] = value`` for ``key = "a.b"``, creating sections on the way."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r}: is a value, not a section")
        node = child
    node[parts[-1]] = value


def dotted_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(tree, key, value)
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (a value replaces a section and vice versa)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: every leaf under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists (JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    return obj
