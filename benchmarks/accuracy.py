"""Accuracy of the training protocols on ../shared/data/ALL (issue #3), written into RESULTS.md.

Two modes:

- Train (`--protocols paper finetune`): `leukoscope.training.config.resolve_config` + `leukoscope.training.loop.fit`
  with a fixed seed, then the run's summary.json (test-part metrics of its best checkpoint) and timings.
- `--from-runs RUN...`: only read finished run folders (summary.json, config.yaml, env.json, metrics.csv),
  so runs trained elsewhere (on a GPU) are reported with the machine they ran on. Runs whose summary.json
  has no test metrics (their machine did not have the test images) are scored here: best.pt on the test
  part of --split, on this CPU, after checking that none of those test images was in the run's own split.

Both use the same held-out part by default: the 838 test images of bundle/split.csv (30% of the data,
stratified, duplicate-aware), so every row compares like with like. The paper protocol has no val part, so
it trains on the train and val rows of that split (70%), as the paper's 70:30 split does.

    .venv/bin/python -m benchmarks.accuracy                          # paper protocol, seed 0, CPU
    .venv/bin/python -m benchmarks.accuracy --protocols paper finetune
    .venv/bin/python -m benchmarks.accuracy --from-runs runs/gpu-mbv2-s0 runs/gpu-lite0-s0
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.accuracy_report import render, runs_note, trained_note
from leukoscope.training.runs import read_config_file

# ------------------------------------------------------------------------------------------- training


def paper_split(split_csv: Path, out: Path) -> Path:
    """A copy of `split_csv` whose val rows are train rows: the paper protocol trains on 70%, tests on 30%."""
    with open(split_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{split_csv} is empty")
    for row in rows:
        if row.get("part") == "val":
            row["part"] = "train"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


def train(protocol: str, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Train one protocol into a fresh run folder; returns its row (metrics, timings, machine)."""
    from leukoscope.training.config import resolve_config
    from leukoscope.training.loop import fit

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{protocol}-s{args.seed}-{stamp}"
    split = args.split
    if split is not None and protocol == "paper":
        split = paper_split(split, args.runs_dir / f".{name}-split.csv")
    overrides = {"data": str(args.data), "split_csv": str(split) if split else "", "out_dir": str(args.runs_dir),
                 "name": name, "seed": args.seed, "device": args.device, "weights_dir": str(args.weights_dir)}
    config = resolve_config(protocol, overrides=overrides)
    log(f"training the {protocol} protocol into {args.runs_dir / name} ...")
    started = time.perf_counter()
    run_dir = fit(config, quiet=True)
    wall = time.perf_counter() - started
    log(f"{protocol}: done in {wall:.0f} s")
    row = run_row(run_dir, split=args.split, data=args.data)
    row["wall_s"] = wall
    row["trained_here"] = True
    return row


# ------------------------------------------------------------------------------------------- run folders


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def history(run_dir: Path) -> list[dict[str, str]]:
    """The per-epoch rows of metrics.csv (empty when the run has none)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def best_epoch_row(rows: list[dict[str, str]], epoch: int | None) -> dict[str, str]:
    """metrics.csv row of the checkpoint's epoch (the run's own choice), else the last one."""
    for row in rows:
        if epoch is not None and str(row.get("epoch")) == str(epoch):
            return row
    return rows[-1] if rows else {}


def machine_of(env: dict[str, Any], device: str) -> str:
    """Where a run trained, from its env.json."""
    if env.get("gpu"):
        return f"{env['gpu']} (torch {env.get('torch')}, {env.get('cpu_count')} CPUs)"
    if device.startswith("cpu") or not device:
        return f"CPU, {env.get('cpu_count')} cores (torch {env.get('torch')}, {env.get('torch_threads')} threads)"
    return f"{device} (torch {env.get('torch')})"


def run_row(run_dir: Path, *, split: Path | None, data: Path) -> dict[str, Any]:
    """One result row from a finished run folder; test metrics computed here when the summary has none."""
    run_dir = Path(run_dir)
    summary, config, env = (_read_json(run_dir / "summary.json"), read_config_file(run_dir / "config.yaml"),
                            _read_json(run_dir / "env.json"))
    if not summary:
        raise SystemExit(f"{run_dir} has no summary.json: not a finished run")
    rows = history(run_dir)
    best = best_epoch_row(rows, summary.get("best_epoch"))
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds")]
    test, source = summary.get("test"), "summary.json (scored at the end of training)"
    if test:
        test = {**test, **confusions_from_predictions(run_dir)}
    if not test:
        if split is None:
            raise SystemExit(f"{run_dir}/summary.json has no test metrics; give --split to score best.pt")
        test = score_test(run_dir, split, data)
        source = f"best.pt scored here on the CPU, test part of {common.display_path(split)}"
    return {"run": common.display_path(run_dir), "name": config.get("name") or run_dir.name,
            "protocol": (summary.get("protocol") or config.get("protocol") or "")
            + (" + distillation" if config.get("soft_targets") else ""),
            "soft_targets": config.get("soft_targets") or "", "soft_target_weight": config.get("soft_target_weight"),
            "backbone": summary.get("backbone") or config.get("backbone"), "seed": config.get("seed"),
            "device": summary.get("device") or env.get("device") or "", "machine": machine_of(env, summary.get("device", "")),
            "train_images": summary.get("train_images"), "epochs_run": summary.get("epochs_run"),
            "best_epoch": summary.get("best_epoch"), "seconds_per_epoch": summary.get("seconds_per_epoch"),
            "first_epoch_s": seconds[0] if seconds else None,
            "later_epoch_s": sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1 else None,
            "seconds_total": summary.get("seconds_total"), "eval_part": config.get("eval_part"),
            "val": {k: float(best[k]) for k in ("val_acc", "val_macro_f1", "val_loss") if best.get(k)},
            "test": test, "test_source": source, "trained_here": False, "wall_s": None}


def score_test(run_dir: Path, split: Path, data: Path) -> dict[str, Any]:
    """Metrics of the run's best.pt on the test part of `split` (CPU), scored as training and evaluate score,
    refusing when any test image was in the run's own train or val part (same path or same bytes)."""
    import numpy as np

    from leukoscope.data.manifest import read_manifest_csv
    from leukoscope.evaluation.inputs import check_leakage
    from leukoscope.models.checkpoint import load_trained
    from leukoscope.models.scoring import score_model
    from leukoscope.review.calibration import softmax

    loaded = load_trained(run_dir / "best.pt")
    test = read_manifest_csv(split, data, classes=loaded.classes).part("test")
    if not len(test):
        raise SystemExit(f"{split} has no test rows")
    own = run_dir / "split.csv"
    leakage = check_leakage(test, run_dir, parts=("train", "val"), match_paths=True)
    if own.is_file() and not leakage.checked:
        raise SystemExit(f"cannot read {own}")
    if leakage.train_overlap:
        raise SystemExit(f"{leakage.train_overlap} test image(s) of {split} were in {own}, e.g. {leakage.examples[0]}")
    scored = score_model(loaded.model, test.paths(), loaded.preprocess, labels=test.labels, batch_size=64,
                         channels_last=True, workers=common.usable_cores())
    probs = softmax(scored.logits.numpy())
    return {"n": len(test), **scored.classification(len(loaded.classes)).to_dict(),
            **leukemia_errors(np.asarray(test.labels), probs, loaded.classes), "leakage_checked": leakage.checked}


