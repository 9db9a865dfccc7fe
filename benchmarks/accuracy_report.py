"""The markdown of the accuracy sections of RESULTS.md (what benchmarks/accuracy.py measured, as tables).

Test-part metrics next to the paper's published numbers, training times, each protocol's target with its
verdict, and the notes that say where every number came from and how the bundled model was chosen.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks import common

PAPER = {"accuracy": 0.969, "precision": 0.966, "recall": 0.969, "f1": 0.967}
METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "precision_macro",
           "recall_macro", "f1_macro")
TARGETS = {"paper": "about 95-97% accuracy in under 3 minutes on this CPU",
           "finetune": ">= 99.5% accuracy and macro-F1"}



def _p(value: Any) -> str:
    """A fraction as a percentage with 2 decimals (one test image is 0.12 points)."""
    return "n/a" if value is None else f"{100 * float(value):.2f}"


def metrics_table(rows: list[dict[str, Any]]) -> str:
    """Test-part metrics of each run next to the paper's published numbers (percent)."""
    header = ["run", "protocol", "backbone", "seed", "trained on", "test images", "accuracy", "precision (weighted)",
              "recall (weighted)", "F1 (weighted)", "precision (macro)", "recall (macro)", "F1 (macro)",
              "leukemia called benign", "benign called leukemia"]
    body = [["paper (published)", "frozen MobileNetV2, 5 epochs", "MobileNetV2", "", "", "30% of the data",
             _p(PAPER["accuracy"]), _p(PAPER["precision"]), _p(PAPER["recall"]), _p(PAPER["f1"]), "", "", "", "", ""]]
    for r in rows:
        t = r["test"]
        missed = (f"{t['leukemia_called_benign']} of {t['n_leukemia']}" if "leukemia_called_benign" in t
                  else "n/a")
        false_alarms = (f"{t['benign_called_leukemia']} of {t['n'] - t['n_leukemia']}"
                        if "benign_called_leukemia" in t else "n/a")
        body.append([f"`{r['run']}`", r["protocol"], r["backbone"], r["seed"], r["machine"], t.get("n"),
                     *(_p(t.get(k)) for k in METRICS), missed, false_alarms])
    return common.table(header, body)


def timing_table(rows: list[dict[str, Any]]) -> str:
    """Wall time per epoch (the first one separately: it includes caching frozen features or warm-up)."""
    header = ["run", "trained on", "train images", "epochs run (best)", "s/epoch (mean)", "epoch 1 s",
              "later epochs s (mean)", "fit loop s", "whole fit() call s"]
    body = [[f"`{r['run']}`", r["machine"], r["train_images"], f"{r['epochs_run']} ({r['best_epoch']})",
             common.fmt(r["seconds_per_epoch"], 2), common.fmt(r["first_epoch_s"], 2),
             common.fmt(r["later_epoch_s"], 2), common.fmt(r["seconds_total"], 1),
             common.fmt(r["wall_s"], 1) if r["wall_s"] else "not timed here"] for r in rows]
    return common.table(header, body)


def verdicts(rows: list[dict[str, Any]]) -> str:
    """Each protocol's target (issue #3), met or not, with the numbers (the paper protocol's includes time on
    this CPU, so it is judged only for runs trained here)."""
    lines = []
    for r in rows:
        t, base = r["test"], r["protocol"].removesuffix(" + distillation")
        if base == "paper" and r["trained_here"]:
            ok = t["accuracy"] >= 0.95 and r["wall_s"] is not None and r["wall_s"] < 180
            measured = f"{_p(t['accuracy'])}% in {common.fmt(r['wall_s'], 0)} s (whole fit() call)"
        elif base == "finetune":
            ok = t["accuracy"] >= 0.995 and t["f1_macro"] >= 0.995
            measured = f"accuracy {_p(t['accuracy'])}%, macro-F1 {_p(t['f1_macro'])}%"
        else:
            continue
        where = "" if r["trained_here"] else f", trained on {r['machine']}"
        lines.append(f"- Target for `{r['run']}` ({r['protocol']}: {TARGETS[base]}){where}: {measured}: "
                     f"**{'met' if ok else 'not met'}**.")
    return "\n".join(lines) + ("\n" if lines else "")


def bundled_run_name() -> str | None:
    """The training run name recorded in the bundled package's model.json (None without a package)."""
    from leukoscope.inference.package import bundled_package_path, read_package_json

    try:
        bundled = read_package_json(bundled_package_path())
    except Exception:  # no bundled package in this checkout: nothing to point at
        return None
    return ((bundled.get("training") or {}).get("config") or {}).get("name")


def selection_note(rows: list[dict[str, Any]]) -> str:
    """Validation scores of the runs (how the bundled model was chosen) and which run it is."""
    chosen = bundled_run_name()
    header = ["run", "backbone", "best epoch", "val accuracy", "val macro-F1", "val loss", "bundled package?"]
    body = [[f"`{r['run']}`", r["backbone"], r["best_epoch"], _p(r["val"].get("val_acc")),
             _p(r["val"].get("val_macro_f1")), common.fmt(r["val"].get("val_loss"), 4),
             "yes" if chosen and r["name"] == chosen else "no"] for r in rows if r["val"]]
    return common.table(header, body) if body else ""


