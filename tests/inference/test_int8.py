"""leukoscope.inference.int8: the reference batch written at export and the check of the int8 model at load.

Nothing here depends on what the CPU's int8 kernels compute: the package is exported with the gate switched
off (tests/helpers/modelfixtures.py), and each outcome of the load-time check is produced by editing the reference
batch (then re-listing its sha256, as a re-export would), so only the check's logic and messages are tested.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukoscope.data.fileio import sha256_file
from leukoscope.errors import ModelError
from leukoscope.inference import int8 as int8_module
from leukoscope.inference.predictor import load_predictor
from leukoscope.models.preprocessing import Preprocess
from tests.helpers.modelfixtures import shared_tiny_package

REFERENCE = "int8_reference.npz"


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported with --int8 whatever the int8 model agrees (the gate is tested in test_export);
    shared: tests copy it before changing it."""
    return shared_tiny_package(tmp_path_factory, int8=True)


def _copy(package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package, tmp_path / "package"))


def _edit_json(package: Path, change) -> None:
    """Apply `change` to model.json and re-list every file's sha256 (what a re-export would write)."""
    info = json.loads((package / "model.json").read_text())
    change(info)
    info["files"] = {name: sha256_file(package / name) for name in info["files"]}
    (package / "model.json").write_text(json.dumps(info))


def _edit_reference(package: Path, **changes) -> None:
    with np.load(package / REFERENCE) as data:
        arrays = {k: data[k] for k in data.files}
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    np.savez(package / REFERENCE, **arrays)
    _edit_json(package, lambda info: None)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "leukoscope"]


def test_export_writes_a_small_listed_reference_batch(int8_package: Path) -> None:
    info = json.loads((int8_package / "model.json").read_text())
    assert REFERENCE in info["files"] and info["default_onnx"] == "model.int8.onnx"
    assert info["parity"]["int8_reduce_range"] is True and info["parity"]["int8_reference"]["images"] >= 1
    reference = int8_module.read_reference(int8_package / REFERENCE)
    assert reference.pixels.shape[1:] == (64, 64, 3) and reference.pixels.dtype == np.uint8
    assert len(reference.fp32_top1) == len(reference.int8_probs) <= int8_module.REFERENCE_IMAGES
    assert (int8_package / REFERENCE).stat().st_size < 300_000


def test_agreeing_int8_model_is_used(int8_package: Path, caplog: pytest.LogCaptureFixture) -> None:
    predictor = load_predictor(int8_package, threads=1)
    assert predictor.onnx_file == "model.int8.onnx" and predictor.int8_check["checked"] is True
    assert predictor.int8_check["top1_agreement"] == 1.0 and not _warnings(caplog)
    fp32 = load_predictor(int8_package, threads=1, onnx_file="model.onnx")
    assert fp32.onnx_file == "model.onnx" and fp32.int8_check == {}  # fp32 asked for: nothing to check


