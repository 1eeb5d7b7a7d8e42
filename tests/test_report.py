"""`rayot report`: aggregation rules, marks, tables, formats, figures and the CLI, on hand-made Parquet."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from rayot.errors import RayotError
from rayot.report import build_report, harmonic_mean, parse_formats, print_report, write_report
from rayot.report.frame import split_method_specs
from rayot.report.model import Report, ReportTable
from rayot.report.names import CROSS_TARGETS, DATASETS, DG_TARGETS
from rayot.report.published import load_published
from rayot.report.to_markdown import to_markdown
from rayot.results import COLUMNS, make_table, read_results, write_trial_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_SETTINGS = {
    "lambda_ot": 10.0,
    "regularizer": "ot",
    "modality": "joint",
    "solver": "emd",
    "epsilon": 0.1,
    "shots": 16,
    "epochs": 5,
}


def _trial(
    loc: Path,
    method: str,
    protocol: str,
    dataset: str,
    seed: int,
    evals: list[tuple[str, str, float]],
    *,
    status: str = "done",
    extra_config: dict | None = None,
    backbone: str = "ViT-B-16",
    epoch_metrics: list[dict] | None = None,
    **settings: object,
) -> str:
    """Write one trial's rows like the trainer does: a nested config JSON and the flat columns."""
    unregularized = {"lambda_ot": 0.0, "regularizer": "none"} if method in ("zeroshot", "ivlp", "coop") else {}
    s = {**DEFAULT_SETTINGS, **unregularized, **settings}
    config = {
        "method": method,
        "seed": seed,
        "device": "cpu",
        "model": {"name": backbone},
        "data": {"dataset": dataset, "protocol": protocol, "shots": s["shots"], "root": "/data"},
        "loss": {
            "lambda_ot": s["lambda_ot"],
            "regularizer": s["regularizer"],
            "modality": s["modality"],
            "solver": s["solver"],
            "epsilon": s["epsilon"],
        },
        "optim": {"lr": 0.005, "epochs": s["epochs"]},
        "output": {"results": str(loc), "checkpoints": f"/ckpt/{method}/{seed}"},
    }
    for key, value in (extra_config or {}).items():
        section, _, name = key.partition(".")
        config.setdefault(section, {})[name] = value
    text = json.dumps(config, sort_keys=True)
    tid = hashlib.sha256(text.encode()).hexdigest()[:12]
    rows = []
    for eval_dataset, split, acc in evals:
        row = {
            "trial_id": tid,
            "status": status,
            "method": method,
            "protocol": protocol,
            "dataset": dataset,
            "eval_dataset": eval_dataset,
            "split": split,
            "seed": seed,
            "backbone": backbone,
            "pretrained": "openai",
            "accuracy": acc,
            "config": text,
            "error": "CUDA out of memory" if status == "failed" else None,
            "epoch_metrics": json.dumps(epoch_metrics) if epoch_metrics is not None else None,
            **{k: s[k] for k in DEFAULT_SETTINGS},
        }
        assert set(row) <= set(COLUMNS)
        rows.append(row)
    write_trial_rows(str(loc), tid, rows)
    return tid


def _b2n(loc: Path, method: str, dataset: str, seed: int, base: float, novel: float, **kw: object) -> str:
    return _trial(loc, method, "base2novel", dataset, seed, [(dataset, "base", base), (dataset, "novel", novel)], **kw)


def _table(report: Report, key: str) -> ReportTable:
    found = [t for t in report.tables if t.key == key]
    assert found, f"no table {key}; have {[t.key for t in report.tables]}"
    return found[0]


def _row(table: ReportTable, label: str):
    found = [r for r in table.rows if r.label == label]
    assert found, f"no row {label}; have {[r.label for r in table.rows]}"
    return found[0]


def _build(loc: Path, **kw: object) -> Report:
    kw.setdefault("figures", False)
    return build_report(read_results([str(loc)]), sources=[str(loc)], **kw)


# ------------------------------------------------------------------------ aggregation rules


def test_published_numbers_carry_a_source_and_their_hm_is_the_hm_of_base_and_novel():
    setting, rows = load_published()
    assert "11 datasets" in setting
    assert [r.name for r in rows] == ["CLIP (zero-shot)", "CoOp", "CoCoOp", "KgCoOp", "MaPLe", "PromptSRC"]
    for r in rows:
        assert r.source.strip()
        assert r.datasets == DATASETS  # what a measured average must be over to get a Δ
        # published HMs are rounded to 2 decimals
        assert harmonic_mean(r.base, r.novel) == pytest.approx(r.hm, abs=0.005)


