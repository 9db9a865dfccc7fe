"""`leukoscope.models.scoring`: the one way a network is scored on images, and its typed results."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.models.inputs import load_uint8_batch
from leukoscope.models.preprocessing import Preprocess, normalize_numpy
from leukoscope.models.scoring import (
    ClassificationScores,
    ModelScores,
    classification_scores,
    predict_logits,
    score_model,
)

PRE = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SUMMARY_KEYS = ["loss", "accuracy", "macro_f1", "precision_macro", "recall_macro", "f1_macro",
                "precision_weighted", "recall_weighted", "f1_weighted"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec("test_efficientnet", num_classes=3), weights="none")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_paths_decoded_a_batch_at_a_time_score_as_the_whole_tensor(model, images):
    whole = predict_logits(model, load_uint8_batch(images, PRE), PRE, 3, amp=False, channels_last=False)
    seen: list[tuple[int, int]] = []
    scores = score_model(model, images, PRE, labels=[0, 1, 2, 0, 1, 2, 0], batch_size=3,
                         progress=lambda done, total: seen.append((done, total)))
    assert isinstance(scores, ModelScores) and len(scores) == 7
    assert scores.logits.dtype == torch.float32 and torch.equal(scores.logits, whole)
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert scores.labels is not None and scores.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_uint8_tensor_and_normalised_input_give_the_same_logits(model, images):
    pixels = load_uint8_batch(images, PRE)
    from_uint8 = score_model(model, pixels, PRE, batch_size=4).logits
    normalised = torch.from_numpy(normalize_numpy(pixels.permute(0, 2, 3, 1).numpy(), PRE))
    from_normalised = score_model(model, normalised, PRE, batch_size=4).logits
    assert from_uint8.shape == (7, 3)
    torch.testing.assert_close(from_normalised, from_uint8, rtol=1e-4, atol=1e-4)


def test_no_images_and_bad_batch_size(model):
    assert len(score_model(model, [], PRE)) == 0
    with pytest.raises(ValueError, match="batch size"):
        score_model(model, [], PRE, batch_size=0)
    with pytest.raises(ValueError, match="no labels"):
        ModelScores(torch.zeros(2, 3)).classification()


def test_classification_scores_keep_the_summary_keys_and_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    scores = ModelScores(logits, labels).classification()
    assert [f.name for f in fields(ClassificationScores)] == SUMMARY_KEYS
    assert list(scores.to_dict()) == SUMMARY_KEYS == list(classification_scores(labels, logits, 3))
    assert scores.accuracy == 0.75 and scores.macro_f1 == pytest.approx((1 + 2 / 3 + 0) / 3)
    expected = float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)))
    assert scores.loss == pytest.approx(expected)
    assert ModelScores(logits, labels).classification(4).macro_f1 == pytest.approx((1 + 2 / 3) / 4)


def test_mean_nll_is_the_mean_negative_log_likelihood_of_the_labels_in_float64() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    labels = np.array([0, 1, 1])
    expected = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1)), np.log(np.e / (np.e + 1)),
                         np.log(np.exp(-1) / (np.exp(3) + np.exp(-1)))])
    assert ModelScores(logits, labels).mean_nll() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="no labels"):
        ModelScores(logits).mean_nll()
