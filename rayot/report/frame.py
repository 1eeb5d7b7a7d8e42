"""From result rows to a clean frame: finished rows only, deduplicated, each row tagged with its variant.

A *variant* is a method plus the settings that differ between its trials. Settings are the
setting columns of the results schema (λ, regularizer, modality, solver, ε, shots, backbone, ...)
and any key of the resolved configuration JSON (flattened with dots, e.g. ``optim.lr``) that
varies between trials of the same method, protocol, dataset and seed. Keys that only follow from
those (``data.dataset``, ``seed``, a method's ``lambda_ot`` setting mirroring the ``lambda_ot`` column) or that
cannot change a result (paths, device, worker counts) are not settings. Trials of different
variants are never pooled.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from rayot.errors import RayotError
from rayot.metrics import VALIDATION_SPLIT
from rayot.report.names import (
    MethodFacts,
    describe_methods,
    format_value,
    searched_label,
    sort_methods,
    variant_label,
)
from rayot.results import COLUMNS

log = logging.getLogger(__name__)

#: Result columns that are settings of a trial.
SETTING_COLUMNS: tuple[str, ...] = (
    "lambda_ot",
    "regularizer",
    "modality",
    "solver",
    "epsilon",
    "shots",
    "backbone",
    "pretrained",
    "epochs",
)
#: What identifies one measurement apart from the settings.
IDENTITY: tuple[str, ...] = ("method", "protocol", "dataset", "seed")
#: Config sections and keys that never distinguish variants (where things go, how fast it runs;
#: ``validation.``: an ordinary trial's id leaves that section out, so it cannot tell trials apart).
IGNORED_PREFIXES: tuple[str, ...] = ("output.", "validation.")
IGNORED_KEYS: frozenset[str] = frozenset(
    {
        "seed",
        "device",
        "sweep",
        "name",
        "tags",
        "notes",
        "num_workers",
        "workers",
        "root",
        "path",
        "dir",
        "results",
        "checkpoints",
        "storage",
        "verbose",
        "log_every",
        "eval_batch_size",
        "progress",
    }
)
IGNORED_SUFFIXES: tuple[str, ...] = ("_dir", "_path", "_root", "_uri", "_workers")
_MISSING = "<unset>"


@dataclass(frozen=True)
class Variant:
    """A method and the values of the settings that distinguish it from its siblings; ``about``:
    what the report shows of the method (as its rows describe it)."""

    method: str
    settings: tuple[tuple[str, object], ...]
    about: MethodFacts = field(kw_only=True, compare=False)

    @property
    def label(self) -> str:
        return variant_label(self.about, self.settings)

    @property
    def key(self) -> str:
        """A file-name-safe identifier: ``<method>__<setting>=<value>``."""
        parts = [self.method] + [f"{k}={format_value(v)}" for k, v in self.settings]
        return "__".join(parts).replace("/", "-").replace(" ", "")


@dataclass(frozen=True)
class SearchedVariant:
    """A method whose ``keys`` (dotted configuration keys) a hyper-parameter search chose on
    validation, per dataset: a row of its own beside the method's variants, its cells the test
    results of the trials that retrained each dataset's chosen setting. ``settings``: what tells it
    from another search of the same method and keys (another value of a grid axis, algorithm, ...).
    """

    method: str
    protocol: str
    keys: tuple[str, ...]
    settings: tuple[tuple[str, object], ...] = ()
    about: MethodFacts = field(kw_only=True, compare=False)

    @property
    def label(self) -> str:
        return searched_label(self.about, self.keys, self.settings)

    @property
    def key(self) -> str:
        """A file-name-safe identifier: ``<method>__<setting>=<value>__<key>=chosen``."""
        parts = [self.method] + [f"{k}={format_value(v)}" for k, v in self.settings]
        parts += [f"{k}=chosen" for k in self.keys]
        return "__".join(parts).replace("/", "-").replace(" ", "")


def flatten(obj: object, prefix: str = "") -> dict[str, object]:
    """Nested dicts to dotted keys; lists become their JSON text so that values stay hashable."""
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if isinstance(obj, list):
        return {key: json.dumps(obj, sort_keys=True)}
    return {key: obj}


def _ignored(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return (
        key.startswith(IGNORED_PREFIXES)
        or last in IGNORED_KEYS
        or last.endswith(IGNORED_SUFFIXES)
    )


def search_trial_ids(df: pd.DataFrame) -> set[str]:
    """The trials of hyper-parameter searches among result rows: a trial with a validation split
    (:data:`rayot.metrics.VALIDATION_SPLIT`; a test evaluation's is ``base``, ``novel`` or ``all``),
    or whose configuration enables ``validation`` (a failed search trial's row has no split). Their
    rows are validation scores: no table, average or figure of test results may use them (the
    searches' own table reads the search records instead).
    """
    if df.empty:
        return set()
    by_split = df["split"].isin(list(VALIDATION_SPLIT.values()))
    by_config = df["config"].map(lambda c: isinstance(c, str) and _config(c).get("validation.enabled") is True)
    return set(df.loc[by_split | by_config.astype(bool), "trial_id"])


def to_frame(table: pa.Table | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split result rows into (finished rows, failed trials).

    Finished rows are those with ``status == "done"`` and an accuracy, deduplicated on
    (trial_id, eval_dataset, split) keeping the latest. Failed trials: one row per trial with
    trial_id, method, protocol, dataset, seed and error. Neither holds a search trial's rows
    (:func:`search_trial_ids`).
    """
    df = table.to_pandas() if isinstance(table, pa.Table) else table.copy()
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise RayotError(f"results table: missing columns {missing}")
    searched = search_trial_ids(df)
    if searched:
        log.info(
            "leaving out the rows of %d search trials: validation scores, not test results",
            len(searched),
        )
        df = df[~df["trial_id"].isin(searched)]
    failed = df[df["status"] != "done"]
    failed = (
        failed.sort_values("finished_at")
        .drop_duplicates("trial_id", keep="last")[
            ["trial_id", "method", "protocol", "dataset", "seed", "error"]
        ]
        .reset_index(drop=True)
    )
    done = df[df["status"] == "done"]
    no_acc = done["accuracy"].isna()
    if no_acc.any():
        log.warning("ignoring %d finished rows without an accuracy", int(no_acc.sum()))
        done = done[~no_acc]
    done = done.sort_values("finished_at").drop_duplicates(
        ["trial_id", "eval_dataset", "split"], keep="last"
    )
    failed = failed[~failed["trial_id"].isin(set(done["trial_id"]))].reset_index(drop=True)
    return done.reset_index(drop=True), failed


def split_method_specs(items: Iterable[str]) -> list[str]:
    """Comma lists of method specs: ``"a,b:x=10,y=joint"`` gives ``["a", "b:x=10,y=joint"]`` (a
    ``key=value`` joins the spec before it).
    """
    specs: list[str] = []
    for item in items:
        for token in filter(None, (t.strip() for t in item.split(","))):
            if "=" in token and ":" not in token and specs:
                specs[-1] += f",{token}"
            else:
                specs.append(token)
    return specs


def _parse_method_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"m"`` or ``"m:x=10,y=joint"`` -> (method, {key: value})."""
    method, _, rest = spec.partition(":")
    conditions: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise RayotError(f"--methods {spec!r}: expected METHOD or METHOD:key=value[,key=value]")
        conditions[key.strip()] = value.strip()
    return method.strip(), conditions


def _same_setting(value: object, wanted: str) -> bool:
    """A setting against a filter value: numerically when both are numbers ("10" == 10.0)."""
    try:
        return float(format_value(value)) == float(wanted)
    except ValueError:
        return format_value(value) == wanted


def select(
    done: pd.DataFrame,
    failed: pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the rows of the given methods (``name`` or ``name:key=value,...``) and datasets.

    A dataset filter applies to the dataset evaluated, so a cross-dataset table keeps only the
    chosen targets. A filter that matches nothing is an error naming it.
    """
    if methods:
        keep = pd.Series(False, index=done.index)
        keep_failed = pd.Series(False, index=failed.index)
        for spec in methods:
            method, conditions = _parse_method_spec(spec)
            mask = done["method"] == method
            for key, value in conditions.items():
                if key in done.columns:
                    column = done[key]
                else:
                    column = done["config"].map(lambda c, k=key: _config(c).get(k, _MISSING))
                mask &= column.map(lambda x, w=value: _same_setting(x, w))
            if not mask.any():
                known = ", ".join(sort_methods(done["method"].unique(), describe_methods(done))) or "none"
                raise RayotError(f"--methods {spec!r}: no finished trials match (methods: {known})")
            keep |= mask
            keep_failed |= failed["method"] == method
        done, failed = done[keep], failed[keep_failed]
    if datasets:
        wanted = set(datasets)
        unknown = wanted - set(done["eval_dataset"])
        if unknown == wanted:
            raise RayotError(f"--datasets {', '.join(sorted(unknown))}: no finished trials evaluate them")
        for name in sorted(unknown):
            log.warning("--datasets %s: no finished trials evaluate it", name)
        done = done[done["eval_dataset"].isin(wanted)]
        failed = failed[failed["dataset"].isin(wanted)]
    return done.reset_index(drop=True), failed.reset_index(drop=True)


@functools.lru_cache(maxsize=8192)
def _config(text: str) -> dict[str, object]:
    """The flattened config of a row (cached: every row of a trial carries the same text; read-only)."""
    try:
        parsed = json.loads(text) if text else {}
    except json.JSONDecodeError:
        log.warning("a result row has a config that is not JSON; its settings are ignored")
        parsed = {}
    return flatten(parsed) if isinstance(parsed, dict) else {}


def _determined(trials: pd.DataFrame, by: list[str], key: str) -> bool:
    """Whether ``key`` takes a single value in every group of trials sharing ``by``."""
    return bool((trials.groupby(by, dropna=False)[key].nunique(dropna=False) <= 1).all())


def _method_setting_keys(trials: pd.DataFrame, config_keys: Iterable[str]) -> list[str]:
    """The settings that vary between the trials (one row each) of one method."""
    # few-shot tables have shots as their own axis: shots varying there is not a variant
    not_few = trials[trials["protocol"] != "few_shot"]
    keys: list[str] = []
    for col in SETTING_COLUMNS:
        rows = not_few if col == "shots" else trials
        if (rows.groupby("protocol")[col].nunique(dropna=False) > 1).any():
            keys.append(col)
    base = list(IDENTITY) + list(SETTING_COLUMNS)
    candidates = [
        k
        for k in config_keys
        if not _ignored(k)
        and trials[k].nunique(dropna=False) > 1
        and not _determined(trials, base, k)
    ]
    # of several keys that say the same thing keep the one with fewest values, then the shortest
    candidates.sort(key=lambda k: (trials[k].nunique(dropna=False), k.count("."), k))
    kept: list[str] = []
    for key in candidates:
        if not _determined(trials, base + kept, key):
            kept.append(key)
    return keys + kept


def assign_variants(done: pd.DataFrame) -> pd.DataFrame:
    """Add a ``variant`` column (:class:`Variant`) to finished rows."""
    if done.empty:
        return done.assign(variant=pd.Series(dtype=object))
    trials = done.drop_duplicates("trial_id").set_index("trial_id")
    flat = pd.DataFrame(
        [_config(c) for c in trials["config"]], index=trials.index
    )
    flat = flat.astype(object).where(flat.notna(), _MISSING)
    config_keys = [c for c in flat.columns if c not in trials.columns]
    trials = trials.join(flat[config_keys])
    described = describe_methods(done)
    variant_of: dict[str, Variant] = {}
    for method, group in trials.groupby("method"):
        keys = _method_setting_keys(group, config_keys)
        if keys:
            log.debug("method %s: trials differ in %s", method, ", ".join(keys))
        for tid, row in group.iterrows():
            settings = tuple((k, _plain(row[k])) for k in keys)
            variant_of[str(tid)] = Variant(str(method), settings, about=described[str(method)])
    return done.assign(variant=done["trial_id"].map(variant_of))


def _plain(value: object) -> object:
    """NumPy scalars to Python ones so that variants compare and print cleanly."""
    if hasattr(value, "item"):
        return value.item()
    return None if value == _MISSING else value


def variant_sort_key(variant: Variant) -> tuple:
    """Methods in their report order, then by setting values (numbers numerically)."""
    values = tuple(
        (0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, str(v))
        for _, v in variant.settings
    )
    return (*variant.about.rank, values)
