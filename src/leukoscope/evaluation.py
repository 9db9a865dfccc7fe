"""`evaluate`: score a trained model on a dataset part and write metrics, figures, a report and a card.

Plain steps over plain data: open the model (run folder, checkpoint or model package), resolve which
images to score (a folder, a split file and part, or the run's own test part), check them against the
run's training part for leakage, predict, calibrate on the run's validation part, compute metrics with
bootstrap intervals, and write metrics.json, predictions.csv, figures/*.png, report.html, MODEL_CARD.md.
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, calibration
from .errors import DataError, UsageError
from .fileio import write_json, write_text
from .manifest import Manifest, read_manifest_csv
from .metrics import compute_metrics
from .preprocessing import Preprocess
from .runs import read_config_file

Progress = Callable[[str, int, int], None]
N_BINS = 15


class LeakageWarning(UserWarning):
    """Evaluated images also occur in the model's training part: the scores are optimistic."""


@dataclass
class ModelHandle:
    """An opened model: how to get scores from it and what to say about it."""

    kind: str  # "run", "checkpoint" or "package"
    source: Path
    classes: tuple[str, ...]
    preprocess: Preprocess
    run_dir: Path | None = None
    network: Any = None  # torch module (run / checkpoint)
    predictor: Any = None  # leukoscope.inference.Predictor (package)
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _run_dir_of(path: Path) -> Path | None:
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.yaml").is_file() or (folder / "split.csv").is_file() else None


def _shown_path(path: Path) -> str:
    """The path relative to the working folder when it lies inside it (reports travel between machines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def open_model(path: str | Path) -> ModelHandle:
    """Open a run folder, a checkpoint file or a model package (folder with model.json).

    Raises UsageError when the path does not exist, ModelError when it holds no usable model.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    if path.name == "model.json":
        path = path.parent
    if path.is_dir() and (path / "model.json").is_file():
        from .inference import load_predictor  # written alongside; imported only when a package is used

        predictor = load_predictor(path)
        info = dict(predictor.info)
        model_info = {"name": info.get("name", path.name), "kind": "package", "source": _shown_path(path),
                      "backbone": info.get("backbone"), "classes": list(predictor.classes),
                      "temperature": info.get("temperature"), **predictor.preprocess.to_dict()}
        training = info.get("training") or {}
        config = {**(training.get("config") or {}), "command": training.get("command") or ""}
        return ModelHandle("package", path, tuple(predictor.classes), predictor.preprocess,
                           run_dir=_run_dir_of(path), predictor=predictor, info=model_info, config=config)
    from .checkpoint import load_trained

    loaded = load_trained(path)  # ModelError when there is no checkpoint
    run_dir = _run_dir_of(path)
    meta = loaded.meta
    name = run_dir.name if run_dir is not None else path.stem
    model_info = {"name": name, "kind": "run" if path.is_dir() else "checkpoint", "source": str(path),
                  "backbone": loaded.spec.backbone, "classes": list(loaded.classes),
                  **loaded.preprocess.to_dict(), "epoch": meta.get("epoch"), "best_score": meta.get("best_score"),
                  "manifest_digest": meta.get("manifest_digest")}
    config = read_config_file(run_dir / "config.yaml") if run_dir else {}
    config = config or dict(meta.get("config") or {})
    return ModelHandle(model_info["kind"], path, loaded.classes, loaded.preprocess, run_dir=run_dir,
                       network=loaded.model, info=model_info, config=config)


# --------------------------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """The images to score, the whole manifest they were taken from, and where they came from."""

    part: Manifest
    full: Manifest
    part_name: str
    split_csv: Path | None
    notes: list[str] = field(default_factory=list)


def _has_parts(manifest: Manifest) -> bool:
    return any(r.part for r in manifest.records)


def _take_part(full: Manifest, part: str, source: Path) -> Manifest:
    chosen = full.part(part)
    if not len(chosen):
        present = sorted({r.part for r in full.records if r.part}) or ["none"]
        raise DataError(f"the {part!r} part of {source} is empty (parts present: {', '.join(present)})")
    return chosen


def _same_folder(a: str | Path | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).resolve() == b.resolve()
    except OSError:
        return False


