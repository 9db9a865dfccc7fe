"""Training configuration: one dataclass, two named protocols, and the layering that resolves them.

Resolution order: protocol preset < YAML file (`--config`) < command-line overrides. The resolved config is
saved as `config.yaml` in the run folder, and `leukoscope train --config runs/x/config.yaml` repeats a run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from leukoscope.errors import ConfigError

CHOICES: dict[str, tuple[str, ...]] = {
    "protocol": ("paper", "finetune", "custom"),
    "trainable": ("head", "all", "last"),  # "frozen" is accepted as another name for "head"
    "optimizer": ("adam", "adamw", "sgd"),
    "schedule": ("constant", "cosine", "onecycle"),
    "class_balance": ("none", "loss", "sampler"),
    "augment": ("none", "paper", "strong"),
    "select": ("last", "macro_f1"),
}


@dataclass
class TrainConfig:
    """Every knob of a training run. Fractions are of the whole dataset; epochs count per stage."""

    data: str = ""
    split_csv: str = ""
    out_dir: str = "runs"
    name: str = ""
    protocol: str = "finetune"
    seed: int = 0
    test_size: float = 0.3
    val_size: float = 0.1
    near_duplicate_distance: int = 4
    # model
    backbone: str = "mobilenetv2_100"
    weights: str = "imagenet"
    weights_dir: str = ""
    pad_type: str = ""
    drop_rate: float = 0.2
    input_size: int = 0  # 0: the backbone's own (timm data config)
    # stage 1: head warm-up with the backbone frozen
    warmup_epochs: int = 2
    warmup_lr: float = 1e-3
    frozen_views: int = 0  # >0: while the backbone is frozen, train the head on this many cached views per image
    # stage 2: the main stage
    epochs: int = 30
    trainable: str = "all"
    last_blocks: int = 0
    freeze_bn: bool = True
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.05
    class_balance: str = "loss"
    augment: str = "strong"
    batch_size: int = 32
    eval_batch_size: int = 64
    select: str = "macro_f1"
    patience: int = 10
    # distillation (leukoscope.training.soft_targets): teachers' predictions CSVs, comma-separated, and their share
    soft_targets: str = ""
    soft_target_weight: float = 0.5
    # runtime
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> TrainConfig:
        if self.trainable == "frozen":  # the backbone frozen: only the head trains
            self.trainable = "head"
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if not self.data:
            raise ConfigError("no data folder given")
        for name in ("epochs", "warmup_epochs", "batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) < (1 if name in ("batch_size", "eval_batch_size") else 0):
                raise ConfigError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("frozen_views", "last_blocks", "input_size", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more; got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more; got {self.weight_decay}")
        if self.epochs + self.warmup_epochs == 0:
            raise ConfigError("nothing to train: epochs and warmup_epochs are both 0")
        for name in ("lr", "warmup_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.drop_rate < 1:
            raise ConfigError("label_smoothing and drop_rate must be in [0, 1)")
        if not 0 <= self.soft_target_weight <= 1:
            raise ConfigError(f"soft_target_weight must be in [0, 1]; got {self.soft_target_weight}")
        if self.soft_targets and self.frozen_views:
            raise ConfigError("soft_targets train the whole network; they do not work with frozen_views "
                              "(the cached-feature head training of the paper protocol)")
        return self


# The published method: frozen ImageNet MobileNetV2, GAP + dense softmax (Glorot init, no dropout), Adam 1e-3,
# categorical cross-entropy, brightness/zoom/hflip, 70:30 split, 5 epochs. Keras' MobileNetV2 pads "same".
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": dict(
        backbone="mobilenetv2_100", pad_type="same", drop_rate=0.0, test_size=0.3, val_size=0.0,
        warmup_epochs=0, epochs=5, trainable="head", optimizer="adam", lr=1e-3, weight_decay=0.0,
        schedule="constant", label_smoothing=0.0, class_balance="none", augment="paper", batch_size=32,
        select="last", patience=0, frozen_views=3,
    ),
    # Recommended: warm up the head, then fine-tune everything with BatchNorm in inference mode, cosine
    # schedule, label smoothing, class-balanced loss, microscopy augmentation, best epoch by val macro-F1.
    "finetune": dict(
        backbone="mobilenetv2_100", pad_type="", drop_rate=0.2, test_size=0.3, val_size=0.1,
        warmup_epochs=2, warmup_lr=1e-3, epochs=30, trainable="all", optimizer="adamw", lr=5e-4,
        weight_decay=1e-4, schedule="cosine", label_smoothing=0.05, class_balance="loss", augment="strong",
        batch_size=32, select="macro_f1", patience=10,
    ),
    "custom": {},
}

_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
# Keys a run folder's config.yaml adds to the TrainConfig (see runs.write_config); ignored when read back.
RUN_ONLY_KEYS = ("command", "eval_part")


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELD_TYPES:
        close = [n for n in _FIELD_TYPES if n.startswith(name[:3])]
        raise ConfigError(f"unknown config key {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    default = getattr(TrainConfig(), name)
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse value {value!r} for {name}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false; got {value!r}")
    elif isinstance(default, int | float) and not isinstance(value, bool):
        try:
            value = type(default)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number; got {value!r}") from None
    elif isinstance(default, str):
        value = "" if value is None else str(value)
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping of option: value")
    for key in RUN_ONLY_KEYS:  # a run's config.yaml repeats the run: `--config runs/x/config.yaml`
        loaded.pop(key, None)
    return loaded


def resolve_config(protocol: str, yaml_values: dict[str, Any] | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Preset of `protocol`, then the YAML values, then the overrides (None values are ignored)."""
    yaml_values = dict(yaml_values or {})
    protocol = (overrides or {}).get("protocol") or yaml_values.get("protocol") or protocol
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    values: dict[str, Any] = {**PROTOCOLS[protocol], **yaml_values}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["protocol"] = protocol
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    return config.validate()


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs into overrides (values parsed as YAML scalars)."""
    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value; got {pair!r}")
        key, value = pair.split("=", 1)
        result[key.strip().replace("-", "_")] = _coerce(key.strip().replace("-", "_"), value)
    return result
