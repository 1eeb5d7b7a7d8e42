"""The tables of a prompt-learning paper, built from finished rows tagged with their variant.

Marks follow one rule in every table: a value with fewer seeds than the most any value of the
same table has is flagged "k/n seeds"; a missing value is an empty cell; an average over fewer
datasets (or targets) than the table holds is flagged "k/n datasets" and never wins "best".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rayot.metrics import DIAGNOSTIC_PREFIX
from rayot.report.aggregate import (
    B2NAverage,
    B2NCell,
    MeanOver,
    Stat,
    b2n_average,
    mean_over,
    one_per_seed,
    seed_stats,
)
from rayot.report.frame import SETTING_COLUMNS, SearchedVariant, Variant, variant_sort_key
from rayot.report.model import Cell, Column, ReportTable, Row
from rayot.report.names import (
    CROSS_TARGETS,
    DATASETS,
    DG_TARGETS,
    dataset_name,
    format_value,
    setting_label,
    sort_datasets,
)
from rayot.report.published import Published

log = logging.getLogger(__name__)

B2N, CROSS, DG, FEW = "base2novel", "cross_dataset", "domain_generalization", "few_shot"
SECTIONS = {
    "comparison": "Base-to-novel: methods compared",
    "published": "Measured against published numbers",
    "blocks": "Base-to-novel: per method",
    "panels": "Base-to-novel: per dataset",
    CROSS: "Cross-dataset transfer",
    DG: "Domain generalization",
    FEW: "Few-shot learning",
    "ablation": "Ablations",
    "diagnostics": "Training diagnostics",
    "searches": "Hyper-parameter searches on validation",
}


def _seed_flag(n: int, expected: int) -> str | None:
    return f"{n}/{expected} seeds" if n < expected else None


def _stat_cell(stat: Stat | None, expected: int) -> Cell:
    if stat is None:
        return Cell()
    return Cell(stat.mean, stat.std, stat.n, _seed_flag(stat.n, expected))


def _sortable(value: object) -> tuple:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, "" if value is None else str(value))


def _meta(v: Variant | SearchedVariant, **extra: str) -> dict[str, str]:
    meta = {"variant": v.label, "method": v.method}
    meta.update({k: format_value(val) for k, val in v.settings})
    if isinstance(v, SearchedVariant):
        meta["searched"] = ",".join(v.keys)
    meta.update(extra)
    return meta


def _coverage_note(have: Sequence[str], standard: Sequence[str], what: str) -> str | None:
    """Say when a table's datasets are not the protocol's, so its average is not the paper's."""
    if set(have) == set(standard):
        return None
    missing = [dataset_name(d) for d in standard if d not in have]
    extra = [dataset_name(d) for d in have if d not in standard]
    if len(missing) == len(standard):  # another world altogether (the synthetic demo)
        return (
            f"The protocol's average is over its {len(standard)} {what}; these results have none "
            f"of them, only {', '.join(extra)}."
        )
    text = f"The protocol's average is over the {len(standard)} {what}; these results have {len(have)}"
    if missing:
        text += f" (missing: {', '.join(missing)})"
    if extra:
        text += f" (not in the protocol: {', '.join(extra)})"
    return text + "."


def _dropped_note(dropped: int) -> list[str]:
    if not dropped:
        return []
    return [
        f"{dropped} result rows repeated a (variant, dataset, seed) already measured by another "
        "trial of the same protocol; the latest was kept."
    ]


# --------------------------------------------------------------------------- base-to-novel


