"""`leukoscope data check|split`, driven through `main` as a user would: exit codes, output, files.

Exit codes: 0 usable, 1 blocking problems in the data, 2 bad arguments; never a traceback.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from leukoscope.cli.common import console, err_console
from tests.helpers.cli import one_error_line, run


@pytest.fixture(autouse=True)
def wide_console():
    """Rich wraps at 80 columns when not on a terminal; make it wide so long paths stay on one line."""
    saved = (console._width, err_console._width)
    console.width = err_console.width = 500
    yield
    console._width, err_console._width = saved



def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------- check


def test_check_usable_dataset_exits_0(capsys, tiny_dataset: Path) -> None:
    code, out, err = run(capsys, "data", "check", tiny_dataset, "-q")
    assert code == 0, err
    for name in ("Benign", "Early Pre-B", "Pre-B", "Pro-B"):
        assert name in out
    assert "24 usable images" in " ".join(out.split())  # the title wraps where the folder's path is long
    assert "usable for training" in out


def test_check_with_progress_bar_works_too(capsys, tiny_dataset: Path) -> None:
    code, out, _ = run(capsys, "data", "check", tiny_dataset)
    assert code == 0 and "usable for training" in out


def test_check_json_is_loadable(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "reports" / "check.json"
    code, _, _ = run(capsys, "data", "check", tiny_dataset, "--json", out_path, "-q")
    assert code == 0
    with open(out_path, encoding="utf-8") as handle:
        info = json.load(handle)
    assert info["images"] == 24 and info["usable"] is True and info["blocking"] == []
    assert info["classes"] == ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
    assert info["per_class"]["Early Pre-B"]["count"] == 6


def test_check_lists_unreadable_files_and_still_exits_0(capsys, tiny_dataset: Path) -> None:
    folder = tiny_dataset / "Blood cell Cancer [ALL]"  # brackets must print as they are, not as markup
    folder.mkdir()
    for name in ("Benign", "Early", "Pre", "Pro"):
        shutil.move(str(tiny_dataset / name), folder / name)
    (folder / "[bold]").mkdir()
    (folder / "Pro" / "[red]broken.jpg").write_text("not an image")
    (folder / "Pro" / "empty.jpg").write_bytes(b"")
    code, out, err = run(capsys, "data", "check", tiny_dataset, "-q")
    # "[bold]" is a fifth folder: classes become the folder names, and the empty "[bold]" class blocks
    assert code == 1
    assert "[red]broken.jpg: not an image" in out
    assert "empty.jpg: empty file (0 bytes)" in out
    assert "2 unreadable file(s)" in out
    assert "[bold]" in err and "no usable images" in err


def test_check_label_conflict_exits_1_and_still_writes_json(capsys, tiny_dataset: Path, tmp_path) -> None:
    shutil.copyfile(tiny_dataset / "Benign" / "Benign-000.jpg", tiny_dataset / "Pro" / "same.jpg")
    out_path = tmp_path / "check.json"
    code, out, err = run(capsys, "data", "check", tiny_dataset, "--json", out_path, "-q")
    assert code == 1
    assert "LABEL CONFLICT" in out
    assert "label conflict" in err
    assert "not usable for training" in one_error_line(err)
    info = json.loads(out_path.read_text())
    assert info["usable"] is False
    assert info["duplicates_across_classes"] == [["Benign/Benign-000.jpg", "Pro/same.jpg"]]


def test_check_empty_class_exits_1(capsys, tiny_dataset: Path) -> None:
    shutil.rmtree(tiny_dataset / "Pre")
    (tiny_dataset / "Pre").mkdir()
    code, _, err = run(capsys, "data", "check", tiny_dataset, "-q")
    assert code == 1
    assert "'Pre-B' has no usable images" in err


def test_check_duplicates_within_a_class_do_not_block(capsys, tiny_dataset: Path) -> None:
    shutil.copyfile(tiny_dataset / "Pro" / "Pro-000.jpg", tiny_dataset / "Pro" / "again.jpg")
    code, out, _ = run(capsys, "data", "check", tiny_dataset, "-q")
    assert code == 0
    assert "Pro/Pro-000.jpg = Pro/again.jpg" in out


def test_check_missing_folder_exits_2_with_one_line(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "data", "check", tmp_path / "nowhere")
    assert code == 2
    assert "data folder not found" in one_error_line(err)
    assert out == ""


def test_check_file_instead_of_folder_exits_2(capsys, tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    path.write_bytes(b"PK\x03\x04")
    code, _, err = run(capsys, "data", "check", path)
    assert code == 2
    assert "not a folder" in one_error_line(err)


def test_check_empty_folder_exits_1_with_one_line(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "check", tmp_path)
    assert code == 1
    assert "no class folders" in one_error_line(err)


def test_check_json_into_a_folder_exits_2(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "check", tiny_dataset, "--json", tmp_path)
    assert code == 2
    assert "is a folder" in one_error_line(err)


def test_check_without_directory_is_a_usage_error(capsys) -> None:
    code, _, err = run(capsys, "data", "check")
    assert code == 2
    assert "unexpected" not in err


# ----------------------------------------------------------------------------------------------- split


def test_split_writes_a_stratified_csv(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "split.csv"
    args = ("data", "split", tiny_dataset, "--test-size", "0.3", "--val-size", "0.2", "--seed", "0")
    code, out, err = run(capsys, *args, "--out", out_path, "-q")
    assert code == 0, err
    rows = read_csv(out_path)
    assert len(rows) == 24
    assert {"path", "sha256", "label", "part"} <= set(rows[0])
    counts = Counter((row["label"], row["part"]) for row in rows)
    for name in ("Benign", "Early Pre-B", "Pre-B", "Pro-B"):
        assert (counts[(name, "train")], counts[(name, "val")], counts[(name, "test")]) == (3, 1, 2)
    assert all((tiny_dataset / row["path"]).is_file() for row in rows)
    assert "split of 24 images" in out


def test_split_is_deterministic_for_a_seed(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    paths = [tmp_path / f"split-{i}.csv" for i in range(3)]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        assert run(capsys, "data", "split", tiny_dataset, "--seed", seed, "--out", path, "-q")[0] == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_split_keeps_copies_in_one_part(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    for i in range(3):
        shutil.copyfile(tiny_dataset / "Pre" / f"Pre-00{i}.jpg", tiny_dataset / "Pre" / f"copy-{i}.jpg")
    for seed in range(4):
        out_path = tmp_path / f"split-{seed}.csv"
        args = ("data", "split", tiny_dataset, "--seed", str(seed), "--near-duplicates", "-1")
        assert run(capsys, *args, "--out", out_path, "-q")[0] == 0
        part = {row["path"]: row["part"] for row in read_csv(out_path)}
        for i in range(3):
            assert part[f"Pre/Pre-00{i}.jpg"] == part[f"Pre/copy-{i}.jpg"]


def test_split_folds_writes_one_file_per_fold(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    import csv

    code, out, err = run(capsys, "data", "split", tiny_dataset, "--folds", "3", "--val-size", "0.2",
                         "--out", tmp_path / "cv.csv", "-q")
    assert code == 0, err
    files = [tmp_path / f"cv-fold{i}.csv" for i in (1, 2, 3)]
    assert all(f.is_file() for f in files) and not (tmp_path / "cv.csv").exists()
    tested = []
    for f in files:
        with open(f, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert {r["part"] for r in rows} == {"train", "val", "test"}
        tested += [r["path"] for r in rows if r["part"] == "test"]
    assert len(tested) == len(set(tested)) == 24  # every image of the tiny dataset tested once
    assert "fold 3 of 3" in out
    assert run(capsys, "data", "split", tiny_dataset, "--folds", "1", "--out", tmp_path / "x.csv")[0] == 2


def test_split_refuses_a_class_too_small(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    for path in sorted((tiny_dataset / "Benign").iterdir())[1:]:
        path.unlink()
    code, _, err = run(capsys, "data", "split", tiny_dataset, "--out", tmp_path / "s.csv", "-q")
    assert code == 1
    assert "class 'Benign' has 1 image(s)" in one_error_line(err)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--test-size", "1.5", "--test-size must be a fraction"),
        ("--val-size", "-0.1", "--val-size must be a fraction"),
        ("--near-duplicates", "40", "--near-duplicates must be between"),
        ("--seed", "-1", "--seed must be 0 or more"),
    ],
)
def test_split_bad_option_values_exit_2(capsys, tiny_dataset: Path, tmp_path: Path, option, value, message):
    code, _, err = run(capsys, "data", "split", tiny_dataset, option, value, "--out", tmp_path / "s.csv")
    assert code == 2
    assert message in one_error_line(err)


def test_split_fractions_summing_to_one_exit_2(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    args = ("data", "split", tiny_dataset, "--test-size", "0.6", "--val-size", "0.4")
    code, _, err = run(capsys, *args, "--out", tmp_path / "s.csv")
    assert code == 2
    assert "below 1" in one_error_line(err)


def test_split_missing_folder_exits_2(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "split", tmp_path / "nowhere", "--out", tmp_path / "s.csv")
    assert code == 2
    assert "data folder not found" in one_error_line(err)


def test_split_warns_about_skipped_files(capsys, tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "Pro" / "broken.jpg").write_text("nope")
    code, _, err = run(capsys, "data", "split", tiny_dataset, "--out", tmp_path / "s.csv", "-q")
    assert code == 0
    assert "1 unreadable file(s) left out" in err
    assert "Pro/broken.jpg" not in (tmp_path / "s.csv").read_text()


# ------------------------------------------------------------------------------------------ shared data


@pytest.mark.shared_data
def test_check_shared_all(capsys, shared_all: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "all.json"
    code, out, _ = run(capsys, "data", "check", shared_all, "--json", out_path, "-q")
    assert code == 0
    info = json.loads(out_path.read_text())
    assert info["images"] == 2796
    assert {k: v["count"] for k, v in info["per_class"].items()} == {
        "Benign": 428, "Early Pre-B": 849, "Pre-B": 815, "Pro-B": 704,
    }
    assert len(info["duplicates_within_class"]) == 37
    assert "37 group(s) of byte-identical images" in out


# ------------------------------------------------------------------------------------------- export-verified


def _verified_db(tmp_path: Path) -> tuple[Path, list]:
    """A web-app database with three predictions: verified Pre-B, verified unusable, and unverified."""
    import sqlite3

    from leukoscope.data.fileio import sha256_bytes
    from leukoscope.serve.store import NewPrediction, Store, utc_now
    from tests.helpers.images import noise_image_bytes

    db = tmp_path / "web" / "leukoscope.db"
    ids = []
    with Store(db) as store:
        for seed in range(3):
            data = noise_image_bytes(seed, fmt="PNG")
            row = NewPrediction(sample_id="s", file_name=f"cell {seed}.png", sha256=sha256_bytes(data),
                                model_version="m@1", label="Benign", confidence=0.9, probabilities={"Benign": 0.9},
                                review=False, review_reasons=[], ood_score=None, width=64, height=64)
            ids.append(store.add([row], {row.sha256: data})[0])  # the stored rows: .pk inside, .id (a UUID) outside
    with sqlite3.connect(db) as conn:
        for prediction, label in ((ids[0], "Pre-B"), (ids[1], None)):
            conn.execute("INSERT INTO verifications (prediction_id, created_at, user_name, label, unusable) "
                         "VALUES (?, ?, 'tech', ?, ?)", (prediction.pk, utc_now(), label, int(label is None)))
    return db, ids


def test_export_verified_writes_a_dataset_and_one_summary_line(capsys, tmp_path: Path) -> None:
    db, ids = _verified_db(tmp_path)
    out = tmp_path / "verified"
    code, stdout, err = run(capsys, "data", "export-verified", "--db", db, "--out", out)
    assert code == 0, err
    assert stdout.strip() == f"exported 1 verified image(s) (Pre-B 1) to {out}; 1 verified unusable, left out"
    rows = read_csv(out / "manifest.csv")
    assert [(r["label"], r["model_label"], r["verifier"], r["prediction_id"]) for r in rows] == [
        ("Pre-B", "Benign", "tech", str(ids[0].id))]
    code, stdout, _ = run(capsys, "data", "check", out, "-q")  # a dataset like any other
    assert "1 usable images" in " ".join(stdout.split())
    code, _, err = run(capsys, "data", "export-verified", "--db", db, "--out", out)
    assert code == 2 and "--overwrite" in one_error_line(err)
    code, _, err = run(capsys, "data", "export-verified", "--db", db, "--out", out, "--overwrite")
    assert code == 0, err


def test_export_verified_bad_databases_are_one_line(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "export-verified", "--db", tmp_path / "none.db", "--out", tmp_path / "o")
    assert code == 2 and "database not found" in one_error_line(err)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database " * 100)
    code, _, err = run(capsys, "data", "export-verified", "--db", junk, "--out", tmp_path / "o")
    assert code == 1 and "is not a leukoscope database" in one_error_line(err)
    from tests.serve.legacy_schema import legacy_database

    legacy_database(tmp_path / "old.db", 4).close()
    code, _, err = run(capsys, "data", "export-verified", "--db", tmp_path / "old.db", "--out", tmp_path / "o")
    assert code == 1 and "from before verifications" in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_export_verified_of_one_clinic(capsys, tmp_path: Path) -> None:
    db, _ = _verified_db(tmp_path)
    code, stdout, err = run(capsys, "data", "export-verified", "--db", db, "--out", tmp_path / "a", "--clinic", "default")
    assert code == 0 and "exported 1 verified image(s)" in stdout, err
    code, _, err = run(capsys, "data", "export-verified", "--db", db, "--out", tmp_path / "b", "--clinic", "nowhere")
    assert code != 0 and "nowhere" in one_error_line(err)


@pytest.mark.parametrize("command", ["check", "split"])
def test_an_empty_dataset_root_is_refused_not_read_as_the_current_folder(capsys, tmp_path, monkeypatch, command):
    """`leukoscope data check "$DATA"` with $DATA unset: as a Path, '' would quietly mean the current folder."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "data", command, "")
    assert code == 2 and "the dataset root is an empty path" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []  # no split.csv written for the current folder
