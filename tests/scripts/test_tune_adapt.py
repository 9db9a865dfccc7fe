"""scripts/tune_adapt.py: revision 8's oracle (the true transform where adapt expects its estimated shift) and
its reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leukoscope.data.shifts import Shift
from tests.scripts.test_refit_review import script


def test_the_oracle_puts_replay_images_through_exactly_the_labs_transform() -> None:
    module = script("tune_adapt")
    shift = Shift(hue_degrees=-10.0, magnification=1.5, blur_sigma=0.4, jpeg_quality=75)
    oracle = module.TrueLabShift(shift)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    out = oracle.apply_batch(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for given, made in zip(images, out, strict=True):
        expected = np.asarray(shift.apply(Image.fromarray(given.permute(1, 2, 0).numpy())))
        assert np.array_equal(made.permute(1, 2, 0).numpy(), expected)
    assert "the true transform" in oracle.describe() and oracle.to_dict()["oracle"]["jpeg_quality"] == 75
    assert "oracle" not in module.AdaptOptions.__dataclass_fields__  # run() takes it out before AdaptOptions
    from leukoscope.adaptation.card import _simulated

    assert "magnification x1.50, hue -10 degrees" in _simulated({"simulate_ratio": 2.0}, oracle.to_dict())[0]


def _candidate(path: Path, accuracy: float) -> None:
    figures = {"accuracy": accuracy, "n": 181, "flagged": 0.2, "leukemia_called_benign_flagged": 3,
               "leukemia_called_benign_not_flagged": 0}
    path.write_text(json.dumps({"lab_b": figures, "lab_a": {"accuracy": 0.9945}, "seconds": 1.0}))


def test_the_reading_follows_the_rule_written_before_the_runs(tmp_path: Path) -> None:
    module = script("tune_adapt")
    for lab, (estimated, true) in {"b1": (0.9779, 0.9724), "b3": (0.9724, 0.9779)}.items():
        folder = module.lab_out(tmp_path, lab) / "candidates"
        folder.mkdir(parents=True)
        _candidate(folder / "lr5e-05_r4_s2_review_check.json", estimated)
        _candidate(folder / "lr5e-05_r4_s2_review_check_oracle.json", true)
    module.check(tmp_path, 8)
    text = (tmp_path / "ORACLE.md").read_text()
    assert "revision 8" in text and "-0.55, +0.55 points" in text and "not what limits" in text
    assert json.loads((tmp_path / "oracle.json").read_text())["adopted"] is False
    _candidate(module.lab_out(tmp_path, "b3") / "candidates" / "lr5e-05_r4_s2_review_check_oracle.json", 1.0)  # mean +1.1
    module.check(tmp_path, 8)
    assert "worth building" in (tmp_path / "ORACLE.md").read_text()
