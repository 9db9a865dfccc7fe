"""The package's layers hold: import-linter's contracts in pyproject.toml (`lint-imports`, also run by `make test`).

cli > serve > evaluation > training | inference > review > models > data; inference and the web app never import
training; nothing outside cli imports cli. A broken contract fails here with import-linter's own explanation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.images import REPO_ROOT


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint_imports, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
