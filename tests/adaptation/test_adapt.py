"""`leukoscope.adaptation.adapt`: a second lab's images teach a package, or the adaptation is refused.

The parent (tests/adaptation/fixtures.py) is right on its own test part with a margin; the second lab's
smears are hue-rotated (another stain), on which the parent is clearly worse, so adapting helps. The
refusal rules are driven to fire on purpose: a learning rate too small to change the fp16 weights (not
better), and a lab whose classes are permuted (adapting to it forgets the parent's data).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import leukoscope
from leukoscope.adaptation.adapt import (
    BENIGN_CHECK_METHOD,
    CARD,
    CONFIG,
    DISTILL_METHOD,
    LAB_SPLIT,
    REPLAY_SPLIT,
    adapt,
)
from leukoscope.adaptation.finetune import AdaptOptions
from leukoscope.adaptation.scores import LAB_HELD_OUT, REPLAY_TEST, AdaptationRefused
from leukoscope.data.discover import discover
from leukoscope.data.manifest import read_manifest_csv
from leukoscope.errors import ConfigError, DataError, ModelError, UsageError
from leukoscope.inference.benign_check_fit import RULE as BENIGN_RULE
from leukoscope.inference.package import verify_package
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View
from leukoscope.training.dataset import TensorSet
from tests.adaptation.fixtures import make_lab, shared_parent
from tests.helpers.modelfixtures import shared_tiny_package, shared_tiny_run

GOOD = AdaptOptions(epochs=16, lr=5e-4, replay_ratio=2.0, simulate_ratio=1.0, simulate_review=True, simulate_val=True,
                    distill=0.5, interpolate=True, augment="paper", device="cpu", threads=1)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_parent(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny package (tests/helpers/modelfixtures.py): cheap, for what fails before training."""
    return shared_tiny_package(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_replay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run = shared_tiny_run(tmp_path_factory)
    return {"replay": run.parent / "data", "split_csv": run / "split.csv"}


@pytest.fixture(scope="module")
def stained_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lab(tmp_path_factory.mktemp("lab") / "lab", hue=15)


def replay_of(parent: Path) -> dict[str, Path]:
    return {"replay": parent.parent / "data", "split_csv": parent.parent / "run" / "split.csv"}


@pytest.mark.slow
def test_adapting_to_a_stained_lab_helps_and_names_the_parent(parent: Path, stained_lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    lines: list[str] = []
    result = adapt(parent, stained_lab, out, **replay_of(parent), options=GOOD, command="test", log=lines.append)
    lab, replay = result.metrics[LAB_HELD_OUT], result.metrics[REPLAY_TEST]
    assert lab["after"]["accuracy"] > lab["before"]["accuracy"] + 0.1  # the hue costs the parent; adapting helps
    assert replay["after"]["accuracy"] >= replay["before"]["accuracy"] - 0.005  # and it did not forget
    assert lab["before"]["images"] == lab["after"]["images"] == 24 and replay["before"]["images"] == 24
    assert {"flagged_fraction", "leukemia_called_benign_not_flagged"} <= set(lab["after"]["review"])
    shift = result.info["adaptation"]["lab_shift"]  # simulated replay: the lab's estimated look, recorded
    assert set(shift) >= {"magnification", "hue_degrees", "colour_slope", "colour_offset"}
    assert any(line.startswith("the lab's estimated shift: magnification x") for line in lines)
    assert [row["simulated_images"] for row in result.info["adaptation"]["history"]] == [44] * 16
    assert result.line().startswith(f"wrote {out} (adapted from parent): lab held-out accuracy ")

    info = verify_package(out)  # every file, the added ones too, matches its sha256
    parent_info = json.loads((parent / "model.json").read_text())
    assert info["name"] == "parent-adapted" and info["parent"]["name"] == "parent"
    assert info["parent"]["files_sha256"] != info["adaptation"]["datasets"]["lab"]["split_digest"]
    assert info["parent"]["model_version"].startswith("parent@") and info["parent"]["path"] == str(parent.resolve())
    datasets = info["adaptation"]["datasets"]
    assert datasets["lab"]["root"] == str(stained_lab.resolve()) and datasets["lab"]["images"] == 80
    assert datasets["lab"]["parts"] == {"train": 44, "val": 12, "test": 24}
    assert datasets["replay"]["split_digest"] == parent_info["data"]["split_digest"]
    assert {LAB_SPLIT, REPLAY_SPLIT, CONFIG} <= set(info["files"])
    assert info["adaptation"]["options"]["augment"] == "paper" and info["adaptation"]["command"] == "test"
    assert info["temperature"] > 0 and info["data"]["parts"] == {"train": 44 + 60 + 60, "val": 12 + 12 + 12,
                                                                 "test": 24 + 24}  # simulated train and val
    lab_split = read_manifest_csv(out / LAB_SPLIT, stained_lab)
    assert lab_split.digest() == datasets["lab"]["split_digest"]
    card = (out / CARD).read_text()
    assert "parent" in card and datasets["lab"]["manifest_digest"] in card and "Before and after" in card
    assert "- Simulated replay: 1 of the replay's train images per lab image" in card
    assert "The replay's val part shown that way also joined the val part" in card
    fit = info["benign_check_fit"]  # the new network's own Benign view check, chosen on both val parts
    assert fit["rule"] == BENIGN_RULE and fit["data"]["val_images"] == 12 + 12 + 12 and fit["command"] == "test"
    assert any(line.startswith("Benign view check: ") for line in lines)
    assert "- Benign view check: " in card and info["adaptation"]["method"].endswith(BENIGN_CHECK_METHOD)
    assert DISTILL_METHOD in info["adaptation"]["method"] and info["adaptation"]["options"]["distill"] == 0.5
    assert "- Replay: 2 replayed image(s) per lab image each epoch; their targets 0.5 x the parent's own" in card
    ensemble = info["adaptation"]["interpolation"]  # WiSE-FT: the share chosen on both val parts, recorded
    assert ensemble["parts"] == {"lab_val": 12, "replay_val": 12} and len(ensemble["table"]) == 3
    assert ensemble["chosen"] in (0.5, 0.75, 1.0) and "model" not in ensemble
    assert f"- Weight-space ensemble with the parent (WiSE-FT): {ensemble['chosen']:g} x the fine-tuned" in card
    assert any(line.startswith("weight-space ensemble with the parent: ") for line in lines)
    assert any(line.startswith("distillation: replayed and simulated images learn 0.5 x") for line in lines)
    if info["review"].get("benign_check"):
        assert fit["chosen"] != "no check"

    predictor = leukoscope.load_model(out)  # loads and predicts like any package
    assert predictor.benign_check == (BenignCheck.from_dict(info["review"]["benign_check"])
                                      if info["review"].get("benign_check") else None)
    paths = discover(stained_lab).paths()[:3]
    assert [p.status for p in predictor.predict_paths(paths)] == ["ok"] * 3
    assert any("fp32 ONNX vs PyTorch" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]  # no staging left


def test_the_benign_check_is_chosen_for_the_new_network_and_written_into_its_package(
        tiny: Path, tiny_replay: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from leukoscope.adaptation.adapt import _benign_check
    from leukoscope.inference import benign_check_fit

    package = Path(shutil.copytree(tiny, tmp_path / "package"))
    data = read_manifest_csv(tiny_replay["split_csv"], tiny_replay["replay"])
    chosen = BenignCheck((View(scale=2.0),), 0.999)
    real = benign_check_fit.fit_benign_check

    def fit_choosing_x2(predictor, val, **kwargs):  # whatever the tiny network's val says, write one check
        found = real(predictor, val, composites=0, **{k: v for k, v in kwargs.items() if k != "composites"})
        return replace(found, chosen="views x2; P(Benign) >= 0.999", check=chosen)

    monkeypatch.setattr(benign_check_fit, "fit_benign_check", fit_choosing_x2)
    lines: list[str] = []
    record = _benign_check(package, data, AdaptOptions(threads=1), "the command", lines.append)
    info = verify_package(package)  # model.json is not among the hashed files: the package still verifies
    assert info["review"]["benign_check"] == chosen.to_dict() and info["benign_check_fit"] == record
    assert record["data"] == {"val_images": len(data.part("val")), "val_digest": data.part("val").digest()}
    assert record["command"] == "the command" and lines[-1].startswith("Benign view check: views x2")
    assert leukoscope.load_model(package).benign_check == chosen

    def joint_choosing_x2(predictor, val, **kwargs):
        found = real_joint(predictor, val, composites=0, **{k: v for k, v in kwargs.items() if k != "composites"})
        return replace(found, chosen="views x2; P(Benign) >= 0.999", check=chosen, threshold=0.95)

    real_joint = benign_check_fit.fit_benign_rules
    monkeypatch.setattr(benign_check_fit, "fit_benign_rules", joint_choosing_x2)
    exported = info["review"].get("benign_confidence_threshold")  # None: the tiny package has no shift rules
    record = _benign_check(package, data, AdaptOptions(threads=1, benign_rules="joint"), "c", lines.append)
    review = verify_package(package)["review"]
    assert review["benign_check"] == chosen.to_dict() and review["benign_confidence_threshold"] == 0.95
    assert review["benign_confidence_threshold_exported"] == exported and record["rule"] == benign_check_fit.JOINT_RULE
    assert lines[-1].startswith("Benign view check: views x2; P(Benign) >= 0.999; Benign calls reviewed below "
                                "confidence 0.950000")
    loaded = leukoscope.load_model(package)
    assert loaded.benign_threshold == max(0.95, loaded.confidence_threshold)

    empty = data.with_records(r for r in data.records if r.part != "val")
    assert _benign_check(package, empty, AdaptOptions(threads=1), "c", lines.append) is None
    assert lines[-1] == "Benign view check: skipped (no Benign class or no val images)"


def test_simulated_replay_without_replay_data_is_skipped_with_a_line() -> None:
    from leukoscope.adaptation.adapt import _simulated

    lab = TensorSet(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    lines: list[str] = []
    assert _simulated(None, lab, None, AdaptOptions(simulate_ratio=2.0), None, lines.append) == (None, None)
    assert lines == ["simulated replay needs the parent's training images (--replay) and lab images to adapt on: "
                     "skipped"]
    assert _simulated(None, lab, lab, AdaptOptions(simulate_ratio=0.0), None, lines.append) == (None, None)
    assert len(lines) == 1  # switched off: nothing to say


def test_distillation_gives_replayed_and_simulated_images_the_parents_probabilities(tiny: Path) -> None:
    from leukoscope.adaptation.adapt import _distilled
    from leukoscope.adaptation.data import load_parent
    from leukoscope.models.scoring import score_model

    parent = load_parent(tiny)
    size = parent.preprocess.input_size
    images = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    replay = TensorSet(images, torch.tensor([0, 1, 2, 3, 0]))
    simulated = TensorSet(255 - images, replay.labels)
    lines: list[str] = []
    model = parent.model.eval()
    got_replay, got_simulated = _distilled(model, replay, simulated, AdaptOptions(distill=0.5), parent, lines.append)
    teacher = torch.softmax(score_model(model, images, parent.preprocess, batch_size=64).logits.float(), dim=1)
    expected = 0.5 * torch.nn.functional.one_hot(replay.labels, len(parent.classes)).float() + 0.5 * teacher
    assert torch.allclose(got_replay.targets, expected) and torch.allclose(got_replay.targets.sum(1), torch.ones(5))
    assert torch.equal(got_simulated.targets, got_replay.targets)  # each copy learns its original's target
    assert torch.equal(got_simulated.images, simulated.images) and len(lines) == 1
    assert _distilled(model, replay, simulated, AdaptOptions(distill=0.0), parent, lines.append) == (replay, simulated)
    assert _distilled(model, None, None, AdaptOptions(distill=0.5), parent, lines.append) == (None, None)
    assert len(lines) == 1  # off, or nothing to distil: nothing said


def test_refused_when_the_lab_held_out_accuracy_does_not_improve(tiny: Path, tiny_replay: dict[str, Path],
                                                                  stained_lab: Path, tmp_path: Path) -> None:
    still = AdaptOptions(epochs=1, lr=1e-9, augment="none", device="cpu", threads=1)  # fp16 weights unchanged
    with pytest.raises(AdaptationRefused, match=r"^refused: on the lab's 24 held-out images .* is not better than "
                                               r"the parent's .*; nothing written \(keep the parent for this lab, "
                                               r"or verify more of the images it gets wrong and adapt again\)$"
                       ) as caught:
        adapt(tiny, stained_lab, tmp_path / "out", **tiny_replay, options=still)
    lab, replay = caught.value.metrics[LAB_HELD_OUT], caught.value.metrics[REPLAY_TEST]
    assert lab["after"]["accuracy"] == lab["before"]["accuracy"] and caught.value.exit_code == 1
    assert replay["after"] == replay["before"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_refused_when_it_forgets_the_replay_data(parent: Path, tmp_path: Path) -> None:
    permuted = make_lab(tmp_path / "permuted", permute=True)
    options = AdaptOptions(epochs=12, lr=1e-3, augment="paper", device="cpu", threads=1, replay_ratio=0.25)
    refused = r"^refused: accuracy on the replay data's 24 test images drops from 100\.00% to .*the model would forget"
    with pytest.raises(AdaptationRefused, match=refused + r"; nothing written \(verify more of the lab's images and "
                                                  r"adapt again, or replay more with --replay-ratio\)$") as caught:
        adapt(parent, permuted, tmp_path / "out", **replay_of(parent), options=options)
    metrics = caught.value.metrics
    assert metrics[LAB_HELD_OUT]["after"]["accuracy"] > metrics[LAB_HELD_OUT]["before"]["accuracy"]
    assert not (tmp_path / "out").exists()


def test_bad_input_is_refused_before_any_training(tiny: Path, tiny_replay: dict[str, Path], stained_lab: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        adapt(tiny, stained_lab, out, options=AdaptOptions(epochs=0))
    with pytest.raises(ConfigError, match="--held-out"):
        adapt(tiny, stained_lab, out, options=AdaptOptions(held_out=0.6, val=0.5))
    with pytest.raises(ConfigError, match="--augment"):
        adapt(tiny, stained_lab, out, options=AdaptOptions(augment="wild"))
    with pytest.raises(UsageError, match="give --replay DATA too"):
        adapt(tiny, stained_lab, out, split_csv=tiny_replay["split_csv"])
    with pytest.raises(ModelError, match="is not a model package"):
        adapt(stained_lab, stained_lab, out)
    with pytest.raises(UsageError, match="lab data folder not found"):
        adapt(tiny, tmp_path / "nothing", out)
    odd = make_lab(tmp_path / "odd", per_class=4)
    (odd / "Pre").rename(odd / "Monocyte")  # Benign, Early, Pro still read as the model's classes
    with pytest.raises(DataError, match=r"has classes \['Monocyte'\] the model does not know"):
        adapt(tiny, odd, out)
    with pytest.raises(UsageError, match="split file not found"):
        adapt(tiny, stained_lab, out, replay=tiny_replay["replay"], split_csv=tmp_path / "none.csv")
    with pytest.raises(UsageError, match="pass --split CSV"):  # the parent was not split by a config
        adapt(tiny, stained_lab, out, replay=tiny_replay["replay"])
    train_only = tmp_path / "train_only.csv"
    rows = (tiny_replay["split_csv"]).read_text().splitlines()
    train_only.write_text("\n".join([rows[0], *(r for r in rows[1:] if r.endswith(",train"))]) + "\n")
    with pytest.raises(UsageError, match="the replay split has no test rows"):
        adapt(tiny, stained_lab, out, replay=tiny_replay["replay"], split_csv=train_only)
    (out / "x").mkdir(parents=True)
    with pytest.raises(UsageError, match="exists and is not empty"):
        adapt(tiny, stained_lab, out)
    with pytest.raises(UsageError, match="not empty"):
        adapt(tiny, stained_lab, tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd", "out", "train_only.csv"]


@pytest.mark.slow
def test_images_verified_in_the_web_app_teach_the_model(parent: Path, stained_lab: Path, tmp_path: Path) -> None:
    """verify (the web app's tables) -> export-verified -> adapt: the export is a dataset adapt reads as is."""
    import sqlite3

    from leukoscope.data.fileio import sha256_bytes
    from leukoscope.serve.store import NewPrediction, Store, utc_now
    from leukoscope.serve.verified_export import export_verified

    db = tmp_path / "web" / "leukoscope.db"
    lab = discover(stained_lab)
    with Store(db) as store:
        for record, path in zip(lab.records, lab.paths(), strict=True):
            data = path.read_bytes()
            row = NewPrediction(sample_id="s", file_name=path.name, sha256=sha256_bytes(data), model_version="parent@x",
                                label="Benign", confidence=0.5, probabilities={}, review=True, review_reasons=[],
                                ood_score=None, width=64, height=64)
            stored = store.add([row], {row.sha256: data})[0]
            with sqlite3.connect(db) as conn:
                conn.execute("INSERT INTO verifications (prediction_id, created_at, user_name, label) "
                             "VALUES (?, ?, 'tech', ?)", (stored.pk, utc_now(), record.label))
    exported = export_verified(db, tmp_path / "verified")
    assert exported.exported == 80 and exported.counts == {name: 20 for name in lab.classes}
    result = adapt(parent, tmp_path / "verified", tmp_path / "adapted", options=GOOD)
    lab_figures = result.metrics[LAB_HELD_OUT]
    assert lab_figures["after"]["accuracy"] > lab_figures["before"]["accuracy"]
    assert result.info["adaptation"]["datasets"]["lab"]["root"] == str((tmp_path / "verified").resolve())
