"""Model factory: a timm backbone, ImageNet weights from the hub or a local file, a 4-class head, and the
freezing policies the training protocols use.

Everything a checkpoint needs to rebuild its network is a `ModelSpec`; the preprocessing a model expects
(input size, mean, std, interpolation) comes from timm's per-model data config and travels with every
checkpoint and package, so nothing downstream hard-codes 224 or ImageNet statistics.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leukoscope.errors import ModelError
from leukoscope.models.preprocessing import Preprocess

WEIGHTS_DIR_ENV = "LEUKOSCOPE_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild a network (weights aside)."""

    backbone: str = "mobilenetv2_100"
    num_classes: int = 4
    drop_rate: float = 0.2
    pad_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        known = {k: values[k] for k in ("backbone", "num_classes", "drop_rate", "pad_type") if k in values}
        return cls(**known)


def check_backbone_name(name: str) -> None:
    """Raise ModelError naming close matches when timm has no model of that name."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `python -c 'import timm; print(timm.list_models())'` lists them"
    raise ModelError(f"unknown backbone {name!r}{hint}")


def _timm_kwargs(spec: ModelSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": spec.num_classes, "drop_rate": spec.drop_rate}
    if spec.pad_type:
        kwargs["pad_type"] = spec.pad_type
    return kwargs


def find_local_weights(backbone: str, weights_dir: str | Path | None = None) -> Path | None:
    """A local ImageNet weights file for `backbone` (named `<backbone>.<tag>.pth` or `<backbone>.pth`) in
    `weights_dir` or the folder named by $LEUKOSCOPE_WEIGHTS_DIR, or None."""
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"weights folder not found: {folder}")
    candidates = sorted(
        p for p in folder.iterdir()
        if p.suffix in WEIGHT_SUFFIXES and (p.stem == backbone or p.name.startswith(backbone + "."))
    )
    return candidates[0] if candidates else None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file not found: {path}") from None
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelError(f"cannot read weights file {path} (not a PyTorch or safetensors state_dict?): "
                         f"{type(exc).__name__}: {reason}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state_dict of tensors")
    return state


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict into the backbone, ignoring the classifier; refuse files of another architecture."""
    path = Path(path)
    state = _read_state_dict(path)
    classifier_keys = {f"{name}.{p}" for name, module in model.named_modules()
                       if module is model.get_classifier() for p, _ in module.named_parameters()}
    own = {k: v for k, v in model.state_dict().items() if k not in classifier_keys}
    incoming = {k: v for k, v in state.items() if k not in classifier_keys and not k.startswith(("classifier.", "fc.", "head."))}
    missing = sorted(set(own) - set(incoming))
    mismatched = sorted(k for k in set(own) & set(incoming) if own[k].shape != incoming[k].shape)
    if missing or mismatched or not incoming:
        detail = f"{len(missing)} missing tensors, {len(mismatched)} with other shapes"
        example = (missing or mismatched or ["(empty file)"])[0]
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise ModelError(f"weights file {path} does not fit backbone {arch} ({detail}, e.g. {example}): "
                         "weights of another architecture?")
    model.load_state_dict({k: incoming[k] for k in own}, strict=False)


def glorot_head(model: nn.Module) -> None:
    """Glorot-uniform weights, zero bias: what Keras' Dense uses (the paper); learns faster than timm's
    default init in short frozen-backbone runs."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)


def create_model(spec: ModelSpec, *, weights: str = "imagenet", weights_dir: str | Path | None = None) -> nn.Module:
    """Build the network of `spec` with `weights` = "imagenet" | "none" | a path to a state_dict.

    "imagenet" takes a local file when one is configured (weights_dir or $LEUKOSCOPE_WEIGHTS_DIR) and
    timm's own pretrained download otherwise; offline with no local file it raises ModelError saying how
    to supply weights.
    """
    import timm

    check_backbone_name(spec.backbone)
    kwargs = _timm_kwargs(spec)
    if weights == "imagenet":
        local = find_local_weights(spec.backbone, weights_dir)
        try:
            if local is not None:
                model = timm.create_model(spec.backbone, pretrained=True, pretrained_cfg_overlay={"file": str(local)}, **kwargs)
            else:
                model = timm.create_model(spec.backbone, pretrained=True, **kwargs)
        except Exception as exc:
            if local is None:
                raise ModelError(_no_weights_message(spec.backbone, exc)) from None
            # Say why the local file failed: unreadable, or which tensors do not fit (raises ModelError).
            load_backbone_weights(timm.create_model(spec.backbone, pretrained=False, **kwargs), local)
            raise ModelError(f"cannot load ImageNet weights {local} into {spec.backbone}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    elif weights in ("none", "", None):
        model = timm.create_model(spec.backbone, pretrained=False, **kwargs)
    else:
        model = timm.create_model(spec.backbone, pretrained=False, **kwargs)
        load_backbone_weights(model, weights)
    glorot_head(model)
    return model


def _no_weights_message(backbone: str, exc: Exception) -> str:
    return (f"could not get ImageNet weights for {backbone} ({type(exc).__name__}); offline, put a "
            f"'{backbone}.<tag>.pth' state_dict in a folder and pass --weights-dir FOLDER (or set "
            f"{WEIGHTS_DIR_ENV}), or pass --weights PATH, or --weights none to train from scratch "
            f"(set HF_HUB_OFFLINE=1 to skip the download attempt)")


def build_model(spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild a trained network from its spec and state_dict (no download)."""
    import timm

    check_backbone_name(spec.backbone)
    model = timm.create_model(spec.backbone, pretrained=False, **_timm_kwargs(spec))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def preprocess_for(model: nn.Module, input_size: int | None = None) -> Preprocess:
    """timm's data config for this model (mean/std/interpolation), optionally at another input size."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    size = input_size or int(config["input_size"][-1])
    return Preprocess(size, tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"]),
                      str(config.get("interpolation", "bilinear")))


# ------------------------------------------------------------------------------------------- freezing


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_classifier().parameters())


def set_trainable(model: nn.Module, policy: str, *, last_blocks: int = 0) -> None:
    """`head`: only the classifier trains. `all`: everything. `last`: the classifier, the final conv and
    the last `last_blocks` stages of `model.blocks` (timm EfficientNet family); others fall back to all.
    `frozen` is another name for `head`."""
    policy = "head" if policy == "frozen" else policy
    if policy not in ("head", "all", "last"):
        raise ModelError(f"unknown trainable policy {policy!r}; choose head, all or last")
    for param in model.parameters():
        param.requires_grad = policy == "all"
    for param in head_parameters(model):
        param.requires_grad = True
    if policy == "last":
        blocks = getattr(model, "blocks", None)
        if blocks is None or last_blocks <= 0:
            for param in model.parameters():
                param.requires_grad = True
            return
        for stage in list(blocks)[-last_blocks:]:
            for param in stage.parameters():
                param.requires_grad = True
        for name in ("conv_head", "bn2"):
            module = getattr(model, name, None)
            if module is not None:
                for param in module.parameters():
                    param.requires_grad = True


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in inference mode (running statistics used, not updated) and stop its affine
    parameters from training. Needed for the BN-folded MobileNetV2 weights, and the usual practice for
    small datasets."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for param in module.parameters():
                param.requires_grad = False


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate (pooled) features, used for the frozen-backbone fast path and out-of-distribution scores."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
