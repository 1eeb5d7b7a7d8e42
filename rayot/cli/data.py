"""`rayot data ...`: inspect, sample and synthesise benchmark data."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

app = typer.Typer(help="Benchmark data: few-shot subsets, checks, synthetic data.", no_args_is_help=True)


class Subsample(str, Enum):
    all = "all"
    base = "base"
    novel = "novel"


@app.command()
def fewshot(
    dataset: str = typer.Argument(..., help="Dataset name, e.g. oxford_pets."),
    root: Path = typer.Option(..., "--root", help="Data root holding the dataset folders."),
    shots: int = typer.Option(..., "--shots", min=1, help="Images per class (K)."),
    seed: int = typer.Option(..., "--seed", help="Sampling seed (1, 2, 3 in the papers)."),
    subsample: Subsample = typer.Option(Subsample.all, "--subsample", help="Class half to keep."),
    out: Path = typer.Option(..., "--out", help="JSON file to write."),
) -> None:
    """Write the few-shot train/val subset of DATASET exactly as the CoOp protocol draws it.

    Split-file datasets need only their split file, no images.
    """
    from rayot.data.fewshot import sample_fewshot, subsample_classes, write_subset
    from rayot.data.readers import read_dataset
    from rayot.errors import DataError

    splits = read_dataset(dataset, root)
    if not splits.train:
        raise DataError(f"{dataset}: has no train split (it is evaluation only); "
                        "few-shot subsets exist only for datasets with a train split")
    train, val = sample_fewshot(splits, shots, seed)
    (train, val), classnames = subsample_classes(train, val, subsample=subsample.value)
    write_subset(out, train, val)
    Console(stderr=True).print(
        f"{escape(dataset)}: {len(train)} train and {len(val)} val items over "
        f"{len(classnames)} classes written to {escape(str(out))}", highlight=False, soft_wrap=True)


@app.command()
def check(
    datasets: list[str] | None = typer.Argument(
        None, help="Datasets to check; all datasets when none is given."),
    root: Path = typer.Option(..., "--root", help="Data root holding the dataset folders."),
    decode: bool = typer.Option(True, "--decode/--no-decode", help="Decode every image."),
    workers: int = typer.Option(4, "--workers", min=1, help="Threads decoding images."),
    max_list: int = typer.Option(
        20, "--max-list", min=0, help="Problems listed per dataset (0: all)."),
) -> None:
    """Check datasets: missing files and folders (exact paths), counts, undecodable images.

    Counts are compared with the split file and protocol.md. Exit status 1 when anything is wrong, or when no DATASET is given and no dataset folder exists under the root.
    """
    from rayot.data.check import check_dataset, present_datasets
    from rayot.data.specs import DATASETS, get_spec
    from rayot.errors import DataError

    for name in datasets or []:
        get_spec(name)  # unknown names fail before any work
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    named = bool(datasets)
    names = list(dict.fromkeys(datasets)) if datasets else list(DATASETS)
    present = set(present_datasets(root))

    out = Console()
    err = Console(stderr=True)
    reports = []
    for name in names:
        if not named and name not in present:
            reports.append((name, None))
            continue
        with Progress(TextColumn(f"checking {name}"), BarColumn(), MofNCompleteColumn(),
                      console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task(name, total=None)
            reports.append((name, check_dataset(
                name, root, decode=decode, workers=workers,
                progress=lambda done, total, t=task: bar.update(t, completed=done, total=total))))

    table = Table(title=f"datasets under {escape(str(root))}")
    table.add_column("dataset", no_wrap=True)
    table.add_column("folder", overflow="fold")
    table.add_column("status", no_wrap=True)
    for col in ("classes", "train", "val", "test"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, report in reports:
        folder = DATASETS[name].folder
        if report is None:
            table.add_row(name, folder, "[dim]absent[/]", "", "", "", "")
            continue
        status = "[green]ok[/]" if report.ok else (
            "[red]missing[/]" if not report.present else f"[red]{len(report.problems)} issue{'s' * (len(report.problems) > 1)}[/]")
        counts = [_count(report.counts.get(s)) for s in ("train", "val", "test")]
        table.add_row(name, folder, status, _classes(report.num_classes, DATASETS[name].num_classes),
                      *counts)
    out.print(table)

    bad = [r for _, r in reports if r is not None and not r.ok]
    for report in bad:
        out.print(f"[bold]{report.dataset}[/] ({escape(str(report.folder))}):", highlight=False)
        shown = report.problems if max_list == 0 else report.problems[:max_list]
        for problem in shown:
            where = f": {problem.path}" if problem.path is not None else ""
            out.print(f"  {escape(problem.message + where)}", highlight=False, soft_wrap=True)
        if len(shown) < len(report.problems):
            out.print(f"  ... and {len(report.problems) - len(shown)} more (--max-list 0 lists all)")
    checked = [r for _, r in reports if r is not None]
    if not checked:
        out.print(f"no dataset folder found under {escape(str(root))}; expected any of: "
                  + ", ".join(f"{s.folder}/" for s in DATASETS.values()), soft_wrap=True)
        raise typer.Exit(1)
    if bad:
        raise typer.Exit(1)


def _count(found_expected: tuple[int, int | None] | None) -> str:
    if found_expected is None:
        return "-"
    found, expected = found_expected
    text = f"{found:,}" if expected is None else f"{found:,}/{expected:,}"
    return text if expected is None or found == expected else f"[red]{text}[/]"


def _classes(found: int | None, expected: int | None) -> str:
    if found is None:
        return "-"
    return str(found) if expected is None or found == expected else f"[red]{found}/{expected}[/]"


@app.command()
def synth(
    root: Path = typer.Option(..., "--root", help="Data root to write synthetic/ into."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated images and split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing synthetic/ folder."),
) -> None:
    """Write the offline demo world (colour x shape classes) in the split-file layout."""
    from rayot.data.synth import write_synthetic

    write_synthetic(root, seed=seed, overwrite=overwrite)  # logs where it wrote
