"""How the package is put together: a method's name appears only in its own module and the
registry; no import cycle; the library imports neither Ray nor Typer; the docs cited exist."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

from rayot import methods

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rayot"
REGISTRY = PACKAGE / "methods" / "__init__.py"
#: the built-ins as results written before 0.4 knew them, for the report (a fixed table: later rows
#: describe their method themselves, so a new method needs no line there)
EARLIER = PACKAGE / "report" / "earlier.py"
#: every built-in's key and display name (the zero-shot method's display name is "CLIP", the model)
NAMES = {name: {name, *(d for d in [methods.get(name).display] if d != "CLIP")} for name in methods.BUILTINS}
#: the one place a module names another method, and why: Prompt-OT's ``regularizer`` setting has
#: the value "pointwise" (its ablation, kept so the ablation sweep's trials keep their ids), and the
#: point-wise method is Prompt-OT with that value fixed (it subclasses it)
ALLOWED = {("prompt_ot.py", "pointwise"), ("pointwise.py", "prompt_ot")}


#: a path or repository (anything with a slash: ``KaiyangZhou/CoOp@ff61507c``, ``docs/peers.md``)
#: cites a file, it does not name a method
CITATION = re.compile(r"\S*/\S*")


def _words(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every identifier, string (docstrings included) and comment of a module,
    citations of files and repositories left out."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], CITATION.sub(" ", t.string)) for t in tokens
            if t.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT)]


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.IGNORECASE)


def test_a_method_is_named_only_in_its_own_module_and_the_registry():
    """Its key in any case and its display name, in code, strings, comments and docstrings; a
    file path or repository that contains a method's name (a citation) is not naming it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in (REGISTRY, EARLIER):
            continue
        words = _words(path)
        for key, names in NAMES.items():
            if path == PACKAGE / "methods" / f"{key}.py" or (path.name, key) in ALLOWED:
                continue
            for pattern in map(_pattern, names):
                found += [f"{path.relative_to(ROOT)}:{line}: {pattern.pattern}" for line, text in words
                          if pattern.search(text)]
    assert not found, "\n".join(found)


def test_the_check_would_see_a_method_named_elsewhere():
    assert _pattern("coop").search("# as CoOp does") and _pattern("prompt_ot").search("prompt_ot_loss")
    assert not _pattern("coop").search("CoCoOp") and not _pattern("coop").search("kgcoop")
    assert CITATION.sub(" ", "as KaiyangZhou/CoOp@ff61507c says") == "as   says"


def _imports(path: Path) -> set[str]:
    """The rayot modules ``path`` imports at its top level (what runs when it is imported)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("rayot")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayot"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's modules import their package first: that edge is Python's, not a cycle of ours
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


LIBRARY = ("rayot.config", "rayot.methods", "rayot.train", "rayot.testing", "rayot.checkpoints",
           "rayot.results", "rayot.trackers", "rayot.data", "rayot.packing", "rayot.model", "rayot.transport")


def test_the_library_imports_neither_ray_nor_typer():
    code = (f"import sys; import {', '.join(LIBRARY)}; bad = [m for m in ('ray', 'typer') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"the library imports {out.stdout.strip()} {out.stderr[-500:]}"


def test_every_cited_design_document_is_in_the_repository():
    cited = re.compile(r"(?:docs/)?(method|protocol|peers|ray-notes|methods|demo-world|cluster|reliability|search)\.md")
    missing = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*"),
                 *(ROOT / "scripts").glob("*.py"), *(ROOT / "sweeps").glob("*.yaml"), ROOT / "README.md"]:
        text = path.read_text()
        assert "../shared" not in text or path.name == "test_architecture.py", f"{path} cites ../shared"
        for match in cited.finditer(text):
            if not (ROOT / "docs" / f"{match.group(1)}.md").is_file():
                missing.add(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not missing, sorted(missing)


def test_the_report_knows_the_earlier_built_ins_as_the_registry_does():
    from rayot.report.earlier import BUILTINS_BEFORE_0_4

    assert set(BUILTINS_BEFORE_0_4) <= set(methods.BUILTINS)
    for name, facts in BUILTINS_BEFORE_0_4.items():
        m = methods.get(name)
        assert facts == (m.display, m.label, m.order, m.trains), name


#: what a torch-free report must not import: the training stack and the method registry
TRAINING_STACK = ("torch", "open_clip", "rayot.methods")


#: in a fresh interpreter: the report library, `rayot report --help`, then a whole `rayot report`
#: run, each followed by a line ``<step>:<the modules of TRAINING_STACK imported so far>``
STEPS = """
import sys
def imported(step): print(f"{step}:" + ",".join(m for m in STACK if m in sys.modules))
import rayot.report, rayot.cli.report
imported("import")
from rayot.cli import main
def rayot(*args):
    sys.argv = ["rayot", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
rayot("report", "--help")
imported("help")
rayot("report", "-r", RESULTS, "-o", OUT)
imported("report")
"""


def test_the_report_imports_neither_torch_nor_open_clip_nor_the_methods(tmp_path: Path):
    """The report renders results copied to a machine without the training stack: the library,
    the command's help and a whole `rayot report` run (figures and the saved-prompts check too)."""
    from rayot import config as C
    from rayot.results import write_trial_rows
    from rayot.train.rows import EvalResult, result_rows

    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    checkpoints.mkdir()
    for method in ("zeroshot", "prompt_ot"):
        for seed in (1, 2):
            cfg = C.load_config(None, [f"method={method}", "data.protocol=base2novel", f"seed={seed}",
                                       f"output.checkpoints={checkpoints}"])
            evals = [EvalResult("base2novel", cfg.data.dataset, s, 700 + seed, 1000, 10) for s in ("base", "novel")]
            write_trial_rows(str(results), C.trial_id(cfg), result_rows(cfg, evals, train_seconds=1.0))
    code = f"STACK, RESULTS, OUT = {TRAINING_STACK!r}, {str(results)!r}, {str(tmp_path / 'report')!r}" + STEPS
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    steps = dict(line.split(":", 1) for line in run.stdout.splitlines() if line.split(":")[0] in
                 ("import", "help", "report"))
    assert steps == {"import": "", "help": "", "report": ""}, steps
    assert "Prompt-OT" in (tmp_path / "report" / "report.md").read_text()
