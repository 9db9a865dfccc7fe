"""The pieces of an adaptation on their own: the refusal rules, the replay mix, fp16 rounding, the split of
the replay data recomputed from the parent's config, the joined data folder and the model card."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.adaptation.card import model_card
from leukoscope.adaptation.data import (
    LAB,
    REPLAY,
    SIMULATED,
    Parent,
    describe,
    joined,
    lab_split,
    replay_split,
    with_classes,
    with_simulated,
)
from leukoscope.adaptation.finetune import AdaptOptions, epoch_set, replay_count, round_fp16
from leukoscope.adaptation.scores import LAB_HELD_OUT, REPLAY_TEST, AdaptationRefused, judge, summary_line
from leukoscope.data.classes import CANONICAL_CLASSES
from leukoscope.data.discover import discover
from leukoscope.data.fileio import sha256_file
from leukoscope.data.split import split
from leukoscope.errors import DataError, UsageError
from leukoscope.models.factory import ModelSpec
from leukoscope.models.preprocessing import Preprocess
from leukoscope.training.dataset import TensorSet
from tests.adaptation.fixtures import make_lab

PRE = Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def figures(lab: tuple[float, float], replay: tuple[float, float] | None = None) -> dict[str, Any]:
    metrics = {LAB_HELD_OUT: {"before": {"images": 40, "accuracy": lab[0]},
                              "after": {"images": 40, "accuracy": lab[1]}}}
    if replay is not None:
        metrics[REPLAY_TEST] = {"before": {"images": 800, "accuracy": replay[0]},
                                "after": {"images": 800, "accuracy": replay[1]}}
    return metrics


def test_refusal_rules() -> None:
    judge(figures((0.5, 0.6)), max_replay_drop=0.005)
    judge(figures((0.5, 0.6), (0.99, 0.985)), max_replay_drop=0.005)  # exactly 0.5 points: allowed
    judge(figures((0.5, 0.6), (0.9, 0.95)), max_replay_drop=0.005)
    with pytest.raises(AdaptationRefused, match=r"accuracy \(50\.0%\) is not better than the parent's \(50\.0%\)"):
        judge(figures((0.5, 0.5), (0.9, 0.9)), max_replay_drop=0.005)
    with pytest.raises(AdaptationRefused, match="not better"):
        judge(figures((0.6, 0.5)), max_replay_drop=0.005)
    drop = r"drops from 99\.00% to 98\.25% \(0\.75 points; at most 0\.5 allowed\)"
    with pytest.raises(AdaptationRefused, match=drop):
        judge(figures((0.5, 0.9), (0.99, 0.9825)), max_replay_drop=0.005)
    assert summary_line(figures((0.5, 0.75), (1.0, 1.0))) == ("lab held-out accuracy 50.0% -> 75.0% (40 images); "
                                                              "replay test accuracy 100.0% -> 100.0% (800 images)")


def test_each_epoch_mixes_every_lab_image_with_a_seeded_replay_sample() -> None:
    assert replay_count(40, 1000, 1.0) == 40 and replay_count(40, 30, 2.0) == 30 and replay_count(40, 0, 1.0) == 0
    lab = TensorSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 3]))
    replay = TensorSet(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 8, 8).contiguous(),
                       torch.arange(10) % 4)
    first, again = epoch_set(lab, replay, 5, 0, 0), epoch_set(lab, replay, 5, 0, 0)
    other = epoch_set(lab, replay, 5, 0, 1)
    assert len(first) == 9 and torch.equal(first.images[:4], lab.images) and torch.equal(first.images, again.images)
    assert not torch.equal(first.images[4:], other.images[4:])  # another epoch, another sample
    drawn = first.images[4:, 0, 0, 0].long()
    assert len(set(drawn.tolist())) == 5 and torch.equal(first.labels[4:], drawn % 4)
    assert epoch_set(lab, None, 0, 0, 0) is lab


def test_round_fp16_gives_the_weights_the_package_will_hold() -> None:
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.1, 1 / 3, 2.0000001], [1e-3, -0.7, 5.0]]))
    rounded = copy.deepcopy(net)
    round_fp16(rounded)
    assert torch.equal(rounded.weight, net.weight.half().float()) and rounded.weight.dtype == torch.float32
    again = copy.deepcopy(rounded)
    round_fp16(again)
    assert torch.equal(again.weight, rounded.weight)


def test_options_resolve_what_is_left_to_the_parent() -> None:
    assert AdaptOptions().resolved({"training": {"config": {"augment": "strong"}}}).augment == "strong"
    assert AdaptOptions().resolved({}).augment == "paper"
    assert AdaptOptions(augment="none").resolved({"training": {"config": {"augment": "strong"}}}).augment == "none"
    shifted = {"review": {"benign_confidence_threshold": 0.999}}  # the parent was exported with shift rules
    assert AdaptOptions().resolved(shifted).shift_rules is True and AdaptOptions().resolved({}).shift_rules is False
    assert AdaptOptions(shift_rules=False).resolved(shifted).shift_rules is False
    config = AdaptOptions(augment="paper").train_config("data", ModelSpec("test_efficientnet"), PRE, "x")
    assert config.freeze_bn and config.trainable == "all" and config.input_size == 64 and config.warmup_epochs == 0


def fake_parent(info: dict[str, Any]) -> Parent:
    return Parent(Path("parent"), info, None, ModelSpec("test_efficientnet"), CANONICAL_CLASSES, PRE)


def test_the_parents_split_is_recomputed_only_when_its_digest_matches(tmp_path: Path) -> None:
    data = make_lab(tmp_path / "data", per_class=6)
    config = {"test_size": 0.3, "val_size": 0.2, "seed": 3, "near_duplicate_distance": 4}
    digest = split(discover(data), test_size=0.3, val_size=0.2, seed=3).digest()
    parted = replay_split(data, None, fake_parent({"training": {"config": config}, "data": {"split_digest": digest}}))
    assert parted.digest() == digest and len(parted.part("train")) and len(parted.part("test"))
    other = {"training": {"config": {**config, "seed": 4}}, "data": {"split_digest": digest}}
    with pytest.raises(UsageError, match="cannot be recomputed"):
        replay_split(data, None, fake_parent(other))
    saved = {"training": {"config": {**config, "split_csv": "s.csv"}}, "data": {"split_digest": digest}}
    with pytest.raises(UsageError, match="cannot tell which images"):
        replay_split(data, None, fake_parent(saved))
    csv = tmp_path / "split.csv"
    parted.write_csv(csv)
    (data / parted.records[0].path).unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) of .* are not in"):
        replay_split(data, csv, fake_parent({}))


def test_lab_split_is_duplicate_aware_and_leaves_out_copies_of_replay_test_images(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", per_class=8)
    (lab / "Benign" / "copy.png").write_bytes((lab / "Benign" / "Benign-000.png").read_bytes())
    parted = lab_split(lab, CANONICAL_CLASSES, held_out=0.3, val=0.2, seed=0)
    part_of = {r.path: r.part for r in parted.records}
    assert part_of["Benign/copy.png"] == part_of["Benign/Benign-000.png"]
    assert {r.part for r in parted.records} == {"train", "val", "test"}
    excluded = {r.sha256 for r in parted.records if r.path.startswith("Pro/")}
    lines: list[str] = []
    kept = lab_split(lab, CANONICAL_CLASSES, held_out=0.3, val=0.2, seed=0, exclude=excluded, log=lines.append)
    assert not any(r.path.startswith("Pro/") for r in kept.records) and "8 lab image(s) are copies" in lines[0]
    with pytest.raises(DataError, match="too few"):
        lab_split(make_lab(tmp_path / "tiny", per_class=2), CANONICAL_CLASSES, held_out=0.3, val=0.2, seed=0)


def test_joined_folder_and_descriptions(tmp_path: Path) -> None:
    lab = lab_split(make_lab(tmp_path / "lab", per_class=6), CANONICAL_CLASSES, held_out=0.3, val=0.0, seed=0)
    replay = split(discover(make_lab(tmp_path / "replay", per_class=6, start=5)), test_size=0.3, seed=0)
    both = joined(lab, replay, tmp_path / "work" / "data")
    assert (tmp_path / "work" / "data" / LAB).resolve() == (tmp_path / "lab").resolve()
    assert len(both) == 48 and all(p.is_file() for p in both.paths())
    assert {r.path.split("/")[0] for r in both.records} == {LAB, REPLAY}
    assert len(both.part("test")) == len(lab.part("test")) + len(replay.part("test"))
    info = describe(lab)
    assert info["images"] == 24 and info["parts"]["val"] == 0 and info["split_digest"] == lab.digest()
    assert info["manifest_digest"] != info["split_digest"] and info["classes"]["Pre-B"] == 6
    assert with_classes(discover(tmp_path / "lab"), CANONICAL_CLASSES, "x").classes == CANONICAL_CLASSES


def test_simulated_images_join_the_training_part_as_files(tmp_path: Path) -> None:
    lab = lab_split(make_lab(tmp_path / "lab", per_class=6), CANONICAL_CLASSES, held_out=0.3, val=0.0, seed=0)
    replay = split(discover(make_lab(tmp_path / "replay", per_class=6, start=5)), test_size=0.3, seed=0)
    both = joined(lab, replay, tmp_path / "work" / "data")
    train = replay.part("train")
    images = torch.randint(0, 256, (len(train), 3, 8, 8), dtype=torch.uint8)
    more = with_simulated(both, train, images)
    added = more.records[len(both):]
    assert more.records[:len(both)] == both.records and len(added) == len(train)
    assert {r.part for r in added} == {"train"} and [r.label for r in added] == [r.label for r in train.records]
    assert all(r.path.startswith(f"{SIMULATED}/") and r.path.endswith(".png") for r in added)
    first = np.asarray(Image.open(more.root / added[0].path))
    assert np.array_equal(first, images[0].permute(1, 2, 0).numpy())  # lossless, pixel for pixel
    assert added[0].sha256 == sha256_file(more.root / added[0].path)
    assert not (tmp_path / "replay" / SIMULATED).exists()  # written beside the links, never into a dataset
    with pytest.raises(ValueError, match="simulated images for"):
        with_simulated(both, train, images[:1])
    val = replay.part("test")  # any other part of the replay: its simulated copies go where they are asked
    calibrate = with_simulated(more, val, torch.zeros((len(val), 3, 8, 8), dtype=torch.uint8), part="val")
    assert [r.part for r in calibrate.records[len(more):]] == ["val"] * len(val)
    assert len(calibrate.part("val")) == len(more.part("val")) + len(val)


def test_model_card_names_the_parent_datasets_and_figures() -> None:
    lab = {"root": "/labs/b", "manifest_digest": "m" * 64, "split_digest": "s" * 64, "images": 80,
           "parts": {"train": 44, "val": 12, "test": 24}, "classes": {"Benign": 20, "Pre-B": 60}}
    block = {"before": {"images": 24, "accuracy": 0.5, "macro_f1": 0.4, "review": {"flagged_fraction": 0.9}},
             "after": {"images": 24, "accuracy": 0.95, "macro_f1": 0.94, "review": {"flagged_fraction": 0.1}}}
    info = {"name": "lab-b", "classes": list(CANONICAL_CLASSES), "temperature": 1.2, "temperature_source": "val",
            "review": {"confidence_threshold": 0.9},
            "parent": {"name": "bundled", "model_version": "bundled@0123456789ab", "files_sha256": "f" * 64,
                       "path": "/models/bundled"},
            "adaptation": {"command": "leukoscope adapt ...", "datasets": {"lab": lab, "replay": None},
                           "metrics": {LAB_HELD_OUT: block},
                           "options": {"epochs": 6, "lr": 2e-4, "batch_size": 32, "seed": 0, "trainable": "all",
                                       "augment": "strong", "replay_ratio": 1.0, "max_replay_drop": 0.005}}}
    card = model_card(info)
    assert "base_model: bundled" in card and "`bundled@0123456789ab`" in card and "m" * 64 in card
    assert "| accuracy | 50.0% | 95.0% |" in card and "| flagged for review | 90.0% | 10.0% |" in card
    assert "no replay data given" in card and "Replay data, test part" not in card
    assert "Research software, not a certified medical device" in card
    assert "Benign view check" not in card  # adapted without the fit: no line

    info["benign_check_fit"] = {"data": {"val_images": 24}, "chosen": "no check"}
    assert ("- Benign view check: none (chosen on both datasets' val parts (24 images) and shifted copies of them"
            in model_card(info))
    info["review"]["benign_check"] = {"views": [{"scale": 2.0}], "threshold": 0.999}
    line = next(x for x in model_card(info).splitlines() if x.startswith("- Benign view check: "))
    assert "read again resized x2" in line and "below P(Benign) 0.999 there it is flagged (`benign_view`)" in line
    assert "JOINT_RULE" not in line and "benign_low_confidence" not in line
    info["benign_check_fit"]["benign_confidence_threshold"] = 0.9995
    line = next(x for x in model_card(info).splitlines() if x.startswith("- Benign view check: "))
    assert "together with the Benign confidence threshold" in line
    assert line.endswith("Benign calls below confidence 0.999500 are flagged (`benign_low_confidence`).")
