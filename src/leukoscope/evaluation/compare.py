"""`compare`: headline metrics of several evaluated runs side by side, and whether their accuracy
difference is real.

Each run (or evaluation output folder) must hold the metrics.json and predictions.csv that `evaluate`
writes. Images are paired across runs by sha256 (by path when a hash is missing), and every pair of runs
gets an exact McNemar test on the images both were scored on: the right test for two classifiers on the
same test set, since it uses only the images on which they disagree.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leukoscope.errors import DataError, UsageError
from leukoscope.evaluation.metrics import mcnemar_exact


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not an evaluation's metrics.json")
    return value


def read_predictions(path: Path) -> dict[str, tuple[str, bool]]:
    """predictions.csv as {sha256 (or path): (label, correct)}."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if rows and not {"path", "label", "correct"} <= set(rows[0]):
        raise DataError(f"{path} lacks the columns path, label, correct: not written by `leukoscope evaluate`")
    out = {}
    for row in rows:
        key = row.get("sha256") or row["path"]
        out[key] = (row["label"], str(row["correct"]).strip().lower() in ("1", "true"))
    return out


def load_evaluation(folder: str | Path) -> dict[str, Any]:
    """The saved evaluation of a run or evaluation folder: name, headline, sizes, timings, predictions.

    Raises UsageError for a missing folder and DataError when it was never evaluated.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UsageError(f"not found: {folder}")
    if folder.is_file():
        folder = folder.parent
    metrics_file, predictions_file = folder / "metrics.json", folder / "predictions.csv"
    if not metrics_file.is_file() or not predictions_file.is_file():
        raise DataError(f"{folder} has no metrics.json and predictions.csv: run `leukoscope evaluate` on it "
                        "first (and give its --out folder here)")
    metrics = _read_json(metrics_file)
    summary = metrics.get("data_summary") or {}
    timing = metrics.get("timing") or {}
    return {
        "name": (metrics.get("model") or {}).get("name") or folder.name, "folder": str(folder),
        "headline": metrics.get("headline") or {}, "n_images": summary.get("n_images", metrics.get("n")),
        "part": summary.get("part"), "train_seconds": timing.get("train_seconds"),
        "eval_seconds": timing.get("eval_seconds"), "predictions": read_predictions(predictions_file),
    }


def _unique_names(runs: list[dict[str, Any]]) -> None:
    """Runs with the same name (e.g. two evaluations of one model) get their folder appended."""
    counts = Counter(run["name"] for run in runs)
    for run in runs:
        if counts[run["name"]] > 1:
            run["name"] = f"{run['name']} ({run['folder']})"


def paired_test(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Exact McNemar between two loaded evaluations on their shared images (same key and label); None
    when they share none."""
    shared = [k for k in a["predictions"] if k in b["predictions"]
              and a["predictions"][k][0] == b["predictions"][k][0]]
    if not shared:
        return None
    test = mcnemar_exact([a["predictions"][k][1] for k in shared], [b["predictions"][k][1] for k in shared])
    return {"a": a["name"], "b": b["name"], **test}


def compare(folders: Sequence[str | Path]) -> dict[str, Any]:
    """Load every folder's evaluation and test every pair; returns {"runs", "tests", "notes", "title"}
    (predictions left out of "runs", so the result is JSON-serialisable)."""
    if len(folders) < 2:
        raise UsageError(f"compare needs at least two runs, got {len(folders)}")
    runs = [load_evaluation(f) for f in folders]
    _unique_names(runs)
    tests, notes = [], []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            result = paired_test(runs[i], runs[j])
            if result is None:
                notes.append(f"{runs[i]['name']} and {runs[j]['name']} share no evaluated images: not compared")
                continue
            if result["n"] < max(len(runs[i]["predictions"]), len(runs[j]["predictions"])):
                notes.append(f"{runs[i]['name']} vs {runs[j]['name']}: tested on the {result['n']} images both "
                             "evaluated")
            tests.append(result)
    public = [{k: v for k, v in run.items() if k != "predictions"} for run in runs]
    return {"title": "Comparison of " + ", ".join(r["name"] for r in runs), "runs": public, "tests": tests,
            "notes": notes}
