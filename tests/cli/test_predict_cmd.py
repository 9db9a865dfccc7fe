"""`leukoscope predict`, driven through `main` as a user would."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from PIL import Image

from leukoscope.cli.common import DISCLAIMER
from tests.helpers.cli import one_error_line, run
from tests.helpers.modelfixtures import shared_tiny_package, smear_image

pytestmark = pytest.mark.usefixtures("wide_console")

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_package(tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """patient1/ (3 smears), patient2/ (2 smears + a truncated and a zero-byte file), empty/."""
    root = tmp_path_factory.mktemp("smears")
    for folder, cls, count in (("patient1", 0, 3), ("patient2", 3, 2)):
        (root / folder).mkdir()
        for i in range(count):
            Image.fromarray(smear_image(cls, 300 + i)).save(root / folder / f"img{i}.png")
    data = (root / "patient1" / "img0.png").read_bytes()
    (root / "patient2" / "broken.png").write_bytes(data[: len(data) // 2])
    (root / "patient2" / "empty.jpg").write_bytes(b"")
    (root / "empty").mkdir()
    return root


def test_csv_rows_for_every_image_and_one_error_line_per_bad_file(package, images, capsys) -> None:
    code, out, err = run(capsys, "predict", images, "--model", package, "--format", "csv", "--threads", "1")
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7 and DISCLAIMER not in out
    assert set(rows[0]) >= {"path", "label", "confidence", "review", "review_reasons", "ood_score", "error",
                            *(f"p_{c}" for c in CLASSES)}
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5 and all(r["label"] in CLASSES for r in good)
    assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4 for r in good)
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("broken.png" in line and "truncated" in line for line in error_lines)
    assert any("empty.jpg" in line and "0 bytes" in line for line in error_lines)
    assert "folder has no images" not in err  # images/empty is inside a folder that has images


def test_table_output_ends_with_the_disclaimer(package, images, capsys) -> None:
    code, out, _ = run(capsys, "predict", images / "patient1", "-m", package, "--threads", "1")
    assert code == 0
    assert "img0.png" in out and "3 image(s)" in out
    assert out.strip().endswith(DISCLAIMER)


def test_json_out_file_with_gradcam_and_limit(package, images, tmp_path, capsys) -> None:
    out_file, cams = tmp_path / "results.json", tmp_path / "cams"
    code, out, _ = run(capsys, "predict", images / "patient1", "-m", package, "--out", out_file,
                       "--gradcam", cams, "--limit", "2", "--tta", "--quiet", "--threads", "1")
    assert code == 0 and out == ""
    rows = json.loads(out_file.read_text())
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png"]
    for row in rows:
        cam = Path(row["gradcam"])
        assert cam.parent == cams and cam.is_file()
        with Image.open(cam) as overlay:
            assert overlay.size == (64, 64)


def test_group_by_folder(package, images, capsys) -> None:
    code, out, err = run(capsys, "predict", images, "-m", package, "--group-by", "folder", "-f", "json",
                         "--threads", "1")
    assert code == 1, err
    rows = {Path(r["folder"]).name: r for r in json.loads(out)}
    assert set(rows) == {"patient1", "patient2"}
    assert rows["patient1"]["images"] == 3 and rows["patient1"]["failed"] == 0
    assert sum(rows["patient1"][f"n_{c}"] for c in CLASSES) == 3
    assert rows["patient2"]["failed"] == 2 and rows["patient2"]["review"]
    assert "failed_images" in rows["patient2"]["review_codes"]
    assert any("could not be read" in r for r in rows["patient2"]["review_reasons"])
    for row in rows.values():  # the sample rule: leukemia as soon as one usable image looks leukemic
        leukemic = sum(row[f"n_{c}"] for c in CLASSES if c != "Benign")
        assert row["call"] == ("leukemia" if leukemic else "benign") and row["leukemic_images"] == leukemic


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample/: one smear, the same smear again, a white PNG, a 1x1 PNG and a noise PNG."""
    import numpy as np

    root = tmp_path_factory.mktemp("mixed") / "sample"
    root.mkdir()
    Image.fromarray(smear_image(2, 400)).save(root / "smear.png")
    (root / "smear-copy.png").write_bytes((root / "smear.png").read_bytes())
    Image.new("RGB", (64, 64), "white").save(root / "white.png")
    Image.new("RGB", (1, 1), (90, 20, 120)).save(root / "dot.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "noise.png")
    return root


def test_unusable_images_have_no_class_in_every_format(package, mixed, capsys) -> None:
    code, out, _ = run(capsys, "predict", mixed, "-m", package, "-f", "csv", "--threads", "1")
    assert code == 0  # read, so not failed
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(out))}
    assert list(rows["white.png"])[:7] == ["path", "status", "label", "confidence", "review", "review_codes",
                                           "review_reasons"]
    for name, reason in (("white.png", "uniform"), ("dot.png", "too_small"), ("noise.png", "noise")):
        assert (rows[name]["status"], rows[name]["label"], rows[name]["review_codes"]) == ("unusable", "", reason)
        assert rows[name]["review_reasons"] and rows[name]["error"] == ""
    assert rows["smear.png"]["status"] == "ok" and rows["smear.png"]["label"] in CLASSES
    code, out, _ = run(capsys, "predict", mixed / "dot.png", "-m", package, "-f", "json", "--threads", "1")
    (row,) = json.loads(out)
    assert code == 0 and row["label"] is None and row["status"] == "unusable" and row["review_codes"] == ["too_small"]
    assert row["review_details"]["too_small"]["width"] == 1
    code, out, _ = run(capsys, "predict", mixed, "-m", package, "--threads", "1")
    assert code == 0 and "unusable" in out and "3 unusable (no class)" in out