def resolve_data(handle: ModelHandle, data: str | Path | None, *, split_csv: str | Path | None = None,
                 part: str = "test", root: str | Path | None = None) -> EvalData:
    """Which images to score. DATA may be a dataset folder (all its images, or `part` of `split_csv`,
    or of the run's own split.csv when DATA is the run's data), a manifest/split CSV (paths relative to
    `root` or the run's data folder), or None for the run's own data and split."""
    run_split = handle.run_dir / "split.csv" if handle.run_dir else None
    run_root = handle.config.get("data")
    if data is None:
        if not run_root or run_split is None or not run_split.is_file():
            raise UsageError("give DATA: the model has no run folder with config.yaml (data) and split.csv")
        data, split_csv = Path(run_root), run_split
    data = Path(data)
    if not data.exists():
        raise UsageError(f"data not found: {data}")
    if data.is_file():
        if split_csv is not None:
            raise UsageError("DATA is already a CSV file; give either a CSV as DATA or --split, not both")
        base = root or run_root
        if not base:
            raise UsageError(f"{data} lists paths relative to a data folder; give it with --root")
        full = read_manifest_csv(data, Path(base))
        return EvalData(_take_part(full, part, data) if _has_parts(full) else full, full,
                        part if _has_parts(full) else "all", data if _has_parts(full) else None)
    if split_csv is None and run_split is not None and run_split.is_file() and _same_folder(run_root, data):
        split_csv = run_split
    if split_csv is not None:
        full = read_manifest_csv(split_csv, data)
        return EvalData(_take_part(full, part, Path(split_csv)), full, part, Path(split_csv))
    from .data import discover

    full = discover(data)
    notes = [f"{len(full.problems)} unreadable file(s) skipped"] if full.problems else []
    return EvalData(full, full, "all", None, notes)


def check_classes(manifest: Manifest, classes: Sequence[str]) -> np.ndarray:
    """Label indices in the model's class order; DataError when the data has classes the model lacks."""
    labels = [r.label for r in manifest.records]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"the model's classes {list(classes)} do not match the data's "
                        f"{sorted(set(labels) | set(manifest.classes))}: {unknown} unknown to the model")
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[name] for name in labels], dtype=np.int64)


def check_files(manifest: Manifest) -> None:
    missing = [p for p in manifest.paths() if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(manifest)} images are missing under {manifest.root}, e.g. "
                        f"{missing[0]} (wrong data folder? give the right one as DATA or with --root)")


def check_leakage(part: Manifest, run_dir: Path | None) -> dict[str, Any]:
    """Count evaluated images whose bytes (sha256) are in the run's training part (from its split.csv)."""
    split_file = run_dir / "split.csv" if run_dir else None
    if split_file is None or not split_file.is_file():
        return {"checked": False, "train_overlap": 0, "examples": []}
    try:
        trained = {r.sha256 for r in read_manifest_csv(split_file, run_dir).records if r.part == "train"}
    except DataError:
        return {"checked": False, "train_overlap": 0, "examples": []}
    overlap = [r.path for r in part.records if r.sha256 and r.sha256 in trained]
    return {"checked": True, "train_overlap": len(overlap), "examples": overlap[:5],
            "train_images": len(trained)}


def data_summary(data: EvalData, leakage: dict[str, Any]) -> dict[str, Any]:
    """What the numbers are on: part, counts, split sizes, duplicates, unreadable files, leakage."""
    from .data import duplicate_groups

    groups = duplicate_groups(data.full.records)
    sizes = {p: sum(1 for r in data.full.records if r.part == p) for p in ("train", "val", "test")}
    return {
        "data_root": str(data.part.root), "split_csv": str(data.split_csv) if data.split_csv else None,
        "part": data.part_name, "n_images": len(data.part), "class_counts": data.part.class_counts(),
        "total_images": len(data.full), "split_sizes": sizes if _has_parts(data.full) else None,
        "duplicate_groups": len(groups), "duplicate_images": sum(len(g) for g in groups),
        "problems": len(data.full.problems), "leakage": leakage, "notes": list(data.notes),
    }


# ---------------------------------------------------------------------------------------- prediction


def predict_scores(handle: ModelHandle, paths: Sequence[Path], *, batch_size: int = 64,
                   phase: str = "predicting", progress: Progress | None = None) -> np.ndarray:
    """Logits (run / checkpoint) or calibrated probabilities (package) for `paths`, in batches on CPU."""
    import torch

    from .transforms import load_uint8_batch, normalize

    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = load_uint8_batch(paths[start:start + batch_size], handle.preprocess)
        if handle.predictor is not None:
            chunks.append(np.asarray(handle.predictor.predict_proba(batch.permute(0, 2, 3, 1).numpy())))
        else:
            with torch.inference_mode():
                chunks.append(handle.network(normalize(batch, handle.preprocess)).float().numpy())
        if progress is not None:
            progress(phase, min(start + batch_size, len(paths)), len(paths))
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, len(handle.classes)))


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


