"""leukoscope.training.config: protocol presets, then a YAML file, then command-line overrides (which win);
every option can be overridden; bad values are one-line ConfigErrors naming the option, what it must be and
the value given; a config.yaml written before the config became a pydantic model still loads."""

from __future__ import annotations

import pytest
import yaml

from leukoscope.errors import ConfigError
from leukoscope.training.augment import RECIPES
from leukoscope.training.config import (
    CHOICES,
    PROTOCOLS,
    TrainConfig,
    load_yaml,
    parse_set_options,
    resolve_config,
)

DATA = {"data": "some/folder"}


def test_paper_protocol_is_the_published_recipe_on_cached_frozen_features():
    config = resolve_config("paper", overrides=DATA)
    assert config.protocol == "paper"
    assert (config.backbone, config.trainable, config.optimizer, config.lr, config.epochs) == (
        "mobilenetv2_100", "head", "adam", 1e-3, 5)
    assert config.warmup_epochs == 0 and config.val_size == 0 and config.test_size == 0.3
    assert config.augment == "paper" and config.frozen_views == 3 and config.drop_rate == 0
    assert config.pad_type == "same" and config.select == "last"


def test_finetune_protocol_is_the_recommended_recipe():
    config = resolve_config("finetune", overrides=DATA)
    assert config.protocol == "finetune"
    assert config.trainable == "all" and config.freeze_bn and config.warmup_epochs == 2
    assert config.augment == "strong" and config.select == "macro_f1" and config.val_size > 0
    assert config.frozen_views == 0


def test_every_preset_key_is_a_config_field():
    names = set(TrainConfig.model_fields)
    for preset in PROTOCOLS.values():
        assert set(preset) <= names


def test_yaml_beats_the_preset_and_the_command_line_beats_both():
    config = resolve_config("paper", {"epochs": 9, "lr": 0.01, "seed": 3}, {**DATA, "epochs": 2, "seed": None})
    assert config.epochs == 2  # CLI
    assert config.lr == 0.01 and config.seed == 3  # YAML (None overrides are "not given")
    assert config.trainable == "head"  # preset


def test_protocol_comes_from_the_overrides_then_the_yaml():
    assert resolve_config("finetune", {"protocol": "paper"}, DATA).protocol == "paper"
    assert resolve_config("finetune", {"protocol": "paper"}, {**DATA, "protocol": "custom"}).protocol == "custom"
    with pytest.raises(ConfigError, match="unknown protocol 'papr'"):
        resolve_config("papr", overrides=DATA)


# A non-default value of each kind, and for options with a fixed set of values.
_OTHER = {int: 7, float: 0.125, bool: False, str: "other"}
_OTHER_CHOICE = {"trainable": "last", "optimizer": "sgd", "schedule": "onecycle", "class_balance": "sampler",
                 "augment": "none", "select": "last", "unit": "cells", "frozen_engine": "torch"}


def test_every_option_can_be_overridden_with_set():
    for name in TrainConfig.model_fields:
        if name in ("protocol", "extra", "data"):
            continue
        value = _OTHER_CHOICE.get(name, _OTHER[type(getattr(TrainConfig(), name))])
        if name in ("test_size", "val_size", "drop_rate", "label_smoothing", "soft_target_weight"):
            value = 0.125  # a fraction
        text = str(value).lower() if isinstance(value, bool) else str(value)
        overrides = parse_set_options([f"{name.replace('_', '-')}={text}"])
        config = resolve_config("custom", overrides={**DATA, **overrides})
        assert getattr(config, name) == value, name


def test_the_augment_choices_are_the_augmentation_recipes():
    assert CHOICES["augment"] == RECIPES


def test_set_values_are_parsed_as_yaml_scalars():
    assert parse_set_options(["epochs=3", "lr=1e-4", "amp=false", "name=007", "pad-type=same"]) == {
        "epochs": 3, "lr": 1e-4, "amp": False, "name": "007", "pad_type": "same"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["epochs"])
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*epochs"):
        parse_set_options(["epoch=3"])
    with pytest.raises(ConfigError, match="epochs must be a number; got 'many'"):
        parse_set_options(["epochs=many"])
    with pytest.raises(ConfigError, match=r"epochs must be a whole number; got 2\.5"):
        parse_set_options(["epochs=2.5"])
    with pytest.raises(ConfigError, match="epochs must be a number; got True"):
        parse_set_options(["epochs=true"])
    with pytest.raises(ConfigError, match="amp must be true or false; got 3"):
        parse_set_options(["amp=3"])
    with pytest.raises(ConfigError, match=r"cannot parse value '\[1' for epochs"):
        parse_set_options(["epochs=[1"])
    with pytest.raises(ConfigError, match="lr must be > 0; got -1"):
        parse_set_options(["lr=-1"])