def test_seed_means_population_std_and_hm_of_the_means(tmp_path: Path):
    base, novel = [70.0, 72.5, 77.25], [60.0, 65.0, 61.5]
    for seed, (b, n) in enumerate(zip(base, novel, strict=True), start=1):
        _b2n(tmp_path, "prompt_ot", "dtd", seed, b, n)
    report = _build(tmp_path)
    block = _table(report, "base2novel__prompt_ot")
    b_cell, n_cell, hm_cell = _row(block, "DTD").cells
    assert b_cell.value == pytest.approx(np.mean(base))
    assert b_cell.std == pytest.approx(np.std(base, ddof=0))  # population, not sample std
    assert n_cell.std == pytest.approx(np.std(novel, ddof=0))
    assert (b_cell.n, n_cell.n) == (3, 3) and b_cell.flag is None
    expected_hm = 2 * np.mean(base) * np.mean(novel) / (np.mean(base) + np.mean(novel))
    assert hm_cell.value == pytest.approx(expected_hm)
    per_seed_hm = np.mean([harmonic_mean(b, n) for b, n in zip(base, novel, strict=True)])
    assert abs(hm_cell.value - per_seed_hm) > 1e-3  # the rule is not the mean of per-seed HMs
    assert "± " + f"{np.std(base):.2f}" in to_markdown(report)


def test_average_row_is_the_hm_of_averaged_base_and_novel_published_check(tmp_path: Path):
    # two datasets whose means average to PromptSRC's 84.26 / 76.10 (HM 79.97)
    for seed in (1, 2, 3):
        _b2n(tmp_path, "promptsrc", "caltech101", seed, 80.0, 80.0)
        _b2n(tmp_path, "promptsrc", "dtd", seed, 88.52, 72.2)
    report = _build(tmp_path)
    avg = _row(_table(report, "base2novel_comparison"), "PromptSRC").cells
    assert avg[0].value == pytest.approx(84.26)
    assert avg[1].value == pytest.approx(76.10)
    assert round(avg[2].value, 2) == 79.97
    mean_of_hms = np.mean([80.0, harmonic_mean(88.52, 72.2)])
    assert round(mean_of_hms, 2) != 79.97
    block_avg = _row(_table(report, "base2novel__promptsrc"), "Average").cells
    assert [c.value for c in block_avg] == pytest.approx([c.value for c in avg])
    assert all(c.flag is None for c in avg)
    # the same check from a pandas frame instead of a pyarrow table
    frame = read_results([str(tmp_path)]).to_pandas()
    again = build_report(frame, figures=False)
    assert _row(_table(again, "base2novel_comparison"), "PromptSRC").cells[2].value == pytest.approx(avg[2].value)


def test_incomplete_cells_and_averages_are_marked_and_never_best(tmp_path: Path):
    for seed in (1, 2, 3):
        _b2n(tmp_path, "ivlp", "dtd", seed, 80.0, 70.0)
        _b2n(tmp_path, "prompt_ot", "dtd", seed, 81.0, 72.0)
    for seed in (1, 2):  # ivlp lacks seed 3 on eurosat
        _b2n(tmp_path, "ivlp", "eurosat", seed, 90.0, 60.0 + seed)
    # prompt_ot has no eurosat at all, and its average over dtd alone is the highest HM
    report = _build(tmp_path)
    ivlp = _table(report, "base2novel__ivlp")
    euro = _row(ivlp, "EuroSAT").cells
    assert [c.flag for c in euro] == ["2/3 seeds"] * 3
    assert euro[1].value == pytest.approx(61.5)
    assert _row(ivlp, "Average").cells[2].flag == "min 2/3 seeds"
    pot = _table(report, "base2novel__prompt_ot")
    assert [c.value for c in _row(pot, "EuroSAT").cells] == [None, None, None]
    comparison = _table(report, "base2novel_comparison")
    pot_avg = _row(comparison, "Prompt-OT").cells
    assert pot_avg[2].flag == "1/2 datasets" and not pot_avg[2].comparable
    assert not any(c.best for c in pot_avg)  # an average over fewer datasets never wins
    assert _row(comparison, "IVLP").cells[2].best
    md = to_markdown(report)
    assert "(1/2 datasets)" in md and "(2/3 seeds)" in md
    assert "| EuroSAT | — | — | — |" in md