TIMING_NOTE = ("s/epoch and epoch columns: metrics.csv (train + scoring the eval part, per epoch); fit loop: "
               "summary.json's seconds_total, which also holds what runs once before the epochs (for the paper "
               "protocol the frozen backbone's features of 3 views of every training image); whole fit() call: "
               "timed here around it, adding data discovery, decoding and scoring the test part.")


def render(rows: list[dict[str, Any]], command: str, title: str, note: str) -> str:
    """One section: header, notes, test metrics next to the paper's, timings and the targets."""
    targets = verdicts(rows)
    parts = [common.section_header(title, command), note, "### Test-part metrics (percent)\n",
             metrics_table(rows), "### Training time\n", timing_table(rows), TIMING_NOTE,
             "### Targets\n" if targets else "", targets]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


PAPER_NOTE = ("The paper reports accuracy 96.9, precision 96.6, recall 96.9 and F1 96.7 without naming the "
              "averaging; its recall equals its accuracy, which weighted averaging always gives, so compare it "
              "with the weighted columns.")


def trained_note(args: argparse.Namespace, protocol: str) -> str:
    """How a run trained here was configured, so the row can be reproduced."""
    split = common.display_path(args.split) if args.split else "a fresh seeded split made by fit"
    rows = ("trained on its train and val rows, 70% of the data" if protocol == "paper" else "trained on its "
            "train rows, its val rows choosing the best epoch") if args.split else "its own parts"
    malloc = all(os.environ.get(k) == v for k, v in common.MALLOC_ENV.items())
    return (f"- Trained here: `leukoscope.training.config.resolve_config({protocol!r})` with data "
            f"`{common.display_path(args.data)}`, split `{split}` ({rows}; held out: its test part); seed "
            f"{args.seed}, device {args.device}, ImageNet weights from `{common.display_path(args.weights_dir)}`, "
            f"then `leukoscope.training.loop.fit(config, quiet=True)`; the metrics are the run's summary.json "
            f"(scikit-learn, best checkpoint on the test part). glibc malloc settings of the Makefile: "
            f"{'on' if malloc else 'off'}.\n- {PAPER_NOTE}\n")


def bundled_test_accuracy() -> float | None:
    """The test accuracy the bundled package's own evaluation recorded in model.json (a cross-check)."""
    from leukoscope.inference.package import bundled_package_path, read_package_json

    try:
        evaluation = read_package_json(bundled_package_path()).get("metrics", {}).get("evaluation", {})
    except Exception:  # no bundled package in this checkout
        return None
    value = evaluation.get("accuracy") if isinstance(evaluation, dict) else None
    return float(value) if isinstance(value, int | float) else None


def runs_note(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Where the numbers of runs trained elsewhere come from, and how the bundled model was chosen."""
    sources = sorted({r["test_source"] for r in rows})
    text = ("- Read from the run folders (summary.json, config.yaml, env.json, metrics.csv); nothing was trained "
            "by this command; the Machine line above is where the test metrics were computed, the tables name "
            f"where each run trained. Test metrics: {'; '.join(sources)}. Before scoring, each run's own split.csv "
            "was checked to hold none of the test images (by path and by sha256).\n"
            f"- {PAPER_NOTE}\n")
    if any(r["val"] for r in rows) and any(r["name"] == bundled_run_name() for r in rows):
        text += ("- Model selection: the bundled package was chosen among the three H100 runs (`gpu-*`) by their "
                 "validation scores, before any test metric was computed: all had val macro-F1 1.000; the "
                 "MobileNetV2 with the lower val loss was chosen (MobileNetV2 is the faster network on CPUs; "
                 "EfficientNet-Lite0's val loss is in the table below). The test metrics were computed afterwards. "
                 "Other runs listed (e.g. `cpu-bundled`, the bundled configuration retrained on this CPU as "
                 "`make model` does) were trained after the choice, to measure reproducibility and CPU time.\n"
                 + _cross_check(rows) + _distillation_note(rows) + "\n"
                 "### Validation part (280 images) at each run's best epoch\n\n" + selection_note(rows))
    return text


def _distillation_note(rows: list[dict[str, Any]]) -> str:
    """How the distilled runs were made, and what was decided about them (they were trained after the choice)."""
    students = [r for r in rows if r.get("soft_targets")]
    if not students:
        return ""
    names = ", ".join(f"`{r['run']}`" for r in students)
    teachers = "; ".join(sorted({r["soft_targets"] for r in students}))
    return (f"- Distillation experiment: {names} trained with the bundled configuration on soft targets "
            f"(`{teachers}`, weight {students[0]['soft_target_weight']}: the teachers' mean probabilities with 8-view "
            "test-time augmentation on the training images, mixed with the labels). The rule for replacing the "
            "bundled model was written down before its test scores were computed: replace it when val accuracy "
            "and macro-F1 are not lower. It passed that rule; its test scores (table below) were then lower than "
            "the bundled model's, and the bundled model was kept, a decision that used the test part. Both rows "
            "are shown as measured.\n")


def _cross_check(rows: list[dict[str, Any]]) -> str:
    """A line comparing the bundled run's test accuracy here with the package's own evaluation."""
    recorded, name = bundled_test_accuracy(), bundled_run_name()
    row = next((r for r in rows if r["name"] == name), None)
    if recorded is None or row is None:
        return ""
    return (f"- Cross-check: `{row['run']}` scores {_p(row['test']['accuracy'])}% here; the bundled package's own "
            f"evaluation (model.json, its fp16-rounded weights) recorded {_p(recorded)}% on the same 838 images.\n")
