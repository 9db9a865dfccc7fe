"""leukoscope.training.config: protocol presets, then a YAML file, then command-line overrides (which win);
every option can be overridden; bad values are ConfigErrors naming the value and the allowed ones."""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml

from leukoscope.errors import ConfigError
from leukoscope.training.config import (
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
    names = {f.name for f in fields(TrainConfig)}
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
                 "augment": "none", "select": "last"}


def test_every_option_can_be_overridden_with_set():
    for f in fields(TrainConfig):
        if f.name in ("protocol", "extra", "data"):
            continue
        value = _OTHER_CHOICE.get(f.name, _OTHER[type(getattr(TrainConfig(), f.name))])
        text = str(value).lower() if isinstance(value, bool) else str(value)
        overrides = parse_set_options([f"{f.name.replace('_', '-')}={text}"])
        config = resolve_config("custom", overrides={**DATA, **overrides})
        assert getattr(config, f.name) == value, f.name


def test_set_values_are_parsed_as_yaml_scalars():
    assert parse_set_options(["epochs=3", "lr=1e-4", "amp=false", "name=007", "pad-type=same"]) == {
        "epochs": 3, "lr": 1e-4, "amp": False, "name": "007", "pad_type": "same"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["epochs"])
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*epochs"):
        parse_set_options(["epoch=3"])
    with pytest.raises(ConfigError, match="epochs must be a number"):
        parse_set_options(["epochs=many"])
    with pytest.raises(ConfigError, match="amp must be true or false"):
        parse_set_options(["amp=3"])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"trainable": "some"}, "trainable must be one of head, all, last; got 'some'"),
    ({"optimizer": "lion"}, "optimizer must be one of"),
    ({"epochs": -1}, "epochs must be positive"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"epochs": 0, "warmup_epochs": 0}, "nothing to train"),
    ({"lr": 0}, "lr must be > 0"),
    ({"label_smoothing": 1.0}, r"label_smoothing and drop_rate must be in \[0, 1\)"),
    ({"frozen_views": -2}, "frozen_views must be 0 or more"),
    ({"weight_decay": -0.1}, "weight_decay must be 0 or more"),
    ({"data": ""}, "no data folder"),
    ({"soft_target_weight": 1.5}, r"soft_target_weight must be in \[0, 1\]"),
    ({"soft_targets": "t.csv", "frozen_views": 3}, "do not work with frozen_views"),
])
def test_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("finetune", overrides={**DATA, **overrides})


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
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "bad.yaml")
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