def test_methods_side_by_side_settings_are_not_pooled_and_best_is_bold(tmp_path: Path):
    values = {  # (method, λ): (base, novel)
        ("zeroshot", 0.0): (70.0, 74.0),
        ("ivlp", 0.0): (84.0, 70.0),
        ("prompt_ot", 1.0): (83.0, 74.0),
        ("prompt_ot", 10.0): (84.5, 75.0),
        ("fancy_new", 0.0): (85.0, 60.0),
    }
    for (method, lam), (b, n) in values.items():
        for seed in (1, 2):
            for d in ("caltech101", "dtd"):
                _b2n(tmp_path, method, d, seed, b + seed * 0.1, n, lambda_ot=lam)
    report = _build(tmp_path)
    comparison = _table(report, "base2novel_comparison")
    assert [r.label for r in comparison.rows] == [
        "CLIP (zero-shot)",
        "IVLP",
        "Prompt-OT (λ=1)",
        "Prompt-OT (λ=10)",
        "fancy_new",
    ]
    best = {col.label: [r.label for r in comparison.rows if r.cells[j].best] for j, col in enumerate(comparison.columns)}
    assert best == {"Base": ["fancy_new"], "Novel": ["Prompt-OT (λ=10)"], "HM": ["Prompt-OT (λ=10)"]}
    hm = _row(comparison, "Prompt-OT (λ=1)").cells[2].value
    assert hm == pytest.approx(harmonic_mean(83.15, 74.0))  # λ=1 alone, not pooled with λ=10
    md = to_markdown(report)
    assert f"| Prompt-OT (λ=10) | 84.65 | **75.00** | **{harmonic_mean(84.65, 75.0):.2f}** |" in md
    assert report.main is comparison


def test_a_setting_only_in_the_config_json_splits_variants_but_paths_do_not(tmp_path: Path):
    for seed in (1, 2):
        _b2n(tmp_path, "prompt_ot", "dtd", seed, 80.0, 70.0, extra_config={"optim.lr": 0.005})
        _b2n(tmp_path, "prompt_ot", "dtd", seed, 82.0, 71.0, extra_config={"optim.lr": 0.01})
    report = _build(tmp_path)
    labels = [r.label for r in _table(report, "base2novel_comparison").rows]
    assert labels == ["Prompt-OT (optim.lr=0.005)", "Prompt-OT (optim.lr=0.01)"]
    # --methods can pick one variant by a setting
    only = _build(tmp_path, methods=["prompt_ot:optim.lr=1e-2"])
    assert [r.label for r in _table(only, "base2novel_comparison").rows] == ["Prompt-OT"]


def test_rewritten_and_duplicated_rows_count_once(tmp_path: Path):
    _b2n(tmp_path, "ivlp", "dtd", 1, 10.0, 10.0)
    _b2n(tmp_path, "ivlp", "dtd", 1, 80.0, 70.0)  # same trial id: the re-run replaces the file
    _b2n(tmp_path, "ivlp", "dtd", 2, 82.0, 72.0)
    table = read_results([str(tmp_path)])
    doubled = pd.concat([table.to_pandas(), table.to_pandas()])  # the same location read twice
    report = build_report(doubled, figures=False)
    cells = _row(_table(report, "base2novel__ivlp"), "DTD").cells
    assert cells[0].value == pytest.approx(81.0) and cells[0].n == 2


# ------------------------------------------------------------------ other protocols


def test_cross_dataset_and_domain_generalization_tables(tmp_path: Path):
    targets = {t: 60.0 + i for i, t in enumerate(CROSS_TARGETS)}
    for seed, shift in ((1, 0.0), (2, 1.0)):
        evals = [("imagenet", "all", 70.0 + shift)] + [(t, "all", a + shift) for t, a in targets.items()]
        _trial(tmp_path, "prompt_ot", "cross_dataset", "imagenet", seed, evals)
        dg = [("imagenet", "all", 70.0 + shift)] + [(t, "all", 50.0 + i + shift) for i, t in enumerate(DG_TARGETS)]
        _trial(tmp_path, "prompt_ot", "domain_generalization", "imagenet", seed, dg)
        # a 1-shot imagenet trial must not leak into the source column
        _trial(tmp_path, "prompt_ot", "few_shot", "imagenet", seed, [("imagenet", "all", 20.0)], shots=1)
    _trial(tmp_path, "coop", "cross_dataset", "imagenet", 1, [("imagenet", "all", 71.0), ("dtd", "all", 40.0)])
    report = _build(tmp_path)
    cross = _table(report, "cross_dataset")
    assert [c.label for c in cross.columns][:2] == ["ImageNet", "Caltech101"]
    assert len(cross.columns) == 1 + 10 + 1
    pot = _row(cross, "Prompt-OT").cells
    assert pot[0].value == pytest.approx(70.5) and pot[0].n == 2
    assert pot[-1].value == pytest.approx(np.mean(list(targets.values())) + 0.5)
    assert pot[-1].best and pot[0].flag is None
    coop = _row(cross, "CoOp").cells
    assert coop[-1].flag == "1/10 targets; min 1/2 seeds" and not coop[-1].best
    assert coop[1].value is None  # caltech101 missing
    assert coop[0].best and coop[0].flag == "1/2 seeds"
    dg = _table(report, "domain_generalization")
    assert [c.label for c in dg.columns] == ["ImageNet", "ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R", "Average"]
    cells = _row(dg, "Prompt-OT").cells
    assert cells[0].value == pytest.approx(70.5)
    assert cells[-1].value == pytest.approx(np.mean([50.5, 51.5, 52.5, 53.5]))
    assert report.main is cross  # no base-to-novel results: the first transfer table is the main one


