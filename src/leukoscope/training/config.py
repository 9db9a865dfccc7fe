"""Training configuration: one pydantic model, two named protocols, and the layering that resolves them.

Resolution order: protocol preset < YAML file (`--config`) < command-line overrides. The resolved config is
saved as `config.yaml` in the run folder, and `leukoscope train --config runs/x/config.yaml` repeats a run.
pydantic checks each value's type and range as the config is built; whatever is wrong becomes a one-line
ConfigError that names the option, what it must be and the value given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from leukoscope.errors import ConfigError

_TEXT_ERROR = "leukoscope_config"  # the type of the errors whose message this module writes in full


def _text_error(text: str) -> PydanticCustomError:
    return PydanticCustomError(_TEXT_ERROR, "{text}", {"text": text})


class TrainConfig(BaseModel):
    """Every knob of a training run. Fractions are of the whole dataset; epochs count per stage.

    Built with keywords, like a dataclass; a value of the wrong type or out of range raises ConfigError.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr=inf would "train" to a useless model

    data: str = ""
    split_csv: str = ""
    out_dir: str = "runs"
    name: str = ""
    protocol: Literal["paper", "finetune", "custom"] = "finetune"
    seed: int = Field(0, ge=0)  # numpy's generators (the split) take only non-negative seeds
    test_size: float = Field(0.3, ge=0, lt=1)
    val_size: float = Field(0.1, ge=0, lt=1)
    near_duplicate_distance: int = 4  # below 0: near-copies are not grouped
    # unit "cells": train on the segmented cell crops of each field, each with its field's label
    # (leukoscope.training.cells: a head on frozen-backbone features of the crops)
    unit: Literal["fields", "cells"] = "fields"
    cells_per_field: int = Field(0, ge=0)  # unit cells: at most this many crops per training field (0: all)
    # model
    backbone: str = "mobilenetv2_100"
    weights: str = "imagenet"
    weights_dir: str = ""
    pad_type: str = ""
    drop_rate: float = Field(0.2, ge=0, lt=1)
    input_size: int = Field(0, ge=0)  # 0: the backbone's own (timm data config)
    # stage 1: head warm-up with the backbone frozen
    warmup_epochs: int = Field(2, ge=0)
    warmup_lr: float = Field(1e-3, gt=0)
    frozen_views: int = Field(0, ge=0)  # >0: with the backbone frozen, the head trains on this many cached views of each image
    # stage 2: the main stage
    epochs: int = Field(30, ge=0)
    trainable: Literal["head", "all", "last"] = "all"  # "frozen" is accepted as another name for "head"
    last_blocks: int = Field(0, ge=0)
    freeze_bn: StrictBool = True
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    class_balance: Literal["none", "loss", "sampler"] = "loss"
    augment: Literal["none", "paper", "strong", "robust"] = "strong"  # the recipes of leukoscope.training.augment
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    select: Literal["last", "macro_f1"] = "macro_f1"
    patience: int = Field(10, ge=0)  # 0: no early stopping
    # distillation (leukoscope.training.soft_targets): teachers' predictions CSVs, comma-separated, and their share
    soft_targets: str = ""
    soft_target_weight: float = Field(0.5, ge=0, le=1)
    # runtime
    device: str = "auto"
    amp: StrictBool = True
    channels_last: StrictBool = True
    # what runs a frozen backbone (leukoscope.training.frozen_body): auto = ONNX Runtime on the CPU, else PyTorch
    frozen_engine: Literal["auto", "torch", "onnxruntime"] = "auto"
    workers: int = Field(2, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_message(exc)) from None

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        """What the old hand-written coercion accepted: text parsed as a YAML scalar for the options that are
        not text (`--set epochs=3`, `lr: "1e-4"`), None or a number as text for those that are."""
        name = info.field_name or ""
        kind = _KINDS[name]
        if name == "trainable" and value == "frozen":  # the backbone frozen: only the head trains
            return "head"
        if kind is str:
            if value is None:
                return ""
            return value if isinstance(value, str | list | dict | tuple | set) else str(value)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise _text_error(f"cannot parse value {value!r} for {name}") from None
        if kind in (int, float) and isinstance(value, bool):
            raise _text_error(f"{name} must be a number; got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.epochs + self.warmup_epochs == 0:
            raise _text_error("nothing to train: epochs and warmup_epochs are both 0")
        if self.name and (Path(self.name).name != self.name or self.name in (".", "..")):
            # the run folder is out_dir/name: "../x" or "a/b" would write a run outside out_dir
            raise _text_error(f"name must be a folder name (the run folder under out_dir); got {self.name!r}")
        if self.unit == "cells" and self.soft_targets:
            raise _text_error("unit cells trains a head on frozen-backbone features of the cell crops: soft_targets "
                              "do not apply to it")
        if self.soft_targets and self.frozen_views:
            raise _text_error("soft_targets train the whole network; they do not work with frozen_views "
                              "(the cached-feature head training of the paper protocol)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every option by name (what config.yaml and checkpoints store)."""
        return self.model_dump()

    def validate(self) -> TrainConfig:
        """Check the config again (after attributes were set by hand) and that it names a data folder."""
        checked = TrainConfig(**self.model_dump())
        if not checked.data:
            raise ConfigError("no data folder given")
        self.__dict__.update(checked.__dict__)
        return self


_KINDS: dict[str, type] = {name: type(f.get_default(call_default_factory=True))
                           for name, f in TrainConfig.model_fields.items()}
# The allowed values of the options that have a fixed set of them.
CHOICES: dict[str, tuple[str, ...]] = {name: get_args(f.annotation) for name, f in TrainConfig.model_fields.items()
                                       if get_args(f.annotation) and _KINDS[name] is str}
# Keys a run folder's config.yaml adds to the TrainConfig (see runs.write_config); ignored when read back.
RUN_ONLY_KEYS = ("command", "eval_part")

_TYPE_WORDS = {"int_from_float": "a whole number", "int_parsing": "a number", "int_type": "a number",
               "float_parsing": "a number", "float_type": "a number", "bool_type": "true or false",
               "bool_parsing": "true or false", "string_type": "text", "dict_type": "a mapping",
               "finite_number": "a finite number"}


def _unknown_key(name: str) -> str:
    close = [n for n in TrainConfig.model_fields if n.startswith(name[:3])]
    return f"unknown config key {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")


def _range(name: str) -> str:
    """The range of a numeric option in words: "> 0", "0 or more", "in [0, 1)"."""
    limits = {kind: getattr(m, kind) for m in TrainConfig.model_fields[name].metadata
              for kind in ("gt", "ge", "lt", "le") if hasattr(m, kind)}
    low = f"[{limits['ge']}" if "ge" in limits else f"({limits['gt']}" if "gt" in limits else ""
    high = f"{limits['lt']})" if "lt" in limits else f"{limits['le']}]" if "le" in limits else ""
    if low and high:
        return f"in {low}, {high}"
    if "gt" in limits:
        return f"> {limits['gt']}"
    if "ge" in limits:
        return f"{limits['ge']} or more"
    return f"< {limits['lt']}" if "lt" in limits else f"{limits.get('le')} or less"


def _message(exc: ValidationError) -> str:
    """The first error of a validation, in one line: "<option> must be <what>; got <value>"."""
    error: ErrorDetails = exc.errors(include_url=False)[0]
    kind, value = error["type"], error.get("input")
    name = str(error["loc"][0]) if error["loc"] else ""
    if kind == _TEXT_ERROR:
        return str(error["ctx"]["text"])
    if kind == "extra_forbidden":
        return _unknown_key(name)
    if kind == "literal_error":
        return f"{name} must be one of {', '.join(CHOICES[name])}; got {value!r}"
    if kind in _TYPE_WORDS:
        return f"{name} must be {_TYPE_WORDS[kind]}; got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{name} must be {_range(name)}; got {value!r}"
    return f"{name or 'config'}: {error['msg']}; got {value!r}"


def _check_keys(names: Any) -> None:
    for name in names:
        if name not in TrainConfig.model_fields:
            raise ConfigError(_unknown_key(str(name)))


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The options of a YAML file (a run's config.yaml too: its run-only keys are dropped)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:  # YAML's messages span lines: one line here
        raise ConfigError(f"cannot read config {path}: {' '.join(str(exc).split())}") from None
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
    _check_keys(values)
    config = TrainConfig(**values)
    if not config.data:
        raise ConfigError("no data folder given")
    return config


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs into overrides: values parsed as YAML scalars and checked like the option."""
    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value; got {pair!r}")
        key, value = pair.split("=", 1)
        name = key.strip().replace("-", "_")
        _check_keys([name])
        result[name] = getattr(TrainConfig(**{name: value}), name)
    return result
