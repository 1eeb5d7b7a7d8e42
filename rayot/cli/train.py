"""`rayot train CONFIG.yaml [key=value ...]`: one trial, one process, no Ray."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def train(
    config: Path = typer.Argument(..., help="Trial configuration (YAML)."),
    overrides: list[str] = typer.Argument(
        None, help="Overrides as dotted key=value, e.g. seed=2 or METHOD.SETTING=VALUE (a method's "
        "settings under its name; rayot methods NAME lists them)."),
    log_to: list[str] = typer.Option(
        None, "--log", help="Log the trial to a tracker: tensorboard, mlflow or wandb (repeatable). Local "
        "files and W&B offline unless MLFLOW_TRACKING_URI / WANDB_MODE say otherwise.",
    ),
    plan_only: bool = typer.Option(
        False, "--plan", help="Print what the trial would do (id, configuration, rate per epoch, "
        "epochs trained, evaluations) as one JSON object, and exit without training.",
    ),
) -> None:
    """Train and evaluate one trial; write its result rows (Parquet) and prompt checkpoint."""
    from rayot import config as C
    from rayot import results
    from rayot import trackers as T
    from rayot.checkpoints import check_init_from
    from rayot.cli._common import ensure_synthetic
    from rayot.errors import ConfigError, RayotError
    from rayot.train import resolve_device, run_trial
    from rayot.train.record import write_outcome
    from rayot.train.rows import result_rows

    cfg = C.load_config(config, overrides or [])
    if plan_only:
        import json

        from rayot.train import plan

        typer.echo(json.dumps(plan(cfg), indent=2))
        return
    if cfg.world_size != 1:
        raise ConfigError(f"config key 'world_size': rayot train runs one process, got {cfg.world_size} "
                          "(a sweep trains on several workers: resources.num_workers)")
    device = resolve_device(cfg.device)  # a device this machine lacks: one line, before any work
    track = T.resolve(T.Tracking().with_log(log_to or []), results=cfg.output.results, name="rayot-train")
    T.check_available(track)  # a tracker's missing package: one line, before anything is written
    for location, what in ((cfg.output.results, "results"), (cfg.output.checkpoints, "checkpoint")):
        results.check_writable(location, what)  # as rayot sweep: before the model loads, not after training
    check_init_from(cfg)  # the prompts to start from, read before the model loads
    if cfg.data.dataset == "synthetic":
        ensure_synthetic([cfg.data.root])
    tid = C.trial_id(cfg)
    T.prepare(track)  # a missing package or a bad store: one message, before the model loads
    console = Console()
    console.print(
        f"trial [bold]{tid}[/]: {cfg.method} on {cfg.data.dataset} ({cfg.data.protocol}), "
        f"seed {cfg.seed}, {cfg.model.name}/{cfg.model.checkpoint or cfg.model.pretrained}, {device}"
    )
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  ce {task.fields[ce]:.4f}  reg {task.fields[reg]:.4f}"),
        TimeElapsedColumn(),
    )
    bar = Progress(*columns, console=console, transient=False)
    task = None

    def on_progress(p) -> None:
        nonlocal task
        if task is None:  # shown once training starts, not while the model loads
            bar.start()
            task = bar.add_task("train", total=p.steps, epoch="-", loss=0.0, ce=0.0, reg=0.0)
        bar.update(task, completed=p.step, total=p.steps, epoch=f"{p.epoch + 1}/{p.epochs}",
                   loss=p.loss, ce=p.ce, reg=p.reg)

    trackers = T.TrialTracking(track, cfg)
    try:
        outcome = run_trial(cfg, device=device, progress=on_progress, hooks=trackers.hooks())
    except BaseException as exc:
        trackers.finish(error=str(exc) if isinstance(exc, RayotError) else f"{type(exc).__name__}: {exc}")
        raise
    finally:
        bar.stop()
    rows = result_rows(cfg, outcome.evals, train_seconds=outcome.train_seconds, history=outcome.history)
    trackers.finish(T.final_metrics(rows))
    path, ckpt = write_outcome(cfg, outcome, rows)
    for r in outcome.evals:
        console.print(f"{r.protocol:>22} {r.eval_dataset:>16} {r.split:>6}: {r.accuracy:6.2f}% of {r.n_test}")
    console.print(f"results: {path}\ncheckpoint: {ckpt}")
    for line in T.where(track):
        console.print(f"tracking: {line}", highlight=False, soft_wrap=True)

