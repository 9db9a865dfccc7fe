"""`export_run`: parity checks before writing, model.json contents, int8, temperature sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukoscope.errors import DataError, ModelError
from leukoscope.inference import export as export_module
from leukoscope.inference import int8 as int8_module
from leukoscope.inference.export import export_run
from leukoscope.inference.package import read_package_json, verify_package
from tests.helpers.modelfixtures import shared_tiny_package, shared_tiny_run

MODEL_JSON_KEYS = {
    "format", "format_version", "name", "created", "leukoscope_version", "backbone", "spec", "classes",
    "preprocess", "training_image_size", "temperature", "temperature_source", "review", "ood",
    "default_onnx", "parity", "onnx", "metrics", "training", "data", "disclaimer", "files",
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_package(tmp_path_factory)


def _copy_run(run: Path, tmp_path: Path) -> Path:
    """A private copy of the run folder (its config.yaml still points at the shared data)."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_model_json_has_everything_a_package_promises(tiny_package: Path) -> None:
    info = verify_package(tiny_package)
    assert set(info) >= MODEL_JSON_KEYS
    assert info["classes"] == ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
    assert info["preprocess"]["input_size"] == 64 and info["default_onnx"] == "model.onnx"
    assert info["parity"]["fp32_max_abs_prob_diff"] <= 1e-4
    assert 0.5 <= info["review"]["confidence_threshold"] <= 0.99
    assert info["review"]["ood_threshold"] > 0 and info["ood"]["threshold_part"] == "val"
    assert info["temperature"] > 0 and info["temperature_source"] == "fitted on the val part"
    assert info["training"]["command"] == "leukoscope train tiny-test-run"
    assert len(info["data"]["manifest_digest"]) == 64 and info["data"]["parts"]["val"] == 12
    assert info["onnx"]["outputs"] == ["logits", "features"]