def test_few_shot_table(tmp_path: Path):
    acc = {("dtd", 1): 40.0, ("dtd", 4): 50.0, ("eurosat", 1): 60.0, ("eurosat", 4): 70.0}
    for (d, k), a in acc.items():
        for seed in (1, 2):
            _trial(tmp_path, "coop", "few_shot", d, seed, [(d, "all", a + seed)], shots=k)
    _trial(tmp_path, "coop", "few_shot", "dtd", 3, [("dtd", "all", 52.0)], shots=4)  # one extra seed
    report = _build(tmp_path)
    comparison = _table(report, "few_shot_comparison")
    assert [c.label for c in comparison.columns] == ["1 shot", "4 shots"]
    table = _table(report, "few_shot__coop")
    dtd = _row(table, "DTD").cells
    assert dtd[0].value == pytest.approx(41.5) and dtd[0].flag == "2/3 seeds"
    assert dtd[1].value == pytest.approx(np.mean([51.0, 52.0, 52.0])) and dtd[1].flag is None
    avg = _row(table, "Average").cells
    assert avg[0].value == pytest.approx(np.mean([41.5, 61.5]))
    # shots are the table's axis, not a setting that splits variants
    assert [r.label for r in comparison.rows] == ["CoOp"]


# ---------------------------------------------------------------------------- ablations


def _lambda_sweep(loc: Path, lambdas: tuple[float, ...], with_zero: bool = True) -> None:
    for seed in (1, 2):
        for d in ("caltech101", "dtd"):
            if with_zero:  # the method without its regulariser
                _b2n(loc, "prompt_ot", d, seed, 84.0, 68.0, lambda_ot=0.0)
            for lam in lambdas:
                _b2n(loc, "prompt_ot", d, seed, 84.0 - lam * 0.1, 68.0 + lam, lambda_ot=lam)


def test_ablation_over_lambda_and_its_figure(tmp_path: Path):
    _lambda_sweep(tmp_path, (10.0, 1.0, 0.1))
    report = _build(tmp_path, figures=True)
    ablation = _table(report, "ablation__prompt_ot__lambda_ot")
    assert [r.label for r in ablation.rows] == ["λ=0", "λ=0.1", "λ=1", "λ=10"]
    assert [c.label for c in ablation.columns] == ["Base", "Novel", "HM", "Caltech101", "DTD"]
    hm = [r.cells[2].value for r in ablation.rows]
    assert hm == pytest.approx([harmonic_mean(84.0 - lam * 0.1, 68.0 + lam) for lam in (0.0, 0.1, 1.0, 10.0)])
    assert ablation.rows[-1].cells[2].best
    keys = {f.key for f in report.figures}
    assert keys == {"hm_vs_lambda", "base_vs_novel", "hm_per_dataset"}
    for fig in report.figures:
        assert fig.png.startswith(PNG_MAGIC) and len(fig.png) > 5000
    assert report.skipped_figures == []


def test_a_figure_the_results_cannot_support_is_skipped_with_a_note(tmp_path: Path):
    _lambda_sweep(tmp_path, (10.0,), with_zero=False)
    report = _build(tmp_path, figures=True)
    assert "hm_vs_lambda" not in {f.key for f in report.figures}
    assert any("λ" in s for s in report.skipped_figures)
    assert "Skipped: HM against λ" in to_markdown(report)
    assert not [t for t in report.tables if t.key.startswith("ablation")]


# ----------------------------------------------------------------------- formats, errors