def leukemia_errors(labels: Any, probs: Any, classes: Sequence[str]) -> dict[str, int]:
    """The clinically decisive errors (leukoscope.evaluation.metrics.leukemia_view): leukemia images called Benign and
    the reverse, with the number of leukemia images; {} when the classes have no Benign."""
    from leukoscope.evaluation.metrics import leukemia_view

    view = leukemia_view(labels, probs, classes=classes)
    if view is None:
        return {}
    return {key: view[key] for key in ("n_leukemia", "leukemia_called_benign", "benign_called_leukemia")}


def confusions_from_predictions(run_dir: Path) -> dict[str, int]:
    """leukemia_errors from the predictions_test.csv a run wrote at the end of training ({} without one).
    Its `predicted` column is used as a one-hot probability, so the counts follow the run's own calls."""
    import numpy as np

    path = run_dir / "predictions_test.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = [c.removeprefix("prob_") for c in rows[0] if c.startswith("prob_")] if rows else []
    if not rows or any(r["label"] not in classes or r["predicted"] not in classes for r in rows):
        return {}
    labels = [classes.index(r["label"]) for r in rows]
    calls = np.eye(len(classes))[[classes.index(r["predicted"]) for r in rows]]
    return leukemia_errors(labels, calls, classes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", nargs="+", choices=("paper", "finetune"),
                        help="protocols to train (default: paper, unless --from-runs is given)")
    parser.add_argument("--from-runs", nargs="+", type=Path, default=[], metavar="RUN",
                        help="only report these finished run folders")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--device", default="cpu", help="training device: cpu, cuda, auto (default cpu)")
    parser.add_argument("--data", type=Path, default=common.DATA, help="dataset root (default ../shared/data/ALL)")
    parser.add_argument("--split", type=Path, default=common.SPLIT,
                        help="split CSV whose test part is held out (default bundle/split.csv)")
    parser.add_argument("--weights-dir", type=Path, default=common.WEIGHTS, help="ImageNet weights folder")
    parser.add_argument("--runs-dir", type=Path, default=common.REPO / "runs" / "bench",
                        help="where trained runs go (default runs/bench)")
    parser.add_argument("--no-malloc-env", action="store_true",
                        help="do not restart with the Makefile's malloc settings before training")
    parser.add_argument("--max-load", type=float, default=1.5, help="before training, wait until the 1-min load "
                        "is below this (others' jobs would distort the timings)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.protocols is None:
        args.protocols = [] if args.from_runs else ["paper"]
    return args


def main(argv: list[str] | None = None) -> int:
    """Train and/or read runs, then write one RESULTS.md section per protocol and one for the read runs."""
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"[accuracy] {message}", file=sys.stderr, flush=True)

    if args.protocols and argv is None and not args.no_malloc_env:
        common.reexec_with_malloc_env(sys.argv)
    command = common.command_line([__file__, *(sys.argv[1:] if argv is None else argv)])
    sections: list[tuple[str, str]] = []
    rows_out: list[dict[str, Any]] = []
    for protocol in args.protocols:
        if not args.no_wait:
            common.wait_for_quiet(args.max_load, poll=20, log=log)
        row = train(protocol, args, log)
        rows_out.append(row)
        sections.append((f"accuracy-{protocol}", render([row], command, f"Accuracy: {protocol} protocol (issue #3)",
                                                         trained_note(args, protocol))))
    if args.from_runs:
        rows = [run_row(run, split=args.split, data=args.data) for run in args.from_runs]
        rows_out += rows
        sections.append(("accuracy-runs", render(rows, command, "Accuracy: runs trained elsewhere (issue #3)",
                                                 runs_note(rows, args))))
    if args.json:
        args.json.write_text(json.dumps(rows_out, indent=2, default=str) + "\n", encoding="utf-8")
    for name, body in sections:
        if not args.no_write:
            common.write_section(name, body, args.results)
            log(f"wrote the {name} section of {args.results}")
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