@dataclass
class B2NResults:
    """Aggregated base-to-novel results: per variant and dataset, and the Average rows.

    ``searched``: the rows of settings chosen on validation (:mod:`rayot.report.search`), each
    beside its method's variants in the tables that compare rows (:meth:`rows`); their cells and
    averages are in ``cells`` and ``averages`` too, ``notes`` says what each is missing and
    ``chosen`` what its search chose per dataset.
    """

    datasets: list[str]
    variants: list[Variant]
    cells: dict[Variant | SearchedVariant, dict[str, B2NCell]]
    averages: dict[Variant | SearchedVariant, B2NAverage]
    expected: int  # the most seeds any cell has
    dropped: int
    backbones: dict[Variant, tuple[str, ...]]
    searched: list[SearchedVariant] = field(default_factory=list)
    notes: dict[SearchedVariant, list[str]] = field(default_factory=dict)
    chosen: dict[SearchedVariant, dict[str, str]] = field(default_factory=dict)

    def min_seeds(self, v: Variant | SearchedVariant) -> int:
        return min((c.n for c in self.cells[v].values()), default=self.expected)

    def rows(self) -> list[Variant | SearchedVariant]:
        """The variants, each searched row right after the last variant of its method (where its
        method ranks when that method has none)."""
        out: list[Variant | SearchedVariant] = list(self.variants)
        for sv in self.searched:
            mine = [i for i, v in enumerate(out) if v.method == sv.method]
            if mine:
                out.insert(mine[-1] + 1, sv)
                continue
            later = [i for i, v in enumerate(out) if v.about.rank > sv.about.rank]
            out.insert(later[0] if later else len(out), sv)
        return out


def b2n_rows(done: pd.DataFrame) -> pd.DataFrame:
    """The rows of the base-to-novel tables: a base or novel split of the dataset trained on."""
    return done[
        (done["protocol"] == B2N)
        & done["split"].isin(["base", "novel"])
        & (done["dataset"] == done["eval_dataset"])
    ]


def aggregate_b2n(done: pd.DataFrame) -> B2NResults | None:
    """Seed means, population std and HM per (variant, dataset); None without base2novel rows."""
    rows = b2n_rows(done)
    if rows.empty:
        return None
    rows, dropped = one_per_seed(rows, ["variant", "eval_dataset", "split"], B2N)
    stats = seed_stats(rows, ["variant", "eval_dataset", "split"])
    variants = sorted({k[0] for k in stats}, key=variant_sort_key)
    datasets = sort_datasets(rows["eval_dataset"])
    cells: dict[Variant, dict[str, B2NCell]] = {v: {} for v in variants}
    for v in variants:
        for d in datasets:
            base, novel = stats.get((v, d, "base")), stats.get((v, d, "novel"))
            if base is not None or novel is not None:
                cells[v][d] = B2NCell(base, novel)
    averages = {v: b2n_average(cells[v], datasets) for v in variants}
    expected = max(s.n for s in stats.values())
    backbones = {
        v: tuple(sorted(set(b))) for v, b in rows.groupby("variant", sort=False)["backbone"]
    }
    return B2NResults(datasets, variants, cells, averages, expected, dropped, backbones)


def _b2n_cells(cell: B2NCell | None, expected: int) -> list[Cell]:
    if cell is None:
        return [Cell(), Cell(), Cell()]
    hm = cell.hm
    hm_cell = Cell(hm, n=cell.n, flag=_seed_flag(cell.n, expected)) if hm is not None else Cell()
    return [_stat_cell(cell.base, expected), _stat_cell(cell.novel, expected), hm_cell]


def _average_flag(have: int, total: int, min_seeds: int, expected: int, what: str = "datasets") -> str | None:
    """E.g. "10/11 datasets; min 2/3 seeds": an average that is not over complete cells."""
    flags = []
    if have < total:
        flags.append(f"{have}/{total} {what}")
    if min_seeds < expected:
        flags.append(f"min {min_seeds}/{expected} seeds")
    return "; ".join(flags) or None


def _average_cells(avg: B2NAverage, total: int, min_seeds: int, expected: int) -> list[Cell]:
    flag = _average_flag(len(avg.datasets), total, min_seeds, expected)
    return [Cell(x, flag=flag, comparable=avg.complete) for x in (avg.base, avg.novel, avg.hm)]


def _bnh_columns(best: bool, group: str | None = None) -> list[Column]:
    return [
        Column("base", "Base", group, best),
        Column("novel", "Novel", group, best),
        Column("hm", "HM", group, best),
    ]


def _average_title(datasets: Sequence[str]) -> str:
    if len(datasets) == 1:
        return f"average over 1 dataset ({dataset_name(datasets[0])})"
    return f"average over {len(datasets)} datasets"