def test_disagreeing_int8_model_falls_back_to_fp32_with_one_warning(int8_package: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    package = _copy(int8_package, tmp_path)
    _edit_reference(package, fp32_top1=lambda top1: (top1 + 1) % 4)  # fp32 "said" another class everywhere
    predictor = load_predictor(package, threads=1)
    assert predictor.onnx_file == "model.onnx" and predictor.int8_check["fallback"] == "model.onnx"
    assert predictor.int8_check["top1_agreement"] == 0.0
    (message,) = _warnings(caplog)
    assert "0 of" in message and "top-1 agreement" in message and "using model.onnx instead" in message
    assert "\n" not in message
    batch = np.zeros((1, 64, 64, 3), np.uint8)
    reference = load_predictor(package, threads=1, onnx_file="model.onnx")
    assert np.array_equal(predictor.predict_proba(batch), reference.predict_proba(batch))  # fp32 really runs


def test_drifting_int8_model_falls_back(int8_package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    package = _copy(int8_package, tmp_path)
    _edit_reference(package, int8_probs=lambda probs: np.roll(probs, 1, axis=1))  # answered otherwise at export
    predictor = load_predictor(package, threads=1)
    assert predictor.onnx_file == "model.onnx" and predictor.int8_check["drift"] > int8_module.INT8_MAX_DRIFT
    assert "probabilities moved by up to" in _warnings(caplog)[0]


def test_int8_only_package_that_fails_its_check_is_refused(int8_package: Path, tmp_path: Path) -> None:
    package = _copy(int8_package, tmp_path)
    (package / "model.onnx").unlink()
    _edit_json(package, lambda info: info["files"].pop("model.onnx"))
    assert load_predictor(package, threads=1).onnx_file == "model.int8.onnx"  # passes: used
    _edit_reference(package, fp32_top1=lambda top1: (top1 + 1) % 4)
    with pytest.raises(ModelError, match=r"no model\.onnx to use instead: use --backend torch"):
        load_predictor(package, threads=1)
    assert load_predictor(package, backend="torch", threads=1).onnx_file is None


def test_package_without_reference_loads_unchecked_saying_so(int8_package: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    package = _copy(int8_package, tmp_path)
    (package / REFERENCE).unlink()
    _edit_json(package, lambda info: info["files"].pop(REFERENCE))
    predictor = load_predictor(package, threads=1)
    assert predictor.onnx_file == "model.int8.onnx" and predictor.int8_check == {"checked": False}
    (message,) = _warnings(caplog)
    assert "unchecked" in message and f"no {REFERENCE}" in message


def test_empty_reference_batch_is_unchecked_not_passed(int8_package: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    package = _copy(int8_package, tmp_path)
    _edit_reference(package, jpeg=lambda a: a[:0], offsets=lambda a: a[:1], fp32_top1=lambda a: a[:0],
                    int8_probs=lambda a: a[:0])
    assert load_predictor(package, threads=1).int8_check == {"checked": False}
    assert "is empty" in _warnings(caplog)[0]


def test_edited_reference_fails_its_sha256(int8_package: Path, tmp_path: Path) -> None:
    package = _copy(int8_package, tmp_path)
    with open(package / REFERENCE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match=r"int8_reference\.npz does not match its sha256"):
        load_predictor(package, threads=1)


class _Fixed:
    """A backend whose logits are given: one row per image, in order."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits, self.position = logits, 0

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.logits[self.position:self.position + len(x)]
        self.position += len(x)
        return out, np.zeros((len(x), 2))


def test_reference_keeps_agreeing_confident_images_of_every_class(tmp_path: Path) -> None:
    pixels = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(12)])
    fp32 = np.eye(4)[np.arange(12) % 4] * 10  # class i % 4, confidently
    int8 = fp32.copy()
    int8[0] = np.eye(4)[1] * 10  # disagrees with fp32
    int8[1] = [0, 1.0, 1.0, 0]  # agrees but without a margin
    pre = Preprocess(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    order = np.random.default_rng(0).permutation(12)  # the candidates are taken in this order
    summary = int8_module.make_reference(tmp_path / REFERENCE, pixels, _Fixed(fp32[order]), _Fixed(int8[order]),
                                         pre, count=6)
    reference = int8_module.read_reference(tmp_path / REFERENCE)
    assert summary["images"] == 6 == len(reference.fp32_top1)
    assert sorted(np.bincount(reference.fp32_top1, minlength=4)) == [1, 1, 2, 2]  # spread over the classes
    kept = [round(p.mean() / 10) for p in reference.pixels]  # image i is flat at level 10 * i
    assert not set(kept) & {0, 1} and list(reference.fp32_top1) == [i % 4 for i in kept]
    found = int8_module.run_reference(_Fixed(np.log(reference.int8_probs)), reference, pre)
    assert found == {"images": 6, "top1_agreement": 1.0, "drift": pytest.approx(0.0, abs=1e-6)}
