"""leukoscope.models.factory: the timm factory, weight sources (ImageNet file or hub, none, a state_dict path), the
head, and the freezing policies. Everything runs on timm's 100k-parameter `test_efficientnet`."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from leukoscope.errors import ModelError
from leukoscope.models.factory import (
    WEIGHTS_DIR_ENV,
    ModelSpec,
    Preprocess,
    build_model,
    check_backbone_name,
    count_parameters,
    create_model,
    features,
    find_local_weights,
    freeze_batchnorm,
    load_backbone_weights,
    preprocess_for,
    set_trainable,
)

TINY = "test_efficientnet"


def spec(**kwargs) -> ModelSpec:
    return ModelSpec(**{"backbone": TINY, "num_classes": 4, **kwargs})


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}


@pytest.fixture
def imagenet_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder holding `test_efficientnet.tiny_in1k.pth`: a 1000-class state_dict as timm ships them."""
    torch.manual_seed(123)
    state = timm.create_model(TINY, num_classes=1000).state_dict()
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(state, folder / f"{TINY}.tiny_in1k.pth")
    return folder, state


@pytest.fixture
def offline(monkeypatch):
    """No hub: huggingface_hub reads HF_HUB_OFFLINE once at import, so patch its constant too (a real
    download attempt here would retry for ~45 s before failing)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


# ------------------------------------------------------------------------------------- spec and head


def test_spec_and_preprocess_round_trip_through_dicts():
    s = spec(drop_rate=0.1, pad_type="same")
    assert ModelSpec.from_dict({**s.to_dict(), "unknown": 1}) == s
    p = Preprocess(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    assert Preprocess.from_dict(p.to_dict()) == p
    assert Preprocess.from_dict({"input_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}).interpolation == "bilinear"


def test_head_is_global_pool_dropout_and_a_glorot_linear_layer():
    torch.manual_seed(0)
    model = create_model(spec(num_classes=3, drop_rate=0.3), weights="none")
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 3
    assert torch.count_nonzero(head.bias) == 0  # Glorot-uniform weights, zero bias (Keras' Dense)
    bound = (6 / (head.in_features + head.out_features)) ** 0.5
    assert head.weight.abs().max() <= bound
    assert model.drop_rate == pytest.approx(0.3)
    assert type(model.global_pool).__name__ == "SelectAdaptivePool2d"
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    pooled = features(model, x)
    assert pooled.shape == (2, head.in_features)
    assert torch.allclose(head(pooled), model(x), atol=1e-5)


def test_any_timm_backbone_name_works_and_the_default_is_mobilenetv2():
    assert ModelSpec().backbone == "mobilenetv2_100"
    model = create_model(ModelSpec("test_resnet", num_classes=4), weights="none").eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ModelError, match=r"unknown backbone 'test_efficientnt'.*did you mean.*test_efficientnet"):
        check_backbone_name("test_efficientnt")
    with pytest.raises(ModelError, match="unknown backbone"):
        create_model(spec(backbone="zzzz_no_such_net"), weights="none")


def test_build_model_restores_a_state_dict_exactly():
    trained = create_model(spec(), weights="none")
    rebuilt = build_model(spec(), trained.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), rebuilt.state_dict().values(), strict=True))


def test_preprocess_comes_from_timms_data_config():
    model = create_model(spec(), weights="none")
    cfg = timm.data.resolve_data_config({}, model=model)
    own = preprocess_for(model)
    assert own.input_size == cfg["input_size"][-1]
    assert own.mean == pytest.approx(cfg["mean"]) and own.std == pytest.approx(cfg["std"])
    assert preprocess_for(model, 48).input_size == 48


# ------------------------------------------------------------------------------------- weight sources


def test_imagenet_weights_come_from_a_local_folder(imagenet_file):
    folder, state = imagenet_file
    model = create_model(spec(), weights="imagenet", weights_dir=folder)
    for key, value in backbone_state(model).items():
        assert torch.equal(value, state[key]), key
    assert model.get_classifier().out_features == 4  # the 1000-class classifier is dropped


def test_imagenet_weights_folder_from_the_environment(imagenet_file, monkeypatch):
    folder, state = imagenet_file
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    assert find_local_weights(TINY) == folder / f"{TINY}.tiny_in1k.pth"
    model = create_model(spec(), weights="imagenet")
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])


def test_find_local_weights_matches_only_its_own_backbone(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    assert find_local_weights(TINY) is None
    (tmp_path / f"{TINY}_gn.a.pth").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert find_local_weights(TINY, tmp_path) is None
    (tmp_path / f"{TINY}.b.pth").write_bytes(b"")
    assert find_local_weights(TINY, tmp_path) == tmp_path / f"{TINY}.b.pth"
    with pytest.raises(ModelError, match="weights folder not found"):
        find_local_weights(TINY, tmp_path / "missing")


def test_imagenet_offline_without_a_local_file_says_how_to_supply_weights(offline):
    with pytest.raises(ModelError) as info:
        create_model(spec(), weights="imagenet")
    message = str(info.value)
    assert "--weights-dir" in message and WEIGHTS_DIR_ENV in message and "--weights none" in message
    assert "\n" not in message


def test_imagenet_file_of_another_architecture_is_refused(tmp_path):
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), tmp_path / f"{TINY}.in1k.pth")
    with pytest.raises(ModelError, match=r"does not fit backbone test_efficientnet.*another architecture"):
        create_model(spec(), weights="imagenet", weights_dir=tmp_path)


def test_unreadable_imagenet_file_is_a_clear_error(tmp_path):
    (tmp_path / f"{TINY}.in1k.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file") as info:
        create_model(spec(), weights="imagenet", weights_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_weights_path_loads_the_backbone_and_ignores_the_classifier(tmp_path):
    torch.manual_seed(7)
    source = timm.create_model(TINY, num_classes=10)  # another head: ignored
    torch.save({"state_dict": source.state_dict()}, tmp_path / "mine.pt")  # wrapped dicts are unwrapped
    model = create_model(spec(), weights=str(tmp_path / "mine.pt"))
    for key, value in backbone_state(model).items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert model.get_classifier().out_features == 4


def test_weights_path_of_another_architecture_is_a_clear_error(tmp_path):
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ModelError, match=r"does not fit backbone test_efficientnet \(\d+ missing tensors"):
        create_model(spec(), weights=str(tmp_path / "resnet.pth"))
    with pytest.raises(ModelError, match="weights file not found"):
        create_model(spec(), weights=str(tmp_path / "absent.pth"))
    torch.save({"a": 1}, tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="no state_dict of tensors"):
        load_backbone_weights(create_model(spec(), weights="none"), tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------- freezing


def trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_head_policy_trains_only_the_classifier():
    model = create_model(spec(), weights="none")
    for policy in ("head", "frozen"):
        set_trainable(model, policy)
        assert trainable(model) == {"classifier.weight", "classifier.bias"}
    set_trainable(model, "all")
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_last_blocks_policy_trains_the_last_stages_conv_head_and_classifier():
    model = create_model(spec(), weights="none")
    set_trainable(model, "last", last_blocks=1)
    names = trainable(model)
    last = len(model.blocks) - 1
    assert any(n.startswith(f"blocks.{last}.") for n in names)
    assert not any(n.startswith("blocks.0.") or n.startswith("conv_stem") for n in names)
    assert {"conv_head.weight", "classifier.weight"} <= names
    set_trainable(model, "last", last_blocks=2)
    assert any(n.startswith(f"blocks.{last - 1}.") for n in trainable(model))
    set_trainable(model, "last", last_blocks=0)  # nothing to choose: everything
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ModelError, match="unknown trainable policy"):
        set_trainable(model, "some")


def test_freeze_batchnorm_keeps_statistics_and_affine_parameters_fixed():
    model = create_model(spec(), weights="none")
    model.train()
    freeze_batchnorm(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.rand(4, 3, 32, 32) * 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