def test_single_dataset_report_has_an_average_row_and_says_it_is_not_the_benchmark(tmp_path: Path):
    for seed in (1, 2, 3):
        _b2n(tmp_path, "zeroshot", "synthetic", seed, 60.0, 65.0, backbone="tiny")
        _b2n(tmp_path, "prompt_ot", "synthetic", seed, 90.0, 55.0 + seed)
    report = _build(tmp_path, published=True)
    comparison = _table(report, "base2novel_comparison")
    assert comparison.title.endswith("average over 1 dataset (Synthetic)")
    cells = _row(comparison, "Prompt-OT").cells
    assert cells[2].value == pytest.approx(harmonic_mean(90.0, 57.0)) and cells[2].flag is None
    assert any("11 datasets" in n for n in comparison.notes)
    assert "CLIP (zero-shot): tiny; Prompt-OT: ViT-B-16" in " ".join(comparison.notes)
    published = _table(report, "published")
    # the published rows stay, for reference; the measured ones follow without a difference
    assert [c.label for c in published.columns] == ["Base", "Novel", "HM"]
    pot = _row(published, "Prompt-OT").cells
    assert [c.value for c in pot] == pytest.approx([90.0, 57.0, harmonic_mean(90.0, 57.0)])
    assert not any(c.best for c in pot)  # Synthetic's 90.00 is not "better" than a paper's Base
    assert _row(published, "PromptSRC [4]").cells[0].best
    assert published.notes[0].startswith("No Δ: the published averages are over the 11 ")


# ------------------------------------------------------------- published: Δ only when comparable


def _b2n_rows(method: str, datasets: tuple[str, ...], base: float, novel: float, **settings: object) -> list[dict]:
    """In-memory result rows: one seed of one method on each dataset, the same accuracies."""
    s = {**DEFAULT_SETTINGS, **settings}
    rows = []
    for d in datasets:
        tid = f"{method}-{s['lambda_ot']:g}-{d}"
        for split, acc in (("base", base), ("novel", novel)):
            rows.append(
                dict(trial_id=tid, status="done", method=method, protocol="base2novel", dataset=d,
                     eval_dataset=d, split=split, seed=1, backbone="ViT-B-16", pretrained="openai",
                     accuracy=acc, config="{}", **s)
            )
    return rows


def _published_everywhere(report: Report, tmp_path: Path) -> dict[str, str]:
    """The published table as each format shows it: terminal, Markdown, LaTeX, HTML, CSV."""
    out = tmp_path / "out"
    write_report(report, out, ["md", "latex", "html", "csv"])
    console = Console(file=io.StringIO(), width=250)
    print_report(report, console)
    tex = (out / "report.tex").read_text().split("\n\n")
    return {
        "terminal": console.file.getvalue(),
        "md": (out / "report.md").read_text().split("## Measured against published")[1].split("\n## ")[0],
        "tex": next(t for t in tex if "{tab:rayot-published}" in t),
        "html": (out / "report.html").read_text().split('<h3 id="published">')[1].split("</ul>")[0],
        "csv": (out / "csv" / "published.csv").read_text(),
    }


def test_published_numbers_without_their_datasets_get_no_delta_in_any_format(tmp_path: Path):
    # the offline demo world: one dataset, "synthetic"
    rows = _b2n_rows("zeroshot", ("synthetic",), 60.0, 65.0, lambda_ot=0.0, regularizer="none")
    rows += _b2n_rows("prompt_ot", ("synthetic",), 90.0, 80.0)
    report = build_report(make_table(rows), published=True, figures=False)
    published = _table(report, "published")
    assert published.title == "Base-to-novel averages: published, for reference, and measured"
    assert [c.label for c in published.columns] == ["Base", "Novel", "HM"]
    assert all(len(r.cells) == 3 for r in published.rows)
    assert [r.label for r in published.rows][:6] == [
        "CLIP (zero-shot) [1]", "CoOp [1]", "CoCoOp [1]", "KgCoOp [2]", "MaPLe [3]", "PromptSRC [4]"
    ]
    why = "No Δ: the published averages are over the 11 base-to-novel datasets, the measured ones over Synthetic."
    assert published.notes[0] == why
    assert not any("reference" in r.meta for r in published.rows)
    shown = _published_everywhere(report, tmp_path)
    for fmt, text in shown.items():
        assert "ΔHM" not in text and "\\Delta" not in text and "Δ against" not in text, fmt
        assert "PromptSRC" in text and "Prompt-OT" in text, fmt
        if fmt != "csv":  # the CSV files hold the values; the notes are in the documents
            assert "No Δ: the published averages are over the 11" in text, fmt


