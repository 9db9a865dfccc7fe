"""leukoscope.training.runs: the run folder's files (config, manifests, env, metrics) and its safety checks."""

from __future__ import annotations

import csv
import json

import pytest

from leukoscope.data.discover import discover
from leukoscope.data.split import split
from leukoscope.errors import ConfigError, DataError
from leukoscope.training.runs import (
    METRIC_COLUMNS,
    check_run_dir,
    check_same_classes,
    environment,
    prepare_run_dir,
    read_config,
    write_config,
    write_env,
    write_manifests,
    write_metrics_csv,
)


def test_metric_columns_are_the_documented_ones():
    assert METRIC_COLUMNS == ("epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1",
                              "lr", "seconds")


def test_check_run_dir_creates_nothing(tmp_path):
    target = tmp_path / "runs" / "a"
    check_run_dir(target, resume=False)
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_under_a_file_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "plain").write_text("x")
    for target in (tmp_path / "plain" / "run", tmp_path / "plain" / "deeper" / "run"):
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            check_run_dir(target, resume=False)
        with pytest.raises(ConfigError):
            prepare_run_dir(target, resume=False)
    with pytest.raises(ConfigError, match="exists and is a file"):
        prepare_run_dir(tmp_path / "plain", resume=True)


def test_a_started_run_is_only_reopened_with_resume(tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False)
    assert run.is_dir() and list(run.iterdir()) == []  # the write probe is gone
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds a run; use --resume"):
        prepare_run_dir(run, resume=False)
    assert prepare_run_dir(run, resume=True) == run


def test_config_round_trip_drops_the_run_only_keys(tmp_path):
    write_config(tmp_path, {"data": "/d", "epochs": 3, "eval_part": "val"}, "leukoscope train /d")
    text = (tmp_path / "config.yaml").read_text()
    assert "command: leukoscope train /d" in text
    assert read_config(tmp_path) == {"data": "/d", "epochs": 3}
    with pytest.raises(ConfigError, match="not a leukoscope run folder"):
        read_config(tmp_path / "nothing")


@pytest.mark.parametrize(("text", "message"), [
    ("data: [unclosed\n  :", "cannot read .*config.yaml: "),
    ("- 1\n- 2\n", "config.yaml must be a mapping"),
])
def test_a_damaged_config_yaml_is_one_line_config_error(tmp_path, text, message):
    (tmp_path / "config.yaml").write_text(text)  # what `train --resume` reads first
    with pytest.raises(ConfigError, match=message) as info:
        read_config(tmp_path)
    assert "\n" not in str(info.value)


def test_manifests_hold_every_image_and_the_split_holds_parts(tiny_dataset, tmp_path):
    full = discover(tiny_dataset, workers=1)
    parted = split(full, test_size=0.25, val_size=0.0, seed=0, near_duplicate_distance=None)
    write_manifests(tmp_path, full, parted)
    with open(tmp_path / "manifest.csv", newline="") as handle:
        manifest_rows = list(csv.DictReader(handle))
    with open(tmp_path / "split.csv", newline="") as handle:
        split_rows = list(csv.DictReader(handle))
    assert len(manifest_rows) == len(split_rows) == 24
    assert {r["part"] for r in manifest_rows} == {""}
    assert {r["part"] for r in split_rows} == {"train", "test"}
    assert {"path", "label", "sha256"} <= set(split_rows[0])


def test_metrics_csv_has_the_documented_columns_and_one_row_per_epoch(tmp_path):
    history = [{"epoch": e, "stage": "main", "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6,
                "val_macro_f1": 0.55, "lr": 1e-3, "seconds": 1.25, "extra": "ignored"} for e in (1, 2)]
    write_metrics_csv(tmp_path, history)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["train_loss"]) == 0.5


def test_env_json_names_versions_device_and_seed(tmp_path):
    write_env(tmp_path, "cpu", 11)
    info = json.loads((tmp_path / "env.json").read_text())
    assert info["device"] == "cpu" and info["seed"] == 11
    assert {"leukoscope", "python", "torch", "timm", "numpy", "platform", "git_commit"} <= set(info)
    assert environment("cpu", 0)["torch_threads"] >= 1


def test_check_same_classes():
    check_same_classes(("A", "B"), ("A", "B"))
    with pytest.raises(DataError, match=r"classes \['A', 'C'\] differ from the run's classes \['A', 'B'\]"):
        check_same_classes(("A", "B"), ("A", "C"))