def test_values_are_coerced_as_the_options_types_say():
    """Numbers as text, whole floats as ints, ints as floats, None or a number as text (as YAML gives them)."""
    config = resolve_config("custom", {"epochs": "3", "lr": 1, "batch_size": 8.0, "name": 7, "weights_dir": None,
                                       "amp": "false"}, DATA)
    assert (config.epochs, config.lr, config.batch_size, config.name, config.weights_dir, config.amp) == (
        3, 1.0, 8, "7", "", False)
    assert isinstance(config.lr, float) and isinstance(config.batch_size, int)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"trainable": "some"}, "trainable must be one of head, all, last; got 'some'"),
    ({"optimizer": "lion"}, "optimizer must be one of adam, adamw, sgd; got 'lion'"),
    ({"epochs": -1}, "epochs must be 0 or more; got -1"),
    ({"batch_size": 0}, "batch_size must be 1 or more; got 0"),
    ({"epochs": 0, "warmup_epochs": 0}, "nothing to train"),
    ({"lr": 0}, "lr must be > 0; got 0"),
    ({"warmup_lr": -1e-3}, "warmup_lr must be > 0; got -0.001"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\); got 1.0"),
    ({"drop_rate": -0.1}, r"drop_rate must be in \[0, 1\); got -0.1"),
    ({"test_size": 1}, r"test_size must be in \[0, 1\); got 1"),
    ({"val_size": -0.1}, r"val_size must be in \[0, 1\); got -0.1"),
    ({"frozen_views": -2}, "frozen_views must be 0 or more; got -2"),
    ({"weight_decay": -0.1}, "weight_decay must be 0 or more; got -0.1"),
    ({"workers": -1}, "workers must be 0 or more; got -1"),
    ({"data": ""}, "no data folder"),
    ({"soft_target_weight": 1.5}, r"soft_target_weight must be in \[0, 1\]; got 1.5"),
    ({"soft_targets": "t.csv", "frozen_views": 3}, "do not work with frozen_views"),
    ({"freeze_bn": "maybe"}, "freeze_bn must be true or false; got 'maybe'"),
    ({"extra": [1]}, r"extra must be a mapping; got \[1\]"),
    ({"name": ["a"]}, r"name must be text; got \['a'\]"),
    ({"epoch": 3}, r"unknown config key 'epoch'; did you mean epochs\?"),
    ({"lr": float("inf")}, "lr must be a finite number; got inf"),  # trained "fine" into a useless model
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number; got nan"),
    ({"seed": -1}, "seed must be 0 or more; got -1"),  # numpy's split generator refuses it mid-run
    ({"name": "../../elsewhere"}, "name must be a folder name"),  # the run would be written outside out_dir
])
def test_bad_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_config("finetune", overrides={**DATA, **overrides})
    assert "\n" not in str(info.value)


def test_building_or_validating_a_bad_config_by_hand_is_a_config_error_too():
    with pytest.raises(ConfigError, match="lr must be > 0; got 0"):
        TrainConfig(data="x", lr=0)
    config = TrainConfig(data="x")
    config.epochs = -3
    with pytest.raises(ConfigError, match="epochs must be 0 or more; got -3"):
        config.validate()
    with pytest.raises(ConfigError, match="no data folder"):
        TrainConfig().validate()


def test_frozen_is_another_name_for_head():
    assert resolve_config("custom", overrides={**DATA, "trainable": "frozen"}).trainable == "head"


def test_load_yaml_reads_a_mapping_and_refuses_anything_else(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 4\nlr: 0.002\n")
    assert load_yaml(good) == {"epochs": 4, "lr": 0.002}
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [\n")
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_yaml(tmp_path / "bad.yaml")
    assert "\n" not in str(info.value)  # YAML's own message spans lines
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "binary.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "absent.yaml")


def test_a_runs_saved_config_resolves_to_the_same_config(tmp_path):
    """config.yaml of a run (with its extra `command` and `eval_part`) repeats the run via --config."""
    original = resolve_config("paper", overrides={**DATA, "epochs": 2, "seed": 4, "backbone": "test_efficientnet"})
    saved = {**original.to_dict(), "eval_part": "test", "command": "leukoscope train x"}
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(saved, sort_keys=False))
    again = resolve_config("finetune", load_yaml(file), {})
    assert again == original
    assert yaml.safe_dump(again.to_dict(), sort_keys=False) == yaml.safe_dump(original.to_dict(), sort_keys=False)


# A run folder's config.yaml as the dataclass TrainConfig (before pydantic) wrote it.
_SAVED_BEFORE = """\
data: /data/ALL
split_csv: ''
out_dir: runs
name: ''
protocol: finetune
seed: 0
test_size: 0.3
val_size: 0.1
near_duplicate_distance: -1
backbone: test_efficientnet
weights: none
weights_dir: ''
pad_type: ''
drop_rate: 0.2
input_size: 32
warmup_epochs: 0
warmup_lr: 0.001
frozen_views: 0
epochs: 1
trainable: all
last_blocks: 0
freeze_bn: true
optimizer: adamw
lr: 0.0005
weight_decay: 0.0001
schedule: cosine
label_smoothing: 0.05
class_balance: loss
augment: strong
batch_size: 4
eval_batch_size: 64
select: macro_f1
patience: 10
soft_targets: ''
soft_target_weight: 0.5
device: cpu
amp: true
channels_last: true
workers: 1
extra: {}
eval_part: val
command: leukoscope train data --backbone test_efficientnet --set input_size=32 --batch-size
  4 --device cpu --set near_duplicate_distance=-1 --set workers=1 --epochs 1 --warmup-epochs
  0 --weights none --out-dir runs --quiet
"""


def test_a_config_yaml_written_before_still_loads_and_is_written_back_the_same(tmp_path):
    file = tmp_path / "config.yaml"
    file.write_text(_SAVED_BEFORE)
    config = resolve_config("finetune", load_yaml(file), {})
    added = {"unit": "fields", "cells_per_field": 0, "frozen_engine": "auto"}  # options added since, at defaults
    assert {k: config.to_dict()[k] for k in added} == added
    kept = {k: v for k, v in config.to_dict().items() if k not in added}
    written = yaml.safe_dump({**kept, "eval_part": "val"}, sort_keys=False)
    assert written == _SAVED_BEFORE[: _SAVED_BEFORE.index("command:")]
