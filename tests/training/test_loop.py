"""leukoscope.training.loop.fit on tiny data (24 noise images, timm's test_efficientnet at 32 px, CPU): the run
folder, exact resume after an interruption (between epochs and inside one), the freezing policies, the
paper protocol's cached-feature path, quiet mode and the progress callback, and bad input refused before
anything is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from leukoscope.errors import ConfigError, DataError, ModelError
from leukoscope.models.checkpoint import load_trained, read_checkpoint
from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.training import frozen_body, steps
from leukoscope.training import loop as training
from leukoscope.training.config import TrainConfig, resolve_config
from leukoscope.training.distributed import DistContext
from leukoscope.training.loop import TrainingInterrupted, fit
from leukoscope.training.runs import METRIC_COLUMNS
from leukoscope.training.steps import epoch_order
from tests.helpers.images import build_dataset

CHECKPOINT_KEYS = {"format", "model", "spec", "classes", "preprocess", "epoch", "optimizer", "scheduler", "stage",
                   "best_score", "history", "config", "manifest_digest"}
CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")  # the canonical names of the folders Benign/Early/Pre/Pro
RUN_FILES = ("config.yaml", "manifest.csv", "split.csv", "env.json", "metrics.csv", "best.pt", "last.pt", "summary.json")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 noise JPEGs, 6 per class: the split leaves 12 train, 4 val, 8 test images."""
    return build_dataset(tmp_path_factory.mktemp("train-data") / "ALL")


def tiny(data: Path, out: Path, protocol: str = "finetune", **options) -> TrainConfig:
    base = dict(data=str(data), out_dir=str(out), name="run", backbone="test_efficientnet", weights="none",
                input_size=32, warmup_epochs=1, epochs=1, batch_size=4, eval_batch_size=16, device="cpu",
                workers=1, near_duplicate_distance=-1)
    return resolve_config(protocol, overrides={**base, **options})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """Uninterrupted runs, one per option set, shared by the tests of this module (read-only)."""
    cache: dict[tuple, Path] = {}

    def get(**options) -> Path:
        key = tuple(sorted(options.items()))
        if key not in cache:
            cache[key] = fit(tiny(data, tmp_path_factory.mktemp("reference"), **options), quiet=True)
        return cache[key]

    return get