def test_published_numbers_over_their_datasets_get_a_delta_in_every_format(tmp_path: Path):
    rows = _b2n_rows("coop", DATASETS, 82.69, 63.22, lambda_ot=0.0, regularizer="none")
    rows += _b2n_rows("prompt_ot", DATASETS, 85.0, 77.0, lambda_ot=10.0)
    # the same method with one dataset missing: its average is not the benchmark's
    rows += _b2n_rows("prompt_ot", DATASETS[:-1], 86.0, 78.0, lambda_ot=1.0)
    report = build_report(make_table(rows), published=True, figures=False)
    published = _table(report, "published")
    assert published.title == "Base-to-novel averages: measured against published"
    assert [c.label for c in published.columns] == ["Base", "Novel", "HM", "ΔBase", "ΔNovel", "ΔHM", "Δ against"]
    coop = _row(published, "CoOp").cells
    assert [c.value for c in coop[3:6]] == pytest.approx([0.0, 0.0, 0.0], abs=0.01)
    assert coop[6].text == "CoOp"
    pot = _row(published, "Prompt-OT (λ=10)")
    assert pot.cells[5].value == pytest.approx(harmonic_mean(85.0, 77.0) - 79.97)  # against PromptSRC
    assert pot.cells[3].value == pytest.approx(85.0 - 84.26) and pot.cells[6].text == "PromptSRC"
    assert pot.meta["reference"] == "promptsrc"
    partial = _row(published, "Prompt-OT (λ=1)").cells
    assert [c.value for c in partial[3:6]] == [None, None, None] and partial[6].text == ""
    assert partial[2].flag == "10/11 datasets" and not partial[2].best
    assert published.notes[0] == (
        "No Δ for Prompt-OT (λ=1): its average is not over the 11 base-to-novel datasets, "
        "as the published ones are."
    )
    shown = _published_everywhere(report, tmp_path)
    assert "ΔHM" in shown["terminal"] and "+0.74" in shown["terminal"]
    assert "| ΔHM |" in shown["md"] and "+0.74" in shown["md"]
    assert "$\\Delta$HM" in shown["tex"] and "+0.74" in shown["tex"]
    assert "<th>ΔHM</th>" in shown["html"] and "+0.74" in shown["html"]
    csv = pd.read_csv(io.StringIO(shown["csv"]))
    d_hm = csv[(csv["row"] == "Prompt-OT (λ=10)") & (csv["column"] == "ΔHM")]
    assert d_hm["value"].item() == pytest.approx(harmonic_mean(85.0, 77.0) - 79.97)
    assert csv[(csv["row"] == "Prompt-OT (λ=1)") & (csv["column"] == "ΔHM")]["value"].isna().all()
    for fmt in ("terminal", "md", "html", "tex"):
        assert "No Δ for Prompt-OT (λ=1)" in shown[fmt], fmt


def test_every_format_is_written(tmp_path: Path):
    res = tmp_path / "results"
    _lambda_sweep(res, (1.0, 10.0))
    _b2n(res, "prompt_ot", "dtd", 3, 0.0, 0.0, lambda_ot=100.0, status="failed")
    report = build_report(read_results([str(res)]), published=True, sources=[str(res)])
    out = tmp_path / "out"
    paths = write_report(report, out, ["md", "latex", "html", "csv"])
    assert all(p.stat().st_size > 0 for p in paths)
    names = {p.relative_to(out).as_posix() for p in paths}
    assert {"report.md", "report.tex", "report.html", "csv/base2novel_comparison.csv"} <= names
    assert "csv/failed_trials.csv" in names
    assert len([n for n in names if n.startswith("csv/")]) == len(report.tables) + 1
    for fig in report.figures:
        assert (out / "figures" / f"{fig.key}.png").read_bytes().startswith(PNG_MAGIC)

    md = (out / "report.md").read_text()
    assert report.rule in md and "![" in md and "CUDA out of memory" in md

    tex = (out / "report.tex").read_text()
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == len(report.tables)
    assert tex.count("\\toprule") == tex.count("\\bottomrule") == len(report.tables)
    assert "\\textbf{" in tex and "Prompt-OT ($\\lambda$=10)" in tex
    assert "HM = 2·B·N/(B+N)" in tex  # the rule, as a comment
    body = re.sub(r"(?m)^%.*$", "", tex)
    assert not re.search(r"(?<!\\)[_#&%](?![^$]*\$)", body.replace("&", "")), "unescaped LaTeX"

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(report.figures) > 0
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained
    assert "HM of those two averages" in html

    comparison = pd.read_csv(out / "csv" / "base2novel_comparison.csv")
    row = comparison[(comparison["row"] == "Prompt-OT (λ=10)") & (comparison["column"] == "HM")]
    assert row["value"].item() == pytest.approx(_row(_table(report, "base2novel_comparison"), "Prompt-OT (λ=10)").cells[2].value)
    assert set(comparison["lambda_ot"].dropna()) == {0.0, 1.0, 10.0}

    # a second report into the same folder leaves no stale table behind
    only = build_report(read_results([str(res)]), methods=["prompt_ot:lambda_ot=10"], figures=False)
    write_report(only, out, ["csv"])
    assert not (out / "csv" / "base2novel__prompt_ot__lambda_ot=1.csv").exists()


