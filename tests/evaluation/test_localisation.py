"""`leukoscope.evaluation.localisation`: the energy share and the pointing game on hand-made maps and masks,
the per-class summary and its target line, the batched Grad-CAM against the web app's, and `evaluate
--localisation` end to end on the tiny package."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from leukoscope.evaluation import localisation as loc
from leukoscope.evaluation.intervals import proportion

CLASSES = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]


def disc_labels(shape=(224, 224), centre=(60, 80), radius=15) -> np.ndarray:
    """One cell (label 1): a disc centred at (x, y)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) <= radius**2).astype(np.int32)


def spot(shape=(224, 224), at=(60, 80), radius=6) -> np.ndarray:
    """A hand-made map: 1 on a small disc around (x, y), 0 elsewhere."""
    return disc_labels(shape, at, radius).astype(np.float32)


def test_peak_inside_a_cell_is_a_hit_with_all_energy_inside() -> None:
    labels = disc_labels()
    result = loc.localise(spot(at=(60, 80)), labels)
    assert result.status == "ok" and result.hit is True
    assert result.peak_distance == 0.0 and abs(result.peak[0] - 60) <= 6 and abs(result.peak[1] - 80) <= 6
    assert result.energy_inside == pytest.approx(1.0)
    assert result.cell_share == pytest.approx(labels.mean())
    assert labels.mean() < result.chance_hit < 1.5 * labels.mean()  # pixels within the tolerance of the cell


def test_peak_on_the_background_is_a_miss_and_the_energy_share_is_exact() -> None:
    labels = disc_labels()
    cam = spot(at=(180, 180))
    cam[80, 60] = 0.5  # a little attention on the cell: 0.5 of the map's total
    result = loc.localise(cam, labels)
    assert result.hit is False and result.peak_distance > 100
    assert result.energy_inside == pytest.approx(0.5 / (cam.sum()), rel=1e-6)


def test_tolerance_counts_a_peak_just_off_the_rim() -> None:
    labels = disc_labels(radius=15)
    cam = np.zeros((224, 224), np.float32)
    cam[80, 60 + 17] = 1.0  # 2 px beyond the rim
    assert loc.localise(cam, labels, tolerance=3).hit is True
    assert loc.localise(cam, labels, tolerance=1).hit is False


def test_a_coarse_map_is_resized_onto_the_mask_and_judged_by_its_block() -> None:
    labels = disc_labels(radius=8, centre=(36, 36))  # in the block of row 1, column 1 of a 7x7 grid (32 px)
    cam = np.zeros((7, 7), np.float32)
    cam[1, 1] = 1.0
    inside = loc.localise(cam, labels, grid=(7, 7), tolerance=0)
    assert inside.hit is True and inside.peak in ((47, 47), (48, 48))  # the block's centre, off the cell
    assert inside.peak_distance > 3
    assert inside.chance_hit == round(4 / 49, 4)  # the cell (28..44 px) touches blocks 0 and 1 of rows and columns
    far = np.zeros((7, 7), np.float32)
    far[5, 5] = 1.0
    assert loc.localise(far, labels, grid=(7, 7), tolerance=0).hit is False
    assert loc.localise(cam, labels, tolerance=0).hit is False  # without the grid: the point itself, off the cell


def test_no_cell_and_flat_maps_are_excluded_with_their_reason() -> None:
    assert loc.localise(spot(), np.zeros((224, 224), np.int32)).status == "no cell found"
    flat = loc.localise(np.zeros((224, 224), np.float32), disc_labels())
    assert flat.status == loc.FLAT and flat.hit is None and flat.energy_inside is None


def test_summary_per_class_and_for_correct_leukemia_calls_with_the_target() -> None:
    hit = loc.Localisation("ok", 0.6, 0.1, (1, 1), 0.0, True)
    miss = loc.Localisation("ok", 0.1, 0.1, (1, 1), 30.0, False)
    none = loc.Localisation("no cell found")
    results = [hit, miss, hit, hit, none, miss, hit]
    y = [0, 0, 1, 1, 1, 2, 3]
    predicted = [0, 1, 1, 1, 1, 1, 3]  # image 5 (a Pre-B miss) is wrongly called: not a correct leukemia call
    summary = loc.summarise(results, y, predicted, CLASSES)
    groups = summary["groups"]
    assert groups["Benign"]["n_images"] == 2 and groups["Benign"]["pointing"] == proportion(1, 2)
    assert groups["Early Pre-B"]["excluded"] == {"no cell found": 1} and groups["Early Pre-B"]["n_measured"] == 2
    correct = groups[loc.CORRECT_LEUKEMIA]
    assert correct["n_images"] == 4 and correct["pointing"] == proportion(3, 3)  # Benign and the wrong call left out
    assert groups[loc.ALL]["pointing"] == proportion(4, 6)
    assert groups["Benign"]["energy_inside"] == {"mean": pytest.approx(0.35), "median": pytest.approx(0.35)}
    assert groups["Benign"]["chance_hit"] is None  # hand-made results without one
    assert summary["target"]["met"] is True and summary["looks_at_background"] is False
    assert "**met**" in summary["findings"][0] and "1 no cell found" in summary["findings"][0]
    json.dumps(summary)  # goes into metrics.json as is

    worse = loc.summarise([miss, miss, hit, miss, none, miss, hit], y, predicted, CLASSES)
    assert worse["target"]["met"] is False and worse["looks_at_background"] is True
    assert "**not met**: 2 of 3" in worse["findings"][0]
    assert worse["findings"][1].startswith("The model looks at the background")


