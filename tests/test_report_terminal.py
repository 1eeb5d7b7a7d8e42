"""What the CLI prints: tables that fit an 80-column console (or one block per row), differences
that round to zero without a minus, and a report that renders what it can read."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import rayot_cli
from rich.console import Console
from rich.table import Table
from test_report import _b2n  # a trial's rows as the trainer writes them
from typer.testing import CliRunner

from rayot import methods
from rayot.report import print_report
from rayot.report.cells import number, render_cell
from rayot.report.model import Cell
from rayot.terminal import fit, fits, print_table

#: names a user greps for, none with a space; the descriptions are prose
NAMES = ["promptsrc", "prompt_ot", "kgcoop", "a_rather_long_method_name_of_a_plugin"]
PROSE = "a description of what the method trains, long enough to need more than one line here"


def _shown(table: Table, width: int, wrap: tuple[str, ...] = ()) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    print_table(console, table, wrap=wrap)
    return console.file.getvalue().splitlines()


def _methods_table() -> Table:
    table = Table(title="methods")
    for col in ("name", "shown as", "from", "what"):
        table.add_column(col)
    for name in NAMES:
        table.add_row(name, f"{name.upper()} (ours)", "entry point of rayot-extra 0.1.0", PROSE)
    return table




def _whole(name: str, lines: list[str]) -> bool:
    """Whether ``name`` is on one line, not cut by an ellipsis or split over two."""
    return any(re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", line) for line in lines)


# ------------------------------------------------------------------------------ the helper


def test_a_table_that_fits_is_drawn_as_it_is():
    lines = _shown(_methods_table(), 250)
    assert any(line.startswith("┏") for line in lines)
    for name in NAMES:
        assert any(f"│ {name} " in line for line in lines)
        assert any(PROSE in line for line in lines)  # nothing wrapped


def test_a_table_too_wide_for_80_columns_is_one_block_per_row_with_every_name_whole():
    table = _methods_table()
    assert not fits(table, Console(width=80, file=io.StringIO()))
    lines = _shown(table, 80)
    assert lines[0] == "methods"
    for name in NAMES:
        assert f"name: {name}" in lines and f"  shown as: {name.upper()} (ours)" in lines
    assert f"  what: {PROSE}" in lines  # a block's line is never wrapped, even past 80 columns
    assert not any("…" in line for line in lines)


def test_prose_columns_wrap_between_words_and_names_never():
    lines = _shown(_methods_table(), 160, wrap=("what",))
    assert any(line.startswith("┏") for line in lines) and max(map(len, lines)) <= 160
    for name in NAMES:
        assert any(f"│ {name} " in line for line in lines)
        assert any(f"│ {name.upper()} (ours) " in line for line in lines)
    assert not any(PROSE in line for line in lines)  # wrapped, between words
    words = {w for line in lines for w in re.findall(r"[a-z]+", line)}
    assert set(PROSE.replace(",", "").split()) <= words
    # too narrow even for the prose wrapped: blocks
    assert "name: promptsrc" in _shown(_methods_table(), 60, wrap=("what",))


def test_fit_is_a_renderable_for_callers_that_print_several_parts():
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(fit(_methods_table()), soft_wrap=True)
    assert f"  what: {PROSE}" in console.file.getvalue().splitlines()


# ---------------------------------------------------------------------------- the commands


def test_rayot_methods_at_80_columns_keeps_every_name_whole():
    from rayot.cli import app

    out = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    for name in methods.BUILTINS:
        assert f"name: {name}" in lines, out.output
        assert _whole(methods.get(name).display, lines)
    assert not any("…" in line for line in lines)
    one = CliRunner().invoke(app, ["methods", "promptsrc"], env={"COLUMNS": "80"})
    assert one.exit_code == 0, one.output
    lines = one.output.splitlines()
    for setting in ("text_l1", "image_l1", "logit_kl", "gpa_mean", "gpa_std", "template"):
        assert _whole(setting, lines)
    assert _whole("gpa_mean=45.0,", lines) and not any("…" in line for line in lines)


def test_the_search_summary_at_80_columns_keeps_every_header_and_value_whole(tmp_path: Path):
    from test_report_search import _build, _world

    _world(tmp_path)
    console = Console(width=80, file=io.StringIO(), color_system=None)
    print_report(_build(tmp_path), console)
    lines = console.file.getvalue().splitlines()
    assert "Dataset: DTD" in lines and "  Searched: prompt_ot.lambda_ot" in lines
    assert "  Scheduler: asha (grace_period=1, reduction_factor=2)" in lines
    assert "  Retrain trials tested: 2/2" in lines
    assert "Method: Prompt-OT (λ chosen on validation)" in lines  # the base-to-novel table
    assert not any("…" in line for line in lines if not line.startswith("•"))  # a note may say "…"


# --------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("value", "signed", "shown"), [
    (-0.001, True, "+0.00"), (-0.004999, True, "+0.00"), (0.004, True, "+0.00"), (-0.0, True, "+0.00"),
    (-0.001, False, "0.00"), (-0.005001, True, "\u22120.01"), (1.234, True, "+1.23"), (-1.236, False, "-1.24"),
])
def test_a_value_that_rounds_to_zero_has_no_minus(value: float, signed: bool, shown: str):
    assert number(value, signed) == shown
    assert render_cell(Cell(value, signed=signed), show_std=False) == shown


# ----------------------------------------------------------------------- unreadable results


def _results_with_bad_files(loc: Path) -> dict[str, Path]:
    _b2n(loc, "ivlp", "dtd", 1, 80.0, 70.0)
    truncated = loc / f"{_b2n(loc, 'coop', 'dtd', 1, 78.0, 65.0)}.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    foreign = loc / "notes.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    return {"truncated": truncated, "foreign": foreign}


def test_the_report_leaves_out_an_unreadable_file_with_one_line_and_strict_refuses(tmp_path, monkeypatch,
                                                                                   capsys):
    res = tmp_path / "results"
    bad = _results_with_bad_files(res)
    out = tmp_path / "report"
    code, stdout, stderr = rayot_cli(monkeypatch, capsys, "report", "-r", str(res), "-o", str(out), "--no-figures",
                                  "-f", "md")
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, stderr
    for path, line in zip(sorted(map(str, bad.values())), sorted(warnings), strict=True):
        assert line.startswith(f"warning: results file {path}: not a ") and "runs again" not in line
        assert line.endswith("left out of the report (--strict refuses it)")
    assert "not a rayot result file (none of a result's columns; it has x)" in stderr
    assert "IVLP" in stdout and "IVLP" in (out / "report.md").read_text()

    strict = tmp_path / "strict"
    code, stdout, stderr = rayot_cli(monkeypatch, capsys, "report", "-r", str(res), "-o", str(strict), "--no-figures",
                                  "-f", "md", "--strict")
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: results file ") and str(res) in stderr
    assert not (strict / "report.md").exists()


@pytest.mark.slow  # 6 s: the dry run imports Ray
def test_the_sweep_says_runs_again_only_of_a_file_named_after_one_of_its_trials(tmp_path, monkeypatch, capsys):
    from rayot import config as C
    from rayot.sweep.spec import expand, load_spec

    res = tmp_path / "r"
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {{}}\nstorage: {{results: {res}, checkpoints: {tmp_path}/c}}\n")
    (trial,) = expand(load_spec(path))
    res.mkdir()
    (res / f"{C.trial_id(trial)}.parquet").write_bytes(b"truncated")
    pq.write_table(pa.table({"x": [1]}), res / "notes.parquet")
    code, stdout, stderr = rayot_cli(monkeypatch, capsys, "sweep", str(path), "--dry-run")
    assert code == 0, stderr
    warnings = {line.split()[3]: line for line in stdout.splitlines() if line.startswith("warning: ")}
    assert warnings[str(res / f"{C.trial_id(trial)}.parquet")].endswith("its trial counts as not done and runs again")
    foreign = warnings[str(res / "notes.parquet")]
    assert foreign.endswith("it belongs to no trial of this sweep and is left as it is") and "runs again" not in foreign


def test_log_lines_outside_a_terminal_are_never_wrapped(monkeypatch) -> None:
    # Rich's log handler wraps a message to 80 columns less its time and level, folding a long
    # path mid-word; outside a terminal (CI, a pipe) the CLI logs one plain line per record.
    import logging
    import sys

    from rayot import cli

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        cli._root(version=False, verbose=False)
        path = "/results/" + "a_long_folder_name/" * 6 + "0123456789ab.parquet"
        logging.getLogger("rayot.report.build").warning("results of trial 0123456789ab (%s): left out", path)
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and path in lines[0] and "WARNING" in lines[0]


def test_the_plan_shows_a_settings_column_only_where_settings_differ() -> None:
    from rayot import config as C
    from rayot.sweep.view import TrialState, plan_table

    def states(*overrides: list[str]) -> list[TrialState]:
        cfgs = [C.load_config(None, o) for o in overrides]
        return [TrialState(C.trial_id(c), c) for c in cfgs]

    by_seed = plan_table(states(["seed=1"], ["seed=2"]), "sweep s: 2 trials")
    assert "settings" not in [c.header for c in by_seed.columns]
    assert fits(by_seed, Console(width=80, file=io.StringIO()))  # drawn as a table at 80
    by_lambda = plan_table(states(["prompt_ot.lambda_ot=0"], ["prompt_ot.lambda_ot=10"]), "s")
    assert "settings" in [c.header for c in by_lambda.columns]
