"""Predictor: both backends agree, every kind of bad input gets a one-line error, review reasons, TTA."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.errors import ModelError
from leukoscope.inference.predictor import load_predictor, tta_views
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View
from tests.helpers.modelfixtures import shared_tiny_package, shared_tiny_run, smear_image

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def encode(array: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def held_out(n_per_class: int = 3) -> np.ndarray:
    """Smear-like images the model never saw (seeds outside the run's dataset)."""
    return np.stack([smear_image(c, 100 + i) for c in range(4) for i in range(n_per_class)])


def test_backends_agree(tiny_package: Path, predictor) -> None:
    torch_predictor = load_predictor(tiny_package, backend="torch", threads=1)
    assert predictor.backend == "onnx" and torch_predictor.backend == "torch"
    batch = held_out()
    diff = np.abs(predictor.predict_proba(batch) - torch_predictor.predict_proba(batch)).max()
    assert diff <= 1e-4
    assert predictor.classes == CLASSES and predictor.preprocess.input_size == 64


def test_int8_package_prefers_int8(tmp_path_factory: pytest.TempPathFactory) -> None:
    package = shared_tiny_package(tmp_path_factory, int8=True)
    int8 = load_predictor(package, threads=1)
    fp32 = load_predictor(package, threads=1, onnx_file="model.onnx")
    assert int8.info["default_onnx"] == "model.int8.onnx"
    assert int8.onnx_file == "model.int8.onnx" and fp32.onnx_file == "model.onnx"  # int8 passed its load check
    assert int8.predict_proba(held_out()).shape == fp32.predict_proba(held_out()).shape
    with pytest.raises(ModelError, match=r"has no nope\.onnx"):
        load_predictor(package, onnx_file="nope.onnx")


def test_predictions_are_calibrated_and_complete(predictor) -> None:
    (prediction,) = predictor.predict_bytes([("a.png", encode(smear_image(0, 101)))])
    assert prediction.error is None and prediction.label in CLASSES
    assert list(prediction.probabilities) == list(CLASSES)
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-6
    assert prediction.confidence == max(prediction.probabilities.values())
    assert (prediction.width, prediction.height) == (64, 64) and len(prediction.sha256) == 64
    assert prediction.ood_score is not None and prediction.review == bool(prediction.review_reasons)
    row = prediction.to_row()
    assert row["path"] == "a.png" and row["p_Pre-B"] >= 0 and row["error"] == ""


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    return encode(Image.fromarray(smear_image(1, 7)).resize((80, 40)), "JPEG", exif=exif)


def test_every_bad_input_gets_a_one_line_error_and_the_rest_still_predict(predictor) -> None:
    good = smear_image(2, 101)
    jpeg = encode(good, "JPEG")
    bomb = encode(Image.new("1", (8000, 7000)))  # 56 megapixels
    items = [
        ("zero.jpg", b""), ("truncated.jpg", jpeg[: len(jpeg) // 3]), ("text.jpg", b"hello, not an image"),
        ("bomb.png", bomb), ("gray.png", encode(Image.fromarray(good).convert("L"))),
        ("rgba.png", encode(Image.fromarray(good).convert("RGBA"))),
        ("cmyk.jpg", encode(Image.fromarray(good).convert("CMYK"), "JPEG")),
        ("sixteen.png", encode(Image.fromarray(good[..., 0].astype(np.uint16) * 257))),
        ("exif.jpg", _exif_rotated()), ("ok.jpg", jpeg),
    ]
    results = {p.source: p for p in predictor.predict_bytes(items, batch_size=4)}
    assert list(results) == [name for name, _ in items]
    for name in ("zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"):
        p = results[name]
        assert p.error and "\n" not in p.error and p.label is None and p.confidence == 0.0 and p.review
    assert "0 bytes" in results["zero.jpg"].error and "truncated" in results["truncated.jpg"].error
    assert "not an image" in results["text.jpg"].error and "too large" in results["bomb.png"].error
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "sixteen.png", "exif.jpg", "ok.jpg"):
        assert results[name].error is None and results[name].label in CLASSES, name
    assert (results["exif.jpg"].width, results["exif.jpg"].height) == (40, 80)


def test_image_size_far_from_training_resolution_is_a_review_reason(predictor) -> None:
    image = Image.fromarray(smear_image(0, 101))
    items = [(f"{w}x{h}", encode(image.resize((w, h)))) for w, h in ((20, 20), (300, 300), (64, 128))]
    small, large, tall = predictor.predict_bytes(items)
    assert small.review and "small_image" in small.review_codes
    assert large.review and "large_image" in large.review_codes
    assert "not_square" in tall.review_codes
    assert (large.width, large.height) == (300, 300) and large.label in CLASSES


def test_predict_paths_keeps_order_across_batches(predictor, tmp_path: Path) -> None:
    paths = []
    for i in range(7):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(encode(smear_image(i % 4, 100 + i)) if i != 3 else b"")
        paths.append(path)
    paths.append(tmp_path / "missing.png")
    results = list(predictor.predict_paths(paths, batch_size=3))
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.error is not None for r in results] == [False, False, False, True, False, False, False, True]
    assert "cannot read file" in results[-1].error


def test_streams_give_the_same_predictions_in_the_same_order(tiny_package: Path, tmp_path: Path) -> None:
    streams = 3  # more streams than cores here: order still kept
    paths = []
    for i in range(11):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(encode(smear_image(i % 4, 100 + i)) if i != 4 else b"not an image")
        paths.append(path)
    one = list(load_predictor(tiny_package, threads=2).predict_paths(paths, batch_size=2))
    streamed = load_predictor(tiny_package, streams=streams)
    assert streamed.streams == streams
    assert streamed._backend.session.get_session_options().intra_op_num_threads == 1  # one thread per batch
    many = list(streamed.predict_paths(paths, batch_size=2))
    assert [p.source for p in many] == [str(p) for p in paths]
    assert [(p.label, p.review_codes, p.error) for p in many] == [(p.label, p.review_codes, p.error) for p in one]
    for a, b in zip(one, many, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    first = streamed.predict_paths(paths, batch_size=2)
    assert next(first).source == str(paths[0])
    first.close()  # a consumer that stops early: the workers finish and nothing hangs


def test_streams_are_for_onnx_runtime_only(tiny_package: Path) -> None:
    assert load_predictor(tiny_package, backend="torch", threads=1, streams=2).streams == 1
    assert load_predictor(tiny_package).streams == 1
    with pytest.raises(Exception, match="streams must be at least 1"):
        load_predictor(tiny_package, streams=0)


def test_tta_uses_8_views_and_is_rotation_invariant(predictor) -> None:
    batch = held_out(1)
    views = list(tta_views(batch))
    assert len(views) == 8 and np.array_equal(views[0], batch)
    assert len({v.tobytes() for v in views}) == 8
    plain = predictor.predict_proba(batch, tta=True)
    rotated = predictor.predict_proba(np.rot90(batch, 1, axes=(1, 2)), tta=True)
    assert np.abs(plain - rotated).max() < 1e-5
    (p,) = predictor.predict_bytes([("x.png", encode(batch[0]))], tta=True)
    assert abs(sum(p.probabilities.values()) - 1) < 1e-6


def test_confidence_threshold_override(tiny_package: Path) -> None:
    items = [(f"{i}.png", encode(image)) for i, image in enumerate(held_out(2))]
    never = load_predictor(tiny_package, threads=1, confidence_threshold=0.0).predict_bytes(items)
    always = load_predictor(tiny_package, threads=1, confidence_threshold=1.0).predict_bytes(items)
    assert not any("low_confidence" in p.review_codes for p in never)
    assert all(p.review and "low_confidence" in p.review_codes for p in always)


def _with_review(package: Path, tmp_path: Path, **review) -> Path:
    """A copy of `package` whose model.json review section has `review` added (model.json is not hashed)."""
    import json

    copy = Path(shutil.copytree(package, tmp_path / "package"))
    info = json.loads((copy / "model.json").read_text())
    info["review"].update(review)
    (copy / "model.json").write_text(json.dumps(info))
    return copy


def test_benign_calls_need_the_benign_threshold_and_older_packages_never_use_it(tiny_package: Path,
                                                                                 tmp_path: Path) -> None:
    items = [(f"{i}.png", encode(image)) for i, image in enumerate(held_out(3))]
    old = load_predictor(tiny_package, threads=1, confidence_threshold=0.3).predict_bytes(items)
    assert not any("benign_low_confidence" in p.review_codes for p in old)
    package = _with_review(tiny_package, tmp_path, benign_confidence_threshold=0.999999)
    predictor = load_predictor(package, threads=1, confidence_threshold=0.3)
    assert predictor.benign_threshold == 0.999999
    new = predictor.predict_bytes(items)
    assert any(p.label == "Benign" for p in new) and any(p.label != "Benign" for p in new)
    for before, after in zip(old, new, strict=True):
        assert after.probabilities == before.probabilities
        expected = after.label == "Benign" and 0.3 <= after.confidence < 0.999999
        assert ("benign_low_confidence" in after.review_codes) == expected
        assert [c for c in after.review_codes if c != "benign_low_confidence"] == before.review_codes
        if expected:
            assert after.review and after.review_details["benign_low_confidence"]["threshold"] == 0.999999
    # a benign threshold below the symmetric one never lowers it
    assert load_predictor(package, threads=1, confidence_threshold=1.0).benign_threshold == 1.0


def test_cell_scale_range_flags_images_outside_it(tiny_package: Path, tmp_path: Path) -> None:
    items = [(f"{i}.png", encode(image)) for i, image in enumerate(held_out(1))]
    outside = load_predictor(_with_review(tiny_package, tmp_path, cell_scale_range=[0.1, 0.2]), threads=1)
    assert all(p.review and "cell_scale" in p.review_codes for p in outside.predict_bytes(items))
    assert not any("cell_scale" in p.review_codes for p in load_predictor(tiny_package, threads=1).predict_bytes(items))


def test_run_folder_predicts_in_torch(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = shared_tiny_run(tmp_path_factory)
    predictor = load_predictor(run, threads=1)
    assert predictor.backend == "torch" and predictor.classes == CLASSES and predictor.ood is None
    assert predictor.predict_proba(held_out(1)).shape == (4, 4)
    with pytest.raises(ModelError, match="export"):
        load_predictor(run, backend="onnx")


def test_run_folder_uses_its_calibration_json(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from leukoscope.review.calibration import save_temperature

    run = Path(shutil.copytree(shared_tiny_run(tmp_path_factory), tmp_path / "run"))
    save_temperature(run, 1.5, fitted_on="val", n=12)
    assert load_predictor(run, threads=1).temperature == 1.5
    (run / "calibration.json").write_text("not json", encoding="utf-8")
    with pytest.raises(ModelError, match=r"calibration\.json"):  # damaged: never silently uncalibrated
        load_predictor(run, threads=1)


def test_damaged_and_missing_packages(tiny_package: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(tiny_package, tmp_path / "pkg"))
    (copy / "ood.npz").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="sha256"):
        load_predictor(copy)
    with pytest.raises(ModelError, match="not found"):
        load_predictor(tmp_path / "nothing-here")
    missing = tmp_path / "assets" / "default"
    monkeypatch.setattr("leukoscope.inference.predictor.bundled_package_path", lambda: missing)
    monkeypatch.setattr("leukoscope.inference.package.bundled_package_path", lambda: missing)
    with pytest.raises(ModelError, match="bundled model package is missing"):
        load_predictor()




def test_realign_takes_the_call_from_the_view_that_looks_most_like_training(tiny_package: Path,
                                                                            tmp_path: Path) -> None:
    images = held_out(3)
    items = [(f"{i}.png", encode(image)) for i, image in enumerate(images)]
    rule = {"views": [{"scale": 0.5}, {"scale": 2.0}, {"hue": 20.0}], "margin": 0.0}
    predictor = load_predictor(_with_review(tiny_package, tmp_path, realign=rule), threads=1)
    assert predictor.realign is not None and predictor.realign.to_dict() == rule and predictor.ood is not None
    before = load_predictor(tiny_package, threads=1).predict_bytes(items)
    predictor.ood.threshold = float("inf")  # nothing looks unlike the training images: nothing is realigned
    assert [p.probabilities for p in predictor.predict_bytes(items)] == [p.probabilities for p in before]
    predictor.ood.threshold = -1.0  # every image does
    after = predictor.predict_bytes(items)
    realigned = 0
    for image, old, new in zip(images, before, after, strict=True):
        _, (own,) = predictor.scored(image[None])
        views = [predictor.scored(view.apply(image)[None]) for view in predictor.realign.views]
        best = int(np.argmin([score[0] for _, score in views]))
        assert new.review and "out_of_distribution" in new.review_codes
        if views[best][1][0] < own:
            realigned += 1
            assert "realigned" in new.review_codes
            assert new.review_details["realigned"]["view"] == predictor.realign.views[best].describe()
            assert np.allclose(list(new.probabilities.values()), views[best][0][0], atol=1e-6)
            assert new.label == CLASSES[int(np.argmax(views[best][0][0]))]
            assert new.review_details["realigned"]["label_as_given"] == old.label
        else:
            assert "realigned" not in new.review_codes and new.probabilities == old.probabilities
    assert realigned > 0
    predictor.realign = None  # callers can compare with and without
    assert [p.probabilities for p in predictor.predict_bytes(items)] == [p.probabilities for p in before]


@pytest.mark.parametrize("realign", [{"views": []}, {"views": [{"scale": 9}]}, {"views": [{"scale": 1, "hue": 0}]},
                                     {"views": [{"zoom": 2}]}, {"views": [{"scale": 2}], "margin": -1}, "x2"])
def test_a_bad_realign_section_is_one_model_error(tiny_package: Path, tmp_path: Path, realign) -> None:
    with pytest.raises(ModelError, match="review"):
        load_predictor(_with_review(tiny_package, tmp_path, realign=realign), threads=1)


def test_benign_check_flags_only_unflagged_benign_calls_a_view_doubts_and_never_changes_a_call(
        tiny_package: Path, tmp_path: Path) -> None:
    images = held_out(3)
    items = [(f"{i}.png", encode(image)) for i, image in enumerate(images)]
    check = {"views": [{"scale": 0.5}, {"scale": 2.0}], "threshold": 1.0}  # every view doubts: below 1
    package = _with_review(tiny_package, tmp_path, benign_check=check, confidence_threshold=0.0,
                           benign_confidence_threshold=0.0)
    predictor = load_predictor(package, threads=1)
    assert predictor.benign_check is not None and predictor.benign_check.to_dict() == check
    predictor.realign, predictor.ood.threshold = None, float("inf")  # nothing else flags any image
    flagged = predictor.predict_bytes(items)
    predictor.benign_check = None  # callers can compare with and without
    plain = predictor.predict_bytes(items)
    assert [p.probabilities for p in flagged] == [p.probabilities for p in plain]  # calls never change
    assert not any(p.review for p in plain)
    benign_calls = [p.label == "Benign" for p in plain]
    assert 0 < sum(benign_calls) < len(items)
    for image, new, is_benign in zip(images, flagged, benign_calls, strict=True):
        assert ("benign_view" in new.review_codes) == is_benign and new.review == is_benign
        if is_benign:
            views = [predictor.scored(View(**v).apply(image)[None])[0][0] for v in check["views"]]
            lowest = int(np.argmin([p[0] for p in views]))
            details = new.review_details["benign_view"]
            assert details["view"] == View(**check["views"][lowest]).describe(why=False)
            assert details["p_benign_at_view"] == pytest.approx(views[lowest][0], abs=1e-6)
            assert details["label_at_view"] == CLASSES[int(np.argmax(views[lowest]))]
    predictor.benign_check = BenignCheck.from_dict({**check, "threshold": 1e-12})  # no view doubts that little
    assert not any(p.review for p in predictor.predict_bytes(items))
    predictor.benign_check = BenignCheck.from_dict(check)
    predictor.ood.threshold = -1.0  # every image is flagged already: the check does not run on any
    assert not any("benign_view" in p.review_codes for p in predictor.predict_bytes(items))


@pytest.mark.parametrize("check", [{"views": [{"scale": 2}]}, {"views": [], "threshold": 0.9}, "x2",
                                   {"views": [{"scale": 2}], "threshold": 2}])
def test_a_bad_benign_check_section_is_one_model_error(tiny_package: Path, tmp_path: Path, check) -> None:
    with pytest.raises(ModelError, match="review"):
        load_predictor(_with_review(tiny_package, tmp_path, benign_check=check), threads=1)
