"""A search reads only what it promises, and its plan stays small (docs/search.md §1, §7).

A search space holds training settings only (the searched method's, ``optim.*``, ``prompt.*``):
every other family of keys is refused at load, in one line, before an image is read, and the dry
run's "scored on validation images only" comes from that same check. ``num_samples`` is bounded;
a large sweep's dry run prints a summary unless ``--full``. Test rows that search samples wrote
before the allowlist (validation switched off) are named by the dry run and left out of the report.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

from rayot import config as C
from rayot.data import read_dataset
from rayot.errors import ConfigError
from rayot.results import read_results, write_trial_rows
from rayot.search_records import read_search_records, write_search_record
from rayot.sweep import search as S
from rayot.sweep.spec import MAX_SAMPLES, Search, expand, load_spec
from rayot.train import run_trial
from rayot.train.rows import EvalResult, result_rows

BASE = {"method": "prompt_ot", "data": {"dataset": "synthetic", "root": "data", "protocol": "base2novel"},
        "model": {"name": "rayot-tiny", "pretrained": None}, "optim": {"epochs": 8}}
SEARCH = {"space": {"prompt_ot.lambda_ot": {"loguniform": [0.1, 100]}}, "num_samples": 4, "seed": 3}


def _write(tmp_path: Path, search: dict | None = None, grid: dict | None = None, **top) -> Path:
    raw = {"name": "s", "base": BASE, "grid": grid or {"seed": [1, 2]}, "search": search or SEARCH,
           "storage": {"results": str(tmp_path / "results"), "checkpoints": str(tmp_path / "checkpoints")}, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _sweep(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``rayot sweep ARGS`` in this process: (exit status, stdout, stderr)."""
    from rayot.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(sys, "argv", ["rayot", "sweep", *args])
    with pytest.raises(SystemExit) as end:
        main()
    out = capsys.readouterr()
    return end.value.code or 0, out.out, out.err


# ----------------------------------------------------------------------------- item: the allowlist

#: one key of every family a search may not vary, and what its one line says
REFUSED = [
    ("validation.enabled", {"choice": [False]}, "the search sets validation.* itself"),
    ("validation.holdout", {"choice": [0.0, 0.25]}, "the search sets validation.* itself"),
    ("validation.holdout_seed", {"randint": [0, 9]}, "the search sets validation.* itself"),
    ("data.targets", {"choice": [["dtd"]]}, "data.* chooses which images a trial reads"),
    ("data.shots", {"choice": [1, 2]}, "is a grid axis"),
    ("data.root", {"choice": ["a", "b"]}, "does not change a trial's results"),
    ("model.name", {"choice": ["ViT-B-32"]}, "model.* chooses the model"),
    ("model.checkpoint", {"choice": ["x.pt"]}, "model.* chooses the model"),
    ("output.results", {"choice": ["elsewhere"]}, "does not change a trial's results"),
    ("seed", {"randint": [1, 9]}, "is a grid axis"),
    ("method", {"choice": ["coop"]}, "is a grid axis"),
    ("device", {"choice": ["cpu"]}, "does not change a trial's results"),
    ("world_size", {"choice": [1, 2]}, "does not change a trial's results"),
    ("precision", {"choice": ["bf16"]}, "precision is not a training setting"),
    ("evaluation.split", {"choice": ["test"]}, "evaluation.split is not a training setting"),
    ("eval.targets", {"choice": ["all"]}, "eval.targets is not a training setting"),
    ("coop.n_ctx", {"choice": [4, 8]}, "coop.* are another method's settings"),
]


@pytest.mark.parametrize("key, sampler, why", REFUSED, ids=[k for k, _, _ in REFUSED])
def test_a_space_key_outside_training_settings_is_refused_in_one_line_before_any_image(
        tmp_path, monkeypatch, capsys, key, sampler, why):
    reads = tmp_path / "reads.log"
    monkeypatch.setenv("RAYOT_TEST_IMAGE_READ_LOG", str(reads))
    space = {"prompt_ot.lambda_ot": {"loguniform": [0.1, 100]}, key: sampler}
    path = _write(tmp_path, {**SEARCH, "space": space})
    code, out, err = _sweep(monkeypatch, capsys, str(path), "--dry-run")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    assert f"sweep spec {path}: search.space.{key}: " in err and why in err, err
    assert not reads.exists() or reads.read_text() == ""  # nothing was read
    assert not (tmp_path / "results").exists()  # nor written


