"""The model package: one folder, one format, used by the CLI, the web app and the benchmarks.

    model.json        what the weights mean: classes, preprocessing, temperature, review thresholds,
                      out-of-distribution statistics, metrics, provenance, and the sha256 of every file
    model.onnx        fp32 network with two outputs, `logits` and `features` (ONNX Runtime backend)
    model.int8.onnx   optional static-int8 version of it (preferred when `default_onnx` names it)
    int8_reference.npz  with model.int8.onnx: a few val images (JPEG bytes) and fp32's top-1 on them, run
                      through the int8 model at load to check it on the CPU at hand (see leukoscope.inference.int8)
    model.pt          {"spec", "classes", "preprocess", "model": fp16 state_dict} (PyTorch backend, Grad-CAM)
    ood.npz           Mahalanobis statistics of the training features (see leukoscope.review.ood)

Every file listed in `model.json:files` is sha256-checked on load: a package damaged in transit or edited
by hand must fail loudly rather than silently give other answers.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leukoscope.data.fileio import sha256_file
from leukoscope.errors import ModelError, UsageError
from leukoscope.review.ood import OOD_FILE

PACKAGE_FORMAT = "leukoscope-model"
PACKAGE_VERSION = 1
MODEL_JSON = "model.json"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
INT8_REFERENCE = "int8_reference.npz"
TORCH_FILE = "model.pt"
PACKAGE_FILES = (ONNX_FP32, ONNX_INT8, INT8_REFERENCE, TORCH_FILE, OOD_FILE)  # all but model.json, in its order


def bundled_package_path() -> Path:
    """Where the package shipped with leukoscope lives (it may be absent in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default"


def is_package(path: str | Path) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def read_package_json(path: str | Path) -> dict[str, Any]:
    """model.json of a package folder (or the model.json file itself), without checking the weights."""
    path = Path(path)
    json_path = path if path.name == MODEL_JSON and path.is_file() else path / MODEL_JSON
    if not json_path.is_file():
        if path.resolve() == bundled_package_path():
            raise ModelError(f"the bundled model package is missing ({path}); build it with `make model` "
                             "or pass --model PACKAGE")
        if not path.exists():
            raise ModelError(f"model package not found: {path}")
        raise ModelError(f"{path} is not a model package (no {MODEL_JSON})")
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {json_path}: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != PACKAGE_FORMAT:
        raise ModelError(f"{json_path} is not a leukoscope model description")
    version = info.get("format_version")
    if not isinstance(version, int) or version > PACKAGE_VERSION:
        raise ModelError(f"{json_path} has format version {version!r}; this leukoscope reads up to "
                         f"{PACKAGE_VERSION} (upgrade leukoscope)")
    for key in ("classes", "preprocess", "spec", "files"):
        if key not in info:
            raise ModelError(f"{json_path} lacks {key!r}")
    _check_description(info, json_path)
    return info


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_description(info: dict[str, Any], json_path: Path) -> None:
    """ModelError (one line) for the values a Predictor reads when their types or ranges are wrong.

    model.json is not among the sha256-checked files (it holds their hashes), so an edit by hand must be
    caught here: a wrong type would otherwise surface as a Python error inside a prediction, and some values
    would silently change calls (a negative temperature inverts every probability, a zero std gives NaN)."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{json_path}: {what}; the file was damaged or edited: re-export the package")

    classes = info["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        raise bad("'classes' must be a list of at least 2 distinct names")
    preprocess = info["preprocess"]
    if not (isinstance(preprocess, dict) and isinstance(preprocess.get("input_size"), int)
            and not isinstance(preprocess.get("input_size"), bool) and 8 <= preprocess["input_size"] <= 4096):
        raise bad("'preprocess' must give an input_size from 8 to 4096 px")
    for key in ("mean", "std"):
        values = preprocess.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(_number(v) for v in values)
                and (key == "mean" or min(values) > 0)):
            raise bad(f"'preprocess.{key}' must be 3 numbers" + (", all above 0" if key == "std" else ""))
    if not isinstance(preprocess.get("interpolation", "bilinear"), str):
        raise bad("'preprocess.interpolation' must be a name")
    temperature = info.get("temperature")
    if temperature is not None and not (_number(temperature) and temperature > 0):
        raise bad("'temperature' must be a number above 0")
    size = info.get("training_image_size")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        raise bad("'training_image_size' must be a whole number of px")
    default = info.get("default_onnx")
    files = info["files"]
    if default is not None and not (isinstance(default, str) and isinstance(files, dict) and default in files):
        raise bad("'default_onnx' must name one of the package's files")
    review = info.get("review", {})
    if not isinstance(review, dict):
        raise bad("'review' must be a mapping")
    from leukoscope.review.rules import ReviewThresholds  # here: reading a package's name does not need it

    try:
        ReviewThresholds.from_dict(review, size or preprocess["input_size"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise bad(f"'review' holds a value of the wrong type ({type(exc).__name__}: {exc})") from None


def verify_package(path: str | Path) -> dict[str, Any]:
    """Read model.json and check the sha256 of every file it lists; raises ModelError naming the file."""
    path = Path(path)
    info = read_package_json(path)
    files = info["files"]
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{path / MODEL_JSON} lists no files")
    for name, expected in files.items():
        file = _member(path, name)
        if not file.is_file():
            raise ModelError(f"model package {path} is incomplete: {name} is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ModelError(f"model package {path}: {name} does not match its sha256 in {MODEL_JSON} "
                             f"(expected {expected[:12]}…, got {actual[:12]}…): the file is damaged or was "
                             "modified; re-export or re-download the package")
    return info


def _member(package: Path, name: str) -> Path:
    """A file of the package; names that would leave the folder are refused (model.json is data)."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelError(f"model package {package}: bad file name {name!r} in {MODEL_JSON}")
    return package / name


def package_file(path: str | Path, info: Mapping[str, Any], name: str) -> Path | None:
    """The path of a listed (hence verified) package file, or None when the package has no such file."""
    return _member(Path(path), name) if name in info.get("files", {}) else None


def write_package(out: str | Path, info: dict[str, Any], files: Mapping[str, bytes | Path]) -> Path:
    """Write a package folder: the files, then model.json with their sha256 under `files`.

    Built in a temporary folder beside `out` and moved into place at the end, so an interrupted export
    never leaves a half-written package that would load. An existing package at `out` is replaced; any
    other non-empty folder is refused rather than deleted.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_package(out))):
        raise UsageError(f"--out {out} exists and is not a model package; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes 0700; a package is meant to be read by others (a server user)
    try:
        hashes: dict[str, str] = {}
        for name, content in files.items():
            target = _member(staging, name)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
            hashes[name] = sha256_file(target)
        meta = {"format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION, **info, "files": hashes}
        (staging / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
            staging.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def package_size(path: str | Path) -> int:
    """Bytes of all files in a package folder."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


UNIT_FIELDS, UNIT_CELLS = "fields", "cells"  # what a package's network was trained on (model.json `unit`)


def unit_of(info: dict[str, Any]) -> str:
    """What a package's network was trained on: "cells" (crops) or "fields" (whole images; older packages)."""
    return UNIT_CELLS if info.get("unit") == UNIT_CELLS else UNIT_FIELDS


def unit_of_model(path: str | Path) -> str:
    """"cells" or "fields" for a package folder (model.json), a run folder or one of its checkpoints
    (config.yaml beside it): what the network was trained on, so commands that score whole fields can refuse a
    cell model instead of scoring crops' network on fields. Unknown layouts read as "fields"."""
    import yaml

    path = Path(path)
    folder = path.parent if path.is_file() else path
    try:
        if (folder / "model.json").is_file():
            return unit_of(json.loads((folder / "model.json").read_text(encoding="utf-8")))
        if (folder / "config.yaml").is_file():
            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
            return UNIT_CELLS if isinstance(config, dict) and config.get("unit") == UNIT_CELLS else UNIT_FIELDS
    except (OSError, ValueError, yaml.YAMLError):
        pass  # the command's own loading reports an unreadable model in its words
    return UNIT_FIELDS
