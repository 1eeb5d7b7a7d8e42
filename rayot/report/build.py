"""From a results table to a :class:`Report`: select, aggregate, tabulate, draw."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayot.errors import RayotError
from rayot.report import figures as F
from rayot.report import search as S
from rayot.report import tables as T
from rayot.report.frame import assign_variants, search_trial_ids, select, to_frame
from rayot.report.model import Report, ReportTable
from rayot.report.names import describe_methods
from rayot.report.published import load_published
from rayot.search_records import search_samples_with_test_rows

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


def without_tested_search_samples(table: pa.Table | pd.DataFrame,
                                  searches: pa.Table | pd.DataFrame | None) -> pa.Table | pd.DataFrame:
    """``table`` less the test rows that search samples wrote with validation switched off
    (:func:`rayot.search_records.search_samples_with_test_rows`), each trial named in one warning."""
    found = search_samples_with_test_rows(table, searches) if searches is not None else {}
    for tid, sample in found.items():
        log.warning("results of trial %s (%s.parquet): test rows written by %s, which ran with validation "
                    "switched off; left out of every table", tid, tid, sample)
    if not found:
        return table
    if isinstance(table, pa.Table):
        return table.filter(pc.invert(pc.is_in(table.column("trial_id"), value_set=pa.array(list(found)))))
    return table[~table["trial_id"].isin(list(found))]


def build_report(
    table: pa.Table | pd.DataFrame,
    *,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    published: bool = False,
    figures: bool = True,
    sources: Sequence[str] = (),
    title: str = "rayot report",
    searches: pa.Table | pd.DataFrame | None = None,
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
        searches: the hyper-parameter searches' records (:data:`rayot.search_records.SEARCH_SCHEMA`, e.g.
            from ``read_search_records`` of the same locations): a table of the searches, a figure
            of their validation scores, and beside each searched method's rows in the base-to-novel
            tables a row of the settings chosen on validation. None or empty: none of these.

    Rows of search trials (validation scores) are in no table, average or figure of test results,
    whether or not ``searches`` is given.
    """
    where = ", ".join(sources) if sources else "the given results"
    table = without_tested_search_samples(table, searches)
    done, failed = to_frame(table)
    groups: dict = {}
    if searches is not None:
        found = S.select_searches(S.read_searches(searches), methods=methods, datasets=datasets)
        groups = S.group_searches(found, describe_methods(done))
    if done.empty and not groups:
        extra = f" ({len(failed)} failed trials)" if len(failed) else ""
        searched = search_trial_ids(table.to_pandas() if isinstance(table, pa.Table) else table)
        if searched:
            extra += (f"; the rows of {len(searched)} search trials are validation scores, in no table "
                      "(their search records show them)")
        raise RayotError(f"no finished trials under {where}{extra}")
    if not done.empty:
        done, failed = select(done, failed, methods=methods, datasets=datasets)
    done = assign_variants(done)

    b2n = T.aggregate_b2n(done)
    if b2n is not None and groups:
        S.add_to_b2n(b2n, done, groups)
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
        tables += [T.b2n_block(b2n, v) for v in b2n.rows()]
        tables += [T.b2n_panel(b2n, d) for d in b2n.datasets]
    transfers = [t for t in (T.transfer_table(done, T.CROSS), T.transfer_table(done, T.DG)) if t]
    tables += transfers
    few_tables = T.few_shot_tables(few) if few is not None else []
    tables += few_tables
    if b2n is not None:
        tables += T.ablation_tables(b2n)
    if groups:
        tables.append(S.search_table(groups, set(done["trial_id"])))
    diagnostics = T.diagnostics_table(done)
    if not tables:
        protocols = ", ".join(sorted(done["protocol"].unique()))
        raise RayotError(f"results under {where}: no rows of a known protocol (found: {protocols})")
    main = comparison or (transfers[0] if transfers else few_tables[0] if few_tables else tables[0])
    if diagnostics is not None:
        tables.append(diagnostics)

    figs, skipped = F.all_figures(b2n, few) if figures else ([], [])
    if figures and groups:
        drawn = F.search_scores(groups)
        if isinstance(drawn, str):
            log.info("figure skipped: %s", drawn)
            skipped.append(drawn)
        else:
            figs.append(drawn)
    n_trials = done["trial_id"].nunique()
    notes = [
        f"{n_trials} finished trials ({len(done)} result rows) from {where}; "
        f"{len(failed)} failed trials.",
    ]
    if groups:
        n_searches = sum(len(g) for g in groups.values())
        n_samples = sum(len(s.samples) for g in groups.values() for s in g)
        notes.append(
            f"{n_searches} hyper-parameter search{'es' if n_searches != 1 else ''} ({n_samples} "
            "samples, each a search trial scored on validation): their validation scores are in the "
            "search table and its figure only; no other table, average or figure uses them."
        )
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
