"""`rayot data ...`: inspect, sample and synthesise benchmark data."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from rayot.terminal import print_table

app = typer.Typer(help="Benchmark data: download and arrange, check, few-shot subsets, synthetic data.",
                  no_args_is_help=True)


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
    """Write the few-shot train/val subset of DATASET exactly as the benchmark's protocol draws it.

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
    (train, val), classnames = subsample_classes(train, val, subsample=subsample.value,
                                                 classnames=splits.classnames)
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

    Counts are compared with the split file and docs/protocol.md. Exit status 1 when anything is wrong, or when no DATASET is given and no dataset folder exists under the root.
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
    table.add_column("folder", no_wrap=True)
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
    print_table(out, table)

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


def _progress_console() -> Console:
    """Where download and extraction bars go: the console the log handler writes to, so that log
    lines print above the live bars (tests swap it for a recording console)."""
    from rayot.cli import err_console

    return err_console


class _Bars:
    """Renders the library's progress callback: one Rich bar per (stage, file)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[tuple[str, str], TaskID] = {}

    def __call__(self, stage: str, label: str, done: int, total: int | None) -> None:
        key = (stage, label)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{stage:<8} {escape(label)}", total=total)
        self.bar.update(self.tasks[key], completed=done, total=total)


@app.command()
def prepare(
    datasets: list[str] = typer.Argument(..., help="Datasets to prepare, or all."),
    root: Path | None = typer.Option(None, "--root", help="Data root to create the dataset folders in."),
    from_dir: Path | None = typer.Option(
        None, "--from", help="A folder holding files obtained by hand or with --download-only "
        "(or one such file); anything not there is downloaded."),
    download_only: Path | None = typer.Option(
        None, "--download-only", help="Only download and verify the files into this folder "
        "(for --from on a machine without network)."),
    keep: bool = typer.Option(False, "--keep-downloads", help="Keep downloaded archives."),
    decode: bool = typer.Option(False, "--decode/--no-decode",
                                help="Decode every image in the final check."),
) -> None:
    """Download, verify, extract and arrange DATASETS in the layout `rayot data check` reads.

    Each file is checked against its recorded checksum (or its structure where none is recorded); the dataset folder appears under the root only once complete. Downloads resume after an interruption; a prepared dataset is left alone. Ends with `rayot data check`.
    """
    from rayot.data.prepare import download_only as fetch_only
    from rayot.data.prepare import how_to_obtain, prepare_dataset, recipes, resolve_names
    from rayot.data.specs import get_spec
    from rayot.errors import DataError

    names = resolve_names(datasets)
    if download_only is None and root is None:
        raise DataError("prepare needs --root ROOT (or --download-only DIR)")
    if from_dir is not None and not from_dir.exists():
        raise DataError(f"--from {from_dir} does not exist")
    err = _progress_console()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    if download_only is not None:
        with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
            files, manual = fetch_only(names, download_only, progress=_Bars(bar))
        out = Console()
        out.print(f"{len(files)} file(s) downloaded and verified in {escape(str(download_only))}; "
                  f"on the offline machine: rayot data prepare {' '.join(datasets)} --root ROOT "
                  f"--from {escape(str(download_only))}", highlight=False, soft_wrap=True)
        for message in manual:
            out.print(f"[yellow]{escape(message)}[/]", highlight=False, soft_wrap=True)
        return
    assert root is not None
    table = recipes()
    explicit = "all" not in datasets
    prepared: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    for name in names:
        recipe = table[name]
        if not explicit and not recipe.automatic and not _has_manual_files(recipe, from_dir):
            # `all` prepares what can be prepared; the rest is named with what to obtain.
            if (root / get_spec(name).folder).exists():
                prepared.append(name)
            else:
                skipped.append(how_to_obtain(recipe))
            continue
        try:
            with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
                outcome = prepare_dataset(name, root, from_dir=from_dir, keep_downloads=keep,
                                          progress=_Bars(bar))
        except DataError as exc:
            if len(names) == 1:
                raise
            failed.append(str(exc))
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            continue
        err.print(f"{escape(name)}: {outcome.status} ({escape(str(outcome.folder))})",
                  highlight=False, soft_wrap=True)
        prepared.append(name)
    for message in skipped:
        err.print(f"[yellow]skipped:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if prepared:
        try:
            check(datasets=prepared, root=root, decode=decode, workers=4, max_list=20)
        except typer.Exit as exc:
            if exc.exit_code:
                raise
    if failed:
        err.print(f"{len(failed)} dataset(s) failed (above)", highlight=False)
        raise typer.Exit(1)


def _has_manual_files(recipe, from_dir: Path | None) -> bool:  # noqa: ANN001
    """Whether ``from_dir`` holds every file of ``recipe`` that cannot be downloaded."""
    if from_dir is None:
        return False
    manual = [s.name for s in recipe.files if not s.automatic]
    return all((from_dir / n).is_file() or from_dir.name == n for n in manual)


@app.command()
def synth(
    root: Path = typer.Option(..., "--root", help="Data root to write synthetic/ into."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated images and split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing synthetic/ folder."),
) -> None:
    """Write the offline demo world (colour x shape classes) in the split-file layout."""
    from rayot.data.synth import write_synthetic

    write_synthetic(root, seed=seed, overwrite=overwrite)  # logs where it wrote
