"""`leukoscope.evaluation.evaluate.evaluate` and `leukoscope.evaluation.compare.compare` on a tiny untrained run folder."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from leukoscope.data.manifest import read_manifest_csv
from leukoscope.errors import DataError, ModelError, UsageError
from leukoscope.evaluation.compare import compare
from leukoscope.evaluation.evaluate import LeakageWarning, evaluate
from leukoscope.evaluation.intervals import proportion
from leukoscope.evaluation.report import rate
from tests.helpers.evalfixtures import make_noise_dataset, make_run

CLASSES = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evaluation")
    data = make_noise_dataset(base / "ALL")
    return {"base": base, "data": data, "run": make_run(base / "run", data)}


@pytest.fixture(scope="module")
def evaluated(workspace) -> tuple[Path, dict]:
    """The run evaluated with every default: its own data, split.csv and test part."""
    out = workspace["base"] / "out"
    return out, evaluate(workspace["run"], None, out_dir=out, n_bootstrap=30)


def part_size(run: Path, part: str) -> int:
    return len(read_manifest_csv(run / "split.csv", run).part(part))


def strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_default_evaluates_the_runs_test_part_and_writes_everything(workspace, evaluated):
    out, result = evaluated
    n_test = part_size(workspace["run"], "test")
    summary = result["data_summary"]
    assert (summary["part"], summary["n_images"], result["n"]) == ("test", n_test, n_test)
    assert summary["split_sizes"] == {p: part_size(workspace["run"], p) for p in ("train", "val", "test")}
    for name in ("metrics.json", "predictions.csv", "report.html", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    saved = strict_json(out / "metrics.json")
    for key in ("accuracy", "balanced_accuracy", "per_class", "macro", "weighted", "cohen_kappa", "mcc",
                "macro_roc_auc", "macro_pr_auc", "log_loss", "confusion_matrix", "leukemia_vs_benign", "headline",
                "calibration", "leakage", "timing"):
        assert key in saved, key
    assert saved["headline"]["accuracy"]["low"] is not None
    assert saved["headline"]["accuracy"]["method"] == "clopper-pearson" and saved["headline"]["accuracy"]["n"] == n_test
    assert saved["headline"]["macro_f1"]["method"] == "bootstrap-percentile"
    report = (out / "report.html").read_text(encoding="utf-8")
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    for text in (report, card):
        assert "exact (Clopper-Pearson)" in text and "percentile bootstrap" in text
    assert sum(map(sum, saved["confusion_matrix"])) == n_test
    assert saved["leakage"] == {"checked": True, "train_overlap": 0, "examples": [],
                                "train_images": part_size(workspace["run"], "train")}
    assert result["warnings"] == []


def test_predictions_csv_has_one_row_per_image(workspace, evaluated):
    out, result = evaluated
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "sha256", "label", "predicted", *(f"prob_{c}" for c in CLASSES), "correct"]
    assert len(rows) == result["n"]
    for row in rows:
        assert row["correct"] == str(int(row["label"] == row["predicted"]))
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
        assert len(row["sha256"]) == 64
    assert sum(int(r["correct"]) for r in rows) / len(rows) == pytest.approx(result["accuracy"])


def test_temperature_is_fitted_on_val_and_stored_with_the_run(workspace, evaluated):
    _, result = evaluated
    cal = result["calibration"]
    assert cal["source"] == "fitted" and cal["n_fit"] == part_size(workspace["run"], "val")
    stored = json.loads((workspace["run"] / "calibration.json").read_text())
    assert stored == {"temperature": cal["temperature"], "fitted_on": "val", "n": cal["n_fit"]}
    for key in ("ece_before", "ece_after", "brier_before", "brier_after"):
        assert 0 <= cal[key] <= 2


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_report_embeds_every_figure(evaluated):
    out, result = evaluated
    parser = Images()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 5  # training curves, confusion matrix, examples, ROC, reliability
    assert len(parser.sources) == len(pngs)
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert sorted(v for k, v in result["files"].items() if k.startswith("figure_")) == [
        f"figures/{p.name}" for p in pngs]
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"the `test` part, **{result['n']} images**" in card


def test_leakage_on_the_training_part_is_loud_and_counted(workspace, tmp_path):
    n_train = part_size(workspace["run"], "train")
    with pytest.warns(LeakageWarning, match=f"{n_train} of {n_train}"):
        result = evaluate(workspace["run"], workspace["data"], split_csv=workspace["run"] / "split.csv", part="train",
                          out_dir=tmp_path / "out", n_bootstrap=0, calibrate_on_val=False)
    assert result["leakage"]["train_overlap"] == n_train
    assert result["warnings"][0].startswith("LEAKAGE")
    assert "LEAKAGE" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_leakage_found_by_content_in_another_folder(workspace, tmp_path):
    """A copy of one training image, renamed, inside a new dataset folder is still caught (by sha256)."""
    other = make_noise_dataset(tmp_path / "other", per_class=2, seed=5)
    train = read_manifest_csv(workspace["run"] / "split.csv", workspace["data"]).part("train")
    shutil.copy(train.paths()[0], other / "Benign" / "renamed.jpg")
    with pytest.warns(LeakageWarning):
        result = evaluate(workspace["run"], other, out_dir=tmp_path / "out", n_bootstrap=0, calibrate_on_val=False)
    assert result["data_summary"]["part"] == "all" and result["n"] == 9
    assert result["leakage"]["train_overlap"] == 1
    assert result["leakage"]["examples"] == ["Benign/renamed.jpg"]


def test_csv_as_data_with_root(workspace, tmp_path):
    result = evaluate(workspace["run"], workspace["run"] / "split.csv", root=workspace["data"], part="val",
                      out_dir=tmp_path / "out", n_bootstrap=0, calibrate_on_val=False)
    assert result["n"] == part_size(workspace["run"], "val")
    assert result["calibration"]["source"] in ("stored", "none")


def test_classes_that_do_not_match_are_a_data_error(workspace, tmp_path):
    cats = make_noise_dataset(tmp_path / "pets", per_class=1, folders=("cats", "dogs"))
    with pytest.raises(DataError, match=r"classes .* do not match"):
        evaluate(workspace["run"], cats, out_dir=tmp_path / "out")


def test_empty_part_is_a_data_error(workspace, tmp_path):
    no_val = tmp_path / "split.csv"
    no_val.write_text((workspace["run"] / "split.csv").read_text().replace(",val\n", ",train\n"))
    with pytest.raises(DataError, match=r"'val' part .* is empty"):
        evaluate(workspace["run"], workspace["data"], split_csv=no_val, part="val", out_dir=tmp_path / "out")


def test_run_folder_without_checkpoint_is_a_model_error(workspace, tmp_path):
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    shutil.copy(workspace["run"] / "config.yaml", empty_run / "config.yaml")
    with pytest.raises(ModelError, match="no checkpoint"):
        evaluate(empty_run, workspace["data"], out_dir=tmp_path / "out")


def test_missing_paths_and_images_are_clear_errors(workspace, tmp_path):
    with pytest.raises(UsageError, match="model not found"):
        evaluate(tmp_path / "nope", workspace["data"], out_dir=tmp_path / "out")
    with pytest.raises(UsageError, match="data not found"):
        evaluate(workspace["run"], tmp_path / "nope", out_dir=tmp_path / "out")
    with pytest.raises(UsageError, match="not both"):
        evaluate(workspace["run"], workspace["run"] / "split.csv", split_csv=workspace["run"] / "split.csv",
                 out_dir=tmp_path / "out")
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    with pytest.raises(DataError, match="missing"):
        evaluate(workspace["run"], elsewhere, split_csv=workspace["run"] / "split.csv", out_dir=tmp_path / "out")


def test_compare_pairs_images_and_runs_mcnemar(workspace, evaluated, tmp_path):
    out_a, result_a = evaluated
    run_b = make_run(tmp_path / "run-b", workspace["data"], seed=1)
    out_b = tmp_path / "out-b"
    evaluate(run_b, None, out_dir=out_b, n_bootstrap=0, calibrate_on_val=False)
    comparison = compare([out_a, out_b])
    assert [r["name"] for r in comparison["runs"]] == ["run", "run-b"]
    (test,) = comparison["tests"]
    assert test["n"] == result_a["n"]
    assert test["both_correct"] + test["both_wrong"] + test["a_only"] + test["b_only"] == test["n"]
    assert 0 <= test["p_value"] <= 1
    json.dumps(comparison, allow_nan=False)
    with pytest.raises(UsageError, match="at least two"):
        compare([out_a])
    with pytest.raises(DataError, match="run `leukoscope evaluate`"):
        compare([out_a, tmp_path])


def test_package_on_a_labs_own_benign_folder_reports_the_review_flag(tiny_package, tmp_path):
    """The check a lab runs before use: its own normal cells (Benign/ only), scored with the review rules."""
    from PIL import Image

    from tests.helpers.modelfixtures import smear_image

    lab = tmp_path / "lab"
    (lab / "Benign").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(smear_image(0, 100 + i)).save(lab / "Benign" / f"cell-{i}.jpg", quality=92)
    Image.new("RGB", (64, 64), (40, 160, 60)).save(lab / "Benign" / "solid.png")  # not a smear: must be flagged
    out = tmp_path / "out"
    result = evaluate(tiny_package, lab, out_dir=out, n_bootstrap=20)
    assert result["data_summary"]["class_counts"]["Benign"] == 7 and result["n"] == 7
    assert result["mcc"] is None and result["headline"]["mcc"]["low"] is None  # undefined on one class
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    assert rows["solid.png"]["review"] == "1" and rows["solid.png"]["review_reasons"]
    assert rows["solid.png"]["review_codes"] == "uniform"  # stable codes beside the words, for tools
    review = strict_json(out / "metrics.json")["review"]
    assert review["n"] == 7 and review["n_benign"] == 7 and review["n_leukemia"] == 0
    assert review["unusable"] == 1  # the solid square got no class, and the lab is told how many
    assert review["flagged"] == sum(r["review"] == "1" for r in rows.values())
    assert review["benign_called_leukemia_not_flagged"] == sum(
        r["predicted"] != "Benign" and r["review"] == "0" for r in rows.values())
    assert review["wrong_not_flagged"] == review["benign_called_leukemia_not_flagged"]
    assert sum(review["reasons"].values()) >= review["flagged"]
    assert "Review flag" in (out / "report.html").read_text(encoding="utf-8")
    k = review["benign_called_leukemia_not_flagged"]
    assert review["rates"]["benign_called_leukemia_not_flagged"] == proportion(k, 7)
    assert review["rates"]["flagged"]["high"] > review["rates"]["flagged"]["value"] or review["flagged"] == 7
    assert review["rates"]["leukemia_called_benign_not_flagged"]["method"] is None  # 0 of 0: no interval
    card = " ".join((out / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert f"benign images called leukemia without a flag: **{rate(proportion(k, 7))}**" in card


def test_a_run_has_no_review_block(evaluated):
    out, result = evaluated
    assert result["review"] is None
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        assert "review" not in next(csv.reader(handle))
