"""The report's figures, drawn with matplotlib's Agg canvas straight to PNG bytes.

Each builder returns a :class:`~rayot.report.model.Figure`, or a sentence saying why the results
cannot support it (the report logs it and shows it in place of the figure). No pyplot: figures
never touch global state or a display.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rayot.report.frame import SearchedVariant, Variant
from rayot.report.model import Figure
from rayot.report.names import dataset_name, format_value, setting_label, sort_datasets
from rayot.report.search import METRIC_AXES, Search
from rayot.report.tables import B2NResults, FewShotResults

log = logging.getLogger(__name__)
_DPI = 130


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no "Software" stamp, so the same results give the same bytes across matplotlib builds
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return (n + cols - 1) // cols, cols


def _pad(values: list[float], scale: str) -> tuple[float, float]:
    """Axis limits a little beyond the data, the same on every panel."""
    lo, hi = min(values), max(values)
    if scale == "log":
        return lo / 1.5, hi * 1.5
    if scale == "symlog":
        return -0.05 * max(hi, 1e-9), hi * 1.5
    span = hi - lo or 1.0
    return lo - 0.05 * span, hi + 0.05 * span


def hm_vs_lambda(res: B2NResults | None) -> Figure | str:
    """HM against λ, a line per method (and per combination of its other settings), per dataset."""
    if res is None:
        return "HM against λ: no base-to-novel results."
    series: list[tuple[str, list[tuple[float, Variant]]]] = []
    for method in dict.fromkeys(v.method for v in res.variants):
        variants = [v for v in res.variants if v.method == method]
        keys = [k for k, _ in variants[0].settings]
        if "lambda_ot" not in keys:
            continue
        others = [k for k in keys if k != "lambda_ot"]
        groups: dict[tuple, list[tuple[float, Variant]]] = {}
        for v in variants:
            s = dict(v.settings)
            groups.setdefault(tuple(s[o] for o in others), []).append((float(s["lambda_ot"]), v))
        for other_values, points in groups.items():
            if len({x for x, _ in points}) < 2:
                continue
            name = variants[0].about.display
            extra = ", ".join(f"{setting_label(k)}={format_value(x)}" for k, x in zip(others, other_values, strict=True))
            series.append((f"{name} ({extra})" if extra else name, sorted(points, key=lambda p: p[0])))
    if not series:
        return "HM against λ: no method was run at more than one λ value."
    # a method that trains nothing (the frozen model): a reference line
    references = [v for v in res.variants if not v.about.trains]
    panels = ["average", *res.datasets] if len(res.datasets) > 1 else ["average"]
    nrows, ncols = _grid(len(panels))
    fig = MplFigure(figsize=(3.6 * ncols, 2.9 * nrows))
    lambdas = sorted({x for _, pts in series for x, _ in pts})
    positive = [x for x in lambdas if x > 0]
    colors = _colors(len(series) + len(references))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for (label, points), color in zip(series, colors, strict=False):
            xs, ys, hollow = [], [], []
            for x, v in points:
                if panel == "average":
                    y, complete = res.averages[v].hm, res.averages[v].complete
                else:
                    cell = res.cells[v].get(panel)
                    y, complete = (cell.hm if cell else None), True
                if y is not None:
                    xs.append(x)
                    ys.append(y)
                    hollow.append(not complete)
            ax.plot(xs, ys, "o-", color=color, label=label, markersize=4)
            for x, y, h in zip(xs, ys, hollow, strict=True):
                if h:  # an average over fewer datasets than the others
                    ax.plot([x], [y], "o", color=color, markerfacecolor="white", markersize=6)
        for v, color in zip(references, colors[len(series):], strict=False):
            y = res.averages[v].hm if panel == "average" else (
                res.cells[v][panel].hm if panel in res.cells[v] else None
            )
            if y is not None:
                ax.axhline(y, color=color, linestyle="--", linewidth=1, label=v.label)
        # λ grids are usually geometric (0.1, 1, 10); symlog keeps a λ = 0 point on the axis
        if positive and 0.0 in lambdas and len(positive) > 1:
            ax.set_xscale("symlog", linthresh=min(positive))
        elif positive and 0.0 not in lambdas and max(positive) / min(positive) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(lambdas, [format_value(x) for x in lambdas])
        ax.set_xlim(*_pad(lambdas, ax.get_xscale()))
        title = "Average" if panel == "average" else dataset_name(panel)
        if panel == "average" and any(not res.averages[v].complete for _, pts in series for _, v in pts):
            title += " (hollow: fewer datasets)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("λ", fontsize=8)
        ax.set_ylabel("HM (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return Figure("hm_vs_lambda", "Harmonic mean of base and novel accuracy against λ", _png(fig))


def base_vs_novel(res: B2NResults | None) -> Figure | str:
    """Novel against base accuracy: small points per dataset, a large one for each Average."""
    if res is None:
        return "Base against novel accuracy: no base-to-novel results."
    fig = MplFigure(figsize=(6.2, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    points = []
    for v, color in zip(res.variants, _colors(len(res.variants)), strict=True):
        ds = [c for c in res.cells[v].values() if c.hm is not None]
        b = [c.base.mean for c in ds]  # type: ignore[union-attr]
        n = [c.novel.mean for c in ds]  # type: ignore[union-attr]
        ax.scatter(b, n, s=14, color=color, alpha=0.45)
        avg = res.averages[v]
        if avg.hm is not None:
            face = color if avg.complete else "white"
            ax.scatter([avg.base], [avg.novel], s=90, color=face, edgecolors=[color], linewidths=1.5,
                       label=v.label + ("" if avg.complete else " (incomplete)"), zorder=3)
        points += list(zip(b, n, strict=True))
    if not points:
        return "Base against novel accuracy: no dataset has both base and novel results."
    xs, ys = np.array(points).T  # (2, n_points)
    lo = max(0.0, min(xs.min(), ys.min()) - 5)
    hi = min(100.0, max(xs.max(), ys.max()) + 5)
    grid = np.linspace(lo, hi, 200)
    bb, nn = np.meshgrid(grid, grid)  # (200, 200)
    hm = 2 * bb * nn / np.maximum(bb + nn, 1e-9)
    levels = [x for x in range(10, 100, 10) if lo < x < hi]
    if levels:  # iso-HM curves: a point's HM can be read off its position
        contours = ax.contour(bb, nn, hm, levels=levels, colors="0.8", linewidths=0.7)
        ax.clabel(contours, fmt="HM %g", fontsize=6)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("Base accuracy (%)")
    ax.set_ylabel("Novel accuracy (%)")
    ax.set_title("Base against novel accuracy (large: average; small: datasets)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return Figure("base_vs_novel", "Novel against base accuracy per method", _png(fig))


def hm_bars(res: B2NResults | None) -> Figure | str:
    """HM per dataset (and Average), one bar per variant."""
    if res is None:
        return "Per-dataset bars: no base-to-novel results."
    groups = [*res.datasets, "average"]
    width = 0.8 / len(res.variants)
    fig = MplFigure(figsize=(max(5.0, min(14.0, 2 + 0.18 * len(groups) * len(res.variants))), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    lowest = 100.0
    for i, (v, color) in enumerate(zip(res.variants, _colors(len(res.variants)), strict=True)):
        heights = []
        for g in groups:
            if g == "average":
                y = res.averages[v].hm
            else:
                cell = res.cells[v].get(g)
                y = cell.hm if cell else None
            heights.append(np.nan if y is None else y)
        lowest = min([lowest, *(h for h in heights if not np.isnan(h))])
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, color=color, label=v.label)
    rotate = len(groups) > 4
    ax.set_xticks(x, [dataset_name(g) if g != "average" else "Average" for g in groups],
                  rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    # HM values of compared methods sit within a few points: start the axis below the lowest bar
    bottom = max(0.0, 10 * np.floor((lowest - 5) / 10))
    ax.set_ylim(bottom, 100 if bottom == 0 else None)
    ax.set_ylabel("HM (%)")
    title = "Harmonic mean of base and novel accuracy per dataset"
    ax.set_title(title + (f" (axis starts at {bottom:g})" if bottom else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28 if rotate else -0.12),
              ncol=min(4, len(res.variants)), frameon=False)
    return Figure("hm_per_dataset", "HM per dataset and method", _png(fig))


def few_shot_curves(res: FewShotResults) -> Figure | str:
    """Average accuracy against the number of shots, one line per variant."""
    if len(res.shots) < 2:
        return "Few-shot curves: only one number of shots in the results."
    fig = MplFigure(figsize=(5.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for v, color in zip(res.variants, _colors(len(res.variants)), strict=True):
        ys = [res.average(v, k).value for k in res.shots]
        ax.plot(res.shots, [np.nan if y is None else y for y in ys], "o-", color=color, label=v.label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(res.shots, [str(k) for k in res.shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Few-shot accuracy, average over {len(res.datasets)} dataset(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return Figure("few_shot", "Few-shot accuracy against shots", _png(fig))


def search_scores(groups: Mapping[SearchedVariant, Sequence[Search]]) -> Figure | str:
    """Each search's validation scores against the values it sampled: a panel per dataset, a
    series per searched key (and per searched row, when several searched a dataset); the chosen
    sample starred, a sample the scheduler stopped early hollow. The x axis is logarithmic when the
    space samples the key on a log scale or the values span more than two decades."""
    what = "Validation score against the searched values"
    if not groups:
        return f"{what}: no searches in the results."
    by_dataset: dict[str, list[tuple[SearchedVariant, Search]]] = {}
    for sv, group in groups.items():
        for s in group:
            if s.finished:
                by_dataset.setdefault(s.dataset, []).append((sv, s))
    if not by_dataset:
        return f"{what}: no sample of any search finished."
    from matplotlib.lines import Line2D

    datasets = sort_datasets(by_dataset)
    several = len(groups) > 1
    series = list(dict.fromkeys((sv, k) for d in datasets for sv, s in by_dataset[d] for k in s.keys))
    color_of = dict(zip(series, _colors(len(series)), strict=True))

    def series_label(sv: SearchedVariant, key: str) -> str:
        if not several:
            return setting_label(key)
        return sv.label if len(sv.keys) == 1 else f"{sv.label}: {setting_label(key)}"

    nrows, ncols = _grid(len(datasets))
    fig = MplFigure(figsize=(3.6 * ncols, 2.9 * nrows))
    stopped_any = False
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        # (series, search, sample, value) of every finished sample that has a value of the key
        points = [
            ((sv, k), s, x, x.params[k])
            for sv, s in by_dataset[dataset]
            for k in s.keys
            for x in s.finished
            if k in x.params
        ]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for *_, v in points)
        if numeric:
            values = [float(v) for *_, v in points]
            positive = bool(values) and min(values) > 0
            on_log = any(s.is_log(k) for (_, k), s, _, _ in points)
            if positive and (on_log or max(values) / min(values) > 100):
                ax.set_xscale("log")  # labels at 1, 2 and 5 of each decade, as plain numbers
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            shown: list[str] = []
        else:  # a categorical key (choice of names): one tick per value
            shown = sorted({format_value(v) for *_, v in points})
            ax.set_xticks(range(len(shown)), shown)
            ax.set_xlim(-0.5, len(shown) - 0.5)

        def position(value: object, shown: list[str] = shown) -> float:
            return float(shown.index(format_value(value))) if shown else float(value)  # type: ignore[arg-type]

        for key in dict.fromkeys(p[0] for p in points):
            mine = [p for p in points if p[0] == key]
            color = color_of[key]
            for hollow in (False, True):
                part = [p for p in mine if (p[2].stopped_at is not None) == hollow]
                if not part:
                    continue
                stopped_any |= hollow
                ax.scatter([position(p[3]) for p in part], [p[2].score for p in part], s=22,
                           facecolors="white" if hollow else [color], edgecolors=[color], linewidths=1.0,
                           zorder=2)
            for p in mine:
                if p[2].chosen:
                    ax.scatter([position(p[3])], [p[2].score], marker="*", s=170, facecolors=[color],
                               edgecolors="black", linewidths=0.7, zorder=3)
        metrics = {s.metric for _, s in by_dataset[dataset]}
        metric = METRIC_AXES.get(next(iter(metrics)), next(iter(metrics))) if len(metrics) == 1 else "score"
        ax.set_title(dataset_name(dataset), fontsize=9)
        ax.set_xlabel(", ".join(dict.fromkeys(setting_label(k) for (_, k), *_ in points)), fontsize=8)
        ax.set_ylabel(f"validation {metric} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=color_of[key], label=series_label(*key))
        for key in series
    ]
    handles.append(Line2D([], [], marker="*", linestyle="", markersize=11, markerfacecolor="0.6",
                          markeredgecolor="black", label="chosen"))
    if stopped_any:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white",
                              markeredgecolor="0.4", label="stopped early"))
    # below the panels: inside one it would cover the samples that score best
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return Figure(
        "search_scores",
        "Validation score against the searched values (star: the sample chosen; hollow: stopped early)",
        _png(fig),
    )


def all_figures(b2n: B2NResults | None, few: FewShotResults | None) -> tuple[list[Figure], list[str]]:
    """Every figure the results support, and a sentence for each one skipped."""
    figures, skipped = [], []
    outs = [hm_vs_lambda(b2n), base_vs_novel(b2n), hm_bars(b2n)]
    if few is not None:
        outs.append(few_shot_curves(few))
    for out in outs:
        if isinstance(out, Figure):
            figures.append(out)
        else:
            log.info("figure skipped: %s", out)
            skipped.append(out)
    return figures, skipped
