"""`evaluate`: score a trained model on a dataset part and write metrics, figures, a report and a card.

Plain steps over plain data: open the model (run folder, checkpoint or model package), resolve which
images to score (a folder, a split file and part, or the run's own test part), check them against the
run's training part for leakage, predict, calibrate on the run's validation part, compute metrics with
intervals (exact for proportions, bootstrap otherwise), and write metrics.json, predictions.csv,
figures/*.png, report.html, MODEL_CARD.md. A run's network is scored by `leukoscope.models.scoring`, as
training and export score it; a package by its Predictor, review flags included, as `predict` does. With
`localisation` (opt-in: a Grad-CAM per image, one forward and one backward pass, takes a second or
more on a CPU), where the model looks: Grad-CAM energy on the segmented white cells and the pointing game
(localisation.csv too).
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope import __version__
from leukoscope.data.fileio import write_json, write_text
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.errors import DataError, UsageError
from leukoscope.evaluation.inputs import EvalData, check_classes, check_files, check_leakage, data_summary, resolve_data
from leukoscope.evaluation.intervals import proportion
from leukoscope.evaluation.metrics import compute_metrics
from leukoscope.evaluation.model_handle import ModelHandle, open_model
from leukoscope.models.scoring import score_model
from leukoscope.review import calibration
from leukoscope.review.metrics import review_summary

Progress = Callable[[str, int, int], None]
N_BINS = 15


class LeakageWarning(UserWarning):
    """Evaluated images also occur in the model's training part: the scores are optimistic."""


# ---------------------------------------------------------------------------------------- prediction


def predict_scores(handle: ModelHandle, paths: Sequence[Path], *, batch_size: int = 64,
                   phase: str = "predicting", progress: Progress | None = None) -> np.ndarray:
    """Logits of a run's or checkpoint's network for `paths`, in batches on the CPU (a package's
    probabilities come from `predict_package`, with its review flags)."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if handle.network is None:
        raise UsageError(f"{handle.source} is a model package: score it with predict_package")
    if not len(paths):
        return np.zeros((0, len(handle.classes)))

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    scores = score_model(handle.network, paths, handle.preprocess, batch_size=batch_size, progress=report)
    return scores.logits.numpy().astype(np.float64)


def predict_package(predictor: Any, paths: Sequence[Path], *, batch_size: int = 64,
                    progress: Progress | None = None) -> tuple[np.ndarray, list[Any]]:
    """Calibrated probabilities (in the predictor's class order) and the full predictions (review flags
    included) of a model package's Predictor, made exactly as `leukoscope predict` makes them. DataError
    names the first image that cannot be read."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    predictions = []
    for done, prediction in enumerate(predictor.predict_paths(paths, batch_size=batch_size), start=1):
        if prediction.error:
            raise DataError(f"cannot read {prediction.source}: {prediction.error}")
        predictions.append(prediction)
        if progress is not None and (done % batch_size == 0 or done == len(paths)):
            progress("predicting", done, len(paths))
    classes = predictor.classes
    probs = np.asarray([[p.probabilities[c] for c in classes] for p in predictions], dtype=np.float64)
    probs = probs.reshape(len(predictions), len(classes))
    # Unusable images get no class: even probabilities (no information), always flagged, counted apart as
    # review.unusable so a lab sees how many of its labelled images the tool refused to call.
    probs[probs.sum(axis=1) == 0] = 1.0 / len(classes)
    return probs, predictions


def _val_part(handle: ModelHandle, data: EvalData) -> Manifest | None:
    """The run's validation images (readable ones under the run's or the evaluation's data root)."""
    split_file = handle.run_dir / "split.csv" if handle.run_dir else None
    if split_file is None or not split_file.is_file():
        return None
    for base in (handle.config.get("data"), data.part.root):
        if not base:
            continue
        val = read_manifest_csv(split_file, Path(base)).part("val")
        if len(val) and all(p.is_file() for p in val.paths()):
            return val
    return None


@dataclass(frozen=True)
class Temperature:
    """The temperature an evaluation divides a network's logits by, and where it came from."""

    value: float
    source: str  # "fitted" (on the run's val part), "stored" (calibration.json), "package" or "none"
    reported: float | None  # metrics.json's calibration.temperature: a package's own, else `value`
    n_fit: int | None = None  # val images it was fitted on
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """metrics.json's "calibration" entries that say where the temperature came from."""
        info: dict[str, Any] = {"source": self.source, "temperature": self.reported}
        if self.source == "fitted":
            info.update(fitted_on="val", n_fit=self.n_fit)
        return info


