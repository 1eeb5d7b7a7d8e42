"""`rayot methods [NAME]`: every method rayot can run, where it comes from, its settings and presets."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from rayot.terminal import print_table

#: the protocols whose presets `rayot methods NAME` shows, with a dataset for dataset-dependent ones
PRESET_CASES = (("base2novel", "caltech101", 16), ("base2novel", "imagenet", 16), ("transfer", "imagenet", 16),
                ("few_shot", "caltech101", 16), ("few_shot", "dtd", 16), ("few_shot", "caltech101", 1))


def methods_command(
    name: str = typer.Argument(None, help="A method (name or dotted path): its settings and presets."),
) -> None:
    """List every method (built-in, installed plug-ins of the entry-point group rayot.methods); with
    NAME, the method's settings and its reference presets per protocol, with their sources."""
    console = Console()
    if name:
        _one(console, name)
        return
    _all(console)


def _all(console: Console) -> None:
    import dataclasses

    from rayot import methods
    from rayot.errors import ConfigError

    table = Table(title="methods (rayot methods NAME: settings and presets)")
    for col in ("name", "shown as", "from", "settings", "base-to-novel preset", "reference format", "what"):
        table.add_column(col)
    names = [*methods.BUILTINS, *methods.plugin_names()]
    broken = []
    found = []
    for ref in names:
        try:
            found.append(methods.get(ref))
        except ConfigError as exc:
            broken.append(ref)
            table.add_row(ref, "-", "cannot be loaded", "-", "-", "-", str(exc))
    for m in sorted(found, key=lambda m: (m.order, m.name)):
        settings = ", ".join(f.name for f in dataclasses.fields(m.Settings)) or "-"
        shown = f"{m.display} ({m.label})" if m.label else m.display
        table.add_row(m.name, shown, m.origin, settings, _schedule(m), "yes" if m.reference_format else "-",
                      m.summary)
    # a method's names never wrap; its settings and the descriptions wrap between words
    print_table(console, table, wrap=("settings", "base-to-novel preset", "what"))
    console.print("a method of your own: an entry point of the group rayot.methods, or a dotted path in "
                  "the configuration (method: package.module:Class); docs/methods.md", highlight=False)
    if broken:
        raise typer.Exit(2)


def _schedule(method) -> str:
    """The schedule of a method's base-to-novel preset in a few words: epochs (evaluated after),
    batch, learning rate."""
    p = method.preset("base2novel", "caltech101", 16)
    r = {**p.reference, **p.defines}
    if r.get("optim.epochs") == 0:
        return "no training"
    parts = []
    if "optim.epochs" in r:
        stop = r.get("optim.stop_epoch")
        parts.append(f"{r['optim.epochs']} epochs" + (f", evaluated after {stop}" if stop else ""))
    if "optim.batch_size" in r:
        parts.append(f"batch {r['optim.batch_size']}")
    if "optim.lr" in r:
        parts.append(f"lr {r['optim.lr']:g}")
    return ", ".join(parts) or "-"


def _one(console: Console, ref: str) -> None:
    import dataclasses

    from rayot import methods
    from rayot.typed import plain

    m = methods.get(ref)
    console.print(f"[bold]{m.name}[/]: {m.display}{f' ({m.label})' if m.label else ''}, {m.origin}")
    if m.summary:
        console.print(m.summary, highlight=False)
    console.print(f"trains: {'yes' if m.trains else 'no (evaluated as built)'}; reference checkpoints: "
                  f"{m.reference_format or 'none declared'}", highlight=False)
    settings = Table(title=f"settings (in a configuration: {m.name}: {{...}}; override: {m.name}.KEY=VALUE)")
    for col in ("setting", "default", "allowed", "meaning"):
        settings.add_column(col)
    for f in dataclasses.fields(m.Settings):
        meta = f.metadata
        allowed = ", ".join(map(str, meta["choices"])) if meta.get("choices") else (
            f">= {meta['minimum']:g}" if meta.get("minimum") is not None else "> 0" if meta.get("positive") else "")
        settings.add_row(f.name, repr(plain(f.default)), allowed, meta.get("help", ""))
    print_table(console, settings, wrap=("allowed", "meaning"))
    presets = Table(title="reference presets (under the configuration file; defines: over it)")
    for col in ("protocol", "dataset", "shots", "reference", "settings", "defines"):
        presets.add_column(col)
    seen = {}
    for protocol, dataset, shots in PRESET_CASES:
        p = m.preset(protocol, dataset, shots)
        row = tuple(", ".join(f"{k}={v}" for k, v in d.items()) or "-" for d in (p.reference, p.settings, p.defines))
        if seen.get(protocol) == row:
            continue  # the same as the case shown before it
        seen[protocol] = row
        presets.add_row(protocol, dataset, str(shots), *row)
    print_table(console, presets, wrap=("reference", "settings", "defines"))
    sources = {m.preset(p, d, k).source for p, d, k in PRESET_CASES} - {""}
    for source in sorted(sources):
        console.print(f"source: {source}", highlight=False, soft_wrap=True)