def last_state(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def initial_state(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights fit starts from (it seeds torch with config.seed right before building the model)."""
    torch.manual_seed(config.seed)
    return create_model(ModelSpec(config.backbone, 4, config.drop_rate, config.pad_type), weights="none").state_dict()


def no_temporary_files(run: Path) -> bool:
    return not [p for p in run.iterdir() if p.name.endswith(".tmp") or p.name == ".write-test"]


# ---------------------------------------------------------------------------------------------- units


def test_epoch_order_is_seeded_and_sharded_evenly_across_ranks():
    config = TrainConfig(data="x", seed=3)
    labels = torch.arange(10) % 4
    whole = epoch_order(10, config, 0, labels, DistContext())
    assert sorted(whole.tolist()) == list(range(10))
    assert torch.equal(whole, epoch_order(10, config, 0, labels, DistContext()))
    assert not torch.equal(whole, epoch_order(10, config, 1, labels, DistContext()))
    shards = [epoch_order(11, config, 0, labels.repeat(2)[:11], DistContext(r, 3, r)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # the remainder is dropped, so every rank steps alike
    assert len(set(torch.cat(shards).tolist())) == 9
    balanced = epoch_order(10, TrainConfig(data="x", class_balance="sampler"), 0, labels, DistContext())
    assert len(balanced) == 10


# ------------------------------------------------------------------------------------------ run folder


def test_fit_writes_a_complete_run_folder(reference, data):
    run = reference()
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert no_temporary_files(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"] == str(data.resolve()) and config["eval_part"] == "val"
    assert config["backbone"] == "test_efficientnet" and config["protocol"] == "finetune" and "command" in config
    with open(run / "metrics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == METRIC_COLUMNS
    assert [(r["epoch"], r["stage"]) for r in rows] == [("1", "warmup"), ("2", "main")]
    with open(run / "split.csv", newline="") as handle:
        parts = [r["part"] for r in csv.DictReader(handle)]
    assert (parts.count("train"), parts.count("val"), parts.count("test")) == (12, 4, 8)
    last = read_checkpoint(run / "last.pt")
    assert set(last) >= CHECKPOINT_KEYS and last["epoch"] == 2 and last["stage"] == "main"
    assert last["classes"] == list(CLASSES) and last["preprocess"]["input_size"] == 32
    assert len(last["history"]) == 2
    env = json.loads((run / "env.json").read_text())
    assert env["device"] == "cpu" and env["seed"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["n"] == 8 and summary["epochs_run"] == 2 and 0 <= summary["test"]["accuracy"] <= 1
    loaded = load_trained(run)
    assert loaded.classes == CLASSES and loaded.preprocess.input_size == 32


def test_batchnorm_stays_in_inference_mode_while_everything_trains(reference):
    """freeze_bn (the default): the main stage trains all weights but BN statistics and affine parameters
    keep their initial values."""
    state = last_state(reference())
    start = initial_state(TrainConfig(data="x", backbone="test_efficientnet"))
    bn = [k for k in state if k.startswith(("bn1.", "bn2.")) or ".bn" in k]
    assert bn and all(torch.equal(state[k], start[k]) for k in bn)
    assert not torch.equal(state["conv_stem.weight"], start["conv_stem.weight"])


def test_without_freeze_bn_the_statistics_do_change(tmp_path, data):
    run = fit(tiny(data, tmp_path, warmup_epochs=0, freeze_bn=False), quiet=True)
    state = last_state(run)
    assert state["bn1.num_batches_tracked"] > 0
    assert not torch.equal(state["bn1.running_mean"], torch.zeros_like(state["bn1.running_mean"]))


def test_head_only_stage_leaves_the_frozen_backbone_untouched(tmp_path, data):
    config = tiny(data, tmp_path, warmup_epochs=2, epochs=0)
    state, start = last_state(fit(config, quiet=True)), initial_state(config)
    for key in state:
        same = torch.equal(state[key], start[key])
        assert same != key.startswith("classifier."), key


def test_last_blocks_policy_trains_only_the_last_stage_and_the_head(tmp_path, data):
    config = tiny(data, tmp_path, warmup_epochs=0, trainable="last", last_blocks=1)
    state, start = last_state(fit(config, quiet=True)), initial_state(config)
    changed = {k for k in state if not torch.equal(state[k], start[k])}
    assert all(k.startswith(("blocks.4.", "conv_head.", "classifier.")) for k in changed), changed
    assert {"classifier.weight", "conv_head.weight", "blocks.4.0.conv_pw.weight"} <= changed


def test_paper_protocol_trains_the_head_on_cached_views(tmp_path, data, monkeypatch):
    calls = {"views": 0, "images": 0, "onnx": 0}

    def count(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return counted

    monkeypatch.setattr(training, "frozen_view_features", count("views", training.frozen_view_features))
    monkeypatch.setattr(training, "train_one_epoch", count("images", training.train_one_epoch))
    monkeypatch.setattr(frozen_body, "onnx_frozen", count("onnx", frozen_body.onnx_frozen))
    config = tiny(data, tmp_path, "paper", warmup_epochs=0, epochs=2, frozen_engine="onnxruntime")  # as on real data
    assert config.frozen_views == 3 and config.trainable == "head" and config.pad_type == "same"
    run = fit(config, quiet=True)
    # features cached once, every epoch runs the head only; the frozen passes (views, the scored part, the
    # summary's) ran in ONNX Runtime on this CPU
    assert calls == {"views": 1, "images": 0, "onnx": 3}
    state, start = last_state(run), initial_state(config)
    for key in state:
        assert torch.equal(state[key], start[key]) != key.startswith("classifier."), key
    assert yaml.safe_load((run / "config.yaml").read_text())["eval_part"] == "test"  # the paper has no val part
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


# ------------------------------------------------------------------------------------ interrupt, resume


def test_resume_between_stages_gives_the_same_weights(tmp_path, reference, data):
    config = tiny(data, tmp_path)

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"last.pt holds epoch 1/2.*--resume") as info:
        fit(config, quiet=True, on_epoch_end=stop)
    run = tmp_path / "run"
    assert str(run) in str(info.value) and info.value.exit_code == 130
    assert read_checkpoint(run / "last.pt")["epoch"] == 1 and not (run / "summary.json").exists()
    fit(config, resume=True, quiet=True)
    assert_same_weights(last_state(run), last_state(reference()))
    assert len(read_checkpoint(run / "last.pt")["history"]) == 2


def test_ctrl_c_inside_an_epoch_keeps_the_last_completed_one_and_resumes_exactly(tmp_path, reference, data, monkeypatch):
    """Ctrl-C in the middle of epoch 2 (inside the batch loop, mid-stage: the optimizer and schedule are
    restored from last.pt)."""
    config = tiny(data, tmp_path, warmup_epochs=0, epochs=2)
    armed, batches = [False], [0]
    real_augment = steps.augment

    def augment(*args, **kwargs):
        if armed[0]:
            batches[0] += 1
            if batches[0] == 2:
                raise KeyboardInterrupt
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(steps, "augment", augment)
    with pytest.raises(TrainingInterrupted) as info:
        fit(config, quiet=True, on_epoch_end=lambda epoch, row: armed.__setitem__(0, True))
    message = str(info.value)
    assert "\n" not in message and "last.pt holds epoch 1/2" in message
    assert f"leukoscope train --resume {tmp_path / 'run'}" in message
    run = tmp_path / "run"
    assert read_checkpoint(run / "last.pt")["epoch"] == 1 and no_temporary_files(run)
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    monkeypatch.setattr(steps, "augment", real_augment)
    fit(config, resume=True, quiet=True)
    assert_same_weights(last_state(run), last_state(reference(warmup_epochs=0, epochs=2)))
    assert (run / "summary.json").is_file()


def test_ctrl_c_in_the_first_epoch_leaves_no_checkpoint_and_resume_starts_over(tmp_path, reference, data, monkeypatch):
    config = tiny(data, tmp_path, warmup_epochs=0, epochs=2)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(steps, "augment", interrupt)
        with pytest.raises(TrainingInterrupted, match="no epoch was completed"):
            fit(config, quiet=True)
    assert not (tmp_path / "run" / "last.pt").exists()
    fit(config, resume=True, quiet=True)
    assert_same_weights(last_state(tmp_path / "run"), last_state(reference(warmup_epochs=0, epochs=2)))


def test_an_early_stopped_run_stays_stopped_when_resumed(tmp_path, data, monkeypatch):
    config = tiny(data, tmp_path, warmup_epochs=0, epochs=4, patience=1)
    real_improved = training._improved
    monkeypatch.setattr(training, "_improved", lambda config, row, best: row["epoch"] == 1)
    run = fit(config, quiet=True)
    last = read_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["stale"] == 1  # stopped after one epoch without improvement
    assert read_checkpoint(run / "best.pt")["epoch"] == 1
    monkeypatch.setattr(training, "_improved", real_improved)
    fit(config, resume=True, quiet=True)
    assert read_checkpoint(run / "last.pt")["epoch"] == 2


# ---------------------------------------------------------------------------------------------- output


def test_quiet_prints_nothing_and_verbose_reports_each_epoch(tmp_path, data, capfd):
    calls = []
    fit(tiny(data, tmp_path, warmup_epochs=0, name="quiet"), quiet=True, progress=lambda *call: calls.append(call))
    out, err = capfd.readouterr()
    assert out == "" and err == "" and calls == []
    fit(tiny(data, tmp_path, warmup_epochs=0, name="loud"), quiet=False)
    out, err = capfd.readouterr()
    assert "epoch 1/1 main" in err and "macro-F1" in err


def test_progress_reports_each_epoch_from_zero_to_its_end_once(tmp_path, data):
    """12 training images in batches of 4: each epoch reports 0, 4, 8, then 12 == total once at its end."""
    calls: list[tuple[str, int, int]] = []
    fit(tiny(data, tmp_path, warmup_epochs=1, epochs=1), progress=lambda *call: calls.append(call))
    assert calls == [("epoch 1/2 (warmup)", done, 12) for done in (0, 4, 8, 12)] + [
        ("epoch 2/2 (main)", done, 12) for done in (0, 4, 8, 12)]


# ------------------------------------------------------------------------------------------- bad input


def test_unknown_backbone_fails_before_anything_is_written(tmp_path, data):
    with pytest.raises(ModelError, match=r"did you mean.*test_efficientnet"):
        fit(tiny(data, tmp_path, backbone="test_efficientnett"))
    assert list(tmp_path.iterdir()) == []


def test_weights_of_another_architecture_fail_before_anything_is_written(tmp_path, data):
    import timm

    weights = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    with pytest.raises(ModelError, match="does not fit backbone test_efficientnet"):
        fit(tiny(data, tmp_path / "runs", weights=str(weights)))
    assert not (tmp_path / "runs").exists()


def test_too_few_images_for_the_split_fail_before_anything_is_written(tmp_path):
    small = build_dataset(tmp_path / "small", per_class=2)
    with pytest.raises(DataError, match="too few"):
        fit(tiny(small, tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_an_unwritable_run_folder_is_refused(tmp_path, data):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        fit(tiny(data, tmp_path / "file" / "runs"))
    assert (tmp_path / "file").read_text() == "not a folder"


def test_an_existing_run_is_not_overwritten(reference, data):
    run = reference()
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(tiny(data, run.parent))
    assert (run / "last.pt").read_bytes() == before


def test_resuming_with_data_of_other_classes_is_refused_and_the_run_untouched(tmp_path, data):
    config = tiny(data, tmp_path, warmup_epochs=0, epochs=2)
    with pytest.raises(TrainingInterrupted):
        fit(config, quiet=True, on_epoch_end=lambda epoch, row: (_ for _ in ()).throw(KeyboardInterrupt()))
    run = tmp_path / "run"
    snapshot = {p.name: p.read_bytes() for p in run.iterdir()}
    other = build_dataset(tmp_path / "other", folders=("Benign", "Early", "Pre", "T-cell"))
    with pytest.raises(DataError, match="differ from the run's classes"):
        fit(tiny(other, tmp_path, warmup_epochs=0, epochs=2), resume=True, quiet=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == snapshot


# ------------------------------------------------------------------------------ distillation (soft targets)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data) -> str:
    """Two teacher CSVs over every image of `data`: one uniform, one sure of Pro-B."""
    from leukoscope.data.discover import discover

    folder = tmp_path_factory.mktemp("teachers")
    records = discover(data, workers=1).records
    header = "path,sha256,p_Benign,p_Early Pre-B,p_Pre-B,p_Pro-B"
    uniform = [header] + [f"{r.path},{r.sha256},0.25,0.25,0.25,0.25" for r in records]
    pro = [header] + [f"{r.path},{r.sha256},0,0,0,1" for r in records]
    (folder / "uniform.csv").write_text("\n".join(uniform) + "\n")
    (folder / "pro.csv").write_text("\n".join(pro) + "\n")
    return f"{folder / 'uniform.csv'},{folder / 'pro.csv'}"


def test_a_distillation_run_trains_on_the_mixed_targets_and_writes_them(reference, teachers):
    run = reference(warmup_epochs=0, epochs=2, soft_targets=teachers, soft_target_weight=0.5)
    with (run / "soft_targets.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (run / "split.csv").open(newline="") as handle:
        labels = {r["path"]: r["label"] for r in csv.DictReader(handle) if r["part"] == "train"}
    assert sorted(r["path"] for r in rows) == sorted(labels)
    for row in rows:  # 0.5 * mean(uniform, Pro-B) + 0.5 * one-hot(label)
        expected = {name: 0.0625 + 0.25 * (name == "Pro-B") + 0.5 * (name == labels[row["path"]])
                    for name in CLASSES}
        assert {name: float(row[f"p_{name}"]) for name in CLASSES} == pytest.approx(expected)
    assert yaml.safe_load((run / "config.yaml").read_text())["soft_targets"] == teachers
    plain = reference(warmup_epochs=0, epochs=2)
    assert any(not torch.equal(a, b) for a, b in zip(last_state(run).values(), last_state(plain).values(), strict=True))


def test_a_resumed_distillation_run_gives_the_same_weights(tmp_path, reference, teachers, data):
    options = dict(warmup_epochs=0, epochs=2, soft_targets=teachers, soft_target_weight=0.5)

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        fit(tiny(data, tmp_path, **options), quiet=True, on_epoch_end=stop)
    fit(tiny(data, tmp_path, **options), resume=True, quiet=True)
    assert_same_weights(last_state(tmp_path / "run"), last_state(reference(**options)))


def test_soft_targets_missing_a_training_image_fail_before_anything_is_written(tmp_path, data, teachers):
    partial = tmp_path / "partial.csv"
    lines = Path(teachers.split(",")[0]).read_text().splitlines()
    partial.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DataError, match="have no soft target"):
        fit(tiny(data, tmp_path, soft_targets=str(partial)), quiet=True)
    assert not (tmp_path / "run").exists()