def b2n_comparison(res: B2NResults) -> ReportTable:
    """Variants side by side on the Average row; the best of each column bold."""
    table = ReportTable(
        key="base2novel_comparison",
        section=SECTIONS["comparison"],
        title=f"Base-to-novel generalization, {_average_title(res.datasets)}",
        row_header="Method",
        columns=_bnh_columns(best=True),
        notes=_dropped_note(res.dropped),
    )
    for v in res.rows():
        cells = _average_cells(
            res.averages[v], len(res.datasets), res.min_seeds(v), res.expected
        )
        table.rows.append(Row(v.label, cells, _meta(v, dataset="average")))
    note = _coverage_note(res.datasets, DATASETS, "datasets")
    if note:
        table.notes.append(note)
    if len({b for bs in res.backbones.values() for b in bs}) > 1:
        table.notes.append(
            "The methods were run on different backbones: "
            + "; ".join(f"{v.label}: {', '.join(res.backbones[v])}" for v in res.variants)
            + "."
        )
    table.notes += _searched_notes(res)
    table.mark_best()
    return table


def _searched_notes(res: B2NResults, only: SearchedVariant | None = None) -> list[str]:
    """What a row chosen on validation is, and what it is missing."""
    searched = [sv for sv in res.searched if only is None or sv == only]
    if not searched:
        return []
    notes = [
        "A row '… chosen on validation' holds, per dataset, the test results of the trials that "
        "retrained the setting its search chose on validation (one per seed; the search table says "
        "what was chosen); a retrain trial with the setting of another row serves both."
    ]
    return notes + [n for sv in searched for n in res.notes.get(sv, [])]


def b2n_block(res: B2NResults, v: Variant | SearchedVariant) -> ReportTable:
    """One variant (or searched row): a row per dataset (mean ± std over seeds, HM of the means)
    and the Average."""
    cells = res.cells[v]
    expected = max((c.n for c in cells.values()), default=res.expected)
    seeds = sorted({s for c in cells.values() for st in (c.base, c.novel) if st for s in st.seeds})
    which = f"seeds {', '.join(map(str, seeds))}" if seeds else "no test results yet"
    table = ReportTable(
        key=f"base2novel__{v.key}",
        section=SECTIONS["blocks"],
        title=f"{v.label}: base-to-novel ({which})",
        row_header="Dataset",
        columns=_bnh_columns(best=False),
        show_std=True,
    )
    for d in res.datasets:
        table.rows.append(Row(dataset_name(d), _b2n_cells(cells.get(d), expected), _meta(v, dataset=d)))
    avg = _average_cells(res.averages[v], len(res.datasets), res.min_seeds(v), expected)
    table.rows.append(Row("Average", avg, _meta(v, dataset="average"), rule_before=True))
    if isinstance(v, SearchedVariant):
        chosen = res.chosen.get(v, {})
        if chosen:
            table.notes.append(
                "Chosen on validation: "
                + "; ".join(f"{dataset_name(d)}: {text}" for d, text in chosen.items())
                + "."
            )
        table.notes += _searched_notes(res, v)
    return table


def b2n_panel(res: B2NResults, dataset: str) -> ReportTable:
    """One dataset: variants as rows, Base / Novel / HM, the best of each column bold."""
    table = ReportTable(
        key=f"base2novel_{dataset}",
        section=SECTIONS["panels"],
        title=f"{dataset_name(dataset)}: base-to-novel",
        row_header="Method",
        columns=_bnh_columns(best=True),
        show_std=True,
    )
    for v in res.rows():
        cells = _b2n_cells(res.cells[v].get(dataset), res.expected)
        table.rows.append(Row(v.label, cells, _meta(v, dataset=dataset)))
    for sv in res.searched:
        chosen = res.chosen.get(sv, {}).get(dataset)
        if chosen is not None:
            table.notes.append(f"{sv.label}: {chosen}, chosen on validation.")
    table.mark_best()
    return table


# ----------------------------------------------------------------------------- ablations


