"""`leukoscope train`, driven through `main` as a user would: option precedence, quiet output, Ctrl-C and
--resume, and one-line errors with the right exit codes (nothing half-written left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from leukoscope.models.checkpoint import read_checkpoint
from leukoscope.training import dataset, steps
from leukoscope.training import loop as training
from leukoscope.training.config import TrainConfig
from leukoscope.training.runs import write_config
from tests.helpers.cli import run
from tests.helpers.images import build_dataset

SMALL = ("--backbone", "test_efficientnet", "--set", "input_size=32", "--batch-size", "4", "--device", "cpu",
         "--set", "near_duplicate_distance=-1", "--set", "workers=1")
TINY = (*SMALL, "--weights", "none")


pytestmark = pytest.mark.usefixtures("one_torch_thread", "wide_console")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("cli-train") / "ALL")


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def captured(monkeypatch, tmp_path) -> list[TrainConfig]:
    """Replace fit: record the resolved config instead of training."""
    configs: list[TrainConfig] = []

    def fake_fit(config, *, resume=False, quiet=False, on_epoch_end=None, progress=None):
        assert callable(progress)  # the CLI draws fit's progress reports
        configs.append(config)
        return tmp_path / "no-run"

    monkeypatch.setattr(training, "fit", fake_fit)
    return configs


# --------------------------------------------------------------------------------------------- options


def test_help_explains_the_options(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for option in ("--protocol", "--config", "--resume", "--weights", "--weights-dir", "--set", "--quiet", "--device"):
        assert option in out


def test_config_file_beats_the_preset_and_options_beat_the_file(tmp_path, data, captured, capsys):
    file = tmp_path / "options.yaml"
    file.write_text("protocol: paper\nepochs: 4\nlr: 0.01\nseed: 5\n")
    code, _, err = run(capsys, "train", data, "--config", file, "--epochs", "2", "--set", "seed=6")
    assert code == 0, err
    config = captured[-1]
    assert (config.protocol, config.trainable, config.frozen_views) == ("paper", "head", 3)  # file's protocol preset
    assert config.lr == 0.01 and config.epochs == 2 and config.seed == 6
    assert config.data == str(data)
    code, _, err = run(capsys, "train", data, "--config", file, "--protocol", "finetune")
    assert code == 0, err
    assert captured[-1].protocol == "finetune" and captured[-1].trainable == "all" and captured[-1].lr == 0.01


def test_default_protocol_is_finetune(data, captured, capsys):
    assert run(capsys, "train", data)[0] == 0
    assert captured[-1].protocol == "finetune" and captured[-1].backbone == "mobilenetv2_100"


def test_a_runs_config_yaml_repeats_the_run(tmp_path, data, captured, capsys):
    original = TrainConfig(data=str(data), protocol="paper", backbone="test_efficientnet", epochs=3, seed=2).validate()
    write_config(tmp_path, {**original.to_dict(), "eval_part": "test"}, "leukoscope train ...")
    code, _, err = run(capsys, "train", "--config", tmp_path / "config.yaml")
    assert code == 0, err
    assert captured[-1] == original


# ------------------------------------------------------------------------------------------ progress


def test_fits_progress_reports_become_one_bar_per_epoch(monkeypatch):
    """A bar opens at an epoch's first report, follows it, and closes at done == total or when the block
    ends (Ctrl-C); a stray end report opens nothing."""
    from leukoscope.cli import common

    events: list[tuple] = []

    @contextmanager
    def recording_bar(label, total, *, quiet=False):
        events.append(("open", label, total))
        try:
            yield lambda done, total: events.append(("update", done, total))
        finally:
            events.append(("close", label))

    monkeypatch.setattr(common, "progress_bar", recording_bar)
    with common.labelled_progress() as progress:
        for done in (0, 4, 8):
            progress("epoch 1/2 (main)", done, 8)
        progress("epoch 1/2 (main)", 8, 8)  # a second end report of the same epoch
        progress("epoch 2/2 (main)", 0, 8)
    assert events == [("open", "epoch 1/2 (main)", 8), ("update", 0, 8), ("update", 4, 8), ("update", 8, 8),
                      ("close", "epoch 1/2 (main)"), ("open", "epoch 2/2 (main)", 8), ("update", 0, 8),
                      ("close", "epoch 2/2 (main)")]


# ------------------------------------------------------------------------------------- train and resume


def test_train_writes_a_run_quietly_and_reports_test_metrics(tmp_path, data, capsys):
    code, out, err = run(capsys, "train", data, *TINY, "--epochs", "1", "--warmup-epochs", "0",
                         "--out-dir", tmp_path, "--name", "quiet", "--quiet")
    assert code == 0, err
    assert err == ""
    assert f"{tmp_path / 'quiet'}: test accuracy" in out and "macro-F1" in out
    for name in ("config.yaml", "manifest.csv", "split.csv", "env.json", "metrics.csv", "best.pt", "last.pt",
                 "summary.json"):
        assert (tmp_path / "quiet" / name).is_file(), name
    saved = yaml.safe_load((tmp_path / "quiet" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["input_size"] == 32 and saved["command"].startswith("leukoscope")


def test_imagenet_weights_from_a_local_folder(tmp_path, data, capsys):
    """--weights imagenet --weights-dir: the backbone starts from the file (a head-only run keeps it)."""
    import timm

    (tmp_path / "weights").mkdir()
    state = timm.create_model("test_efficientnet").state_dict()
    torch.save(state, tmp_path / "weights" / "test_efficientnet.tiny_in1k.pth")
    code, _, err = run(capsys, "train", data, *SMALL, "--weights", "imagenet", "--weights-dir", tmp_path / "weights",
                       "--epochs", "1", "--warmup-epochs", "0", "--set", "trainable=head",
                       "--out-dir", tmp_path, "--name", "pretrained", "--quiet")
    assert code == 0, err
    trained = read_checkpoint(tmp_path / "pretrained" / "last.pt")["model"]
    for key, value in trained.items():
        assert torch.equal(value, state[key]) != key.startswith("classifier."), key
    saved = yaml.safe_load((tmp_path / "pretrained" / "config.yaml").read_text())
    assert saved["weights"] == "imagenet" and saved["weights_dir"] == str(tmp_path / "weights")


def test_ctrl_c_exits_130_with_one_line_and_resume_finishes_the_run(tmp_path, data, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "ctrlc"
    real_augment = steps.augment

    def augment(*args, **kwargs):  # Ctrl-C inside epoch 2, once epoch 1 is saved
        if (run_dir / "last.pt").exists():
            raise KeyboardInterrupt
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(steps, "augment", augment)
    code, _, err = run(capsys, "train", data, *TINY, "--epochs", "2", "--warmup-epochs", "0",
                       "--out-dir", tmp_path / "runs", "--name", "ctrlc", "--quiet")
    assert code == 130
    line = one_error_line(err)
    assert "interrupted" in line and f"leukoscope train --resume {run_dir}" in line
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 1
    monkeypatch.setattr(steps, "augment", real_augment)
    code, out, err = run(capsys, "train", "--resume", run_dir, "--quiet")
    assert code == 0, err
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 2 and "test accuracy" in out
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_real_sigint_in_a_subprocess_exits_130_and_keeps_a_whole_checkpoint(tmp_path, data):
    """The signal lands wherever the process is (a batch, a save, a metrics write): one line, exit 130, and
    last.pt is a complete checkpoint of the last finished epoch."""
    run_dir = tmp_path / "runs" / "sigint"
    command = [sys.executable, "-m", "leukoscope", "train", str(data), *TINY, "--epochs", "500", "--warmup-epochs",
               "0", "--out-dir", str(tmp_path / "runs"), "--name", "sigint", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(1200):  # up to ~2 minutes on a busy machine
            if (run_dir / "last.pt").exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    line = one_error_line(err)
    assert "interrupted" in line and "--resume" in line
    last = read_checkpoint(run_dir / "last.pt")
    assert 1 <= last["epoch"] < 500 and len(last["history"]) == last["epoch"]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_ctrl_c_before_training_exits_130_and_writes_nothing(tmp_path, data, monkeypatch, capsys):
    def discover(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "discover", discover)
    code, _, err = run(capsys, "train", data, *TINY, "--out-dir", tmp_path / "runs", "--quiet")
    assert code == 130 and "interrupted" in one_error_line(err)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- bad input


def test_unknown_backbone_suggests_names_and_writes_nothing(tmp_path, data, capsys):
    code, _, err = run(capsys, "train", data, *TINY, "--backbone", "mobilenetv2_10", "--out-dir", tmp_path / "runs")
    assert code == 1
    assert "unknown backbone 'mobilenetv2_10'" in one_error_line(err) and "mobilenetv2_100" in err
    assert not (tmp_path / "runs").exists()


def test_weights_of_another_architecture_are_refused(tmp_path, data, capsys):
    import timm

    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    code, _, err = run(capsys, "train", data, *TINY, "--weights", tmp_path / "resnet.pth", "--out-dir", tmp_path / "runs")
    assert code == 1 and "does not fit backbone test_efficientnet" in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_imagenet_offline_without_a_local_file_says_how_to_supply_weights(tmp_path, data, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.delenv("LEUKOSCOPE_WEIGHTS_DIR", raising=False)
    code, _, err = run(capsys, "train", data, *SMALL, "--weights", "imagenet", "--out-dir", tmp_path / "runs")
    assert code == 1 and "--weights-dir" in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_too_few_images_for_the_split_are_refused(tmp_path, capsys):
    small = build_dataset(tmp_path / "small", per_class=2)
    code, _, err = run(capsys, "train", small, *TINY, "--out-dir", tmp_path / "runs")
    assert code == 1 and "too few" in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_an_out_dir_under_a_file_is_a_usage_error(tmp_path, data, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "train", data, *TINY, "--out-dir", tmp_path / "file" / "runs")
    assert code == 2 and "is a file, not a folder" in one_error_line(err)


def test_resume_refuses_other_classes_and_non_run_folders(tmp_path, data, capsys):
    code, _, err = run(capsys, "train", data, *TINY, "--epochs", "1", "--warmup-epochs", "0",
                       "--out-dir", tmp_path, "--name", "done", "--quiet")
    assert code == 0, err
    before = (tmp_path / "done" / "last.pt").read_bytes()
    other = build_dataset(tmp_path / "other", folders=("Benign", "Early", "Pre", "T-cell"))
    code, _, err = run(capsys, "train", other, "--resume", tmp_path / "done", "--quiet")
    assert code == 1 and "differ from the run's classes" in one_error_line(err)
    assert (tmp_path / "done" / "last.pt").read_bytes() == before
    code, _, err = run(capsys, "train", data, *TINY, "--out-dir", tmp_path, "--name", "done", "--quiet")
    assert code == 2 and "already holds a run; use --resume" in one_error_line(err)
    code, _, err = run(capsys, "train", "--resume", tmp_path / "other")
    assert code == 2 and "not a leukoscope run folder" in one_error_line(err)


@pytest.mark.parametrize(("option", "message"), [
    ("epoch=3", "unknown config key 'epoch'"),
    ("trainable=some", "trainable must be one of"),
    ("device=gpu0", "unknown device 'gpu0'"),
])
def test_bad_options_are_usage_errors(tmp_path, data, option, message, capsys):
    code, _, err = run(capsys, "train", data, *TINY, "--set", option, "--out-dir", tmp_path / "runs")
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "runs").exists()
