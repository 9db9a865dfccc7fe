"""The model an evaluation scores, opened once: a run folder, a checkpoint or a model package.

Its own module (not evaluate's) because both evaluate and `evaluation.inputs` need it: inputs resolves
which images to score from the run folder and config the handle carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leukoscope.errors import UsageError
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training.runs import read_config_file


@dataclass
class ModelHandle:
    """An opened model: how to get scores from it and what to say about it."""

    kind: str  # "run", "checkpoint" or "package"
    source: Path
    classes: tuple[str, ...]
    preprocess: Preprocess
    run_dir: Path | None = None
    network: Any = None  # torch module (run / checkpoint)
    predictor: Any = None  # leukoscope.inference.predictor.Predictor (package)
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _run_dir_of(path: Path) -> Path | None:
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.yaml").is_file() or (folder / "split.csv").is_file() else None


def _shown_path(path: Path) -> str:
    """The path relative to the working folder when it lies inside it (reports travel between machines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def open_model(path: str | Path) -> ModelHandle:
    """Open a run folder, a checkpoint file or a model package (folder with model.json).

    `default` (when no such file exists here) is the bundled package. Raises UsageError when the path does
    not exist, ModelError when it holds no usable model.
    """
    path = Path(path)
    if str(path) == "default" and not path.exists():
        from leukoscope.inference.package import bundled_package_path

        path = bundled_package_path()
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    if path.name == "model.json":
        path = path.parent
    if path.is_dir() and (path / "model.json").is_file():
        from leukoscope.inference.backends import cpu_count  # imported only when a package is used
        from leukoscope.inference.predictor import load_predictor

        predictor = load_predictor(path, streams=cpu_count())  # folders of images, as `predict` scores them
        info = dict(predictor.info)
        model_info = {"name": info.get("name", path.name), "kind": "package", "source": _shown_path(path),
                      "backbone": info.get("backbone"), "classes": list(predictor.classes),
                      "temperature": info.get("temperature"), **predictor.preprocess.to_dict()}
        training = info.get("training") or {}
        config = {**(training.get("config") or {}), "command": training.get("command") or ""}
        return ModelHandle("package", path, tuple(predictor.classes), predictor.preprocess,
                           run_dir=_run_dir_of(path), predictor=predictor, info=model_info, config=config)
    from leukoscope.models.checkpoint import load_trained

    loaded = load_trained(path)  # ModelError when there is no checkpoint
    run_dir = _run_dir_of(path)
    meta = loaded.meta
    name = run_dir.name if run_dir is not None else path.stem
    model_info = {"name": name, "kind": "run" if path.is_dir() else "checkpoint", "source": str(path),
                  "backbone": loaded.spec.backbone, "classes": list(loaded.classes),
                  **loaded.preprocess.to_dict(), "epoch": meta.get("epoch"), "best_score": meta.get("best_score"),
                  "manifest_digest": meta.get("manifest_digest")}
    config = read_config_file(run_dir / "config.yaml") if run_dir else {}
    config = config or dict(meta.get("config") or {})
    return ModelHandle(model_info["kind"], path, loaded.classes, loaded.preprocess, run_dir=run_dir,
                       network=loaded.model, info=model_info, config=config)