def calibrate(handle: ModelHandle, data: EvalData, *, enabled: bool = True, batch_size: int = 64,
              progress: Progress | None = None) -> Temperature:
    """Temperature for a run: fitted on its val part and saved to <run>/calibration.json, else the
    stored one, else 1. A package's predictor calibrates itself (1 here)."""
    if handle.predictor is not None:
        return Temperature(1.0, "package", handle.info.get("temperature"))
    if not enabled:
        return Temperature(1.0, "none", 1.0)
    val = _val_part(handle, data)
    if val is None:
        stored = calibration.read_temperature(handle.run_dir) if handle.run_dir else None
        return Temperature(stored, "stored", stored) if stored is not None else Temperature(1.0, "none", 1.0)
    logits = predict_scores(handle, val.paths(), batch_size=batch_size, phase="calibrating on val",
                            progress=progress)
    temperature = calibration.fit_temperature(logits, check_classes(val, handle.classes))
    notes = []
    if data.part_name == "val":
        notes.append("the temperature was fitted on the same val images that are evaluated")
    try:
        calibration.save_temperature(handle.run_dir, temperature, fitted_on="val", n=len(val))
    except OSError as exc:
        notes.append(f"could not save calibration.json in {handle.run_dir}: {exc.strerror or exc}")
    return Temperature(temperature, "fitted", temperature, n_fit=len(val), notes=tuple(notes))


# ------------------------------------------------------------------------------------------ outputs