def test_model_pt_holds_fp16_weights(tiny_package: Path) -> None:
    import torch

    payload = torch.load(tiny_package / "model.pt", weights_only=True)
    assert payload["spec"]["backbone"] == "test_efficientnet"
    floats = [v for v in payload["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)


def test_int8_export_is_checked_and_becomes_default(tiny_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_module, "INT8_MIN_AGREEMENT", 0.0)  # the gate itself is tested below, with set numbers
    info = verify_package(export_run(tiny_run, tmp_path / "pkg", int8=True, calibration_images=8, threads=1))
    assert info["default_onnx"] == "model.int8.onnx" and {"model.onnx", "int8_reference.npz"} <= set(info["files"])
    assert info["parity"]["int8_reduce_range"] is True and info["parity"]["int8_calibration_images"] == 8
    assert 0.0 <= info["parity"]["int8_top1_agreement"] <= 1.0 and info["parity"]["int8_reference"]["images"] >= 0


def _fake_quantiser(monkeypatch: pytest.MonkeyPatch, wrong: dict[bool, int], calls: list[bool]) -> np.ndarray:
    """Quantisation whose int8 top-1 differs from fp32's on the first wrong[exclude_ends] of 100 images;
    returns fp32's probabilities. No quantiser or CPU kernel is involved."""
    def quantize(fp32, out, calibration, *, exclude_ends=False):
        calls.append(exclude_ends)
        Path(out).write_text(str(exclude_ends))

    reference = np.eye(4)[np.arange(100) % 4]

    def run(backend, x, batch_size=32):
        ends = backend.read_text() == "True"
        logits = reference.copy()
        logits[: wrong[ends]] = np.roll(logits[: wrong[ends]], 1, axis=1)  # change the top-1 of the first few
        return logits * 10, None

    monkeypatch.setattr(int8_module, "quantize_int8", quantize)
    monkeypatch.setattr(int8_module, "OnnxBackend", lambda path, threads=None: Path(path))
    monkeypatch.setattr(int8_module, "run_normalised", run)
    return reference


def test_int8_disagreement_refuses_with_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    fp32 = _fake_quantiser(monkeypatch, {False: 3, True: 2}, calls)
    with pytest.raises(ModelError) as refused:
        int8_module.quantize_with_gate(tmp_path, np.zeros((4, 3, 8, 8), np.float32), np.zeros((100, 3, 8, 8)),
                                       fp32, log=lambda message: None)
    assert str(refused.value) == ("int8 model disagrees with fp32 too often: top-1 agreement 97.00%; 98.00% with "
                                  "first conv and classifier in fp32 on 100 images, below the required 99%; "
                                  "export without --int8")
    assert calls == [False, True] and not list(tmp_path.iterdir())  # no int8 model left behind


def test_int8_refusal_writes_no_package(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_module, "INT8_MIN_AGREEMENT", 1.01)  # unreachable, whatever int8 computes here
    with pytest.raises(ModelError, match=r"top-1 agreement .* below the required 101%"):
        export_run(tiny_run, tmp_path / "pkg", int8=True, calibration_images=8, threads=1)
    assert not (tmp_path / "pkg").exists()


def test_fp32_parity_failure_writes_nothing(tiny_run: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "FP32_TOLERANCE", -1.0)
    with pytest.raises(ModelError, match="does not match PyTorch"):
        export_run(tiny_run, tmp_path / "pkg", threads=1)
    assert not (tmp_path / "pkg").exists()


def test_temperature_from_calibration_json_and_int8_only(tiny_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_module, "INT8_MIN_AGREEMENT", 0.0)  # written whatever int8 computes on this CPU
    run = _copy_run(tiny_run, tmp_path)
    (run / "calibration.json").write_text(json.dumps({"temperature": 1.75, "fitted_on": "val", "n": 12}))
    package = export_run(run, tmp_path / "pkg", int8_only=True, name="tiny", threads=1)
    info = read_package_json(package)
    assert info["temperature"] == 1.75 and info["temperature_source"] == "calibration.json"
    assert info["name"] == "tiny" and "model.onnx" not in info["files"]
    assert info["default_onnx"] == "model.int8.onnx"


def test_shift_rules_are_chosen_on_shifted_val_copies_only_when_asked(tiny_run: Path, tiny_package: Path,
                                                                       tmp_path: Path) -> None:
    from leukoscope.data.shifts import NAMED, VALIDATION_COMPOSITES
    from leukoscope.inference.predictor import load_predictor

    plain = read_package_json(tiny_package)["review"]
    assert "benign_confidence_threshold" not in plain and "cell_scale_range" not in plain
    messages: list[str] = []
    package = export_run(_copy_run(tiny_run, tmp_path), tmp_path / "pkg", threads=1, shift_rules=True,
                         log=messages.append)
    info = verify_package(package)
    review = info["review"]
    assert review["benign_class"] == "Benign" and review["shift_rule"].startswith("Chosen on the val part")
    assert review["benign_confidence_threshold"] >= review["confidence_threshold"]
    low, high = review["cell_scale_range"]
    assert 0 < low <= high
    report = info["metrics"]["val"]["shift_rules"]
    assert report["images"] == 12 * (1 + len(NAMED) + VALIDATION_COMPOSITES) and report["shifted_images"] == report["images"] - 12
    assert report["flagged_unshifted_after"] <= report["flagged_unshifted_before"] + 0.05 + 1e-9
    assert any("shifted val copy 'hue -20 deg'" in m for m in messages)
    predictor = load_predictor(package, threads=1)
    assert predictor.benign_threshold == review["benign_confidence_threshold"]
    assert predictor.cell_scale_range == (low, high)


def test_run_without_val_part_uses_defaults(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path)
    split = (run / "split.csv").read_text().replace(",val\n", ",train\n")
    (run / "split.csv").write_text(split)
    info = read_package_json(export_run(run, tmp_path / "pkg", threads=1))
    assert info["review"]["confidence_threshold"] == 0.9
    assert info["temperature"] == 1.0 and "no val part" in info["temperature_source"]
    assert "held out" in info["ood"]["threshold_part"]


def test_missing_data_or_split_is_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path)
    with pytest.raises(DataError, match="pass --data"):
        export_run(run, tmp_path / "pkg", data_root=tmp_path / "moved")
    (run / "split.csv").unlink()
    with pytest.raises(ModelError, match=r"no split\.csv"):
        export_run(run, tmp_path / "pkg")
    with pytest.raises(ModelError, match="no checkpoint"):
        export_run(tmp_path, tmp_path / "pkg")


@pytest.mark.parametrize(("wrong", "expected_calls", "kept_ends"), [
    ({False: 0, True: 0}, [False], False),  # all-int8 agrees everywhere: nothing else is tried
    ({False: 2, True: 1}, [False, True], True),  # fp32 ends agree better: kept
    ({False: 1, True: 2}, [False, True], False),  # all-int8 was better: kept, not quantised again
    ({False: 1, True: 1}, [False, True], False),  # a tie keeps the faster all-int8 model
])
def test_int8_keeps_the_recipe_that_agrees_best_on_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             wrong, expected_calls, kept_ends) -> None:
    calls: list[bool] = []
    reference = _fake_quantiser(monkeypatch, wrong, calls)
    result = int8_module.quantize_with_gate(tmp_path, np.zeros((4, 3, 8, 8), np.float32), np.zeros((100, 3, 8, 8)),
                                            reference, log=lambda message: None)
    assert calls == expected_calls
    assert result["int8_fp32_ends"] is kept_ends and (tmp_path / "model.int8.onnx").read_text() == str(kept_ends)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]  # the other recipe's file is gone
    assert result["int8_top1_agreement"] == 1 - wrong[kept_ends] / 100


@pytest.mark.parametrize("content", ["not json", '{"temperature": 0}'])
def test_damaged_calibration_json_refuses_before_any_work(tiny_run: Path, tmp_path: Path, content: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy_run(tiny_run, tmp_path)
    (run / "calibration.json").write_text(content)
    monkeypatch.setattr(export_module, "export_onnx", lambda *a, **k: pytest.fail("exported despite the bad file"))
    with pytest.raises(ModelError, match=r"calibration\.json holds no temperature"):
        export_run(run, tmp_path / "pkg", threads=1)
    assert not (tmp_path / "pkg").exists()