def ablation_tables(res: B2NResults) -> list[ReportTable]:
    """One table per (method, swept setting): the method's variants ordered by that setting.

    A setting is swept when it takes more than one value among the base-to-novel variants of a
    method. Rows that share the other settings are grouped.
    """
    tables = []
    by_method: dict[str, list[Variant]] = {}
    for v in res.variants:
        by_method.setdefault(v.method, []).append(v)
    per_dataset = len(res.datasets) > 1
    for method, variants in by_method.items():
        keys = [k for k, _ in variants[0].settings]
        for key in keys:
            values = {dict(v.settings)[key] for v in variants}
            if len(values) < 2:
                continue
            others = [k for k in keys if k != key]

            def order(v: Variant, others: list[str] = others, key: str = key) -> tuple:
                s = dict(v.settings)
                return (tuple(_sortable(s[o]) for o in others), _sortable(s[key]))

            columns = _bnh_columns(best=True, group="Average")
            if per_dataset:
                columns += [
                    Column(f"hm:{d}", dataset_name(d), "HM per dataset", True) for d in res.datasets
                ]
            table = ReportTable(
                key=f"ablation__{method}__{key}",
                section=SECTIONS["ablation"],
                title=f"{variants[0].about.display}: ablation over {setting_label(key)} "
                f"(base-to-novel, {_average_title(res.datasets)})",
                row_header="Setting",
                columns=columns,
            )
            previous = None
            for v in sorted(variants, key=order):
                s = dict(v.settings)
                if v.method == method:
                    label = ", ".join(
                        f"{setting_label(k)}={format_value(s[k])}" for k in [key, *others]
                    )
                    group = tuple(_sortable(s[o]) for o in others)
                else:
                    label, group = v.label, None
                cells = _average_cells(
                    res.averages[v], len(res.datasets), res.min_seeds(v), res.expected
                )
                if per_dataset:
                    cells += [
                        _b2n_cells(res.cells[v].get(d), res.expected)[2] for d in res.datasets
                    ]
                rule = previous is not None and group != previous
                table.rows.append(Row(label, cells, _meta(v, dataset="average"), rule_before=rule))
                previous = group
            table.mark_best()
            tables.append(table)
    return tables


# ---------------------------------------------------------------------- transfer protocols


def transfer_table(done: pd.DataFrame, protocol: str) -> ReportTable | None:
    """Cross-dataset (``cross_dataset``) or domain generalization (``domain_generalization``).

    Rows are variants; columns the source dataset (evaluated on itself, whatever the protocol of
    the trial that measured it), the targets, and the mean over the targets.
    """
    evald, trained, split = done["eval_dataset"], done["dataset"], done["split"]
    if protocol == CROSS:
        mask = (done["protocol"] == CROSS) & ~evald.isin(DG_TARGETS) & (evald != trained)
        standard, what = CROSS_TARGETS, "targets"
    else:
        mask = ((done["protocol"] == DG) & (evald != trained)) | (
            (done["protocol"] == CROSS) & evald.isin(DG_TARGETS)
        )
        standard, what = DG_TARGETS, "targets"
    targets_rows = done[mask & (split == "all")]
    if targets_rows.empty:
        return None
    sources = sort_datasets(targets_rows["dataset"])
    # the source column must come from trials with the settings of the target trials
    # (a 16-shot imagenet trial, not a 1-shot one of the few-shot protocol)
    sig_cols = ["variant", "dataset", *SETTING_COLUMNS]
    signatures = set(targets_rows[sig_cols].itertuples(index=False, name=None))
    src = done[(done["eval_dataset"] == done["dataset"]) & done["dataset"].isin(sources) & (split == "all")]
    src = src[[t in signatures for t in src[sig_cols].itertuples(index=False, name=None)]]
    rows, dropped = one_per_seed(
        pd.concat([targets_rows, src]), ["variant", "dataset", "eval_dataset"], protocol
    )
    stats = seed_stats(rows, ["variant", "dataset", "eval_dataset"])
    expected = max(s.n for s in stats.values())
    targets = sort_datasets(targets_rows["eval_dataset"])
    source_label = dataset_name(sources[0]) if len(sources) == 1 else "Source"
    columns = [Column("source", source_label, "Source", True)]
    columns += [Column(t, dataset_name(t), "Target", True) for t in targets]
    columns.append(Column("average", "Average", "Target", True))
    title = "Cross-dataset transfer" if protocol == CROSS else "Domain generalization"
    table = ReportTable(
        key=protocol,
        section=SECTIONS[protocol],
        title=f"{title} (trained on {', '.join(map(dataset_name, sources))}; "
        f"average over {len(targets)} {what})",
        row_header="Method",
        columns=columns,
        notes=_dropped_note(dropped),
    )
    pairs = sorted({(k[0], k[1]) for k in stats}, key=lambda p: (variant_sort_key(p[0]), p[1]))
    for v, source in pairs:
        per_target = {t: stats[(v, source, t)] for t in targets if (v, source, t) in stats}
        if not per_target:
            continue  # a source row whose trial evaluated no target of this table
        avg: MeanOver = mean_over(per_target, targets)
        least = min(s.n for s in per_target.values())
        flag = _average_flag(len(avg.datasets), len(targets), least, expected, what)
        cells = [_stat_cell(stats.get((v, source, source)), expected)]
        cells += [_stat_cell(per_target.get(t), expected) for t in targets]
        cells.append(Cell(avg.value, flag=flag, comparable=avg.complete))
        label = v.label if len(sources) == 1 else f"{v.label} (trained on {dataset_name(source)})"
        table.rows.append(Row(label, cells, _meta(v, source=source)))
    note = _coverage_note(targets, standard, what)
    if note:
        table.notes.append(note)
    table.mark_best()
    return table


