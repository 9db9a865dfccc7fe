"""Run folders: what a training run writes next to its weights so that it can be resumed, audited and
reproduced (config, data manifest with hashes, split, environment, per-epoch metrics)."""

from __future__ import annotations

import csv
import io
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from leukoscope.data.fileio import write_json, write_text
from leukoscope.data.manifest import Manifest
from leukoscope.errors import ConfigError, DataError
from leukoscope.training.config import load_yaml

METRIC_COLUMNS = ("epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds")


def check_run_dir(path: Path, *, resume: bool) -> None:
    """Refuse a run folder that cannot be used, without creating anything: a file in its place, a started
    run (unless resuming), or a place where no folder can be made (an ancestor is a file, or read-only)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run folder path exists and is a file: {path}")
    if not resume and (path / "last.pt").exists():
        raise ConfigError(f"run folder {path} already holds a run; use --resume to continue it or pick another --name")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot create run folder {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to run folder {path}: {ancestor} is not writable")


def prepare_run_dir(path: Path, *, resume: bool) -> Path:
    """Create the run folder, refusing to overwrite a finished or started run unless resuming."""
    check_run_dir(path, resume=resume)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to run folder {path}: {exc.strerror or exc}") from None
    return path


def write_config(path: Path, config: dict[str, Any], command: str) -> None:
    write_text(path / "config.yaml", yaml.safe_dump({**config, "command": command}, sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The options a run was trained with (its config.yaml, run-only keys dropped), as `--config` reads them."""
    file = run_dir / "config.yaml"
    if not file.is_file():
        raise ConfigError(f"no config.yaml in {run_dir}: not a leukoscope run folder")
    return load_yaml(file)


def read_config_file(path: Path) -> dict[str, Any]:
    """A run's config.yaml as written (command included), or {} when it is missing, unreadable or not a
    mapping: reports and benchmarks then fall back to the checkpoint's own copy of the config."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def write_manifests(path: Path, full: Manifest, split: Manifest) -> None:
    without_parts = full.with_records(r.__class__(**{**r.__dict__, "part": ""}) for r in full.records)
    without_parts.write_csv(path / "manifest.csv")
    split.write_csv(path / "split.csv")


def environment(device: str, seed: int) -> dict[str, Any]:
    """Versions and hardware: enough to explain why a rerun elsewhere differs."""
    import numpy
    import timm
    import torch

    from leukoscope import __version__

    info: dict[str, Any] = {
        "leukoscope": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "timm": timm.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": device, "seed": seed, "command": " ".join(sys.argv),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        info["git_commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def write_env(path: Path, device: str, seed: int) -> None:
    write_json(path / "env.json", environment(device, seed))


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path / "metrics.csv", buffer.getvalue())


def check_same_classes(saved: tuple[str, ...], found: tuple[str, ...]) -> None:
    if tuple(saved) != tuple(found):
        raise DataError(f"the data's classes {list(found)} differ from the run's classes {list(saved)}")
