"""Cross-validation of the bundled model's recipe: every image of ../shared/data/ALL held out once.

One test part of ~700 leukemia images cannot tell a recipe that misses one leukemia image in a thousand
from one that never does, and a test part that has already been looked at cannot choose between models
honestly. This benchmark trains the bundled model's exact recipe once per fold of a K-fold split (every
image tested exactly once, each fold with its own val part for early stopping, calibration and the review
thresholds), exports each run as the package `leukoscope export` ships (fp32, and with `--int8`), scores
each on its fold's test part, and pools the folds. It chooses nothing: the bundled package is not changed.

    .venv/bin/leukoscope data split ../shared/data/ALL --folds 3 --val-size 0.1 --seed 0 --out bundle/cv/split.csv
    .venv/bin/python -m benchmarks.crossval          # ~15 min of training per fold on 2 cores, then ~2 min each

Per fold i (runs/cv-mbv2-fold<i>; steps whose output exists are skipped, so the script resumes):
  1. leukoscope train DATA <the bundled recipe> --split bundle/cv/split-fold<i>.csv --name cv-mbv2-fold<i>
  2. leukoscope export RUN --out RUN/package-fp32  and  leukoscope export RUN --int8 --out RUN/package-int8
  3. both packages' default models on the fold's test part, exactly as `leukoscope predict` runs them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

CV_DIR = common.REPO / "bundle" / "cv"
RECIPE = ["--protocol", "finetune", "--backbone", "mobilenetv2_100", "--seed", "1", "--batch-size", "64",
          "--lr", "0.001"]  # the bundled model's (scripts/build_bundled_model.py TRAIN_ARGS)
PRECISIONS = ("fp32", "int8")


def leukoscope(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "leukoscope", *map(str, args)]
    print("$ leukoscope " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    return subprocess.run(command, check=check, capture_output=not check, text=True)


def train_fold(split_csv: Path, run: Path, args: argparse.Namespace) -> None:
    """Train the fold's run unless it finished; an interrupted one is resumed from its last.pt."""
    if (run / "summary.json").is_file():
        return
    if (run / "last.pt").is_file():
        leukoscope("train", "--resume", run, "--quiet")
        return
    leukoscope("train", args.data, *RECIPE, "--split", split_csv, "--weights-dir", args.weights_dir,
               "--name", run.name, "--out-dir", run.parent, "--device", args.device, "--quiet")