# ------------------------------------------------------------------------------ few-shot


@dataclass
class FewShotResults:
    datasets: list[str]
    shots: list[int]
    variants: list[Variant]
    stats: dict[tuple, Stat]  # (variant, dataset, shots) -> Stat
    expected: int
    dropped: int

    def average(self, v: Variant, k: int) -> MeanOver:
        per = {d: self.stats[(v, d, k)] for d in self.datasets if (v, d, k) in self.stats}
        return mean_over(per, self.datasets)


def aggregate_few_shot(done: pd.DataFrame) -> FewShotResults | None:
    rows = done[
        (done["protocol"] == FEW) & (done["split"] == "all") & (done["dataset"] == done["eval_dataset"])
    ]
    if rows.empty:
        return None
    rows, dropped = one_per_seed(rows, ["variant", "eval_dataset", "shots"], FEW)
    stats = seed_stats(rows, ["variant", "eval_dataset", "shots"])
    variants = sorted({k[0] for k in stats}, key=variant_sort_key)
    shots = sorted({int(k[2]) for k in stats})
    stats = {(v, d, int(k)): s for (v, d, k), s in stats.items()}
    expected = max(s.n for s in stats.values())
    return FewShotResults(sort_datasets(rows["eval_dataset"]), shots, variants, stats, expected, dropped)


def _few_avg_cell(res: FewShotResults, v: Variant, k: int, expected: int) -> Cell:
    avg = res.average(v, k)
    least = min((res.stats[(v, d, k)].n for d in avg.datasets), default=expected)
    flag = _average_flag(len(avg.datasets), len(res.datasets), least, expected)
    return Cell(avg.value, flag=flag, comparable=avg.complete)