def test_a_sample_call_ignores_unusable_and_repeated_images(package, mixed, capsys) -> None:
    code, out, _ = run(capsys, "predict", mixed, "-m", package, "--group-by", "folder", "-f", "csv",
                       "--threads", "1")
    assert code == 0
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert (row["images"], row["usable"], row["unusable"], row["duplicates"]) == ("5", "1", "3", "1")
    assert sum(int(row[f"n_{c}"]) for c in CLASSES) == 1
    assert "duplicate image counted once" in row["summary"] and "unusable_images" in row["review_codes"]


def test_glob_and_missing_paths(package, images, capsys) -> None:
    code, out, err = run(capsys, "predict", str(images / "*" / "img1.png"), images / "nope.png", "-m", package,
                         "-f", "csv", "--threads", "1")
    assert code == 1
    assert len(list(csv.DictReader(io.StringIO(out)))) == 2
    assert "nope.png: no such file or folder" in err


def test_no_images_is_a_usage_error(package, images, capsys) -> None:
    code, _, err = run(capsys, "predict", images / "empty", "-m", package)
    assert code == 2 and "folder has no images" in err and "no images found" in err
    code, _, err = run(capsys, "predict", images / "patient1", "-m", package, "--out", images / "x.txt")
    assert code == 2 and "--format" in err


def test_damaged_package_is_one_clear_error(package, images, tmp_path, capsys) -> None:
    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    (copy / "model.onnx").write_bytes(b"garbage")
    code, _, err = run(capsys, "predict", images / "patient1", "-m", copy)
    assert code == 1 and "model.onnx does not match its sha256" in err


def test_nothing_to_predict_is_one_line(package, images, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(images / "patient1")  # an empty argument must not predict the current folder
    code, out, err = run(capsys, "predict", "", "-m", package)
    assert code == 2 and not out and err == "error: no images found: '': empty path\n"
    code, _, err = run(capsys, "predict", tmp_path / "nope.png", "-m", package)
    assert code == 2 and err == f"error: no images found: {tmp_path / 'nope.png'}: no such file or folder\n"


@pytest.mark.parametrize("threads", ["0", "100000", "99999999999999999999"])
def test_threads_out_of_range_exit_2(package, images, capsys, threads) -> None:
    code, _, err = run(capsys, "predict", images / "patient1", "-m", package, "--threads", threads)
    assert code == 2 and one_error_line(err) == f"error: --threads must be between 1 and 1024, got {threads}"


@pytest.mark.parametrize("option", ["--out", "--gradcam"])
def test_an_output_that_cannot_be_written_is_refused_before_predicting(package, images, tmp_path, capsys,
                                                                       option) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "sub" / "p.csv"  # a folder cannot be made under a file
    code, out, err = run(capsys, "predict", images / "patient1", "-m", package, option, target)
    assert code == 2 and not out and one_error_line(err).startswith(f"error: cannot write {option} {target}: ")


def test_a_file_name_that_is_not_utf8_is_written_to_csv(package, images, tmp_path, capsys) -> None:
    name = b"smear-\xff.png"
    try:
        with open(bytes(tmp_path) + b"/" + name, "wb") as handle:
            handle.write((images / "patient1" / "img0.png").read_bytes())
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    code, _, err = run(capsys, "predict", tmp_path, "-m", package, "--out", tmp_path / "p.csv", "--threads", "1")
    assert code == 0, err
    assert name in (tmp_path / "p.csv").read_bytes()  # the row names the file on disk, byte for byte


# ------------------------------------------------------------------------------------------- --engine ray


def test_an_unreachable_cluster_is_one_line_and_exit_1(package, images, tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run(capsys, "predict", images, "-m", package, "--engine", "ray", "--address",
                         f"127.0.0.1:{port}", "--out", tmp_path / "out.parquet")
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: cannot reach the Ray cluster at --address 127.0.0.1:") and "ray start" in line
    assert not (tmp_path / "out.parquet").exists()


def test_ray_engine_without_ray_says_how_to_install_it(package, images, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = run(capsys, "predict", images, "-m", package, "--engine", "ray", "--out", tmp_path / "o")
    assert code == 2 and err.strip() == "error: --engine ray needs Ray: pip install 'leukoscope[ray]'"


@pytest.mark.parametrize(("options", "message"), [
    ((), "give --out OUT.parquet"),
    (("--out", "o", "--group-by", "folder"), "--group-by does not go with --engine ray"),
    (("--out", "o", "--gradcam", "cams"), "--gradcam does not go with --engine ray"),
    (("--out", "o", "--format", "csv"), "--format does not go with --engine ray"),
    (("--out", "o", "--actors", "0"), "--actors must be at least 1"),
])
def test_options_the_ray_engine_refuses(package, images, tmp_path, capsys, monkeypatch, options, message) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "predict", images, "-m", package, "--engine", "ray", *options)
    assert code == 2 and message in err and not (tmp_path / "o").exists()


def test_address_needs_the_ray_engine(package, images, capsys) -> None:
    code, _, err = run(capsys, "predict", images, "-m", package, "--address", "auto")
    assert code == 2 and "--address and --actors need --engine ray" in err


def test_default_names_the_bundled_package_as_in_evaluate(images, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no file called "default" here
    code, out, err = run(capsys, "predict", images / "patient1" / "img0.png", "--model", "default",
                         "--format", "json", "--threads", "1")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["label"] in CLASSES and not row["error"] and row["status"] == "ok"
