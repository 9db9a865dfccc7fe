"""`leukoscope info`: versions, the bundled model and the disclaimer, in one screen."""

from __future__ import annotations

import platform

from leukoscope import __version__
from leukoscope.cli.common import DISCLAIMER, console


def info() -> None:
    """Show the leukoscope version, the runtime and the bundled model."""
    import torch

    console.print(f"leukoscope {__version__} — python {platform.python_version()}, torch {torch.__version__}")
    try:
        from leukoscope.inference.package import bundled_package_path, read_package_json

        path = bundled_package_path()
        meta = read_package_json(path)
        console.print(f"bundled model: {meta.get('name', path.name)} ({meta.get('backbone')}), classes {meta.get('classes')}")
    except Exception as exc:  # info must always print something useful
        console.print(f"bundled model: not available ({exc})")
    console.print(f"[bold]{DISCLAIMER}[/]")