def few_shot_tables(res: FewShotResults) -> list[ReportTable]:
    """The average accuracy per number of shots (variants compared), then one table per variant."""
    columns = [Column(f"shots={k}", f"{k} shot{'s' if k != 1 else ''}", "Shots", True) for k in res.shots]
    comparison = ReportTable(
        key="few_shot_comparison",
        section=SECTIONS[FEW],
        title=f"Few-shot accuracy, {_average_title(res.datasets)}",
        row_header="Method",
        columns=columns,
        notes=_dropped_note(res.dropped),
    )
    for v in res.variants:
        cells = [_few_avg_cell(res, v, k, res.expected) for k in res.shots]
        comparison.rows.append(Row(v.label, cells, _meta(v, dataset="average")))
    comparison.mark_best()
    tables = [comparison]
    for v in res.variants:
        mine = [s for (w, _, _), s in res.stats.items() if w == v]
        expected = max(s.n for s in mine)
        table = ReportTable(
            key=f"few_shot__{v.key}",
            section=SECTIONS[FEW],
            title=f"{v.label}: few-shot accuracy",
            row_header="Dataset",
            columns=[Column(c.key, c.label, c.group, False) for c in columns],
            show_std=True,
        )
        for d in res.datasets:
            cells = [_stat_cell(res.stats.get((v, d, k)), expected) for k in res.shots]
            table.rows.append(Row(dataset_name(d), cells, _meta(v, dataset=d)))
        avg = [_few_avg_cell(res, v, k, expected) for k in res.shots]
        table.rows.append(Row("Average", avg, _meta(v, dataset="average"), rule_before=True))
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------- published


def _delta_note(res: B2NResults, without: Sequence[Variant], refs: Sequence[Published]) -> str:
    """One line: why (some) measured rows have no difference to the published numbers."""
    theirs = {tuple(sorted(p.datasets)) for p in refs}
    standard = list(refs[0].datasets) if len(theirs) == 1 else []
    if set(standard) == set(DATASETS):
        over = f"the {len(DATASETS)} base-to-novel datasets"
    elif standard:
        over = f"{len(standard)} datasets ({', '.join(dataset_name(d) for d in standard)})"
    else:
        over = "the datasets of each paper"
    if len(without) < len(res.variants):
        labels = ", ".join(v.label for v in without)
        whose = "its average is" if len(without) == 1 else "their averages are"
        return f"No Δ for {labels}: {whose} not over {over}, as the published ones are."
    have = [d for d in res.datasets if any(d in res.averages[v].datasets for v in without)]
    missing = [dataset_name(d) for d in standard if d not in have]
    extra = [dataset_name(d) for d in have if d not in standard]
    if len(have) <= 3 or len(missing) == len(standard):
        measured = ", ".join(dataset_name(d) for d in have) or "no complete dataset"
    elif missing:
        measured = f"{len(have)} datasets, without {', '.join(missing)}"
    else:
        measured = f"{len(have)} datasets, with {', '.join(extra)}"
    return f"No Δ: the published averages are over {over}, the measured ones over {measured}."


