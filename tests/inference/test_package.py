"""Model package files: written with sha256 of every file, verified on load, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from leukoscope.errors import ModelError, UsageError
from leukoscope.inference.package import (
    MODEL_JSON,
    bundled_package_path,
    is_package,
    read_package_json,
    verify_package,
    write_package,
)
from tests.helpers.modelfixtures import shared_tiny_package


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_package(tmp_path_factory)


def _minimal(tmp_path: Path) -> Path:
    info = {"classes": ["a", "b"], "preprocess": {"input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
            "spec": {"backbone": "x", "num_classes": 2}}
    return write_package(tmp_path / "pkg", info, {"weights.bin": b"1234", "other.npz": b"abc"})


def test_write_then_verify_lists_sha256_of_every_file(tmp_path: Path) -> None:
    path = _minimal(tmp_path)
    info = verify_package(path)
    assert set(info["files"]) == {"weights.bin", "other.npz"}
    assert info["format"] == "leukoscope-model" and info["format_version"] == 1
    assert is_package(path) and not list(tmp_path.glob(".pkg*"))  # no staging folder left behind


def test_modified_file_is_a_clear_model_error(tmp_path: Path) -> None:
    path = _minimal(tmp_path)
    (path / "weights.bin").write_bytes(b"1235")
    with pytest.raises(ModelError, match=r"weights\.bin does not match its sha256"):
        verify_package(path)


def test_missing_file_and_missing_model_json(tmp_path: Path) -> None:
    path = _minimal(tmp_path)
    (path / "other.npz").unlink()
    with pytest.raises(ModelError, match=r"other\.npz is missing"):
        verify_package(path)
    (path / MODEL_JSON).unlink()
    with pytest.raises(ModelError, match="not a model package"):
        read_package_json(path)
    with pytest.raises(ModelError, match="not found"):
        read_package_json(tmp_path / "nowhere")


def test_newer_format_and_escaping_file_names_are_refused(tmp_path: Path) -> None:
    path = _minimal(tmp_path)
    info = json.loads((path / MODEL_JSON).read_text())
    (path / MODEL_JSON).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ModelError, match="upgrade leukoscope"):
        read_package_json(path)
    (path / MODEL_JSON).write_text(json.dumps({**info, "files": {"../evil": "00"}}))
    with pytest.raises(ModelError, match="bad file name"):
        verify_package(path)
    (path / MODEL_JSON).write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        read_package_json(path)


def test_write_replaces_a_package_but_never_another_folder(tmp_path: Path) -> None:
    path = _minimal(tmp_path)
    _minimal(tmp_path)  # overwriting a package is fine
    assert verify_package(path)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="not a model package"):
        write_package(other, {"classes": []}, {"a": b""})
    assert (other / "keep.txt").read_text() == "precious"


def test_bundled_package_location_and_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert bundled_package_path().parts[-2:] == ("assets", "default")
    missing = tmp_path / "assets" / "default"
    monkeypatch.setattr("leukoscope.inference.package.bundled_package_path", lambda: missing)
    with pytest.raises(ModelError, match="bundled model package is missing"):
        read_package_json(missing)


def test_exported_package_verifies_and_detects_tampering(tiny_package: Path, tmp_path: Path) -> None:
    info = verify_package(tiny_package)
    assert {"model.onnx", "model.pt", "ood.npz"} <= set(info["files"])
    copy = Path(shutil.copytree(tiny_package, tmp_path / "copy"))
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match=r"model\.onnx does not match"):
        verify_package(copy)


_SIZE = {"input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("classes", 5, "'classes' must be a list of at least 2 distinct names"),
    ("classes", ["a", "a"], "'classes' must be a list"),
    ("preprocess", "x", "'preprocess' must give an input_size"),
    ("preprocess", {**_SIZE, "input_size": "big"}, "'preprocess' must give an input_size"),
    ("preprocess", {**_SIZE, "std": [1, 0, 1]}, r"'preprocess.std' must be 3 numbers, all above 0"),
    ("preprocess", {**_SIZE, "mean": [0.5]}, r"'preprocess.mean' must be 3 numbers"),
    ("temperature", -1.5, "'temperature' must be a number above 0"),
    ("temperature", "hot", "'temperature' must be a number above 0"),
    ("training_image_size", "x", "'training_image_size' must be a whole number"),
    ("default_onnx", "nope.onnx", "'default_onnx' must name one of the package's files"),
    ("review", "x", "'review' must be a mapping"),
    ("review", {"confidence_threshold": "high"}, "'review' holds a value of the wrong type"),
    ("review", {"cell_scale_range": [1]}, "'review' holds a value of the wrong type"),
])
def test_a_hand_edited_model_json_is_one_clear_model_error(tmp_path: Path, key: str, value, message: str) -> None:
    """model.json holds the other files' hashes, so nothing hashes it: wrong types and ranges must be caught when
    it is read, before they become a Python error inside a prediction or silently change the calls."""
    package = _minimal(tmp_path)
    info = json.loads((package / MODEL_JSON).read_text())
    info[key] = value
    (package / MODEL_JSON).write_text(json.dumps(info))
    with pytest.raises(ModelError, match=message) as caught:
        read_package_json(package)
    assert "\n" not in str(caught.value) and "re-export the package" in str(caught.value)


def test_the_bundled_and_the_tiny_packages_pass_the_checks(tiny_package: Path) -> None:
    for package in (bundled_package_path(), tiny_package):
        if is_package(package):
            assert read_package_json(package)["classes"]
