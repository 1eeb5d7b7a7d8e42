"""How many training epochs a search's early stopping saves, and whether it changes the choice.

Runs the search of a sweep file (default ``sweeps/lambda_search.yaml``, its ``search:`` section)
twice with ``rayot sweep --search-only``, each into fresh result and checkpoint folders: once with
the file's scheduler (ASHA) and once with ``scheduler: none`` (every sample trained to its last
epoch). Prints, from the two searches' records, the epochs trained by each, their ratio, the wall
time of each, every sample's score and where it stopped, and the value each search chose.
Figures only, no assertions.

    python benchmarks/bench_search.py [--spec sweeps/lambda_search.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rayot import search_records


def run(spec: dict, name: str, work: Path) -> tuple[float, list[dict]]:
    spec = {**spec, "name": f"{spec['name']}_{name}",
            "storage": {"results": str(work / name / "results"), "checkpoints": str(work / name / "ckpt")}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rayot", "sweep", str(path), "--search-only"],
                         capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if out.returncode != 0:
        sys.exit(f"{name}: rayot sweep failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    rows = search_records.read_search_records([str(work / name / "results")]).to_pylist()
    return seconds, sorted(rows, key=lambda r: r["sample"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="sweeps/lambda_search.yaml")
    parser.add_argument("--keep", default=None, help="write the runs here instead of a temporary folder")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    if not spec.get("search"):
        sys.exit(f"{args.spec}: no search: section")
    scheduler = spec["search"].get("scheduler", "none")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = {}
        for name, sched in (("early_stopping", scheduler), ("no_early_stopping", "none")):
            runs[name] = run({**spec, "search": {**spec["search"], "scheduler": sched}}, name, work)
    print(f"search of {args.spec}: {len(runs['early_stopping'][1])} samples, scheduler {json.dumps(scheduler)}")
    for name, (seconds, rows) in runs.items():
        trained = sum(r["epochs_trained"] or 0 for r in rows)
        full = sum(r["epochs"] for r in rows)
        chosen = next((json.loads(r["params"]) for r in rows if r["chosen"]), None)
        print(f"\n{name}: {trained} of {full} epochs trained, {seconds:.0f} s wall, chose {chosen}")
        for r in rows:
            stop = f"stopped after epoch {r['stopped_at']}" if r["stopped_at"] else "trained to the end"
            print(f"  sample {r['sample']}: {r['params']}  score {r['score']:.2f}  {stop}{'  <- chosen' if r['chosen'] else ''}")
    (t_es, es), (t_full, full_rows) = runs["early_stopping"], runs["no_early_stopping"]
    e_es = sum(r["epochs_trained"] or 0 for r in es)
    e_full = sum(r["epochs_trained"] or 0 for r in full_rows)
    print(f"\nepochs: {e_es} / {e_full} = {e_es / e_full:.2f} of the epochs without early stopping "
          f"({1 - e_es / e_full:.0%} saved)")
    print(f"wall time: {t_es:.0f} s / {t_full:.0f} s = {t_es / t_full:.2f} (Ray start-up included)")
    same = [json.loads(r["params"]) for r in es if r["chosen"]] == [json.loads(r["params"]) for r in full_rows if r["chosen"]]
    print(f"the same choice with and without early stopping: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