def test_every_allowed_family_loads_and_the_plan_says_why_it_is_validation_only(tmp_path, monkeypatch, capsys):
    space = {"prompt_ot.lambda_ot": {"loguniform": [0.1, 100]}, "optim.lr": {"loguniform": [0.001, 0.01]},
             "prompt.n_ctx_text": {"choice": [2, 4]}}
    path = _write(tmp_path, {**SEARCH, "space": space})
    code, out, err = _sweep(monkeypatch, capsys, str(path), "--dry-run")
    assert code == 0, err
    assert ("scored on validation images only (the space varies training settings only: optim.lr, "
            "prompt.n_ctx_text, prompt_ot.lambda_ot)") in out  # as the file lists them (yaml sorts)


def test_the_plans_claim_is_the_load_check_itself(tmp_path):
    """A space that got past load (built by hand) makes the plan refuse, not claim."""
    spec = load_spec(_write(tmp_path))
    cells = S.preview(S.cells_of(spec, expand(spec)), spec.search)
    assert S.validation_only(spec.search, "prompt_ot", cells[0].trials) is None
    from rayot.sweep.view import search_plan

    assert any("scored on validation images only" in str(p) for p in search_plan(spec.search, cells, {}))
    sneaked = Search(**{**spec.search.__dict__, "space": {"validation.enabled": {"choice": [False]}}})
    assert "search.space.validation.enabled: the search sets validation.* itself" in \
        S.validation_only(sneaked, "prompt_ot", cells[0].trials)
    with pytest.raises(ConfigError, match="would not be scored on validation images only"):
        search_plan(sneaked, cells, {})
    tested = C.replace(cells[0].trials[0], **{"validation.enabled": False})
    assert "evaluated on base, novel" in S.validation_only(spec.search, "prompt_ot", [tested])


def test_no_sample_can_switch_validation_off(tmp_path):
    """Even a space that got past the checks: the search's own validation keys come last."""
    spec = load_spec(_write(tmp_path))
    sneaked = Search(**{**spec.search.__dict__, "space": {"validation.enabled": {"choice": [False]},
                                                         "validation.holdout": {"choice": [0.0]}}})
    (cell,) = S.preview(S.cells_of(spec, expand(spec)), sneaked)
    assert cell.trials and all(t.validation.enabled and t.validation.holdout == 0.5 for t in cell.trials)


def test_an_allowed_search_trial_reads_no_test_image(synth_root, tmp_path, monkeypatch):
    """The positive side: a search trial of a space of every allowed family, trained and scored,
    reads validation and training images only."""
    log = tmp_path / "reads.log"
    monkeypatch.setenv("RAYOT_TEST_IMAGE_READ_LOG", str(log))
    base = C.parse_overrides([*tiny_overrides(synth_root, tmp_path, **{"optim.epochs": 1}), "method=prompt_ot"])
    space = {"prompt_ot.lambda_ot": {"choice": [3.0]}, "optim.lr": {"choice": [0.002]},
             "prompt.n_ctx_text": {"choice": [2]}}
    raw = {"name": "s", "base": base, "grid": {"seed": [1]}, "search": {"space": space, "num_samples": 1}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "sweep.yaml")
    (cell,) = S.preview(S.cells_of(spec, expand(spec)), spec.search)
    (trial,) = cell.trials
    assert trial.settings.lambda_ot == 3.0 and trial.optim.lr == 0.002 and trial.prompt.n_ctx_text == 2
    outcome = run_trial(trial)
    assert {e.split for e in outcome.evals} == {"val_seen", "val_held_out"}
    splits = read_dataset("synthetic", synth_root)
    test = {str((splits.image_root / it.impath).resolve()) for it in splits.test}
    reads = set(log.read_text().split())
    assert reads and not reads & test


# ----------------------------------------------------------------------------- item: plan limits


@pytest.mark.parametrize("search, count", [
    ({**SEARCH, "num_samples": 1_000_000_000}, "1,000,000,000"),
    ({**SEARCH, "num_samples": 100, "space": {"prompt_ot.lambda_ot": {"grid_search": list(range(1, 202))}}},
     "20,100"),
    ({**SEARCH, "algorithm": "grid", "num_samples": 1,
      "space": {"prompt_ot.lambda_ot": {"choice": list(range(1, 102))}, "optim.lr": {"choice": list(range(1, 101))}}},
     "10,100"),
])
def test_a_search_of_too_many_samples_is_refused_at_once(tmp_path, search, count):
    with pytest.raises(ConfigError) as err:
        load_spec(_write(tmp_path, search))
    assert f"draws {count} samples per search, above the limit of {MAX_SAMPLES:,}" in str(err.value)


def test_the_limit_is_the_samples_drawn(tmp_path):
    spec = load_spec(_write(tmp_path, {**SEARCH, "num_samples": MAX_SAMPLES // 2,
                                       "space": {"prompt_ot.lambda_ot": {"grid_search": [1, 10]}}}))
    assert spec.search.sample_count == MAX_SAMPLES  # at the limit: accepted


