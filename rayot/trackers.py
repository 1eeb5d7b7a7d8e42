"""Experiment tracking: TensorBoard, MLflow and Weights & Biases, local and offline by default.

What every tracker gets, for ``rayot sweep --log`` (Ray Tune callbacks, :mod:`rayot.sweep.tune_callbacks`)
and ``rayot train --log`` (:class:`TrialTracking`, here) alike:

- one run per trial, named by its trial id;
- the resolved trial configuration, flattened to dotted keys (:func:`params`), as parameters;
- the per-epoch metrics :data:`EPOCH_METRICS` and the method's diagnostics (``diag/<name>``,
  :func:`epoch_metrics`) as series over the epoch (1, 2, ...);
- the final accuracies (:func:`final_metrics`: ``base``, ``novel``, ``hm`` for base-to-novel,
  ``acc/<eval dataset>`` otherwise) at step ``optim.epochs``;
- a failed trial is marked failed (MLflow status ``FAILED``, W&B exit code 1, a TensorBoard text
  ``status``) with its error.

Where it goes unless a sweep file's ``tracking:`` section or the environment says otherwise
(:func:`resolve`), next to the results folder (``results/smoke`` -> ``results/``; the current
folder when the results are remote):

- MLflow: the SQLite store ``mlruns/mlflow.db`` (artifacts in ``mlruns/artifacts``), experiment =
  the sweep name; ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` are honoured;
- Weights & Biases: mode ``offline`` (unless ``WANDB_MODE`` or the option says otherwise), runs
  under ``wandb/``, project ``rayot``, group = the sweep name;
- TensorBoard: ``tensorboard/<sweep name>/<trial id>/``.

Nothing is sent anywhere unless a tracking URI or a W&B mode asks for it. The tracker packages
are optional (``pip install -e ".[mlflow]"`` etc.); :func:`check_available` names the command.
This module imports neither Ray nor Typer, and each tracker package only when it is used.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rayot import config as C
from rayot import methods
from rayot.errors import ConfigError
from rayot.metrics import DIAGNOSTIC_PREFIX, VALIDATION_PREFIX, harmonic_mean, validation_scores
from rayot.train import EPOCH_METRICS, TrialHooks

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "wandb")
#: The modules a tracker needs, and the extra that installs them.
MODULES = {"tensorboard": ("tensorboardX",), "mlflow": ("mlflow",), "wandb": ("wandb",)}
#: An SQLite MLflow store also needs these (the full ``mlflow`` package has them).
SQL_MODULES = ("sqlalchemy", "alembic")
WANDB_MODES = ("offline", "online", "disabled")
#: Longest error text given to a tracker (MLflow tags hold 8000 characters).
MAX_ERROR = 4000


@dataclass(frozen=True)
class MLflowOptions:
    tracking_uri: str | None = None  # default: sqlite:///<next to results>/mlruns/mlflow.db
    experiment: str | None = None  # default: the sweep name


@dataclass(frozen=True)
class WandbOptions:
    project: str | None = None  # default: WANDB_PROJECT, else "rayot"
    entity: str | None = None  # default: WANDB_ENTITY, else W&B's own default
    group: str | None = None  # default: the sweep name
    mode: str | None = None  # offline, online or disabled; default: WANDB_MODE, else offline
    dir: str | None = None  # runs go to <dir>/wandb/; default: WANDB_DIR, else next to results


@dataclass(frozen=True)
class TensorBoardOptions:
    dir: str | None = None  # one folder per trial under it; default: <next to results>/tensorboard/<sweep>


OPTIONS: dict[str, type] = {"mlflow": MLflowOptions, "wandb": WandbOptions, "tensorboard": TensorBoardOptions}


@dataclass(frozen=True)
class Tracking:
    """The trackers of a sweep or trial: ``None`` is off."""

    tensorboard: TensorBoardOptions | None = None
    mlflow: MLflowOptions | None = None
    wandb: WandbOptions | None = None

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(t for t in TRACKERS if getattr(self, t) is not None)

    def with_log(self, names: Iterable[str]) -> Tracking:
        """These trackers on as well (``--log``), with their defaults unless already configured."""
        on = {t: getattr(self, t) or OPTIONS[t]() for t in parse_log(names)}
        return replace(self, **on)


def parse_log(names: Iterable[str]) -> tuple[str, ...]:
    """``--log`` values, checked: each one of :data:`TRACKERS` (comma-separated lists too)."""
    out: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name not in TRACKERS:
                raise ConfigError(f"--log {name!r}: unknown tracker (known: {', '.join(TRACKERS)})")
            if name not in out:
                out.append(name)
    return tuple(out)


def parse_tracking(raw: Any, where: str = "tracking") -> Tracking:
    """A ``tracking:`` section: a mapping of tracker names to their options (a tracker named is on).

    ``tracking: {mlflow: {experiment: x}, tensorboard: {}}``; an empty or null section means
    the defaults. An unknown tracker or option is an error naming the key.
    """
    if raw is None:
        return Tracking()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of trackers ({', '.join(TRACKERS)}) to options")
    on = {}
    for name, options in raw.items():
        if name not in OPTIONS:
            raise ConfigError(f"config key '{where}.{name}': unknown tracker (known: {', '.join(TRACKERS)})")
        opts = C.build_dataclass(OPTIONS[name], options or {}, f"{where}.{name}.")
        if name == "wandb" and opts.mode is not None and opts.mode not in WANDB_MODES:
            raise ConfigError(f"config key '{where}.wandb.mode': expected one of {', '.join(WANDB_MODES)}, "
                              f"got {opts.mode!r}")
        on[name] = opts
    return Tracking(**on)


def default_root(results: str) -> Path:
    """The folder that holds the trackers' local stores: the results folder's parent.

    ``results/smoke`` -> ``results``; a remote results location (``s3://...``) -> the current folder.
    """
    if results.startswith("file://"):
        results = results[len("file://"):]
    if "://" in results:
        return Path.cwd()
    return Path(os.path.abspath(results)).parent


def _local(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def resolve(tracking: Tracking, *, results: str, name: str,
            environ: Mapping[str, str] | None = None) -> Tracking:
    """Every option filled in: explicit options, then the environment, then local defaults."""
    env = os.environ if environ is None else environ
    root = default_root(results)
    out: dict[str, Any] = {}
    if tracking.mlflow is not None:
        m = tracking.mlflow
        uri = m.tracking_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        if uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/"):
            uri = f"sqlite:///{_local(uri[len('sqlite:///'):])}"  # relative to where the sweep starts
        out["mlflow"] = MLflowOptions(uri, m.experiment or env.get("MLFLOW_EXPERIMENT_NAME") or name)
    if tracking.wandb is not None:
        w = tracking.wandb
        mode = w.mode or env.get("WANDB_MODE") or "offline"
        out["wandb"] = WandbOptions(
            project=w.project or env.get("WANDB_PROJECT") or "rayot",
            entity=w.entity or env.get("WANDB_ENTITY") or None,
            group=w.group or name,
            mode=mode,
            dir=_local(w.dir or env.get("WANDB_DIR") or str(root)),
        )
    if tracking.tensorboard is not None:
        t = tracking.tensorboard
        out["tensorboard"] = TensorBoardOptions(_local(t.dir or str(root / "tensorboard" / name)))
    return Tracking(**out)


def missing_message(tracker: str, module: str) -> str:
    return (f"--log {tracker}: the Python package {module!r} is not installed; install it with "
            f'pip install -e ".[{tracker}]" (from the rayot folder) or pip install {module}')


def _needed(tracking: Tracking) -> list[tuple[str, str]]:
    needed = [(t, m) for t in tracking.enabled for m in MODULES[t]]
    if tracking.mlflow is not None and (tracking.mlflow.tracking_uri or "").startswith("sqlite:"):
        needed += [("mlflow", m) for m in SQL_MODULES]
    return needed


def check_available(tracking: Tracking) -> None:
    """One :class:`ConfigError` naming the install command when a tracker's package is missing."""
    for tracker, module in _needed(tracking):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(missing_message(tracker, module)) from exc


def prepare(tracking: Tracking) -> None:
    """Create the local folders and the MLflow experiment, so a bad store fails here, in one message.

    Run in the process that starts the sweep, before Ray: only an MLflow tracking URI that the
    user gave is contacted (that is what they asked for).
    """
    check_available(tracking)
    if tracking.tensorboard is not None:
        Path(tracking.tensorboard.dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
    if tracking.wandb is not None:
        Path(tracking.wandb.dir, "wandb").mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
    if tracking.mlflow is not None:
        mlflow_experiment(tracking.mlflow)


def _sqlite_folder(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).parent


def mlflow_experiment(opts: MLflowOptions) -> str:
    """The id of the options' MLflow experiment, created if missing (artifacts next to a local store)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = opts.tracking_uri or ""
    folder = _sqlite_folder(uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(opts.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = (folder / "artifacts").as_uri() if folder is not None else None
        try:
            return client.create_experiment(opts.experiment, artifact_location=artifacts)
        except MlflowException:  # created meanwhile by another sweep
            found = client.get_experiment_by_name(opts.experiment)
            if found is None:
                raise
            return found.experiment_id
    except MlflowException as exc:
        raise ConfigError(f"MLflow tracking URI {uri!r}: {exc.message}") from exc


def where(tracking: Tracking) -> list[str]:
    """One line per tracker: where its runs go and how to look at them."""
    lines = []
    if tracking.mlflow is not None:
        m = tracking.mlflow
        folder = _sqlite_folder(m.tracking_uri or "")
        how = (f"cd {folder} && mlflow ui" if folder is not None and folder.name == "mlruns"
               else f"mlflow ui --backend-store-uri {m.tracking_uri}")
        lines.append(f"mlflow: {m.tracking_uri}, experiment {m.experiment!r} (view: {how})")
    if tracking.wandb is not None:
        w = tracking.wandb
        lines.append(f"wandb: mode {w.mode}, project {w.project!r}, runs in {w.dir}/wandb"
                     + (" (upload later: wandb sync --sync-all)" if w.mode == "offline" else ""))
    if tracking.tensorboard is not None:
        lines.append(f"tensorboard: {tracking.tensorboard.dir} (view: tensorboard --logdir "
                     f"{tracking.tensorboard.dir})")
    return lines


# What is logged ------------------------------------------------------------------------------


def params(cfg: C.TrialConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved trial configuration as parameters: dotted keys, lists as text."""
    flat = C.flatten(cfg)
    return {k: (", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in flat.items()}


def text_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters a tracker that takes numbers, booleans and text only accepts (``None`` as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of an epoch's report that trackers log: :data:`EPOCH_METRICS` and the method's
    diagnostics (``diag/<name>``, rayot.methods)."""
    return {k: float(v) for k, v in result.items()
            if (k in EPOCH_METRICS or k.startswith(DIAGNOSTIC_PREFIX)) and isinstance(v, (int, float))}


def final_step(cfg: C.TrialConfig | Mapping[str, Any]) -> int:
    """The step at which the final accuracies are logged: the schedule's length, 0 when the
    trial's method does not train."""
    tree = C.to_dict(cfg) if isinstance(cfg, C.TrialConfig) else cfg
    return int(tree["optim"]["epochs"]) if methods.get(tree["method"]).trains else 0


def final_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The final accuracies (percent) of a trial's result rows.

    Base-to-novel: ``base``, ``novel`` and ``hm`` (the harmonic mean, the rule of
    :func:`rayot.metrics.harmonic_mean`); any other evaluation: ``acc/<eval dataset>``. A search
    trial's validation scores: ``val/seen``, ``val/held_out`` and ``val/hm``, or ``val/accuracy``,
    the names of its epoch metrics.
    """
    out: dict[str, float] = {}
    validation: dict[str, float] = {}  # accuracy by validation split
    for r in rows:
        if r.get("status", "done") != "done" or r.get("accuracy") is None:
            continue
        if r["split"] in C.VALIDATION_SPLITS:
            validation[r["split"]] = float(r["accuracy"])
        elif r["protocol"] == "base2novel" and r["split"] in ("base", "novel"):
            out[r["split"]] = float(r["accuracy"])
        else:
            out[f"acc/{r['eval_dataset']}"] = float(r["accuracy"])
    if "base" in out and "novel" in out:
        out["hm"] = harmonic_mean(out["base"], out["novel"])
    return out | {VALIDATION_PREFIX + metric: score for metric, score in validation_scores(validation).items()}


def final_metrics_of(location: str, trial_id: str) -> dict[str, float]:
    """:func:`final_metrics` of a trial's result file; empty when it cannot be read."""
    from rayot import results

    try:
        table = results.read_results([f"{location.rstrip('/')}/{trial_id}.parquet"])
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial
        log.warning("trial %s: its final metrics could not be read for the trackers: %s", trial_id, exc)
        return {}
    return final_metrics(table.to_pylist())


def error_text(error: str | None) -> str:
    text = error or "failed"
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


# One trial without Ray: `rayot train --log` ------------------------------------------------------


class TensorBoardRun:
    """One trial's TensorBoard event files (tensorboardX), in ``<dir>/<trial id>/``."""

    def __init__(self, opts: TensorBoardOptions, trial_id: str, values: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(opts.dir or ".", trial_id), flush_secs=30)
        self.params = text_params(values)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def finish(self, final: Mapping[str, float], step: int, error: str | None) -> None:
        if final:
            self.log(step, final)
        self.writer.add_text("status", f"failed: {error_text(error)}" if error is not None else "done",
                             global_step=step)
        from tensorboardX.summary import hparams

        for summary in hparams(self.params, dict(final)):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()


class MLflowRun:
    """One trial's MLflow run, through ``MlflowClient``."""

    def __init__(self, opts: MLflowOptions, trial_id: str, values: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=opts.tracking_uri)
        experiment = mlflow_experiment(opts)
        self.run_id = self.client.create_run(experiment, run_name=trial_id,
                                             tags={"trial_id": trial_id, **tags}).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, final: Mapping[str, float], step: int, error: str | None) -> None:
        if final:
            self.log(step, final)
        if error is not None:
            self.client.set_tag(self.run_id, "error", error_text(error))
        self.client.set_tag(self.run_id, "status", "failed" if error is not None else "done")
        self.client.set_terminated(self.run_id, "FAILED" if error is not None else "FINISHED")


def wandb_init_kwargs(opts: WandbOptions, trial_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``wandb.init`` arguments of a trial's run (also used by the sweep's W&B callback)."""
    return {
        "project": opts.project, "entity": opts.entity, "group": opts.group, "mode": opts.mode,
        "dir": opts.dir, "name": trial_id, "config": dict(values),
        "settings": {"console": "off", "silent": True},
    }


class WandbRun:
    """One trial's Weights & Biases run (offline unless asked otherwise)."""

    def __init__(self, opts: WandbOptions, trial_id: str, values: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(**wandb_init_kwargs(opts, trial_id, values))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, final: Mapping[str, float], step: int, error: str | None) -> None:
        if final:
            self.log(step, final)
        self.run.summary["status"] = "failed" if error is not None else "done"
        if error is not None:
            self.run.summary["error"] = error_text(error)
        self.run.finish(exit_code=1 if error is not None else 0)


class TrialTracking:
    """The trackers of one ``rayot train`` trial: fed each epoch's metrics (:meth:`hooks`), then
    finished.

    ``tracking`` must be resolved (:func:`resolve`). A tracker that fails while logging is
    reported in a warning and dropped; it never fails the trial.
    """

    def __init__(self, tracking: Tracking, cfg: C.TrialConfig) -> None:
        tid = C.trial_id(cfg)
        values = params(cfg)
        self.final_step = final_step(cfg)
        self.runs: dict[str, Any] = {}
        if tracking.tensorboard is not None:
            self.runs["tensorboard"] = TensorBoardRun(tracking.tensorboard, tid, values)
        if tracking.mlflow is not None:
            self.runs["mlflow"] = MLflowRun(tracking.mlflow, tid, values, {"source": "rayot train"})
        if tracking.wandb is not None:
            self.runs["wandb"] = WandbRun(tracking.wandb, tid, values)

    def _each(self, what: str, *args: Any) -> None:
        for name, run in list(self.runs.items()):
            try:
                getattr(run, what)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker must never fail the trial
                log.warning("tracker %s stopped logging: %s", name, exc)
                del self.runs[name]

    def epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Log the metrics of 1-based ``epoch`` (:func:`epoch_metrics` of them)."""
        self._each("log", epoch, epoch_metrics(metrics))

    def hooks(self) -> TrialHooks:
        """Trial hooks (one process) that log every epoch's metrics here."""
        return _LoggingHooks(self)

    def finish(self, final: Mapping[str, float] | None = None, error: str | None = None) -> None:
        self._each("finish", dict(final or {}), self.final_step, error)


class _LoggingHooks(TrialHooks):
    """One process; each epoch's metrics go to the trial's trackers."""

    def __init__(self, tracking: TrialTracking) -> None:
        self.tracking = tracking

    def save_epoch(self, epoch: int, state: dict[str, Any], metrics: dict[str, float]) -> None:
        self.tracking.epoch(epoch + 1, metrics)