def published_table(
    res: B2NResults | None, published: Sequence[Published], setting: str, backbones: Sequence[str]
) -> ReportTable:
    """Published Average rows, then the measured ones with their difference (measured − published).

    A measured method is compared with its own published row when there is one (the rows' keys are
    method names), otherwise with the published row of highest HM. Differences are measured minus
    published, in points, and shown only where the measured average is over the datasets the
    published one averages over (the 11 of the benchmark); elsewhere (the one-dataset synthetic
    demo, a method missing a dataset) the published rows stay for reference, the measured values
    do not compete with them for "best", and a note says why there is no difference. Without
    any difference to show, the table has no difference columns at all.
    """
    by_key = {p.key: p for p in published}
    strongest = max(published, key=lambda p: p.hm)
    ref_of: dict[Variant, Published] = {}
    if res is not None:
        for v in res.variants:
            ref = by_key.get(v.method, strongest)
            if set(res.averages[v].datasets) == set(ref.datasets):
                ref_of[v] = ref
    with_delta = bool(ref_of)
    columns = _bnh_columns(best=True)
    if with_delta:
        columns += [
            Column("d_base", "ΔBase"),
            Column("d_novel", "ΔNovel"),
            Column("d_hm", "ΔHM"),
            Column("reference", "Δ against"),
        ]
    title = (
        "Base-to-novel averages: measured against published"
        if with_delta or res is None
        else "Base-to-novel averages: published, for reference, and measured"
    )
    table = ReportTable(
        key="published",
        section=SECTIONS["published"],
        title=title,
        row_header="Method",
        columns=columns,
    )

    def no_delta() -> list[Cell]:
        return [Cell(), Cell(), Cell(), Cell(text="")] if with_delta else []

    # one citation number per source (several rows come from one paper)
    cite: dict[str, int] = {}
    for p in published:
        cite.setdefault(p.source, len(cite) + 1)
    for p in published:
        cells = [Cell(p.base), Cell(p.novel), Cell(p.hm), *no_delta()]
        meta = {"kind": "published", "method": p.key, "source": p.source}
        table.rows.append(Row(f"{p.name} [{cite[p.source]}]", cells, meta))
    table.notes.append(f"Rows marked [n] are published numbers: {setting}.")
    table.notes += [f"[{i}] {source}" for source, i in cite.items()]
    if res is None:
        table.notes.append("No base-to-novel results were measured, so there is nothing to compare.")
        table.mark_best()
        return table
    for j, v in enumerate(res.variants):
        avg = res.averages[v]
        cells = _average_cells(avg, len(res.datasets), res.min_seeds(v), res.expected)
        meta = _meta(v, kind="measured")
        ref = ref_of.get(v)
        if ref is None:
            for c in cells:  # an average over other datasets: not comparable with the published
                c.comparable = False
            cells += no_delta()
        else:
            for measured, theirs in ((avg.base, ref.base), (avg.novel, ref.novel), (avg.hm, ref.hm)):
                diff = None if measured is None else measured - theirs
                cells.append(Cell(diff, signed=True, comparable=False))
            cells.append(Cell(text=ref.name))
            meta["reference"] = ref.key
        table.rows.append(Row(v.label, cells, meta, rule_before=j == 0))
    without = [v for v in res.variants if v not in ref_of]
    if without:  # first, where it is read
        refs = [by_key.get(v.method, strongest) for v in without]
        table.notes.insert(0, _delta_note(res, without, refs))
    table.notes.append(f"Measured backbone(s): {', '.join(backbones)}.")
    table.mark_best()
    return table


# ----------------------------------------------------------------------------- diagnostics

def diagnostics_table(done: pd.DataFrame) -> ReportTable | None:
    """What the methods reported while training: per variant, each diagnostic of the last epoch
    trained (its mean over that epoch's steps), averaged over the variant's trials (± across them).

    ``None`` when no trial holds diagnostics (a method without any, or results of an earlier
    version without ``epoch_metrics``).
    """
    values: dict[Variant, dict[str, list[float]]] = {}
    for _, row in done.drop_duplicates("trial_id").iterrows():
        try:
            history = json.loads(row["epoch_metrics"]) if isinstance(row["epoch_metrics"], str) else []
        except json.JSONDecodeError:
            log.warning("trial %s: its epoch_metrics are not JSON; left out of the diagnostics", row["trial_id"])
            continue
        last = history[-1] if history else {}
        for key, value in last.items():
            if key.startswith(DIAGNOSTIC_PREFIX) and isinstance(value, (int, float)):
                values.setdefault(row["variant"], {}).setdefault(key[len(DIAGNOSTIC_PREFIX):], []).append(float(value))
    if not values:
        return None
    names = sorted({n for d in values.values() for n in d})
    table = ReportTable(
        key="diagnostics",
        section=SECTIONS["diagnostics"],
        title="Training diagnostics: the last epoch trained, mean over trials",
        row_header="Method",
        columns=[Column(n, n) for n in names],
        show_std=False,
    )
    for v in sorted(values, key=variant_sort_key):
        cells = []
        for name in names:
            found = values[v].get(name)
            if not found:
                cells.append(Cell())
                continue
            mean, std = float(np.mean(found)), float(np.std(found))
            text = f"{mean:.3g}" + (f" ± {std:.2g}" if len(found) > 1 else "")
            cells.append(Cell(mean, std, len(found), text=text))
        table.rows.append(Row(v.label, cells, _meta(v)))
    table.notes.append(
        "A method reports its diagnostics while training, each the mean over an epoch's steps; what "
        "each measures is in the method's documentation (docs/methods.md, README). Every epoch's "
        "values are in the result rows (epoch_metrics) and in the trackers (diag/<name>)."
    )
    return table