def test_too_many_search_trials_over_the_cells_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "MAX_SEARCH_TRIALS", 7)
    spec = load_spec(_write(tmp_path, grid={"seed": [1], "dataset": ["synthetic", "dtd"]}))
    with pytest.raises(ConfigError, match="2 cells x 4 samples is 8 search trials, above the limit of 7"):
        S.cells_of(spec, expand(spec))


def test_a_large_dry_run_prints_a_summary_and_the_full_table_on_request(tmp_path, monkeypatch, capsys):
    from rayot.sweep.view import PLAN_ROWS

    base = {**BASE, "method": "zeroshot", "optim": {"epochs": 0}}
    raw = {"name": "big", "base": base, "grid": {"seed": list(range(1, PLAN_ROWS + 2))},
           "storage": {"results": str(tmp_path / "results")}}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = _sweep(monkeypatch, capsys, str(tmp_path / "big.yaml"), "--dry-run")
    assert code == 0, err
    assert f"{PLAN_ROWS + 1} trials, above {PLAN_ROWS}: a row per dataset, protocol and method; --full lists" in out
    assert len(out.splitlines()) < 20
    ids = [C.trial_id(t) for t in expand(load_spec(tmp_path / "big.yaml"))]
    assert not any(tid in out for tid in ids)
    code, full, _ = _sweep(monkeypatch, capsys, str(tmp_path / "big.yaml"), "--dry-run", "--full")
    assert code == 0 and all(tid in full for tid in ids)


# ----------------------------------------------------------------------------- item: legacy rows


def _legacy_world(tmp_path: Path) -> tuple[Path, str, str]:
    """Results as a search with validation switched off left them: a sample's test rows (the id
    and rows of an ordinary trial of its settings) and the search's record naming it; beside them
    an ordinary grid trial. Returns (results, the sample's trial id, the grid trial's id)."""
    loc = tmp_path / "results"
    spec = load_spec(_write(tmp_path))
    grid = expand(spec)[0]
    sample = C.replace(grid, **{"prompt_ot.lambda_ot": 4.4321, "validation.enabled": False})
    for cfg, (base, novel) in ((grid, (70.0, 60.0)), (sample, (99.0, 99.0))):
        evals = [EvalResult("base2novel", "synthetic", split, int(acc * 10), 1000, 12)
                 for split, acc in (("base", base), ("novel", novel))]
        write_trial_rows(str(loc), C.trial_id(cfg), result_rows(cfg, evals, train_seconds=1.0, sweep="s"))
    record = {"search_id": "0123456789ab", "sweep": "s", "method": "prompt_ot", "dataset": "synthetic",
              "protocol": "base2novel", "shots": 16, "cell": C.to_json(grid), "space": json.dumps(SEARCH["space"]),
              "algorithm": "random", "scheduler": json.dumps({"type": "none"}), "metric": "accuracy",
              "search_seed": 3, "epochs": 8, "retrain_trial_ids": "[]", "sample": 0,
              "trial_id": C.trial_id(sample), "params": json.dumps({"prompt_ot.lambda_ot": 4.4321}),
              "status": "done", "score": None, "epochs_trained": 8, "stopped_at": None, "chosen": False}
    write_search_record(str(loc), "0123456789ab", [record])
    return loc, C.trial_id(sample), C.trial_id(grid)


def test_the_dry_run_names_test_rows_written_by_a_search_sample(tmp_path, monkeypatch, capsys):
    loc, sample, _ = _legacy_world(tmp_path)
    code, out, err = _sweep(monkeypatch, capsys, str(tmp_path / "sweep.yaml"), "--dry-run")
    assert code == 0, err
    warned = [line for line in out.splitlines() if line.startswith("warning:") and "search" in line]
    assert warned == [f"warning: results file {loc}/{sample}.parquet holds test rows written by sample 0 of search "
                      "0123456789ab (sweep s), which ran with validation switched off (refused since); no result "
                      "of this plan, rayot report leaves it out"]


def test_the_report_leaves_out_and_names_test_rows_written_by_a_search_sample(tmp_path, caplog):
    from rayot.report import build_report

    loc, sample, grid = _legacy_world(tmp_path)
    rows = read_results([str(loc)])
    with caplog.at_level(logging.WARNING, logger="rayot.report.build"):
        report = build_report(rows, searches=read_search_records([str(loc)]), figures=False)
    named = [r.getMessage() for r in caplog.records if sample in r.getMessage()]
    assert len(named) == 1 and f"({sample}.parquet)" in named[0] and "sample 0 of search 0123456789ab" in named[0]
    assert report.n_trials == 1  # the grid trial only
    values = {c.value for t in report.tables for row in t.rows for c in row.cells}
    assert 99.0 not in values and 70.0 in values  # the sample's base accuracy is in no table
    # without the record that names it, the same rows are an ordinary trial's: kept
    assert build_report(rows, figures=False).n_trials == 2
