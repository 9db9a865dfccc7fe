"""scripts/refit_review.py's card rebuild keeps the findings added by hand to Known limitations."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def script(name: str) -> ModuleType:
    """scripts/NAME.py as a module registered as NAME, with scripts/ on sys.path while it loads (as when run:
    the fit scripts import their siblings)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses look their module up there
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


OLD = """# card

## Known limitations
- **Small test set.** Wide intervals.
- **It reads the slide.** Measured with
  `python -m benchmarks.occlusion`.

## How to reproduce
old steps
"""

NEW = """# card

## Known limitations
- **Small test set.** Wide intervals.
- Generated: the main confusion.

## How to reproduce
new steps
"""


def test_bullets_added_by_hand_survive_a_rebuild() -> None:
    refit = script("refit_review")
    card = refit.keep_added_limitations(OLD, NEW)
    assert card.count("**Small test set.**") == 1 and "Generated: the main confusion." in card
    assert "- **It reads the slide.** Measured with\n  `python -m benchmarks.occlusion`." in card
    assert card.index("It reads the slide") < card.index("## How to reproduce")
    assert "new steps" in card and "old steps" not in card
    assert refit.keep_added_limitations(NEW, NEW) == NEW
    assert refit.keep_added_limitations("no sections", NEW) == NEW
