"""Shared fixtures: tiny generated image datasets, and the shared ALL data where it exists.

Fixtures other test modules can use:

- ``tiny_dataset``: a fresh folder ``<tmp>/ALL`` with class folders Benign/Early/Pre/Pro holding 6 JPEGs
  of 64x64 colour noise each (24 images). Each class has its own mean colour, so a model can learn it.
  Deterministic: the same pixels on every run.
- ``make_dataset``: the factory behind it, for other class names, counts or sizes.
- ``make_image``: writes one noise image (any PIL mode and format) to a path.
- ``image_bytes``: the same image as encoded bytes, for code that decodes uploads.
- ``shared_all``: ``../shared/data/ALL`` resolved from the repository root; skips where absent.
- ``shared_all_manifest``: that folder discovered once per test session (takes a couple of seconds).
"""


from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.helpers.images import (
    ALL_FOLDERS,
    SHARED_ALL,
    SHARED_ALL_MISSING,
    build_dataset,
    noise_image_bytes,
)


@pytest.hookimpl(trylast=True)  # after examples/conftest.py has marked the notebooks slow
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files with slow tests first, each file's tests in their own order.

    `make test` hands whole files to 2 xdist workers (--dist loadfile) in collection order. A slow file
    collected last (the example notebook, ~40 s) ran alone at the end while the other worker idled; started
    first, the short files fill in around the long ones. Only the order changes, never what runs.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group stays


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_dataset(name="data", folders=ALL_FOLDERS, per_class=6, size=64, seed=0) -> root."""

    def make(name: str = "data", folders: Sequence[str] = ALL_FOLDERS, **kwargs) -> Path:
        return build_dataset(tmp_path / name, folders, **kwargs)

    return make


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """<tmp>/ALL with Benign/Early/Pre/Pro, 6 distinct 64x64 noise JPEGs each (24 images)."""
    return build_dataset(tmp_path / "ALL")


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Factory: make_image(path, seed=0, size=64, mode="RGB", fmt=None) writes one noise image."""

    def make(path: Path, seed: int = 0, size: int = 64, mode: str = "RGB", fmt: str | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt is None:
            fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
        path.write_bytes(noise_image_bytes(seed, size, mode, fmt))
        return path

    return make


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    """Factory: image_bytes(seed=0, size=64, mode="RGB", fmt="JPEG") -> encoded noise image."""
    return noise_image_bytes


@pytest.fixture(scope="session")
def shared_all() -> Path:
    """../shared/data/ALL (relative to the repository root); the test skips where it is absent."""
    if not SHARED_ALL.is_dir():
        pytest.skip(SHARED_ALL_MISSING)
    return SHARED_ALL


@pytest.fixture(scope="session")
def shared_all_manifest(shared_all: Path):
    """The shared ALL folder discovered once for the whole session (read-only: do not modify it)."""
    from leukoscope.data.discover import discover

    return discover(shared_all)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a busy 2-core machine two threads spin against each other (several times
    slower for tiny models)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny model package (tests/helpers/modelfixtures.py), built once per session."""
    from tests.helpers.modelfixtures import shared_tiny_package

    return shared_tiny_package(tmp_path_factory)


@pytest.fixture(scope="session")
def predictor(tiny_package: Path):
    from leukoscope.inference.predictor import load_predictor

    return load_predictor(tiny_package, threads=1)


@pytest.fixture
def wide_console():
    """Rich wraps at 80 columns when not on a terminal; make it wide so CLI messages stay on one line."""
    from leukoscope.cli.common import console, err_console

    saved = (console._width, err_console._width)
    console.width = err_console.width = 400
    yield
    console._width, err_console._width = saved
