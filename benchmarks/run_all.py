"""`make bench`: every benchmark in turn, each writing its own section of benchmarks/RESULTS.md.

Steps (each a child process, so one failing does not hide the others' results, and each measures in a
fresh interpreter):
1. speed.py — inference paths, int8, end-to-end `leukoscope predict`, FLOPs and peak (section `speed`).
2. load_server.py — a small load test of `leukoscope serve` on the bundled model (section `load`, written
   here from its JSON, since load_server.py prints a table but does not edit RESULTS.md).
3. shift.py — the review flag on stain / optics-shifted test images (section `shift`).
4. accuracy.py — the paper protocol trained on this CPU (section `accuracy-paper`); with --full also the
   finetune protocol (`accuracy-finetune`, ~40-60 min on 2 cores); and the GPU runs of runs/ when present
   (`accuracy-runs`).
5. as_typed.py — `leukoscope train --protocol paper` in a plain shell and under make's malloc variables (section
   `as-typed`; leukoscope.runtime applies them in the process).
6. memory_server.py — peak server memory under 16 concurrent 7000x7000 PNG uploads and their Grad-CAMs
   (section `memory`).
7. crossval.py — the bundled recipe on every fold of bundle/cv/ (section `crossval`): with --full, or when
   all fold runs exist in runs/ (then it only exports and scores them), or with --only crossval.
8. ray_engine.py — `predict --engine ray` vs the local engine on 2,000 files, 1 vs 2 actors, and the scaling
   model on paper (section `ray-engine`; Ray comes with the dev extras).
9. second_lab.py — a simulated lab B (the test part through one stain/optics transform): the parent and
   `leukoscope adapt` on N = 25, 50, 100, 200 of its verified images (section `second-lab`; ~35 min).
10. segmentation.py — white cells against the authors' ALL_segmented masks (IoU / Dice per class) and ms
   per field on one core (section `segmentation`).
11. where_it_looks.py — Grad-CAM energy on the white cells and the pointing game per class (section
   `where-it-looks`; ~10-15 min on 2 cores).
12. occlusion.py — the test part with the white cells, as much background, or the scale-bar corner painted
   out: what the calls depend on (section `occlusion`).
13. cell_model.py — the cell model (scripts/train_cells.py's package in runs/cells-package) against the
   bundled field model per field on the test part, the shift family and lab B, with its written decision
   rule (section `cell-model`; when that package exists, or with --only cell-model; ~15-40 min on 2 cores).

    .venv/bin/python -m benchmarks.run_all              # or: make bench
    .venv/bin/python -m benchmarks.run_all --full       # adds the CPU finetune run
    .venv/bin/python -m benchmarks.run_all --only speed load
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common

TRAINED_RUNS = ("runs/gpu-mbv2-s0", "runs/gpu-mbv2-s1-b64", "runs/gpu-lite0-s0", "runs/cpu-bundled", "runs/student-mbv2")
LOAD_ARGS = ("--requests", "2000", "--concurrency", "16")  # the example load
STEPS = ("speed", "load", "shift", "accuracy", "as-typed", "memory", "runs", "crossval", "ray-engine", "second-lab",
         "segmentation", "where-it-looks", "occlusion", "cell-model", "network")
CELL_PACKAGE = "runs/cells-package"  # scripts/train_cells.py's default output


@dataclass
class Step:
    """One benchmark: its name, command line, and the section it writes (None: it writes its own)."""

    name: str
    command: list[str]
    section: str | None = None
    json_out: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    plain_malloc: bool = False  # run without the malloc settings (common.MALLOC_ENV) that `make` exports


def module(name: str) -> list[str]:
    """A benchmark's command line without its arguments (run_step runs it from the repository root)."""
    return [sys.executable, "-m", f"benchmarks.{name}"]


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    """The steps to run, in order (speed first, while nothing of ours has warmed the machine)."""
    steps = []
    wanted = set(args.only or STEPS)
    results = [] if Path(args.results).resolve() == common.RESULTS else ["--results", str(args.results)]
    no_wait = ["--no-wait"] if args.no_wait else []
    if "speed" in wanted:
        # speed.py measures eager both ways in children; ONNX Runtime and the CLI run as a user runs them
        steps.append(Step("speed", [*module("speed"), *results, *no_wait], plain_malloc=True))
    if "load" in wanted:
        out = work / "load.json"
        steps.append(Step("load", [*module("load_server"), *LOAD_ARGS, "--out", str(out)],
                          section="load", json_out=out))
    if "shift" in wanted:
        steps.append(Step("shift", [*module("shift"), *results]))
    if "accuracy" in wanted:
        protocols = ["paper", "finetune"] if args.full else ["paper"]
        steps.append(Step("accuracy", [*module("accuracy"), "--protocols", *protocols, *results, *no_wait]))
    if "as-typed" in wanted:
        steps.append(Step("as-typed", [*module("as_typed"), "--workload", "train", "--rounds", "1",
                                       *results, *no_wait]))  # the issue's own command, each way once
    if "memory" in wanted:
        steps.append(Step("memory", [*module("memory_server"), *results]))
    runs = [r for r in TRAINED_RUNS if (common.REPO / r / "summary.json").is_file()]
    if "runs" in wanted and runs:
        steps.append(Step("runs", [*module("accuracy"), "--from-runs", *runs, *results]))
    folds = sorted((common.REPO / "bundle" / "cv").glob("split-fold*.csv"))
    trained = folds and all((common.REPO / "runs" / f"cv-mbv2-{f.stem.removeprefix('split-')}" / "summary.json").is_file()
                            for f in folds)
    if "crossval" in wanted and (args.full or trained or args.only):
        steps.append(Step("crossval", [*module("crossval"), *results]))
    if "ray-engine" in wanted:
        steps.append(Step("ray-engine", [*module("ray_engine"), *results, *no_wait]))
    if "second-lab" in wanted:
        steps.append(Step("second-lab", [*module("second_lab"), *results]))
    if "segmentation" in wanted:
        steps.append(Step("segmentation", [*module("segmentation"), *results]))
    if "where-it-looks" in wanted:
        steps.append(Step("where-it-looks", [*module("where_it_looks"), *results]))
    if "occlusion" in wanted:
        steps.append(Step("occlusion", [*module("occlusion"), *results]))
    if "cell-model" in wanted and ((common.REPO / CELL_PACKAGE).is_dir() or args.only):
        steps.append(Step("cell-model", [*module("cell_model"), "--cell-model", CELL_PACKAGE, *results]))
    if "network" in wanted:  # two server processes on a throwaway PostgreSQL: load, kill -9, database restart
        steps.append(Step("network", [*module("network_load"), *results]))
    return steps


