"""`rayot report` and hyper-parameter searches: search trials' validation rows stay out of every
table of test results; a row per searched method holds the test results of the trials that
retrained the chosen setting; a table and a figure show the searches themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console
from test_report import _row, _table  # the report tests' lookups of a table and a row
from typer.testing import CliRunner

from rayot import config as C
from rayot.errors import RayotError
from rayot.report import build_report, harmonic_mean, print_report, write_report
from rayot.report import figures as F
from rayot.report.frame import search_trial_ids
from rayot.report.model import Report
from rayot.report.search import group_searches, read_searches
from rayot.report.to_html import to_html
from rayot.report.to_latex import to_latex
from rayot.report.to_markdown import to_markdown
from rayot.results import read_results, write_failure_rows, write_trial_rows
from rayot.search_records import SEARCH_SCHEMA, read_search_records, write_search_record
from rayot.train.rows import EvalResult, failure_row, result_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEARCHED = "Prompt-OT (λ chosen on validation)"
KEY = "prompt_ot.lambda_ot"
EPOCHS = 5
#: the ordinary test trials: (method, λ) -> dataset -> (base, novel) of seed 1 (seed 2: +1, -1)
ORDINARY = {
    ("ivlp", None): {"dtd": (80.0, 60.0), "eurosat": (90.0, 50.0)},
    ("prompt_ot", 10.0): {"dtd": (79.0, 66.0), "eurosat": (88.0, 58.0)},
}
#: what each dataset's search chose, and its retrain trials' test accuracies per seed
CHOSEN = {"dtd": 3.7, "eurosat": 0.52}
RETRAIN = {"dtd": {1: (81.0, 68.0), 2: (82.5, 69.5)}, "eurosat": {1: (89.0, 61.0), 2: (90.0, 60.0)}}


def _cfg(loc: Path, method: str, dataset: str, seed: int, lam: float | None = None,
         validation: bool = False, extra: tuple[str, ...] = ()) -> C.TrialConfig:
    overrides = [f"method={method}", f"data.dataset={dataset}", "data.protocol=base2novel", f"seed={seed}",
                 f"optim.epochs={EPOCHS}", "optim.stop_epoch=null", f"output.results={loc}", *extra]
    if lam is not None:
        overrides.append(f"{KEY}={lam}")
    if validation:
        overrides.append("validation.enabled=true")
    return C.load_config(None, overrides)


def _test_trial(loc: Path, cfg: C.TrialConfig, base: float, novel: float) -> str:
    evals = [EvalResult("base2novel", cfg.data.dataset, split, int(acc * 10), 1000, 10)
             for split, acc in (("base", base), ("novel", novel))]
    write_trial_rows(str(loc), C.trial_id(cfg), result_rows(cfg, evals, train_seconds=1.0, sweep="s"))
    return C.trial_id(cfg)


def _search(loc: Path, dataset: str, samples: list[dict], retrain: list[str], *, search_id: str | None = None,
            cell_extra: tuple[str, ...] = (), metric: str = "hm") -> str:
    """A prompt-OT search on ``dataset``: its search trials' validation rows (wild accuracies, which
    no table may show) and its record. ``samples``: lam, status, score, epochs_trained, stopped_at,
    chosen."""
    search_id = search_id or f"search-{dataset}"
    rows = []
    for i, s in enumerate(samples):
        cfg = _cfg(loc, "prompt_ot", dataset, 1, s["lam"], validation=True, extra=cell_extra)
        tid = C.trial_id(cfg)
        if s["status"] == "done":
            evals = [EvalResult("base2novel", dataset, split, n, 100, 5) for split, n in (("val_seen", 99), ("val_held_out", 1))]
            history = [{"epoch": 1, "loss": 1.0, "diag/ot_offdiag_mass": 0.5}]
            write_trial_rows(str(loc), tid, result_rows(cfg, evals, train_seconds=1.0, sweep="s", history=history,
                                                        stopped_at=s.get("stopped_at")))
        else:
            write_failure_rows(str(loc), tid, [failure_row(cfg, "search trial failed", sweep="s")])
        rows.append({
            "search_id": search_id, "sweep": "s", "method": "prompt_ot", "dataset": dataset,
            "protocol": "base2novel", "shots": 16,
            "cell": C.to_json(_cfg(loc, "prompt_ot", dataset, 1, extra=cell_extra)),
            "space": json.dumps({KEY: {"loguniform": [0.1, 100]}}), "algorithm": "random",
            "scheduler": json.dumps({"type": "asha", "grace_period": 1, "reduction_factor": 2}),
            "metric": metric, "search_seed": 0, "sample": i, "trial_id": tid,
            "params": json.dumps({KEY: s["lam"]}), "status": s["status"], "score": s.get("score"),
            "epochs_trained": s.get("epochs_trained"), "epochs": EPOCHS, "stopped_at": s.get("stopped_at"),
            "chosen": s.get("chosen", False), "retrain_trial_ids": json.dumps(retrain),
        })
    write_search_record(str(loc), search_id, rows)
    return search_id


def _samples(chosen: float) -> list[dict]:
    """Four samples: three finished (one stopped early by the scheduler), one failed."""
    return [
        {"lam": 0.3, "status": "done", "score": 60.0, "epochs_trained": EPOCHS},
        {"lam": chosen, "status": "done", "score": 72.0, "epochs_trained": EPOCHS, "chosen": True},
        {"lam": 30.0, "status": "done", "score": 55.0, "epochs_trained": 2, "stopped_at": 2},
        {"lam": 80.0, "status": "failed"},
    ]


def _ordinary(loc: Path) -> None:
    for (method, lam), per_dataset in ORDINARY.items():
        for dataset, (base, novel) in per_dataset.items():
            for seed in (1, 2):
                _test_trial(loc, _cfg(loc, method, dataset, seed, lam), base + seed - 1, novel - seed + 1)


def _world(loc: Path, *, retrain: tuple[str, ...] = ("dtd", "eurosat")) -> dict[str, list[str]]:
    """Ordinary trials, a search per dataset, and the retrain trials of the datasets in ``retrain``."""
    _ordinary(loc)
    ids = {}
    for dataset, lam in CHOSEN.items():
        cfgs = {seed: _cfg(loc, "prompt_ot", dataset, seed, lam) for seed in (1, 2)}
        ids[dataset] = [C.trial_id(c) for c in cfgs.values()]
        if dataset in retrain:
            for seed, cfg in cfgs.items():
                _test_trial(loc, cfg, *RETRAIN[dataset][seed])
        _search(loc, dataset, _samples(lam), ids[dataset])
    return ids


def _build(loc: Path, *, searches: bool = True, **kw: object) -> Report:
    kw.setdefault("figures", False)
    records = read_search_records([str(loc)]) if searches else None
    return build_report(read_results([str(loc)]), searches=records, **kw)




def _rendered(report: Report, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "rendered"
    paths = write_report(report, out, ["md", "latex", "html", "csv"])
    console = Console(file=io.StringIO(), width=250)
    print_report(report, console)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in paths}
    return {**files, "terminal": console.file.getvalue().encode()}


# ------------------------------------------------------------------ search trials' own rows


def test_search_trials_are_found_by_their_validation_split_or_their_configuration(tmp_path: Path):
    _world(tmp_path)
    frame = read_results([str(tmp_path)]).to_pandas()
    found = search_trial_ids(frame)
    record = read_search_records([str(tmp_path)]).to_pandas()
    assert found == set(record["trial_id"])  # the failed one too: its row has no split
    assert set(frame.loc[frame["split"].str.startswith("val"), "trial_id"]) < found
    assert not found & set(frame.loc[frame["split"].isin(["base", "novel"]), "trial_id"])


def test_search_trial_rows_enter_no_table_average_or_figure(tmp_path: Path):
    with_search = tmp_path / "with"
    _world(with_search)
    table = read_results([str(with_search)])
    assert {"val_seen", "val_held_out"} <= set(table.column("split").to_pylist())
    frame = table.to_pandas()
    tests_only = frame[~frame["trial_id"].isin(search_trial_ids(frame))]
    report = build_report(table, figures=True)  # no search records given: the rows alone
    plain = build_report(tests_only, figures=True)
    # the same report as from the test rows alone: the same tables, numbers, notes and figures
    assert to_markdown(report) == to_markdown(plain)
    assert [f.png for f in report.figures] == [f.png for f in plain.figures]
    assert report.n_trials == plain.n_trials == 12 and report.failed.empty  # nor the failed search trial
    assert "diagnostics" not in {t.key for t in report.tables}  # only search trials reported any
    # the averages are those of the test rows only (the search trials scored 99 and 1 on validation)
    comparison = _table(report, "base2novel_comparison")
    assert [r.label for r in comparison.rows] == ["IVLP", "Prompt-OT (λ=0.52)", "Prompt-OT (λ=3.7)", "Prompt-OT (λ=10)"]
    dtd = _row(_table(report, "base2novel__prompt_ot__lambda_ot=10"), "DTD").cells
    assert dtd[0].value == pytest.approx(79.5) and dtd[1].value == pytest.approx(65.5) and dtd[0].n == 2
    ivlp = _row(comparison, "IVLP").cells
    assert ivlp[0].value == pytest.approx(np.mean([80.5, 90.5]))
    assert ivlp[1].value == pytest.approx(np.mean([59.5, 49.5]))
    assert ivlp[2].value == pytest.approx(harmonic_mean(85.5, 54.5))
    for t in report.tables:
        for r in t.rows:
            assert not any(c.value in (99.0, 1.0) for c in r.cells), (t.key, r.label)


# ------------------------------------------------------------------------- the searched row


def test_the_row_chosen_on_validation_is_the_mean_over_the_retrain_trials(tmp_path: Path):
    _world(tmp_path)
    report = _build(tmp_path)
    comparison = _table(report, "base2novel_comparison")
    # beside the method's own rows (the retrain trials are ordinary trials: they are variants too)
    assert [r.label for r in comparison.rows] == [
        "IVLP", "Prompt-OT (λ=0.52)", "Prompt-OT (λ=3.7)", "Prompt-OT (λ=10)", SEARCHED,
    ]
    means = {d: (np.mean([b for b, _ in r.values()]), np.mean([n for _, n in r.values()])) for d, r in RETRAIN.items()}
    for dataset, name in (("dtd", "DTD"), ("eurosat", "EuroSAT")):
        base, novel, hm = _row(_table(report, f"base2novel_{dataset}"), SEARCHED).cells
        assert base.value == pytest.approx(means[dataset][0]) and base.n == 2 and base.flag is None
        assert base.std == pytest.approx(np.std([b for b, _ in RETRAIN[dataset].values()]))
        assert novel.value == pytest.approx(means[dataset][1])
        assert hm.value == pytest.approx(harmonic_mean(*means[dataset]))
        # the same numbers as the variant with the chosen λ: the same trials serve both rows
        same = _row(_table(report, f"base2novel_{dataset}"), f"Prompt-OT (λ={CHOSEN[dataset]:g})").cells
        assert [c.value for c in same] == pytest.approx([base.value, novel.value, hm.value])
        block = _row(_table(report, "base2novel__prompt_ot__prompt_ot.lambda_ot=chosen"), name).cells
        assert [c.value for c in block] == pytest.approx([base.value, novel.value, hm.value])
    avg = _row(comparison, SEARCHED).cells
    b, n = np.mean([m[0] for m in means.values()]), np.mean([m[1] for m in means.values()])
    assert [c.value for c in avg] == pytest.approx([b, n, harmonic_mean(b, n)])
    assert all(c.flag is None and c.comparable for c in avg)
    assert avg[1].best and avg[2].best  # it competes for best like any complete row
    assert _row(comparison, SEARCHED).meta["searched"] == KEY
    block = _table(report, "base2novel__prompt_ot__prompt_ot.lambda_ot=chosen")
    assert "Chosen on validation: DTD: λ=3.7; EuroSAT: λ=0.52." in block.notes
    assert "Prompt-OT (λ chosen on validation): λ=3.7, chosen on validation." in _table(report, "base2novel_dtd").notes
    # ablations, published comparisons and the λ figures keep to the fixed settings
    ablation = _table(report, "ablation__prompt_ot__lambda_ot")
    assert SEARCHED not in [r.label for r in ablation.rows]


def test_a_search_whose_retrain_trials_have_no_results_shows_what_is_missing(tmp_path: Path):
    ids = _world(tmp_path, retrain=("dtd",))
    report = _build(tmp_path)
    comparison = _table(report, "base2novel_comparison")
    avg = _row(comparison, SEARCHED).cells
    assert avg[2].flag == "1/2 datasets" and not avg[2].comparable and not avg[2].best
    assert avg[2].value == pytest.approx(harmonic_mean(81.75, 68.75))
    assert [c.value for c in _row(_table(report, "base2novel_eurosat"), SEARCHED).cells] == [None, None, None]
    missing = (f"{SEARCHED}: on EuroSAT, 2 of the 2 trials that retrain λ=0.52 have no test results yet "
               f"({', '.join(ids['eurosat'])}).")
    assert missing in comparison.notes
    flagged = " (1/2 datasets)"
    assert (f"| {SEARCHED} | 81.75{flagged} | 68.75{flagged} | {harmonic_mean(81.75, 68.75):.2f}{flagged} |"
            in to_markdown(report))
    assert "| EuroSAT | — | — | — |" in to_markdown(report)
    searches = _table(report, "searches")
    assert _row(searches, "EuroSAT").cells[-1].text == "0/2"
    # nothing retrained at all: the row is there, every value missing
    bare = tmp_path / "bare"
    _ordinary(bare)
    _search(bare, "dtd", _samples(3.7), ["a" * 12, "b" * 12])
    report = _build(bare)
    row = _row(_table(report, "base2novel_comparison"), SEARCHED)
    assert [c.value for c in row.cells] == [None, None, None]
    assert _table(report, "base2novel__prompt_ot__prompt_ot.lambda_ot=chosen").title.endswith("(no test results yet)")


# --------------------------------------------------------------------------- search table


def test_the_search_table(tmp_path: Path):
    _world(tmp_path)
    report = _build(tmp_path)
    table = _table(report, "searches")
    assert [c.label for c in table.columns] == [
        "Method", "Protocol", "Searched", "Chosen", "Validation score", "Metric", "Samples finished",
        "Epochs trained", "Algorithm", "Scheduler", "Retrain trials tested",
    ]
    assert [r.label for r in table.rows] == ["DTD", "EuroSAT"]
    dtd = _row(table, "DTD")
    texts = [c.text for c in dtd.cells]
    assert texts[:4] == ["Prompt-OT", "base2novel", KEY, "λ=3.7"]
    assert dtd.meta["variant"] == SEARCHED
    assert dtd.cells[4].value == 72.0 and texts[4] is None and not dtd.cells[4].best
    assert texts[5:] == [
        "HM (seen, held-out)", "3/4, 1 stopped early", f"12/{4 * EPOCHS} (15% saved by early stopping)", "random",
        "asha (grace_period=1, reduction_factor=2)", "2/2",
    ]
    assert dtd.meta["search_id"] == "search-dtd"
    assert _row(table, "EuroSAT").cells[3].text == "λ=0.52"
    assert any("2 hyper-parameter searches (8 samples" in n for n in report.notes)


def test_every_format_shows_the_searched_row_and_the_search_table(tmp_path: Path):
    _world(tmp_path)
    report = _build(tmp_path)
    shown = {k: v.decode() for k, v in _rendered(report, tmp_path).items() if not k.endswith(".png")}
    assert f"| {SEARCHED} |" in shown["report.md"] and "### Hyper-parameter searches" in shown["report.md"]
    assert "| DTD | Prompt-OT | base2novel | prompt_ot.lambda_ot | λ=3.7 | 72.00 | HM (seen, held-out) |" in shown["report.md"]
    assert "Prompt-OT ($\\lambda$ chosen on validation)" in shown["report.tex"]
    assert "{tab:rayot-searches}" in shown["report.tex"] and "15\\% saved" in shown["report.tex"]
    assert f"<td>{SEARCHED}</td>" in shown["report.html"] and '<h3 id="searches">' in shown["report.html"]
    assert "<td>DTD</td><td>Prompt-OT</td><td>base2novel</td>" in shown["report.html"]
    assert SEARCHED in shown["terminal"] and "the setting chosen on validation" in shown["terminal"]
    assert "λ=3.7" in shown["csv/searches.csv"] and SEARCHED in shown["csv/base2novel_comparison.csv"]
    assert to_latex(report).count("\\begin{table}") == len(report.tables)
    assert to_html(report).count("<table>") == len(report.tables)


# -------------------------------------------------------------------------------- figure


def test_the_search_figure_and_why_it_is_not_drawn(tmp_path: Path):
    _world(tmp_path)
    report = _build(tmp_path, figures=True)
    figure = next(f for f in report.figures if f.key == "search_scores")
    assert figure.png.startswith(PNG_MAGIC) and len(figure.png) > 5000
    assert "search_scores" not in {f.key for f in _build(tmp_path, searches=False, figures=True).figures}
    groups = group_searches(read_searches(read_search_records([str(tmp_path)])), {})
    assert all(s.is_log(KEY) for g in groups.values() for s in g)
    assert F.search_scores({}) == "Validation score against the searched values: no searches in the results."
    # a search none of whose samples finished: the table says so, the figure is skipped with why
    failed = tmp_path / "failed"
    _ordinary(failed)
    _search(failed, "dtd", [{"lam": 1.0, "status": "failed"}, {"lam": 2.0, "status": "failed"}], [])
    report = _build(failed, figures=True)
    assert "search_scores" not in {f.key for f in report.figures}
    assert "Validation score against the searched values: no sample of any search finished." in report.skipped_figures
    assert "Skipped: Validation score against the searched values" in to_markdown(report)
    dtd = _row(_table(report, "searches"), "DTD")
    assert dtd.cells[3].value is None and dtd.cells[3].text is None and dtd.cells[6].text == "0/2"
    assert any("chose nothing" in n for n in _table(report, "base2novel_comparison").notes)


def test_a_categorical_search_is_drawn_on_a_categorical_axis(tmp_path: Path):
    _ordinary(tmp_path)
    rows = _samples(3.7)
    _search(tmp_path, "dtd", rows, [])
    record = read_search_records([str(tmp_path)]).to_pandas()
    record["params"] = [json.dumps({"prompt_ot.regularizer": r}) for r in ("ot", "pointwise", "none", "ot")]
    record["space"] = json.dumps({"prompt_ot.regularizer": {"choice": ["ot", "pointwise", "none"]}})
    out = F.search_scores(group_searches(read_searches(record), {}))
    assert not isinstance(out, str) and out.png.startswith(PNG_MAGIC)


# ------------------------------------------------------------ without searches, filters, CLI


def test_a_report_without_searches_is_unchanged(tmp_path: Path):
    _ordinary(tmp_path)
    before = _rendered(build_report(read_results([str(tmp_path)]), figures=True), tmp_path / "a")
    empty = SEARCH_SCHEMA.empty_table()
    assert read_search_records([str(tmp_path)]).num_rows == 0
    after = _rendered(build_report(read_results([str(tmp_path)]), figures=True, searches=empty), tmp_path / "b")
    assert before == after
    assert "searches" not in before["terminal"].decode()


def test_method_and_dataset_filters_apply_to_searches(tmp_path: Path):
    _world(tmp_path)
    assert "searches" not in {t.key for t in _build(tmp_path, methods=["ivlp"]).tables}
    fixed = _build(tmp_path, methods=["prompt_ot:lambda_ot=10"])  # a fixed setting: no searched row
    assert "searches" not in {t.key for t in fixed.tables}
    assert [r.label for r in _table(fixed, "base2novel_comparison").rows] == ["Prompt-OT"]
    only_dtd = _build(tmp_path, datasets=["dtd"], methods=["prompt_ot"])
    assert [r.label for r in _table(only_dtd, "searches").rows] == ["DTD"]
    avg = _row(_table(only_dtd, "base2novel_comparison"), SEARCHED).cells
    assert avg[0].value == pytest.approx(81.75) and avg[0].flag is None


def test_searches_of_one_method_in_different_cells_get_rows_of_their_own(tmp_path: Path):
    _ordinary(tmp_path)
    for eps in (0.05, 0.1):
        for dataset in ("dtd", "eurosat"):
            _search(tmp_path, dataset, _samples(3.7), [], search_id=f"s-{dataset}-{eps}",
                    cell_extra=(f"prompt_ot.epsilon={eps}",))
    groups = group_searches(read_searches(read_search_records([str(tmp_path)])), {})
    assert [sv.label for sv in groups] == [
        "Prompt-OT (ε=0.05, λ chosen on validation)", "Prompt-OT (ε=0.1, λ chosen on validation)",
    ]
    assert all([s.dataset for s in g] == ["dtd", "eurosat"] for g in groups.values())


def test_the_cli_reads_the_search_records_of_its_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rayot.cli import app

    res = tmp_path / "results"
    _world(res)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["report", "-r", str(res), "--format", "md", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert SEARCHED in result.output
    md = (tmp_path / "reports" / "latest" / "report.md").read_text()
    assert f"| {SEARCHED} |" in md and "| DTD | Prompt-OT | base2novel | prompt_ot.lambda_ot | λ=3.7 |" in md


def test_search_records_read_twice_count_once(tmp_path: Path):
    _world(tmp_path)
    record = read_search_records([str(tmp_path)])
    twice = pa.concat_tables([record, record])
    searches = read_searches(twice)
    assert len(searches) == 2 and all(len(s.samples) == 4 for s in searches)


def test_results_of_a_search_alone_report_the_search(tmp_path: Path):
    """Before any retrain trial finished: the search table, and no table of test results."""
    _search(tmp_path, "dtd", _samples(3.7), ["a" * 12, "b" * 12])
    report = _build(tmp_path, figures=True)
    assert [t.key for t in report.tables] == ["searches"] and report.main is report.tables[0]
    assert report.n_trials == 0 and report.failed.empty
    assert "search_scores" in {f.key for f in report.figures}
    console = Console(file=io.StringIO(), width=250)
    print_report(report, console)
    assert console.file.getvalue().count("Hyper-parameter search: the setting chosen on validation") == 1
    with pytest.raises(RayotError, match="the rows of 4 search trials are validation scores"):
        _build(tmp_path, searches=False)