def test_bad_input_is_one_clear_error(tmp_path: Path):
    with pytest.raises(RayotError, match="'pdf' is unknown"):
        parse_formats(["md,pdf"])
    assert parse_formats(["markdown", "tex,html", "md"]) == ["md", "latex", "html"]
    assert split_method_specs(["ivlp,prompt_ot:lambda_ot=10,modality=joint,coop", "x"]) == [
        "ivlp",
        "prompt_ot:lambda_ot=10,modality=joint",
        "coop",
        "x",
    ]
    _b2n(tmp_path, "prompt_ot", "dtd", 1, 0.0, 0.0, status="failed")
    with pytest.raises(RayotError, match="no finished trials under .*1 failed"):
        _build(tmp_path)
    _b2n(tmp_path, "ivlp", "dtd", 1, 80.0, 70.0)
    with pytest.raises(RayotError, match="--methods 'coop'"):
        _build(tmp_path, methods=["coop"])
    with pytest.raises(RayotError, match="--datasets eurosat"):
        _build(tmp_path, datasets=["eurosat"])
    report = _build(tmp_path)
    assert list(report.failed["trial_id"]) and report.failed["error"].item() == "CUDA out of memory"


# ---------------------------------------------------------------------------------- CLI


def test_cli_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rayot.cli import app

    res = tmp_path / "results"
    for seed in (1, 2):
        _b2n(res, "ivlp", "synthetic", seed, 80.0, 60.0, lambda_ot=0.0)
        _b2n(res, "prompt_ot", "synthetic", seed, 79.0, 66.0, lambda_ot=1.0)
        _b2n(res, "prompt_ot", "synthetic", seed, 78.0, 67.0, lambda_ot=10.0)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--format", "md,csv,html", "--published", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "Base-to-novel generalization" in result.output and "Prompt-OT (λ=10)" in result.output
    assert "PromptSRC" in result.output
    out = tmp_path / "reports" / "latest"
    assert (out / "report.md").stat().st_size > 0 and (out / "report.html").exists()
    assert not (out / "report.tex").exists()

    result = runner.invoke(
        app,
        ["report", "-r", str(res), "--out", str(tmp_path / "mine"), "-f", "latex", "--methods", "ivlp,prompt_ot:lambda_ot=10", "-d", "synthetic"],
    )
    assert result.exit_code == 0, result.output
    tex = (tmp_path / "mine" / "report.tex").read_text()
    assert "Prompt-OT ($\\lambda$=10)" not in tex and "Prompt-OT &" in tex and "IVLP" in tex
    assert (tmp_path / "mine" / "figures" / "base_vs_novel.png").exists()

    for args, message in (
        (["report", "-r", str(tmp_path / "nowhere")], "does not exist"),
        (["report", "-r", str(res), "-f", "pdf"], "'pdf' is unknown"),
        (["report", "-r", str(tmp_path / "reports")], "no finished trials under"),
    ):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, RayotError) and message in str(result.exception), args


@pytest.mark.parametrize("columns", [None, "80", "120"])
def test_sweep_help_shows_each_exit_status_whole_on_its_own_line(columns: str | None):
    import inspect

    from rayot.cli import app
    from rayot.cli.sweep import sweep

    doc = inspect.cleandoc(sweep.__doc__ or "")
    statuses = doc.split("Exit status:\n", 1)[1].strip().splitlines()
    assert [line.split()[0] for line in statuses] == ["0", "1", "2", "3", "130"]
    env = {"COLUMNS": columns, "TERMINAL_WIDTH": None, "NO_COLOR": "1"}
    result = CliRunner().invoke(app, ["sweep", "--help"], env=env)
    assert result.exit_code == 0, result.output
    shown = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in result.output.splitlines()]
    assert "Exit status:" in shown
    for line in statuses:
        assert line in shown, f"{line!r} is not one line of the help:\n{result.output}"


