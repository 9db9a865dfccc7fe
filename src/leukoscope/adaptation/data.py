"""What an adaptation learns from and is judged on: the parent package, the lab's images split into
adaptation / calibration / held-out parts, and the parent's own dataset with the parts it was trained and
tested on (the replay).

The lab's split is duplicate-aware (`leukoscope.data.split`), so a copy of a held-out image never trains. The
two datasets are joined under one folder of symbolic links (`lab/`, `replay/`) so that the adapted network
is exported as any run is: one split.csv over one data root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from leukoscope.data.classes import canonical_class
from leukoscope.data.discover import discover
from leukoscope.data.fileio import sha256_bytes, write_bytes
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.data.split import split
from leukoscope.errors import DataError, ModelError, UsageError
from leukoscope.inference.backends import load_torch_file
from leukoscope.inference.package import TORCH_FILE, package_file, verify_package
from leukoscope.models.factory import ModelSpec
from leukoscope.models.preprocessing import Preprocess

LAB, REPLAY = "lab", "replay"  # the two datasets' folders under the joined data root
SIMULATED = "simulated"  # and the simulated replay's, when it joins the export's training part


@dataclass
class Parent:
    """The package being adapted: its model.json, its network (fp16 weights computed in fp32) and what the
    network expects."""

    path: Path
    info: dict[str, Any]
    model: Any
    spec: ModelSpec
    classes: tuple[str, ...]
    preprocess: Preprocess

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.info.get("backbone") or "model")

    def identity(self) -> dict[str, Any]:
        """How model.json names its parent: the version string the web app records with every prediction
        (`<name>@<12 hex of the sha256 of model.json's files>`), the full digest, where it was read."""
        name = self.name
        if self.info.get("version"):
            name = f"{name}-{self.info['version']}"
        digest = hashlib.sha256(json.dumps(self.info.get("files") or self.info, sort_keys=True,
                                           default=str).encode()).hexdigest()
        return {"name": self.name, "model_version": f"{name}@{digest[:12]}", "files_sha256": digest,
                "created": self.info.get("created"), "path": str(self.path.resolve()),
                "temperature": self.info.get("temperature"), "data": self.info.get("data")}


def load_parent(path: str | Path) -> Parent:
    """Verify a package (sha256 of every file) and load its PyTorch network; ModelError when it cannot."""
    path = Path(path)
    info = verify_package(path)
    torch_path = package_file(path, info, TORCH_FILE)
    if torch_path is None:
        raise ModelError(f"model package {path} has no {TORCH_FILE}: adapt fine-tunes the PyTorch network")
    model = load_torch_file(torch_path)
    return Parent(path, info, model, ModelSpec.from_dict(info["spec"]), tuple(info["classes"]),
                  Preprocess.from_dict(info["preprocess"]))


def with_classes(manifest: Manifest, classes: tuple[str, ...], what: str) -> Manifest:
    """The same records in the model's class order (a published folder name such as "Early" read as its class
    when the folders are not all such names); DataError naming classes the model does not know."""
    def known(label: str) -> str:
        return label if label in classes or canonical_class(label) not in classes else str(canonical_class(label))

    records = [replace(r, label=known(r.label)) for r in manifest.records]
    unknown = sorted({r.label for r in records} - set(classes))
    if unknown:
        raise DataError(f"{what} has classes {unknown} the model does not know (it knows {list(classes)})")
    return Manifest(manifest.root, classes, records, list(manifest.problems), list(manifest.notes))


def lab_split(root: str | Path, classes: tuple[str, ...], *, held_out: float, val: float, seed: int,
              exclude: set[str] | None = None, log: Any = None) -> Manifest:
    """The lab's images (discovered) split into train (adaptation), val (calibration) and test (held out),
    stratified and duplicate-aware. Images whose bytes are in `exclude` (the replay's test part) are left
    out, so the forgetting check never scores an image the network was adapted on."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"lab data folder not found: {root}")
    found = with_classes(discover(root), classes, f"lab data {root}")
    if found.problems and log is not None:
        log(f"{len(found.problems)} unreadable lab image(s) left out (run `leukoscope data check {root}`)")
    if exclude:
        kept = [r for r in found.records if r.sha256 not in exclude]
        if len(kept) < len(found.records) and log is not None:
            log(f"{len(found.records) - len(kept)} lab image(s) are copies of the replay data's test part; left out")
        found = found.with_records(kept)
    parted = split(found, test_size=held_out, val_size=val, seed=seed)
    if len(parted.part("train")) < 2 or not len(parted.part("test")):
        raise DataError(f"too few lab images in {root} ({len(parted)}) for an adaptation part and a held-out part")
    return parted


def replay_split(root: str | Path, split_csv: str | Path | None, parent: Parent, *, log: Any = None) -> Manifest:
    """The parent's dataset with its parts: from `split_csv` (rows train/val/test of DATA), or, without one,
    the parent's split recomputed from its training config and accepted only when its digest matches the
    one in model.json."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"replay data folder not found: {root}")
    expected = (parent.info.get("data") or {}).get("split_digest")
    if split_csv is not None:
        split_csv = Path(split_csv)
        if not split_csv.is_file():
            raise UsageError(f"split file not found: {split_csv}")
        parted = read_manifest_csv(split_csv, root, classes=parent.classes)
        missing = [r.path for r in parted.records if not (root / r.path).is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) of {split_csv} are not in {root}, e.g. {missing[0]}")
        if expected and parted.digest() != expected and log is not None:
            log(f"note: {split_csv} is not the split the parent was exported with (other digest)")
    else:
        parted = _parent_split(root, parent, expected)
    for part in ("train", "test"):
        if not len(parted.part(part)):
            raise UsageError(f"the replay split has no {part} rows: it must say which images of {root} the parent "
                             "trained on (train) and was tested on (test)")
    return parted


def _parent_split(root: Path, parent: Parent, expected: str | None) -> Manifest:
    config = ((parent.info.get("training") or {}).get("config")) or {}
    hint = "pass --split CSV (the parent run's split.csv)"
    if not expected or config.get("split_csv"):
        raise UsageError(f"cannot tell which images of {root} the parent trained on; {hint}")
    full = discover(root)
    if full.classes != parent.classes:
        raise DataError(f"{root} has classes {list(full.classes)}, the model {list(parent.classes)}")
    distance = int(config.get("near_duplicate_distance", 4))
    parted = split(full, test_size=float(config.get("test_size", 0.3)), val_size=float(config.get("val_size", 0.1)),
                   seed=int(config.get("seed", 0)), near_duplicate_distance=None if distance < 0 else distance)
    if parted.digest() != expected:
        raise UsageError(f"the parent's split of {root} cannot be recomputed (other images or paths); {hint}")
    return parted


def joined(lab: Manifest, replay: Manifest | None, folder: Path) -> Manifest:
    """Both datasets under `folder` (made here: `lab` and `replay` link to their roots) as one manifest in the
    model's class order, with the parts they were given."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for name, manifest in ((LAB, lab), (REPLAY, replay)):
        if manifest is None:
            continue
        os.symlink(Path(manifest.root).resolve(), folder / name, target_is_directory=True)
        records.extend(replace(r, path=f"{name}/{r.path}") for r in manifest.records if r.part)
    return Manifest(folder, lab.classes, records)


def with_simulated(data: Manifest, replay_train: Manifest, images: torch.Tensor, *, part: str = "train") -> Manifest:
    """`data` (from `joined`) plus simulated images in `part`: `images` (N x 3 x S x S uint8, replay images
    through the lab's shift, in `replay_train`'s order: its train part, or its val part for part "val") written
    as PNG files under data.root/simulated, one per replay image, with the replay image's label."""
    if len(images) != len(replay_train):
        raise ValueError(f"{len(images)} simulated images for {len(replay_train)} replay images")
    records = list(data.records)
    for record, pixels in zip(replay_train.records, images.permute(0, 2, 3, 1).cpu().numpy(), strict=True):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        encoded = buffer.getvalue()
        path = f"{SIMULATED}/{Path(record.path).with_suffix('.png')}"
        write_bytes(data.root / path, encoded)
        records.append(replace(record, path=path, sha256=sha256_bytes(encoded), bytes=len(encoded), mode="RGB",
                               width=pixels.shape[1], height=pixels.shape[0], dhash="", part=part))
    return Manifest(data.root, data.classes, records)


def describe(manifest: Manifest, *, source: str | Path | None = None) -> dict[str, Any]:
    """How model.json and the card name a dataset: where, its digest, images per part and class."""
    parts = {p: len(manifest.part(p)) for p in ("train", "val", "test")}
    unparted = manifest.with_records(replace(r, part="") for r in manifest.records)
    return {"root": str(Path(source or manifest.root).resolve()), "manifest_digest": unparted.digest(),
            "split_digest": manifest.digest(),
            "images": len(manifest), "parts": parts,
            "classes": {name: n for name, n in manifest.class_counts().items() if n}}
