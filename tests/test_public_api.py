"""The package's front door: every public name resolves, the version has one source, light modules stay light."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import leukoscope

# Modules the data tools and the ONNX prediction path import: none of them may pull in torch (seconds of
# start-up) or scipy; each is imported in turn, so a failure names the first one that does.
LIGHT_MODULES = ("leukoscope", "leukoscope.data.discover", "leukoscope.data.split", "leukoscope.inference.package",
                 "leukoscope.models.preprocessing", "leukoscope.review.rules", "leukoscope.review.samples",
                 "leukoscope.review.metrics")
HEAVY = ("torch", "torchvision", "timm", "scipy", "sklearn", "matplotlib", "onnxruntime")


def test_every_public_name_resolves() -> None:
    missing = [name for name in leukoscope.__all__ if getattr(leukoscope, name, None) is None]
    assert missing == []
    assert leukoscope.load_model is leukoscope.load_predictor


def test_version_comes_from_the_package_metadata() -> None:
    assert leukoscope.__version__ == version("leukoscope")
    from leukoscope import __version__

    assert __version__ == leukoscope.__version__


def test_light_modules_do_not_import_torch() -> None:
    code = ("import importlib, json, sys\n"
            f"heavy = {HEAVY!r}\n"
            "found = {}\n"
            f"for name in {LIGHT_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "    found[name] = sorted(m for m in heavy if m in sys.modules)\n"
            "print(json.dumps(found))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(done.stdout)
    assert found == {name: [] for name in LIGHT_MODULES}
