"""Tiny trained models, run folders and model packages for tests (shared with the server's tests).

- ``smear_image(cls, seed, size=64)``: a synthetic smear-like RGB array: pinkish background, pale red
  cells, and purple nuclei whose size and count depend on the class, so a tiny network separates them.
- ``make_tiny_run(tmp_dir)``: a run folder (best.pt, split.csv, config.yaml) of timm's
  ``test_efficientnet`` (100k parameters, 64 px input) trained for a few seconds on such images.
- ``make_tiny_package(tmp_dir, int8=False)``: that run exported with ``leukoscope.inference.export.export_run``.
- ``shared_tiny_run(tmp_path_factory)`` / ``shared_tiny_package(tmp_path_factory, int8=False)``: one run and
  one package per test session (copy them before modifying them).

Everything is deterministic and takes a few seconds on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

FOLDERS = ("Benign", "Early", "Pre", "Pro")
# (nucleus radius, nuclei per image, nucleus colour) of each class
_NUCLEI = ((12, 1, (95, 70, 170)), (9, 2, (125, 50, 140)), (6, 4, (160, 60, 125)), (4, 7, (70, 35, 95)))
PER_CLASS = 16
PARTS = ("train",) * 10 + ("val",) * 3 + ("test",) * 3
_CACHE: dict[tuple, Path] = {}


def _disc(canvas: np.ndarray, cy: float, cx: float, r: float, colour, rng) -> None:
    yy, xx = np.ogrid[: canvas.shape[0], : canvas.shape[1]]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    canvas[mask] = np.asarray(colour) + rng.normal(0, 6, size=(int(mask.sum()), 3))


def smear_image(cls: int, seed: int, size: int = 64) -> np.ndarray:
    """A size x size x 3 uint8 smear-like image of class `cls` (0..3); the same seed, the same pixels."""
    rng = np.random.default_rng(seed * 10 + cls)
    canvas = np.empty((size, size, 3))
    canvas[:] = (232, 205, 215)
    canvas += rng.normal(0, 5, size=canvas.shape)
    scale = size / 64
    for _ in range(6):  # red cells
        _disc(canvas, *rng.uniform(0, size, 2), 7 * scale, (215, 150, 165), rng)
    radius, count, colour = _NUCLEI[cls]
    for _ in range(count):
        margin = radius * scale + 1
        _disc(canvas, *rng.uniform(margin, size - margin, 2), radius * scale, colour, rng)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def make_smear_dataset(root: Path, per_class: int = PER_CLASS, size: int = 64) -> Path:
    """root/<Benign|Early|Pre|Pro>/<name>.jpg smear-like images; returns root."""
    for cls, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(smear_image(cls, i, size)).save(root / folder / f"{folder}-{i:03d}.jpg", quality=92)
    return root


def _train(model, images: np.ndarray, labels: np.ndarray, preprocess, epochs: int) -> None:
    import torch

    from leukoscope.models.inputs import normalize

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is ~7x faster than two here
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), preprocess)
    y = torch.from_numpy(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(epochs):
        view = torch.rot90(x, epoch % 4, dims=(2, 3))
        view = view.flip(3) if epoch % 2 else view
        for batch in torch.randperm(len(x)).split(16):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(view[batch]), y[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    torch.set_num_threads(threads)


def make_tiny_run(tmp_dir: Path, *, epochs: int = 12, train: bool = True, per_class: int = PER_CLASS,
                  part_of: Callable[[str], str] | None = None, name: str = "tiny-test-run") -> Path:
    """A run folder <tmp_dir>/run with best.pt, split.csv and config.yaml over <tmp_dir>/data.

    `part_of(path)` assigns each image its part (default: PARTS by the image's index); `name` goes into the
    recorded command."""
    import torch

    from leukoscope.data.discover import discover
    from leukoscope.data.fileio import write_text
    from leukoscope.data.manifest import assign_parts
    from leukoscope.models.checkpoint import save_checkpoint
    from leukoscope.models.factory import ModelSpec, create_model, preprocess_for

    tmp_dir = Path(tmp_dir)
    data = make_smear_dataset(tmp_dir / "data", per_class=per_class)
    manifest = discover(data, workers=1)
    part_of = part_of or (lambda path: PARTS[int(Path(path).stem.rsplit("-", 1)[1]) % len(PARTS)])
    split = assign_parts(manifest, {r.path: part_of(r.path) for r in manifest.records})
    torch.manual_seed(0)
    spec = ModelSpec("test_efficientnet", num_classes=4, drop_rate=0.0)
    model = create_model(spec, weights="none")
    preprocess = preprocess_for(model, 64)
    if train:
        chosen = split.part("train")
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in chosen.paths()])
        _train(model, images, np.asarray(chosen.labels), preprocess, epochs)
    run = tmp_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    split.write_csv(run / "split.csv")
    write_text(run / "config.yaml", f"data: {data}\nbackbone: test_efficientnet\nseed: 0\n"
                                    f"command: leukoscope train {name}\n")
    save_checkpoint(run / "best.pt", {
        "model": model.state_dict(), "spec": spec.to_dict(), "classes": list(split.classes),
        "preprocess": preprocess.to_dict(), "epoch": epochs, "best_score": None, "stage": "test",
        "history": [], "config": {"data": str(data)}, "manifest_digest": split.digest(),
    })
    return run


def make_tiny_package(tmp_dir: Path, *, int8: bool = False, train: bool = True) -> Path:
    """A model package <tmp_dir>/package exported from a freshly trained tiny run."""
    from leukoscope.inference.export import export_run

    tmp_dir = Path(tmp_dir)
    run = make_tiny_run(tmp_dir, train=train)
    return export_run(run, tmp_dir / "package", int8=int8, threads=1)


def shared_tiny_run(tmp_path_factory) -> Path:
    """One trained tiny run folder per test session (its data folder is its sibling `data`)."""
    if "run" not in _CACHE:
        _CACHE["run"] = make_tiny_run(tmp_path_factory.mktemp("tinyrun"))
    return _CACHE["run"]


def shared_tiny_package(tmp_path_factory, *, int8: bool = False) -> Path:
    """One tiny package per session and option set, exported from `shared_tiny_run`; tests that modify
    it must copy it first."""
    import pytest

    from leukoscope.inference import int8 as int8_module
    from leukoscope.inference.export import export_run

    key = f"package-int8={int8}"
    if key not in _CACHE:
        run = shared_tiny_run(tmp_path_factory)
        with pytest.MonkeyPatch.context() as patch:  # int8 is written whatever this CPU's int8 kernels compute
            patch.setattr(int8_module, "INT8_MIN_AGREEMENT", 0.0)
            _CACHE[key] = export_run(run, tmp_path_factory.mktemp("tinypkg") / "package", int8=int8, threads=1)
    return _CACHE[key]
