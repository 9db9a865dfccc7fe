"""Grad-CAM overlays: which cells drove a call, so a reviewer can check that the model looked at the
blasts and not at the background, the stain or a scanner artefact.

pytorch-grad-cam on the last convolutional stage of the PyTorch network (a package's model.pt, whichever
backend predicts), computed at the model's input size and drawn over the image at its own size, up to
WORKING_SIDE pixels a side. Larger images are reduced while they are decoded (`max_side` of
leukoscope.data.imaging.load_rgb): the heat map is 7x7 to 14x14 cells upsampled, so more pixels add no
detail to it, and a 7000x7000 upload would otherwise need about 2.6 GB of float arrays for one overlay.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leukoscope.data.fileio import atomic_open
from leukoscope.data.imaging import load_rgb
from leukoscope.errors import ModelError
from leukoscope.models.preprocessing import normalize_numpy, resize_rgb

_LOCK = threading.Lock()
# The largest side Grad-CAM overlays (and the web viewer's originals) are drawn at: 4.6x the usual 224 px
# model input, as sharp as a screen shows an image beside its overlay, about 4 MB of RGB.
WORKING_SIDE = 1024


def target_layer(model: Any) -> Any:
    """The module whose activations Grad-CAM weighs: the last conv stage of common timm families."""
    from torch import nn

    for name in ("bn2", "conv_head", "final_conv"):  # EfficientNet / MobileNet family, others
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and not isinstance(module, nn.Identity):
            return module
    for name in ("layer4", "stages", "features"):  # ResNet, ConvNeXt, ...
        module = getattr(model, name, None)
        if isinstance(module, nn.Sequential | nn.ModuleList) and len(module):
            return module[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError("Grad-CAM needs a convolutional network; this backbone has no Conv2d layer")
    return convs[-1]


def _class_index(predictor: Any, target: str | int | None) -> int | None:
    if target is None or isinstance(target, int):
        if isinstance(target, int) and not 0 <= target < len(predictor.classes):
            raise ValueError(f"target {target} out of range; the model has {len(predictor.classes)} classes")
        return target
    if target not in predictor.classes:
        raise ValueError(f"unknown class {target!r}; choose from {list(predictor.classes)}")
    return predictor.classes.index(target)


def gradcam_map(predictor: Any, image: Image.Image, *, target: str | int | None = None) -> np.ndarray:
    """Grad-CAM heat map in [0, 1] at the model's input size (S x S) for `target` (default: top class)."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    index = _class_index(predictor, target)
    pixels = resize_rgb(image, predictor.preprocess)[None]
    x = torch.from_numpy(normalize_numpy(pixels, predictor.preprocess))
    # A private copy: Grad-CAM hooks the network, which must not disturb concurrent predictions.
    with _LOCK:
        model = copy.deepcopy(predictor.torch_model()).eval()
    for param in model.parameters():
        param.requires_grad_(True)
    targets = None if index is None else [ClassifierOutputTarget(index)]
    with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        heat = cam(input_tensor=x, targets=targets)[0]
    return np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(0.0, 1.0)


def gradcam_overlay(predictor: Any, image_bytes_or_path: bytes | str | Path, *,
                    target: str | int | None = None, image_weight: float = 0.55,
                    max_side: int | None = WORKING_SIDE) -> Image.Image:
    """The image at its own size (reduced to fit max_side x max_side; None: no limit) with its Grad-CAM
    heat map blended over it in jet colours: blue = low attention, red = high attention.

    Raises ImageError for unreadable images and ModelError when the package has no PyTorch weights.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image = load_rgb(image_bytes_or_path, max_side=max_side)
    heat = gradcam_map(predictor, image, target=target)
    heat_image = Image.fromarray(heat).resize(image.size, Image.Resampling.BILINEAR)
    base = np.asarray(image, dtype=np.float32) / 255.0
    mask = np.clip(np.asarray(heat_image, dtype=np.float32), 0.0, 1.0)
    return Image.fromarray(show_cam_on_image(base, mask, use_rgb=True, image_weight=image_weight))


def write_gradcam(predictor: Any, source: bytes | str | Path, out_path: str | Path, *,
                  target: str | int | None = None) -> Path:
    """Write the overlay of `source` as a PNG (atomically); returns the path."""
    overlay = gradcam_overlay(predictor, source, target=target)
    out_path = Path(out_path)
    with atomic_open(out_path, "wb") as handle:
        overlay.save(handle, "PNG")
    return out_path