def write_predictions(path: Path, part: Manifest, classes: Sequence[str], y: np.ndarray, probs: np.ndarray,
                      predictions: Sequence[Any] | None = None) -> None:
    """predictions.csv: path, sha256, label, predicted, prob_<class> per class, correct (pandas-readable);
    with a package's `predictions`, also review (0/1), review_codes (stable codes, "; "-joined, for tools) and
    review_reasons (plain words, "; "-joined, for people)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    review_header = ["review", "review_codes", "review_reasons"] if predictions is not None else []
    writer.writerow(["path", "sha256", "label", "predicted", *(f"prob_{c}" for c in classes), "correct",
                     *review_header])
    pred = probs.argmax(axis=1)
    for i, (record, label, guess, row) in enumerate(zip(part.records, y, pred, probs, strict=True)):
        review = ([int(predictions[i].review), "; ".join(predictions[i].review_codes),
                   "; ".join(predictions[i].review_reasons)]
                  if predictions is not None else [])
        writer.writerow([record.path, record.sha256, record.label, classes[guess], *(f"{v:.6f}" for v in row),
                         int(label == guess), *review])
    write_text(path, buffer.getvalue())


def read_history(run_dir: Path | None) -> list[dict[str, str]]:
    """Rows of the run's metrics.csv (empty when there is none)."""
    file = run_dir / "metrics.csv" if run_dir else None
    if file is None or not file.is_file():
        return []
    with open(file, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def train_seconds(run_dir: Path | None, history: list[dict[str, str]]) -> float | None:
    """Training wall time: summary.json's seconds_total, else the sum of metrics.csv's seconds."""
    import json

    try:
        return float(json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["seconds_total"])
    except (OSError, TypeError, ValueError, KeyError):
        pass
    try:
        return sum(float(row["seconds"]) for row in history) if history else None
    except (KeyError, TypeError, ValueError):
        return None


# rate name -> (count key, of-how-many key) in a review_summary dict
REVIEW_RATES = {"flagged": ("flagged", "n"), "wrong_not_flagged": ("wrong_not_flagged", "n"),
                "benign_called_leukemia_not_flagged": ("benign_called_leukemia_not_flagged", "n_benign"),
                "leukemia_called_benign_not_flagged": ("leukemia_called_benign_not_flagged", "n_leukemia")}


def review_rates(review: dict[str, Any], *, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """The review flag's counts as proportions with exact intervals: "0 confident misses of 710" says
    little without the upper bound of how often they could happen."""
    return {name: proportion(review[k], review[n], level) for name, (k, n) in REVIEW_RATES.items()
            if review.get(k) is not None and review.get(n) is not None}


def evaluate(
    model_path: str | Path,
    data: str | Path | None = None,
    *,
    out_dir: str | Path,
    split_csv: str | Path | None = None,
    part: str = "test",
    root: str | Path | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    calibrate_on_val: bool = True,
    localisation: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate a model on a part of a dataset; write the outputs into `out_dir` and return metrics.json.

    Raises UsageError / DataError / ModelError for bad input (missing paths, classes that do not match,
    an empty part, no checkpoint). Overlap with the run's training part is reported in "leakage" and
    "warnings" and raised as a LeakageWarning.
    """
    started = time.perf_counter()
    if n_bootstrap < 0:
        raise UsageError(f"the number of bootstrap resamples must be >= 0, got {n_bootstrap}")
    handle = open_model(model_path)
    data_set = resolve_data(handle, data, split_csv=split_csv, part=part, root=root)
    y = check_classes(data_set.part, handle.classes)
    check_files(data_set.part)
    leakage = check_leakage(data_set.part, handle.run_dir)
    messages = list(data_set.notes)
    if leakage.train_overlap:
        messages.insert(0, f"LEAKAGE: {leakage.train_overlap} of {len(y)} evaluated images are in the "
                           f"model's training part (same sha256), e.g. {leakage.examples[0]}; these scores "
                           "are optimistic")
        warnings.warn(messages[0], LeakageWarning, stacklevel=2)
    scaling = calibrate(handle, data_set, enabled=calibrate_on_val, batch_size=batch_size, progress=progress)
    messages += scaling.notes
    predictions: list[Any] | None = None
    if handle.predictor is not None:
        raw, predictions = predict_package(handle.predictor, data_set.part.paths(), batch_size=batch_size,
                                           progress=progress)
        probs = raw
    else:
        scores = predict_scores(handle, data_set.part.paths(), batch_size=batch_size, progress=progress)
        raw, probs = calibration.softmax(scores), calibration.softmax(scores, scaling.value)
    result: dict[str, Any] = {"leukoscope_version": __version__,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result.update(compute_metrics(y, probs, classes=handle.classes, n_bootstrap=n_bootstrap, seed=seed))
    result["calibration"] = {**scaling.to_dict(), **calibration.calibration_report(raw, probs, y, n_bins=N_BINS)}
    result["review"] = None if predictions is None else review_summary(
        y, probs.argmax(axis=1), [p.review for p in predictions], [p.review_codes for p in predictions],
        classes=handle.classes)
    if result["review"] is not None:
        result["review"]["unusable"] = sum(p.status == "unusable" for p in predictions)
        result["review"]["rates"] = review_rates(result["review"], level=result["bootstrap"]["level"])
    where = None
    if localisation:
        where = where_it_looks(handle, data_set.part, y, probs.argmax(axis=1), level=result["bootstrap"]["level"],
                               batch_size=batch_size, progress=progress)
        result["localisation"] = where[0]
    handle.info["temperature"] = handle.info.get("temperature") or scaling.value
    history = read_history(handle.run_dir)
    result.update(model=handle.info, data_summary=data_summary(data_set, leakage), leakage=leakage.to_dict(),
                  warnings=messages)
    result["timing"] = {"eval_seconds": time.perf_counter() - started,
                        "train_seconds": train_seconds(handle.run_dir, history)}
    write_outputs(Path(out_dir), result, data_set.part, y, (raw, probs), handle, history, seed=seed,
                  predictions=predictions, localisation=None if where is None else where[1])
    return result


def where_it_looks(handle: ModelHandle, part: Manifest, y: np.ndarray, predicted: np.ndarray, *,
                   level: float = 0.95, batch_size: int = 16, progress: Progress | None = None
                   ) -> tuple[dict[str, Any], list[Any]]:
    """metrics.json's "localisation" section and the per-image results: the Grad-CAM of each image's
    predicted class against its segmented white cells."""
    from leukoscope.evaluation import localisation as loc

    explainer = handle.predictor if handle.predictor is not None else loc.NetworkExplainer(
        handle.network, handle.classes, handle.preprocess)
    results, _ = loc.localise_paths(explainer, part.paths(), [int(p) for p in predicted],
                                    batch_size=min(batch_size, 16), progress=progress)
    return loc.summarise(results, y, predicted, handle.classes, level=level), results


def write_outputs(out: Path, result: dict[str, Any], part: Manifest, y: np.ndarray,
                  probabilities: tuple[np.ndarray, np.ndarray], handle: ModelHandle,
                  history: list[dict[str, str]], *, seed: int = 0,
                  predictions: Sequence[Any] | None = None, localisation: Sequence[Any] | None = None
                  ) -> dict[str, str]:
    """predictions.csv, figures/, metrics.json, report.html and MODEL_CARD.md in `out`; the file names
    are also stored in result["files"]. `predictions` (a package's) add the review columns; `localisation`
    (per-image results of `where_it_looks`) writes localisation.csv."""
    from leukoscope.evaluation.plots import evaluation_figures
    from leukoscope.evaluation.report import write_model_card, write_report_html

    raw, probs = probabilities
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    write_predictions(out / "predictions.csv", part, handle.classes, y, probs, predictions)
    figures = evaluation_figures(
        out / "figures", y=y, probs=probs, raw_probs=raw, classes=handle.classes, paths=part.paths(),
        confusion=result["confusion_matrix"], history=history, seed=seed,
        eval_part=str(handle.config.get("eval_part") or "validation"),
    )
    files = {"metrics": "metrics.json", "predictions": "predictions.csv", "report": "report.html",
             "model_card": "MODEL_CARD.md",
             **{f"figure_{Path(f['path']).stem}": f"figures/{Path(f['path']).name}" for f in figures}}
    if localisation is not None:
        from leukoscope.evaluation.localisation import write_rows

        classes = handle.classes
        write_rows(out / "localisation.csv", [str(r.path) for r in part.records], [r.label for r in part.records],
                   [classes[i] for i in probs.argmax(axis=1)], localisation)
        files["localisation"] = "localisation.csv"
    result["files"] = files
    write_json(out / "metrics.json", result)
    part_name = result["data_summary"]["part"]
    write_report_html(out / "report.html", result=result, figures=figures, config=handle.config,
                      title=f"Evaluation of {handle.info.get('name', 'model')} on "
                            f"{'all images' if part_name == 'all' else part_name}")
    write_model_card(out / "MODEL_CARD.md", model_info=handle.info, metrics=result,
                     data_summary=result["data_summary"], config=handle.config)
    return files