def display(command: list[str], work: Path) -> str:
    """The command as it can be pasted from the repository root (temporary paths named OUT)."""
    shown = [".venv/bin/python" if c == sys.executable else common.display_path(c) if c.startswith("/") else c
             for c in command]
    return " ".join(c.replace(str(work), "OUT") for c in shown)


def load_section(result: dict[str, Any], command: str) -> str:
    """The `load` section from load_server.py's JSON."""
    from benchmarks.load_server import Result

    fields = {k: v for k, v in result.items() if k in Result.__dataclass_fields__}
    row = Result(**fields)
    verdict = "no errors, one DB row per accepted request" if row.errors == 0 and row.db_ok else "**FAILED**"
    images = (f"synthetic {row.image_size}x{row.image_size} JPEGs" if row.image_size else "dataset images")
    extra = (f"- Server: `python -m leukoscope serve` on 127.0.0.1 with a fresh database, inference workers: "
             f"{row.workers}, queue: {row.queue}; {row.concurrency} concurrent clients sent single-image requests "
             f"({images}) after a warm-up. Result: {verdict}; HTTP status counts {result.get('statuses')}.")
    return (common.section_header("Load test of the web server", command, extra=extra) + "\n"
            + Result.HEADER + "\n" + row.row() + "\n")


def run_step(step: Step, args: argparse.Namespace, work: Path) -> int:
    """Run one step; write its section when the script does not write one itself."""
    if not args.no_wait:
        common.wait_for_quiet(args.max_load, poll=20)
    print(f"[bench] {step.name}: {display(step.command, work)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not (step.plain_malloc and k in common.MALLOC_ENV)}
    code = subprocess.run(step.command, cwd=common.REPO, check=False, env=env).returncode
    print(f"[bench] {step.name}: exit {code} after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if step.section and step.json_out is not None and step.json_out.is_file():
        result = json.loads(step.json_out.read_text(encoding="utf-8"))
        common.write_section(step.section, load_section(result, display(step.command, work)), args.results)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the planned steps; exit 1 when any failed (the others' sections are still written)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also train the finetune protocol on this CPU (long)")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load below this first")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="RESULTS.md to update")
    args = parser.parse_args(argv)
    failed = []
    with tempfile.TemporaryDirectory(prefix="leukoscope-bench-") as tmp:
        for step in plan(args, Path(tmp)):
            if run_step(step, args, Path(tmp)) != 0:
                failed.append(step.name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"[bench] all sections written to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
