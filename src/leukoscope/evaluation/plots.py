"""The evaluation figures, as PNG files: training curves, confusion matrix, example predictions, ROC
curves and the reliability diagram.

Figures are built on `matplotlib.figure.Figure` objects, never pyplot, so no global state or GUI backend
is involved (the Agg canvas renders them) and they can be made from a web server thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from leukoscope.data.fileio import atomic_open

DPI = 110
CORRECT_COLOUR, WRONG_COLOUR = "#1b7837", "#b2182b"


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    return path


def _floats(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key, "")))
        except (TypeError, ValueError):
            values.append(np.nan)
    return np.asarray(values, dtype=np.float64)


def training_curves(history: Sequence[dict[str, Any]], path: str | Path, *, eval_part: str = "val") -> Path:
    """Accuracy and loss per epoch, training vs `eval_part` (the paper's Figure 2), from metrics.csv rows.

    Stage changes (e.g. head warm-up -> fine-tuning) are marked with a dotted line.
    """
    epochs = np.arange(1, len(history) + 1)
    stages = [str(row.get("stage", "")) for row in history]
    eval_label = {"val": "validation"}.get(eval_part, eval_part)
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, metric, title in zip(fig.subplots(1, 2), ("acc", "loss"), ("Accuracy", "Loss"), strict=True):
        for prefix, label, style in (("train", "training", "-o"), ("val", eval_label, "-s")):
            values = _floats(history, f"{prefix}_{metric}")
            if np.isfinite(values).any():
                ax.plot(epochs, values, style, markersize=3, label=label)
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle=":", linewidth=1)
                ax.text(i + 0.6, 0.98, stages[i], transform=ax.get_xaxis_transform(), fontsize=8,
                        va="top", color="grey")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def confusion_matrix(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path) -> Path:
    """Counts and row-normalised percentages (recall per true class) in each cell (the paper's Figure 3)."""
    counts = np.asarray(cm, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = 1.4 + 1.3 * len(classes)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if share[i, j] > 0.55 else "black"
            ax.text(j, i, f"{counts[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center",
                    color=colour, fontsize=10)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (counts, % of true class)")
    return _save(fig, path)


def prediction_grid(
    images: Sequence[np.ndarray | None],
    truths: Sequence[str],
    predictions: Sequence[str],
    confidences: Sequence[float],
    path: str | Path,
    *,
    columns: int = 4,
) -> Path:
    """Example images titled with true / predicted class and confidence, green when right and red when
    wrong (the paper's Figure 4). Pass correct and incorrect examples in the order to show them; a None
    image leaves its cell empty (to start the incorrect ones on a new row)."""
    n = max(1, len(images))
    rows = (n + columns - 1) // columns
    fig = Figure(figsize=(2.6 * columns, 3.0 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    if not any(image is not None for image in images):
        axes[0].text(0.5, 0.5, "no images", ha="center", va="center")
    for ax, image, truth, pred, conf in zip(axes, images, truths, predictions, confidences, strict=False):
        if image is None:
            continue
        colour = CORRECT_COLOUR if truth == pred else WRONG_COLOUR
        ax.axis("on")
        ax.imshow(image)
        ax.set_title(f"true: {truth}\npred: {pred} ({conf:.2f})", fontsize=9, color=colour)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Example predictions (green: correct, red: incorrect; calibrated confidence in brackets)",
                 fontsize=10)
    return _save(fig, path)


def roc_curves(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], path: str | Path, *,
               benign_class: str | None = "Benign") -> Path:
    """One-vs-rest ROC curve per class present in y_true, plus leukemia-vs-benign (dashed) when there is
    a benign class; AUCs in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for k, name in enumerate(classes):
        positive = y == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positive, p[:, k]):.3f})")
    if benign_class in classes:
        b = list(classes).index(benign_class)
        leukemia = y != b
        if 0 < leukemia.sum() < len(y):
            fpr, tpr, _ = roc_curve(leukemia, 1 - p[:, b])
            auc = roc_auc_score(leukemia, 1 - p[:, b])
            ax.plot(fpr, tpr, "k--", label=f"leukemia vs benign (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curves (one vs rest)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # data of one class has no curve to label
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no ROC curve: the data has one class only", ha="center", va="center")
    return _save(fig, path)


def reliability_diagram(curves: dict[str, dict[str, list]], path: str | Path,
                        eces: dict[str, float] | None = None) -> Path:
    """Accuracy vs confidence per bin for each named set of bins (e.g. "before" / "after" temperature
    scaling), with the diagonal of perfect calibration and a histogram of confidences below."""
    fig = Figure(figsize=(5.5, 6.2), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for i, (name, bins) in enumerate(curves.items()):
        conf = np.array([np.nan if v is None else v for v in bins["confidence"]], dtype=np.float64)
        acc = np.array([np.nan if v is None else v for v in bins["accuracy"]], dtype=np.float64)
        keep = np.isfinite(conf)
        label = name if not eces or name not in eces else f"{name} (ECE {eces[name]:.3f})"
        ax.plot(conf[keep], acc[keep], "-o", markersize=4, label=label)
        centres = (np.asarray(bins["lower"]) + np.asarray(bins["upper"])) / 2
        width = (bins["upper"][0] - bins["lower"][0]) / max(1, len(curves))
        hist.bar(centres - width * (len(curves) - 1) / 2 + i * width, bins["count"], width=width,
                 alpha=0.7, label=name)
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (top-label confidence)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("confidence")
    hist.set_ylabel("images")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.grid(alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------- evaluation figures


def pick_examples(y: np.ndarray, probs: np.ndarray, *, n_correct: int = 8, n_wrong: int = 8,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices to show: a seeded sample of correct predictions spread over the classes, then the most
    confident errors (the ones worth a look)."""
    pred = probs.argmax(axis=1)
    rng = np.random.default_rng(seed)
    correct = []
    for k in range(probs.shape[1]):
        members = np.flatnonzero((pred == y) & (y == k))
        correct.extend(rng.permutation(members)[: max(1, n_correct // probs.shape[1])].tolist())
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:n_wrong]
    return correct[:n_correct], wrong.tolist()


def _thumbnail(path: Path, size: int = 160) -> np.ndarray:
    from leukoscope.data.imaging import load_rgb

    image = load_rgb(path)
    image.thumbnail((size, size))
    return np.asarray(image)


def evaluation_figures(folder: str | Path, *, y: np.ndarray, probs: np.ndarray, raw_probs: np.ndarray,
                       classes: Sequence[str], paths: Sequence[Path], confusion: Sequence[Sequence[int]],
                       history: Sequence[dict[str, Any]], seed: int = 0,
                       eval_part: str = "validation") -> list[dict[str, Any]]:
    """Write every figure of an evaluation into `folder`; returns [{"title", "caption", "path"}] in
    report order. The training-curves figure is left out when the run has no metrics.csv."""
    from leukoscope.review.calibration import expected_calibration_error, reliability_bins

    folder = Path(folder)
    figures = []
    if history:
        figures.append({"title": "Training curves", "path": training_curves(history, folder / "training_curves.png",
                                                                          eval_part=eval_part),
                        "caption": f"Accuracy and loss per epoch on the training and {eval_part} images."})
    figures.append({"title": "Confusion matrix", "path": confusion_matrix(confusion, classes,
                                                                            folder / "confusion_matrix.png"),
                    "caption": "Rows: true class; columns: predicted class. Counts and % of the true class."})
    right, wrong = pick_examples(y, probs, seed=seed)
    chosen: list[int | None] = [*right, *[None] * (-len(right) % 4), *wrong]  # errors start a new row
    pred = probs.argmax(axis=1)
    figures.append({
        "title": "Example predictions",
        "path": prediction_grid([None if i is None else _thumbnail(paths[i]) for i in chosen],
                                ["" if i is None else classes[y[i]] for i in chosen],
                                ["" if i is None else classes[pred[i]] for i in chosen],
                                [0.0 if i is None else float(probs[i].max()) for i in chosen],
                                folder / "predictions.png", columns=4),
        "caption": "Correct predictions (green) and the most confident errors (red), with calibrated confidence.",
    })
    figures.append({"title": "ROC curves", "path": roc_curves(y, probs, classes, folder / "roc_curves.png"),
                    "caption": "One-vs-rest ROC curve per class; dashed: any leukemia subtype vs benign."})
    curves = {"before calibration": reliability_bins(raw_probs, y), "after calibration": reliability_bins(probs, y)}
    eces = {"before calibration": expected_calibration_error(raw_probs, y),
            "after calibration": expected_calibration_error(probs, y)}
    if np.allclose(raw_probs, probs):
        curves, eces = {"model": curves["after calibration"]}, {"model": eces["after calibration"]}
    figures.append({"title": "Reliability diagram", "path": reliability_diagram(curves, folder / "reliability.png",
                                                                                eces),
                    "caption": "Accuracy vs confidence per bin; the diagonal is perfect calibration."})
    return figures
