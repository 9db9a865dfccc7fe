"""A parent package and second-lab datasets for the adaptation tests (shared with tests/cli/test_adapt_cmd.py).

- ``shared_parent(tmp_path_factory)``: one package per test session, exported from a run of timm's
  ``test_efficientnet`` (64 px) trained on 24 smear images per class (15 train, 3 val, 6 test): stronger
  than ``tests.helpers.modelfixtures``' tiny run, so that its test part is right with a margin and a
  forgetting check means something. Its run folder (with split.csv) and data are siblings of the package.
- ``make_lab(root, hue=..., permute=...)``: a second lab's images, one folder per class: fresh smear images
  (seeds the parent never saw), hue-rotated (another stain), or with the classes permuted (labels the
  parent cannot agree with: adapting to them makes it forget).

Deterministic: the same pixels and the same network on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.modelfixtures import FOLDERS, make_tiny_run, smear_image

PER_CLASS = 24
EPOCHS = 20
_CACHE: dict[str, Path] = {}


def _part(path: str) -> str:
    index = int(Path(path).stem.rsplit("-", 1)[1])
    return "test" if index % 4 == 3 else "val" if index % 8 == 1 else "train"


def make_parent(tmp_dir: Path) -> Path:
    """<tmp_dir>/package exported from <tmp_dir>/run (best.pt, split.csv, config.yaml) over <tmp_dir>/data."""

    from leukoscope.inference.export import export_run

    tmp_dir = Path(tmp_dir)
    run = make_tiny_run(tmp_dir, epochs=EPOCHS, per_class=PER_CLASS, part_of=_part, name="adaptation-parent")
    return export_run(run, tmp_dir / "package", name="parent", threads=1)


def shared_parent(tmp_path_factory) -> Path:
    """One parent package per test session (its `run` and `data` are siblings); copy it before changing it."""
    if "parent" not in _CACHE:
        _CACHE["parent"] = make_parent(tmp_path_factory.mktemp("adaptparent"))
    return _CACHE["parent"]


def rotate_hue(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """The image with its hue turned by `degrees` (another stain's colours, the same shapes)."""
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(degrees * 256 / 360)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def make_lab(root: Path, *, hue: float = 0.0, permute: bool = False, per_class: int = 20, start: int = 1000) -> Path:
    """root/<Benign|Early|Pre|Pro>/*.png: a second lab's smears (seeds from `start`), hue-rotated by `hue`
    degrees; with `permute`, each folder holds the next class's images."""
    for cls, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True, exist_ok=True)
        source = (cls + 1) % len(FOLDERS) if permute else cls
        for i in range(per_class):
            pixels = rotate_hue(smear_image(source, start + i), hue) if hue else smear_image(source, start + i)
            Image.fromarray(pixels).save(root / folder / f"{folder}-{i:03d}.png")
    return root
