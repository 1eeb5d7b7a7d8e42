"""Writing what became of a trial: the one sequence that `rayot train` and a sweep's trial share.

A trained trial's prompts are saved before its result rows: a ``done`` row promises saved
prompts, so a later sweep never counts as done a trial whose prompts are lost. A failed trial gets
one ``failed`` row (never over a ``done`` one) and its traceback in
``<checkpoints>/logs/<trial id>.log``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from rayot import checkpoints, results
from rayot import config as C
from rayot.errors import RayotError
from rayot.train.rows import failure_row
from rayot.train.trial import TrialOutcome

log = logging.getLogger(__name__)


def error_text(exc: BaseException | str) -> str:
    """An error as a result row and a sweep's tables say it: a RayotError's message alone."""
    if isinstance(exc, str) or isinstance(exc, RayotError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def log_name(cfg: C.TrialConfig) -> str:
    """Where a failed trial's traceback goes: ``<checkpoints>/logs/<trial id>.log``."""
    return f"{cfg.output.checkpoints.rstrip('/')}/logs/{C.trial_id(cfg)}.log"


def write_outcome(cfg: C.TrialConfig, outcome: TrialOutcome, rows: Sequence[Mapping[str, Any]], *,
                  sweep: str | None = None) -> tuple[str, str]:
    """Write a trained trial: its prompts, then its result ``rows``; returns both paths (rows,
    prompts). When the storage refuses either, the trial is recorded as failed (best effort) and
    one RayotError says what was refused and whether the failure stands recorded."""
    tid = C.trial_id(cfg)
    try:
        saved = checkpoints.save_checkpoint(cfg.output.checkpoints, results.prompt_checkpoint_name(tid), cfg,
                                            outcome.prompt_state)
    except Exception as exc:  # noqa: BLE001 - storage refused the prompts: the trial failed
        raise _refused(cfg, f"saving its prompts to {cfg.output.checkpoints}", exc, sweep) from exc
    try:
        return results.write_trial_rows(cfg.output.results, tid, rows), saved
    except Exception as exc:  # noqa: BLE001 - storage refused the result: a retry cannot help
        raise _refused(cfg, f"writing its result to {cfg.output.results}", exc, sweep) from exc


def _refused(cfg: C.TrialConfig, what: str, exc: BaseException, sweep: str | None) -> RayotError:
    problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    error = RayotError(f"trial {C.trial_id(cfg)}: {what} failed ({problem})")
    error.__cause__ = exc  # the log's traceback goes on to the storage's own error
    recorded = _write_failure_row(cfg, error, sweep)
    if recorded:
        _write_log(cfg, error)
    return RayotError(f"{error}; {'recorded as failed, not done' if recorded else 'no result written'}")


def record_failure(cfg: C.TrialConfig, exc: BaseException | str, sweep: str | None = None) -> str | None:
    """Record a failed trial: its row (with the error) and its traceback; returns the log's path.

    A trial already ``done`` keeps its result (a failure never replaces one). Recording is
    attempted once: if the storage refuses it, the problem is logged and ``None`` returned, and
    nothing is retried, so a broken storage cannot multiply a trial's attempts.
    """
    return _write_log(cfg, exc) if _write_failure_row(cfg, exc, sweep) else None


def _write_failure_row(cfg: C.TrialConfig, exc: BaseException | str, sweep: str | None) -> bool:
    tid = C.trial_id(cfg)
    try:
        results.write_failure_rows(cfg.output.results, tid, [failure_row(cfg, error_text(exc), sweep=sweep)])
        return True
    except Exception as write_error:  # noqa: BLE001 - a failure to record must not fail again
        log.error("trial %s failed (%s) and its failure could not be recorded: %s", tid, error_text(exc), write_error)
        return False


def _write_log(cfg: C.TrialConfig, exc: BaseException | str) -> str | None:
    tid = C.trial_id(cfg)
    text = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else exc + "\n"
    try:
        return results.write_file(cfg.output.checkpoints, f"logs/{tid}.log", text.encode())
    except Exception as write_error:  # noqa: BLE001 - a failure to record must not fail again
        log.error("trial %s failed (%s) and its log could not be written: %s", tid, error_text(exc), write_error)
        return None
