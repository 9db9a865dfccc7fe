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

from tests.helpers.modelfixtures import FOLDERS, make_smear_dataset, smear_image

PER_CLASS = 24
EPOCHS = 20
_CACHE: dict[str, Path] = {}


def _part(path: str) -> str:
    index = int(Path(path).stem.rsplit("-", 1)[1])
    return "test" if index % 4 == 3 else "val" if index % 8 == 1 else "train"


def _train(model, images: np.ndarray, labels: np.ndarray, preprocess, epochs: int) -> None:
    """Adam 3e-3 on every weight (BatchNorm learning too), views turned and flipped by epoch; one thread."""
    import torch

    from leukoscope.models.inputs import normalize

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), preprocess)
    y = torch.from_numpy(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(epochs):
        view = torch.rot90(x, epoch % 4, dims=(2, 3))
        view = view.flip(3) if epoch % 2 else view
        for batch in torch.randperm(len(x)).split(16):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(view[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    torch.set_num_threads(threads)


def make_parent(tmp_dir: Path) -> Path:
    """<tmp_dir>/package exported from <tmp_dir>/run (best.pt, split.csv, config.yaml) over <tmp_dir>/data."""
    import torch

    from leukoscope.data.discover import discover
    from leukoscope.data.fileio import write_text
    from leukoscope.data.manifest import assign_parts
    from leukoscope.inference.export import export_run
    from leukoscope.models.checkpoint import save_checkpoint
    from leukoscope.models.factory import ModelSpec, create_model, preprocess_for

    tmp_dir = Path(tmp_dir)
    data = make_smear_dataset(tmp_dir / "data", per_class=PER_CLASS)
    manifest = discover(data, workers=1)
    split = assign_parts(manifest, {r.path: _part(r.path) for r in manifest.records})
    torch.manual_seed(0)
    spec = ModelSpec("test_efficientnet", num_classes=4, drop_rate=0.0)
    model = create_model(spec, weights="none")
    preprocess = preprocess_for(model, 64)
    chosen = split.part("train")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in chosen.paths()])
    _train(model, images, np.asarray(chosen.labels), preprocess, EPOCHS)
    run = tmp_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    split.write_csv(run / "split.csv")
    write_text(run / "config.yaml", f"data: {data}\nbackbone: test_efficientnet\nseed: 0\n"
                                    "command: leukoscope train adaptation-parent\n")
    save_checkpoint(run / "best.pt", {
        "model": model.state_dict(), "spec": spec.to_dict(), "classes": list(split.classes),
        "preprocess": preprocess.to_dict(), "epoch": EPOCHS, "best_score": None, "stage": "test",
        "history": [], "config": {"data": str(data)}, "manifest_digest": split.digest(),
    })
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