def test_the_diagnostics_table_shows_each_variant_s_last_epoch(tmp_path):
    def history(offdiag: float) -> list[dict]:
        return [{"epoch": 1, "loss": 1.0, "diag/ot_offdiag_mass": 0.5},
                {"epoch": 2, "loss": 0.5, "diag/ot_offdiag_mass": offdiag}]

    _b2n(tmp_path, "prompt_ot", "dtd", 1, 80.0, 70.0, epoch_metrics=history(0.25))
    _b2n(tmp_path, "prompt_ot", "dtd", 2, 80.0, 70.0, epoch_metrics=history(0.75))
    _b2n(tmp_path, "zeroshot", "dtd", 1, 60.0, 75.0)  # no epochs, no diagnostics
    report = build_report(read_results([str(tmp_path)]), figures=False)
    table = _table(report, "diagnostics")
    assert [c.label for c in table.columns] == ["ot_offdiag_mass"]
    (row,) = table.rows
    assert row.label == "Prompt-OT" and row.cells[0].value == pytest.approx(0.5)
    assert row.cells[0].text == "0.5 ± 0.25" and row.cells[0].n == 2
    assert "ot_offdiag_mass" in to_markdown(report)
    plain = tmp_path / "none"
    _b2n(plain, "prompt_ot", "dtd", 1, 80.0, 70.0)  # results of an earlier version: no table
    assert "diagnostics" not in [t.key for t in build_report(read_results([str(plain)]), figures=False).tables]


# ------------------------------------------------------------------ self-describing results


def _trainer_rows(method: str, seed: int, base: float, novel: float) -> tuple[str, list[dict]]:
    """A base-to-novel trial's rows as the trainer builds them (rayot.train.rows), method facts included."""
    from rayot import config as C
    from rayot.train.rows import EvalResult, result_rows

    cfg = C.load_config(None, [f"method={method}", "data.dataset=dtd", "data.protocol=base2novel", f"seed={seed}"])
    evals = [EvalResult("base2novel", "dtd", split, round(acc * 10), 1000, 47)
             for split, acc in (("base", base), ("novel", novel))]
    return C.trial_id(cfg), result_rows(cfg, evals, train_seconds=1.0)


def _write_without_method_facts(loc: Path, tid: str, rows: list[dict]) -> None:
    """A trial's file as rayot before 0.4 wrote it: none of the ``method_*`` columns."""
    import pyarrow.parquet as pq

    loc.mkdir(parents=True, exist_ok=True)
    table = make_table(rows)
    pq.write_table(table.drop([c for c in table.column_names if c.startswith("method_")]), loc / f"{tid}.parquet")


TRIALS = [("prompt_ot", 84.0, 76.0), ("zeroshot", 80.0, 74.0), ("pointwise", 83.0, 75.0), ("coop", 82.0, 63.0)]


def test_rows_record_what_the_report_shows_of_their_method():
    from rayot import methods

    for name, *_ in TRIALS:
        _, rows = _trainer_rows(name, 1, 80.0, 70.0)
        m = methods.get(name)
        assert {(r["method_display"], r["method_label"], r["method_order"], r["method_trains"]) for r in rows} == {
            (m.display, m.label, m.order, m.trains)}


def test_results_without_the_method_columns_render_the_same_tables(tmp_path: Path):
    """Files of earlier versions (no method_* columns) render as today's: names, labels, order."""
    for name, base, novel in TRIALS:
        tid, rows = _trainer_rows(name, 1, base, novel)
        write_trial_rows(str(tmp_path / "now"), tid, rows)
        _write_without_method_facts(tmp_path / "before", tid, rows)
    before = read_results([str(tmp_path / "before")])
    assert before.column("method_display").null_count == before.num_rows
    now, earlier = _build(tmp_path / "now"), _build(tmp_path / "before")
    labels = [r.label for r in _table(now, "base2novel_comparison").rows]
    assert labels == ["CLIP (zero-shot)", "CoOp", "Point-wise (identity pairing)", "Prompt-OT"]
    assert to_markdown(earlier).replace(str(tmp_path / "before"), str(tmp_path / "now")) == to_markdown(now)


def test_a_method_not_installed_here_keeps_its_name_and_place_from_its_rows(tmp_path: Path):
    tid, rows = _trainer_rows("coop", 1, 82.0, 63.0)
    write_trial_rows(str(tmp_path), tid, rows)
    tid, rows = _trainer_rows("prompt_ot", 1, 84.0, 76.0)
    write_trial_rows(str(tmp_path), tid, rows)
    tid, rows = _trainer_rows("kgcoop", 1, 81.0, 72.0)  # rows of a plug-in: a name no registry knows
    plugin = [{**r, "method": "my_plugin", "method_display": "MyPlugin", "method_label": "v2",
               "method_order": 15, "method_trains": True} for r in rows]
    write_trial_rows(str(tmp_path), tid, plugin)
    labels = [r.label for r in _table(_build(tmp_path), "base2novel_comparison").rows]
    assert labels == ["CoOp", "MyPlugin (v2)", "Prompt-OT"]
    _write_without_method_facts(tmp_path, tid, plugin)  # as an earlier version wrote it: as spelled, last
    labels = [r.label for r in _table(_build(tmp_path), "base2novel_comparison").rows]
    assert labels == ["CoOp", "Prompt-OT", "my_plugin"]