def calibrate(handle: ModelHandle, data: EvalData, *, enabled: bool = True, batch_size: int = 64,
              progress: Progress | None = None) -> tuple[float, dict[str, Any], list[str]]:
    """Temperature for a run: fitted on its val part and saved to <run>/calibration.json, else the
    stored one, else 1. Returns (temperature, info, warnings)."""
    if handle.predictor is not None:
        return 1.0, {"source": "package", "temperature": handle.info.get("temperature")}, []
    if not enabled:
        return 1.0, {"source": "none", "temperature": 1.0}, []
    val = _val_part(handle, data)
    if val is None:
        stored = calibration.read_temperature(handle.run_dir) if handle.run_dir else None
        if stored is not None:
            return stored, {"source": "stored", "temperature": stored}, []
        return 1.0, {"source": "none", "temperature": 1.0}, []
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
    return temperature, {"source": "fitted", "temperature": temperature, "fitted_on": "val", "n_fit": len(val)}, notes


# ------------------------------------------------------------------------------------------ outputs


def write_predictions(path: Path, part: Manifest, classes: Sequence[str], y: np.ndarray, probs: np.ndarray) -> None:
    """predictions.csv: path, sha256, label, predicted, prob_<class> per class, correct (pandas-readable)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "sha256", "label", "predicted", *(f"prob_{c}" for c in classes), "correct"])
    pred = probs.argmax(axis=1)
    for record, label, guess, row in zip(part.records, y, pred, probs, strict=True):
        writer.writerow([record.path, record.sha256, record.label, classes[guess], *(f"{v:.6f}" for v in row),
                         int(label == guess)])
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
    if leakage["train_overlap"]:
        messages.insert(0, f"LEAKAGE: {leakage['train_overlap']} of {len(y)} evaluated images are in the "
                           f"model's training part (same sha256), e.g. {leakage['examples'][0]}; these scores "
                           "are optimistic")
        warnings.warn(messages[0], LeakageWarning, stacklevel=2)
    temperature, cal_info, cal_notes = calibrate(handle, data_set, enabled=calibrate_on_val,
                                                 batch_size=batch_size, progress=progress)
    messages += cal_notes
    scores = predict_scores(handle, data_set.part.paths(), batch_size=batch_size, progress=progress)
    if handle.predictor is not None:
        raw = probs = scores
    else:
        raw, probs = calibration.softmax(scores), calibration.softmax(scores, temperature)
    result: dict[str, Any] = {"leukoscope_version": __version__,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result.update(compute_metrics(y, probs, classes=handle.classes, n_bootstrap=n_bootstrap, seed=seed))
    result["calibration"] = {**cal_info, **calibration.calibration_report(raw, probs, y, n_bins=N_BINS)}
    handle.info["temperature"] = handle.info.get("temperature") or temperature
    history = read_history(handle.run_dir)
    result.update(model=handle.info, data_summary=data_summary(data_set, leakage), leakage=leakage,
                  warnings=messages)
    result["timing"] = {"eval_seconds": time.perf_counter() - started,
                        "train_seconds": train_seconds(handle.run_dir, history)}
    write_outputs(Path(out_dir), result, data_set.part, y, (raw, probs), handle, history, seed=seed)
    return result


def write_outputs(out: Path, result: dict[str, Any], part: Manifest, y: np.ndarray,
                  probabilities: tuple[np.ndarray, np.ndarray], handle: ModelHandle,
                  history: list[dict[str, str]], *, seed: int = 0) -> dict[str, str]:
    """predictions.csv, figures/, metrics.json, report.html and MODEL_CARD.md in `out`; the file names
    are also stored in result["files"]."""
    from .plots import evaluation_figures
    from .reporting import write_model_card, write_report_html

    raw, probs = probabilities
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    write_predictions(out / "predictions.csv", part, handle.classes, y, probs)
    figures = evaluation_figures(
        out / "figures", y=y, probs=probs, raw_probs=raw, classes=handle.classes, paths=part.paths(),
        confusion=result["confusion_matrix"], history=history, seed=seed,
        eval_part=str(handle.config.get("eval_part") or "validation"),
    )
    files = {"metrics": "metrics.json", "predictions": "predictions.csv", "report": "report.html",
             "model_card": "MODEL_CARD.md",
             **{f"figure_{Path(f['path']).stem}": f"figures/{Path(f['path']).name}" for f in figures}}
    result["files"] = files
    write_json(out / "metrics.json", result)
    write_report_html(out / "report.html", result=result, figures=figures, config=handle.config,
                      title=f"Evaluation of {handle.info.get('name', 'model')} on {result['data_summary']['part']}")
    write_model_card(out / "MODEL_CARD.md", model_info=handle.info, metrics=result,
                     data_summary=result["data_summary"], config=handle.config)
    return files
