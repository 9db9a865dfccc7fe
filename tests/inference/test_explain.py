"""Grad-CAM overlays at the image's own size, from either backend's predictor."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.errors import ImageError, ModelError
from leukoscope.inference.explain import gradcam_map, gradcam_overlay, write_gradcam
from leukoscope.inference.predictor import load_predictor
from tests.helpers.modelfixtures import smear_image


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_overlay_has_the_original_size(predictor, tmp_path: Path) -> None:
    path = tmp_path / "wide.jpg"
    Image.fromarray(smear_image(3, 4)).resize((150, 90)).save(path)
    overlay = gradcam_overlay(predictor, path)
    assert overlay.size == (150, 90) and overlay.mode == "RGB"
    out = write_gradcam(predictor, path.read_bytes(), tmp_path / "cams" / "wide.png", target="Pro-B")
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == (150, 90)


def test_heat_map_is_normalised_and_targets_are_checked(predictor) -> None:
    image = Image.fromarray(smear_image(0, 4))
    heat = gradcam_map(predictor, image, target=0)
    assert heat.shape == (64, 64) and heat.min() >= 0.0 and heat.max() <= 1.0
    with pytest.raises(ValueError, match="unknown class"):
        gradcam_map(predictor, image, target="Neutrophil")
    with pytest.raises(ValueError, match="out of range"):
        gradcam_map(predictor, image, target=9)


def test_torch_backend_and_bad_images(tiny_package: Path) -> None:
    torch_predictor = load_predictor(tiny_package, backend="torch", threads=1)
    assert np.asarray(gradcam_overlay(torch_predictor, _png(smear_image(1, 4)))).shape == (64, 64, 3)
    with pytest.raises(ImageError):
        gradcam_overlay(torch_predictor, b"not an image")


def test_package_without_model_pt_cannot_explain(tiny_package: Path, tmp_path: Path) -> None:
    import json

    copy = Path(shutil.copytree(tiny_package, tmp_path / "pkg"))
    info = json.loads((copy / "model.json").read_text())
    del info["files"]["model.pt"]
    (copy / "model.json").write_text(json.dumps(info))
    (copy / "model.pt").unlink()
    predictor = load_predictor(copy, threads=1)
    with pytest.raises(ModelError, match=r"no model\.pt"):
        gradcam_overlay(predictor, _png(smear_image(0, 1)))


def test_a_huge_image_is_explained_at_the_working_size(predictor) -> None:
    from leukoscope.inference.explain import WORKING_SIDE

    huge = Image.fromarray(smear_image(2, 4)).resize((3000, 2000))  # the 7000x7000 case, scaled for test time
    overlay = gradcam_overlay(predictor, _png(np.asarray(huge)))
    assert overlay.size == (WORKING_SIDE, round(WORKING_SIDE * 2 / 3))
    assert gradcam_overlay(predictor, _png(np.asarray(huge.resize((300, 200)))), max_side=None).size == (300, 200)
