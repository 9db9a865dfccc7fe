"""The example notebooks run as tests (nbmake, `--nbmake` in pyproject's addopts); each trains and exports a
tiny model, so they are marked slow and `make test-fast` (-m "not slow") skips them."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
