"""`write_run_summary`: the best checkpoint scored on the test part, summary.json and predictions_test.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.data.manifest import ImageRecord, Manifest
from leukoscope.models.checkpoint import save_checkpoint
from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.models.preprocessing import Preprocess
from leukoscope.models.scoring import score_model
from leukoscope.training.config import TrainConfig
from leukoscope.training.summary import write_run_summary

PRE = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ODD_CLASS = 'Pre-B, "atypical"'  # a comma and quotes: the CSV must quote and escape it
CLASSES = ("Benign", ODD_CLASS)


@pytest.fixture()
def run(tmp_path: Path) -> tuple[Path, Manifest]:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    records = []
    for i, (label, part) in enumerate([("Benign", "train"), (ODD_CLASS, "train"), ("Benign", "test"),
                                       (ODD_CLASS, "test"), (ODD_CLASS, "test")]):
        path = f'{label}/cell "{i}", field.png'
        (data / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / path)
        records.append(ImageRecord(path=path, label=label, sha256=f"{i:064x}", part=part))
    torch.manual_seed(0)
    spec = ModelSpec("test_efficientnet", num_classes=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(run_dir / "best.pt", {"model": create_model(spec, weights="none").state_dict(),
                                          "spec": spec.to_dict(), "epoch": 2})
    return run_dir, Manifest(data, CLASSES, records)


def test_summary_scores_the_test_part_and_the_csv_quotes_odd_names(run):
    run_dir, parted = run
    config = TrainConfig(eval_batch_size=2, amp=False, channels_last=False, workers=1, backbone="test_efficientnet")
    write_run_summary(run_dir, parted, PRE, torch.device("cpu"), config, [{"seconds": 1.0}, {"seconds": 3.0}], 4.0)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert (summary["best_epoch"], summary["epochs_run"], summary["seconds_per_epoch"]) == (2, 2, 2.0)
    assert summary["train_images"] == 2 and summary["test"]["n"] == 3
    test = parted.part("test")
    model = create_model(ModelSpec("test_efficientnet", num_classes=2), weights="none")
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=False)["model"])
    expected = score_model(model, test.paths(), PRE, labels=test.labels, batch_size=2)
    assert summary["test"] == {"n": 3, **expected.classification(2).to_dict()}

    with open(run_dir / "predictions_test.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "sha256", "label", "predicted", "prob_Benign", f"prob_{ODD_CLASS}"]
    assert [row[:3] for row in rows[1:]] == [[r.path, r.sha256, r.label] for r in test.records]
    probs = torch.softmax(expected.logits, 1).numpy()
    for row, p in zip(rows[1:], probs, strict=True):
        assert row[3] == CLASSES[int(p.argmax())]
        assert row[4:] == [f"{v:.6f}" for v in p]
