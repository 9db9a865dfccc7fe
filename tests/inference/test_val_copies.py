"""leukoscope.inference.val_copies: a val copy read as every command reads it, and its outputs per view."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leukoscope.inference.predictor import load_predictor
from leukoscope.inference.val_copies import CopyCalls, outputs, read_copy
from leukoscope.review.realign import View
from tests.helpers.modelfixtures import smear_image


def test_missed_is_a_leukemia_image_called_benign_without_a_flag() -> None:
    calls = CopyCalls([], called=np.array([0, 0, 0, 2, -1]), flagged=np.array([False, True, False, False, False]))
    assert calls.missed(np.array([1, 1, 0, 2, 3]), benign=0).tolist() == [True, False, False, False, False]


def test_read_copy_and_outputs_agree_with_the_predictor(tiny_package: Path) -> None:
    import io

    from PIL import Image

    predictor = load_predictor(tiny_package, threads=1)
    images = [smear_image(c, 500 + c) for c in range(4)]
    files = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    calls = read_copy(predictor, [*files, b"not an image"], "copy")
    assert len(calls.predictions) == 5 and calls.called[-1] == -1  # an unreadable file gets no class
    assert calls.flagged.dtype == bool and calls.called.dtype == np.int64
    size = predictor.preprocess.input_size
    pixels = np.stack([np.asarray(Image.fromarray(p).resize((size, size))) for p in images])
    probs, scores = outputs(predictor, pixels)
    assert probs.shape == (4, len(predictor.classes)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert scores is not None and scores.shape == (4,)
    viewed, _ = outputs(predictor, pixels, View(scale=2.0))
    assert viewed.shape == probs.shape and not np.allclose(viewed, probs)  # the view is another picture
    predictor.ood = None
    assert outputs(predictor, pixels)[1] is None  # a package without OOD statistics: no scores
