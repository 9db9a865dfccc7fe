"""Smoke tests of benchmarks/accuracy.py and benchmarks/crossval.py on the tests' tiny run: the rows they
score and the sections they write, checked for structure on a dozen test images, never for accuracy."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import accuracy, accuracy_report, crossval

# ------------------------------------------------------------------------------------------- accuracy


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_paper_split_moves_val_rows_to_train(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = accuracy.paper_split(tiny["split"], tmp_path / "paper.csv")
    before = [r["part"] for r in _rows(tiny["split"])]
    after = [r["part"] for r in _rows(out)]
    assert "val" in before and "val" not in after
    assert after.count("test") == before.count("test") and len(after) == len(before)


def _finished_run(tiny: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny run with what fit writes at the end, but no test metrics (a GPU run's case)."""
    run = tmp_path / "gpu-run"
    shutil.copytree(tiny["run"], run)
    (run / "summary.json").write_text(json.dumps({"protocol": "finetune", "backbone": "test_efficientnet",
                                                  "device": "cuda", "best_epoch": 2, "epochs_run": 2,
                                                  "seconds_total": 3.0, "seconds_per_epoch": 1.5,
                                                  "train_images": 40}))
    (run / "env.json").write_text(json.dumps({"gpu": "Some GPU", "torch": "2.x", "cpu_count": 16}))
    (run / "metrics.csv").write_text("epoch,stage,train_loss,train_acc,val_loss,val_acc,val_macro_f1,lr,seconds\n"
                                     "1,warmup,1,0.5,0.9,0.5,0.4,0.001,2.0\n2,main,0.5,0.9,0.2,1,1,0.001,1.0\n")
    return run


def test_run_row_scores_the_test_part_when_the_summary_has_none(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = _finished_run(tiny, tmp_path)
    row = accuracy.run_row(run, split=tiny["split"], data=tiny["data"])
    assert row["test"]["n"] == 12 and row["test"]["leakage_checked"]
    assert all(0.0 <= row["test"][k] <= 1.0 for k in accuracy_report.METRICS)
    assert row["val"] == {"val_acc": 1.0, "val_macro_f1": 1.0, "val_loss": 0.2}
    assert "Some GPU" in row["machine"] and row["first_epoch_s"] == 2.0 and row["later_epoch_s"] == 1.0
    benign = sum(1 for r in _rows(tiny["split"]) if r["part"] == "test" and r["label"] == "Benign")
    assert row["test"]["n_leukemia"] == row["test"]["n"] - benign
    assert 0 <= row["test"]["leukemia_called_benign"] <= row["test"]["n_leukemia"]
    body = accuracy_report.render([row], "cmd", "Accuracy", "- note\n")
    assert "paper (published)" in body and "96.90" in body and "gpu-run" in body


def test_run_row_refuses_test_images_the_run_trained_on(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = _finished_run(tiny, tmp_path)
    rows = _rows(tiny["split"])
    first_train = next(r for r in rows if r["part"] == "train")
    first_train["part"] = "test"
    leaky = tmp_path / "leaky.csv"
    with open(leaky, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SystemExit, match="test image"):
        accuracy.run_row(run, split=leaky, data=tiny["data"])


def test_accuracy_from_runs_writes_its_section(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = _finished_run(tiny, tmp_path)
    results = tmp_path / "RESULTS.md"
    code = accuracy.main(["--from-runs", str(run), "--split", str(tiny["split"]), "--data", str(tiny["data"]),
                          "--results", str(results), "--json", str(tmp_path / "rows.json")])
    assert code == 0
    text = results.read_text(encoding="utf-8")
    assert "<!-- accuracy-runs:begin -->" in text and "--from-runs" in text and "Test-part metrics" in text
    assert json.loads((tmp_path / "rows.json").read_text())[0]["test"]["n"] == 12


def test_a_distilled_run_is_named_as_such_with_its_teachers(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = _finished_run(tiny, tmp_path)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config + "soft_targets: t/a.csv,t/b.csv\nsoft_target_weight: 0.5\n")
    row = accuracy.run_row(run, split=tiny["split"], data=tiny["data"])
    assert row["protocol"].endswith("+ distillation") and row["soft_targets"] == "t/a.csv,t/b.csv"
    note = accuracy_report._distillation_note([row])
    assert "`t/a.csv,t/b.csv`, weight 0.5" in note and "used the test part" in note
    assert "finetune + distillation: >= 99.5%" in accuracy_report.verdicts([row])
    assert accuracy_report._distillation_note([{**row, "soft_targets": ""}]) == ""


def test_missed_leukemia_is_counted_from_a_runs_own_test_predictions(tmp_path: Path) -> None:
    (tmp_path / "predictions_test.csv").write_text(
        "path,sha256,label,predicted,prob_Benign,prob_Early Pre-B,prob_Pre-B,prob_Pro-B\n"
        'a,h,"Early Pre-B","Benign",0.9,0.1,0,0\nb,h,"Pro-B","Pro-B",0.1,0,0,0.9\n'
        'c,h,"Benign","Pre-B",0.2,0,0.8,0\nd,h,"Benign","Benign",1,0,0,0\n')
    assert accuracy.confusions_from_predictions(tmp_path) == {
        "n_leukemia": 2, "leukemia_called_benign": 1, "benign_called_leukemia": 1}
    assert accuracy.confusions_from_predictions(tmp_path / "none") == {}


# ------------------------------------------------------------------------------------------- crossval


@pytest.mark.slow
def test_crossval_fold_exports_scores_and_renders(tiny: dict[str, Path], tmp_path: Path) -> None:
    """One finished fold run (the tiny run): both exports, scoring on its test part, the pooled table."""
    runs = tmp_path / "runs"
    run = runs / "cv-mbv2-fold1"
    shutil.copytree(tiny["run"], run)
    (run / "summary.json").write_text(json.dumps({"seconds_total": 12.0}), encoding="utf-8")
    args = crossval.parse_args(["--runs-dir", str(runs), "--data", str(tiny["data"])])
    row = crossval.fold_row(1, run / "split.csv", args)  # training is skipped: summary.json exists
    assert (run / "package-fp32" / "model.json").is_file()
    assert "fp32" in row["scores"] and set(row["scores"]) | set(row["refused"]) == {"fp32", "int8"}
    fp32 = row["scores"]["fp32"]
    n_test = sum(1 for line in (run / "split.csv").read_text().splitlines() if line.endswith(",test"))
    assert fp32["n"] == n_test == len(fp32["pred"]) and fp32["default_onnx"] == "model.onnx"
    assert fp32["accuracy"] == pytest.approx(np.mean(np.asarray(fp32["y"]) == np.asarray(fp32["pred"])))
    pooled = crossval.pooled([row, row], "fp32")
    assert pooled["n"] == 2 * n_test and pooled["missed"] == 2 * fp32["leukemia_called_benign"]
    text = crossval.render([row], "cmd")
    assert "**all folds**" in text and "Cross-validation" in text and "fold 1 12 s" in text
    assert crossval.export_fold(run, "fp32") == (run / "package-fp32", "")  # exists: not exported again


def test_rate_interval_is_exact_binomial() -> None:
    low, high = crossval.rate_interval(0, 2370)
    assert low == 0.0 and 0.001 < high < 0.002  # the "rule of three": about 3/n
    low, high = crossval.rate_interval(3, 2370)
    assert low < 3 / 2370 < high
