"""From a results table to a :class:`Report`: select, aggregate, tabulate, draw."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from rayot.errors import RayotError
from rayot.report import figures as F
from rayot.report import tables as T
from rayot.report.frame import assign_variants, select, to_frame
from rayot.report.model import Report, ReportTable
from rayot.report.published import load_published

log = logging.getLogger(__name__)

#: The aggregation rule, stated in every format of the report.
RULE = (
    "Per dataset, Base and Novel are the means over seeds of the per-seed top-1 accuracies "
    "(full precision; ± is the population standard deviation across seeds) and HM = 2·B·N/(B+N) "
    "of those means. The Average row is the arithmetic mean of Base and of Novel over the "
    "datasets, then the HM of those two averages (not the mean of per-dataset HMs). "
    "Cross-dataset and domain-generalization averages are means over the targets, the source "
    "shown apart. A value with fewer seeds than the most in its table is marked 'k/n seeds', a "
    "missing value is '—', an average over fewer datasets or targets than its table holds is marked "
    "'k/n datasets' and never bolded, and an average over values with fewer seeds is marked "
    "'min k/n seeds'. Bold: the best value of a column. Trials with "
    "different settings are never pooled: each variant is its own row."
)


def build_report(
    table: pa.Table | pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    published: bool = False,
    figures: bool = True,
    sources: Sequence[str] = (),
    title: str = "rayot report",
) -> Report:
    """Every table and figure the results support.

    Args:
        table: result rows of :data:`rayot.results.SCHEMA` (e.g. from ``read_results``).
        methods: keep these methods; an entry may fix settings: ``"<method>:<setting>=<value>"``.
        datasets: keep these evaluated datasets.
        published: add the published averages, and the differences to them where the measured
            averages are over the datasets the published ones average over.
        figures: draw the figures (PNG bytes in the report).
        sources: where the rows came from, for messages and the report's header.
    """
    where = ", ".join(sources) if sources else "the given results"
    done, failed = to_frame(table)
    if done.empty:
        extra = f" ({len(failed)} failed trials)" if len(failed) else ""
        raise RayotError(f"no finished trials under {where}{extra}")
    done, failed = select(done, failed, methods=methods, datasets=datasets)
    done = assign_variants(done)

    b2n = T.aggregate_b2n(done)
    few = T.aggregate_few_shot(done)
    comparison: ReportTable | None = None
    tables: list[ReportTable] = []
    if b2n is not None:
        comparison = T.b2n_comparison(b2n)
        tables.append(comparison)
    if published:
        setting, rows = load_published()
        backbones = sorted(done["backbone"].unique())
        tables.append(T.published_table(b2n, rows, setting, backbones))
    if b2n is not None:
        tables += [T.b2n_block(b2n, v) for v in b2n.variants]
        tables += [T.b2n_panel(b2n, d) for d in b2n.datasets]
    transfers = [t for t in (T.transfer_table(done, T.CROSS), T.transfer_table(done, T.DG)) if t]
    tables += transfers
    few_tables = T.few_shot_tables(few) if few is not None else []
    tables += few_tables
    if b2n is not None:
        tables += T.ablation_tables(b2n)
    diagnostics = T.diagnostics_table(done)
    if not tables:
        protocols = ", ".join(sorted(done["protocol"].unique()))
        raise RayotError(f"results under {where}: no rows of a known protocol (found: {protocols})")
    main = comparison or (transfers[0] if transfers else few_tables[0] if few_tables else tables[0])
    if diagnostics is not None:
        tables.append(diagnostics)

    figs, skipped = F.all_figures(b2n, few) if figures else ([], [])
    n_trials = done["trial_id"].nunique()
    notes = [
        f"{n_trials} finished trials ({len(done)} result rows) from {where}; "
        f"{len(failed)} failed trials.",
    ]
    return Report(
        title=title,
        rule=RULE,
        tables=tables,
        main=main,
        figures=figs,
        skipped_figures=skipped,
        notes=notes,
        failed=failed,
        sources=list(sources),
        n_trials=n_trials,
    )