def test_summary_without_a_correct_leukemia_call_says_so() -> None:
    summary = loc.summarise([loc.Localisation("ok", 0.5, 0.1, (1, 1), 0.0, True)], [0], [0], CLASSES)
    assert summary["target"]["met"] is None and "not measurable" in summary["findings"][0]
    with pytest.raises(ValueError, match="one entry per image"):
        loc.summarise([], [0], [0], CLASSES)


def test_batched_maps_equal_the_web_apps_overlay_maps(predictor) -> None:
    from PIL import Image

    from leukoscope.inference.explain import gradcam_map
    from tests.helpers.modelfixtures import smear_image

    images = [Image.fromarray(smear_image(cls, 7, size=96)) for cls in (1, 3)]
    maps, grid = loc.gradcam_maps(predictor, images, [1, 3])
    size = predictor.preprocess.input_size
    assert maps.shape == (2, size, size) and grid[0] < size
    for image, target, got in zip(images, (1, 3), maps, strict=True):
        np.testing.assert_allclose(got, gradcam_map(predictor, image, target=target), atol=1e-4)


@pytest.mark.slow
def test_evaluate_with_localisation_end_to_end(tiny_package: Path, tmp_path: Path) -> None:
    from leukoscope.evaluation.evaluate import evaluate
    from tests.helpers.modelfixtures import make_smear_dataset

    data = make_smear_dataset(tmp_path / "lab", per_class=2, size=96)
    out = tmp_path / "out"
    result = evaluate(tiny_package, data, out_dir=out, n_bootstrap=0, localisation=True)
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    where = saved["localisation"]
    assert where == json.loads(json.dumps(result["localisation"]))
    assert set(where["groups"]) == {*CLASSES, loc.CORRECT_LEUKEMIA, loc.ALL}
    assert where["groups"][loc.ALL]["n_images"] == 8
    assert all(where["groups"][c]["n_images"] == 2 for c in CLASSES)
    with open(out / "localisation.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and saved["files"]["localisation"] == "localisation.csv"
    assert sum(r["status"] == "ok" for r in rows) == where["groups"][loc.ALL]["n_measured"] > 0
    assert sum(r["peak_inside"] == "1" for r in rows) == where["groups"][loc.ALL]["pointing"]["k"]
    report = (out / "report.html").read_text(encoding="utf-8")
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Where the model looks" in report and "Where the model looks" in card
    assert where["findings"][0].split(":")[0] in card  # the target line
    assert ("looks at the background" in card) == bool(where["looks_at_background"])


def test_evaluate_without_the_option_measures_nothing(tiny_package: Path, tmp_path: Path) -> None:
    from leukoscope.evaluation.evaluate import evaluate
    from tests.helpers.modelfixtures import make_smear_dataset

    data = make_smear_dataset(tmp_path / "lab", per_class=1, size=64)
    result = evaluate(tiny_package, data, out_dir=tmp_path / "out", n_bootstrap=0)
    assert "localisation" not in result and not (tmp_path / "out" / "localisation.csv").exists()
    assert "Where the model looks" not in (tmp_path / "out" / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_a_coarse_grid_is_named_in_the_method_and_the_findings() -> None:
    labels = disc_labels()
    fine = loc.localise(spot(at=(60, 80)), labels, grid=(7, 7))
    coarse = loc.localise(spot(at=(60, 80)), labels, grid=(2, 2))
    assert fine.block_px == 32 and coarse.block_px == 112
    quiet = loc.summarise([fine, fine], [1, 2], [1, 2], CLASSES)
    loud = loc.summarise([coarse, coarse], [1, 2], [1, 2], CLASSES)
    assert "(32 px square)" in quiet["method"] and not any("coarse" in line for line in quiet["findings"])
    assert loud["block_px"] == 112 and "blocks of 112 px" in loud["findings"][-1]