def export_fold(run: Path, precision: str) -> tuple[Path | None, str]:
    """The run's package of one precision (exported unless present); (None, reason) when export refused."""
    package = run / f"package-{precision}"
    if (package / "model.json").is_file():
        return package, ""
    extra = ["--int8"] if precision == "int8" else []
    done = leukoscope("export", run, "--out", package, *extra, "--quiet", check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"exit code {done.returncode}"
    return package, ""


def score(package: Path, split_csv: Path, data: Path) -> dict[str, Any]:
    """The package's default model on the fold's test part, with its review rules, as `predict` runs it."""
    from leukoscope.data.manifest import read_manifest_csv
    from leukoscope.evaluation.evaluate import predict_package
    from leukoscope.evaluation.metrics import point_metrics
    from leukoscope.inference.predictor import load_predictor
    from leukoscope.review.calibration import expected_calibration_error
    from leukoscope.review.metrics import review_summary

    test = read_manifest_csv(split_csv, data).part("test")
    predictor = load_predictor(package)
    probs, predictions = predict_package(predictor, test.paths(), batch_size=32)
    classes = list(predictor.classes)
    y = np.asarray([classes.index(r.label) for r in test.records])
    metrics = point_metrics(y, probs, classes=classes)
    review = review_summary(y, probs.argmax(axis=1), [p.review for p in predictions],
                            [p.review_codes for p in predictions], classes=classes)
    leuk = metrics["leukemia_vs_benign"]
    return {"n": len(y), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "ece": expected_calibration_error(probs, y), "leukemia_called_benign": leuk["leukemia_called_benign"],
            "benign_called_leukemia": leuk["benign_called_leukemia"], "n_leukemia": leuk["n_leukemia"],
            "n_benign": leuk["n_benign"], "review": review, "y": y.tolist(), "pred": probs.argmax(axis=1).tolist(),
            "paths": [r.path for r in test.records], "classes": classes,
            "default_onnx": predictor.info.get("default_onnx"), "parity": predictor.info.get("parity") or {}}


def fold_row(number: int, split_csv: Path, args: argparse.Namespace) -> dict[str, Any]:
    run = args.runs_dir / f"cv-mbv2-fold{number}"
    train_fold(split_csv, run, args)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    row: dict[str, Any] = {"fold": number, "run": common.display_path(run), "split": common.display_path(split_csv),
                           "train_seconds": summary.get("seconds_total"), "scores": {}, "refused": {}}
    for precision in PRECISIONS:
        package, reason = export_fold(run, precision)
        if package is None:
            row["refused"][precision] = reason
            continue
        row["scores"][precision] = score(package, split_csv, args.data)
    return row


# ------------------------------------------------------------------------------------------- markdown


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def rate_interval(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a rate of k events in n images (n > 0)."""
    from leukoscope.evaluation.intervals import proportion_interval

    low, high = proportion_interval(k, n)
    return float(low or 0.0), float(1.0 if high is None else high)


def pooled(rows: list[dict[str, Any]], precision: str) -> dict[str, Any] | None:
    """Every fold's test predictions together: each image predicted once, by the run that never saw it."""
    from leukoscope.evaluation.metrics import point_metrics

    scored = [r["scores"][precision] for r in rows if precision in r["scores"]]
    if len(scored) != len(rows) or not scored:
        return None
    y = np.concatenate([s["y"] for s in scored])
    pred = np.concatenate([s["pred"] for s in scored])
    classes = scored[0]["classes"]
    one_hot = np.eye(len(classes))[pred]
    metrics = point_metrics(y, one_hot, classes=classes)
    missed = sum(s["leukemia_called_benign"] for s in scored)
    n_leukemia = sum(s["n_leukemia"] for s in scored)
    return {"n": len(y), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "missed": missed,
            "n_leukemia": n_leukemia, "false_alarms": sum(s["benign_called_leukemia"] for s in scored),
            "n_benign": sum(s["n_benign"] for s in scored), "missed_interval": rate_interval(missed, n_leukemia),
            "missed_unflagged": sum(s["review"]["leukemia_called_benign_not_flagged"] for s in scored),
            "false_alarms_unflagged": sum(s["review"]["benign_called_leukemia_not_flagged"] for s in scored),
            "flagged": sum(s["review"]["flagged"] for s in scored),
            "wrong_not_flagged": sum(s["review"]["wrong_not_flagged"] for s in scored)}


def render(rows: list[dict[str, Any]], command: str) -> str:
    header = ["fold", "precision", "test images", "accuracy", "macro-F1", "ECE", "leukemia called benign",
              "benign called leukemia", "flagged", "wrong, not flagged", "leukemia called benign, not flagged",
              "benign called leukemia, not flagged"]
    body = []
    for r in rows:
        for precision in PRECISIONS:
            s = r["scores"].get(precision)
            if s is None:
                body.append([r["fold"], precision, "", f"export refused: {r['refused'].get(precision, '')}",
                             *[""] * 8])
                continue
            v = s["review"]
            body.append([r["fold"], precision, s["n"], _pct(s["accuracy"]), _pct(s["macro_f1"]), f"{s['ece']:.4f}",
                         f"{s['leukemia_called_benign']} of {s['n_leukemia']}",
                         f"{s['benign_called_leukemia']} of {s['n_benign']}", v["flagged"], v["wrong_not_flagged"],
                         v["leukemia_called_benign_not_flagged"], v["benign_called_leukemia_not_flagged"]])
    for precision in PRECISIONS:
        p = pooled(rows, precision)
        if p is None:
            continue
        body.append(["**all folds**", precision, p["n"], _pct(p["accuracy"]), _pct(p["macro_f1"]), "",
                     f"**{p['missed']} of {p['n_leukemia']}**", f"{p['false_alarms']} of {p['n_benign']}",
                     p["flagged"], p["wrong_not_flagged"], p["missed_unflagged"], p["false_alarms_unflagged"]])
    text = [common.section_header("Cross-validation of the bundled recipe (issue #5)", command), NOTE,
            common.table(header, body), _summary(rows), _agreement(rows), _training(rows)]
    return "\n".join(t.rstrip("\n") + "\n" for t in text if t)


NOTE = ("Each fold's run is the bundled model's recipe (`leukoscope train DATA --protocol finetune --backbone "
        "mobilenetv2_100 --seed 1 --batch-size 64 --lr 0.001 --split bundle/cv/split-fold<i>.csv`) on this CPU, "
        "exported as shipped (`leukoscope export RUN`, and with `--int8`, whose gate checks int8 against fp32 on "
        "the fold's val part); each package's default model is scored on its fold's test part with its own review "
        "rules. Folds: `leukoscope data split ../shared/data/ALL --folds 3 --val-size 0.1 --seed 0 --out "
        "bundle/cv/split.csv` (stratified, copies and near-copies in one fold). Nothing here chooses a model; the "
        "bundled package is unchanged. *All folds* pools the folds' test predictions: every image predicted once, "
        "by the run that did not train on it (macro-F1 and accuracy of those pooled calls).\n")


def _summary(rows: list[dict[str, Any]]) -> str:
    lines = []
    for precision in PRECISIONS:
        p = pooled(rows, precision)
        if p is None:
            continue
        low, high = p["missed_interval"]
        lines.append(f"- {precision}: leukemia called benign {p['missed']} of {p['n_leukemia']} leukemia images "
                     f"({_pct(p['missed'] / p['n_leukemia'])}%, exact 95% interval {_pct(low)}-{_pct(high)}%), i.e. "
                     f"{710 * p['missed'] / p['n_leukemia']:.1f} expected on a test part of 710 leukemia images "
                     f"(interval {710 * low:.1f}-{710 * high:.1f}); of those, called benign *without* a review flag: "
                     f"{p['missed_unflagged']}; review load {p['flagged']} of {p['n']} images flagged "
                     f"({_pct(p['flagged'] / p['n'])}%); accuracy {_pct(p['accuracy'])}%.")
    return "\n".join(lines) + ("\n" if lines else "")


def _agreement(rows: list[dict[str, Any]]) -> str:
    """int8 against fp32 on the same test images (top-1), fold by fold."""
    parts = []
    for r in rows:
        a, b = r["scores"].get("fp32"), r["scores"].get("int8")
        if a and b and a["paths"] == b["paths"]:
            same = int(np.sum(np.asarray(a["pred"]) == np.asarray(b["pred"])))
            gate = b["parity"]
            on_val = (f", on its {gate['images']} val images at export {_pct(gate['int8_top1_agreement'])}%"
                      f"{' (first conv and classifier kept fp32)' if gate.get('int8_fp32_ends') else ''}"
                      if "int8_top1_agreement" in gate else "")
            parts.append(f"fold {r['fold']} {same} of {a['n']} ({_pct(same / a['n'])}%{on_val})")
    return f"- int8 top-1 agreement with fp32 on the test parts: {'; '.join(parts)}.\n" if parts else ""


def _training(rows: list[dict[str, Any]]) -> str:
    times = [f"fold {r['fold']} {r['train_seconds']:.0f} s" for r in rows if r.get("train_seconds")]
    return f"- Training time on this CPU (fit loop, summary.json): {'; '.join(times)}.\n" if times else ""


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds-dir", type=Path, default=CV_DIR, help="folder of split-fold<i>.csv files")
    parser.add_argument("--data", type=Path, default=common.DATA)
    parser.add_argument("--weights-dir", type=Path, default=common.WEIGHTS)
    parser.add_argument("--runs-dir", type=Path, default=common.REPO / "runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:
        common.reexec_with_malloc_env(sys.argv)  # training runs as `make model` runs it
    splits = sorted(args.folds_dir.glob("split-fold*.csv"), key=lambda p: int(p.stem.rsplit("fold", 1)[1]))
    if not splits:
        print(f"error: no split-fold<i>.csv in {args.folds_dir} (make them with `leukoscope data split --folds`)",
              file=sys.stderr)
        return 2
    rows = [fold_row(int(p.stem.rsplit("fold", 1)[1]), p, args) for p in splits]
    body = render(rows, common.command_line([__file__, *(sys.argv[1:] if argv is None else argv)]))
    common.publish("crossval", body, write=not args.no_write, results=args.results, json_path=args.json, raw=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
