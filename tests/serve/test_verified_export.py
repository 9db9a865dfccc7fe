"""Exporting the verified images of the web app's database as a dataset (leukoscope.serve.verified_export):
latest verification wins, an image once, unusable and purged images left out, read-only, atomic."""

from __future__ import annotations

import contextlib
import csv
import sqlite3
import uuid
from pathlib import Path

import pytest

from leukoscope.data.discover import discover
from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.manifest import read_manifest_csv
from leukoscope.errors import DataError, UsageError
from leukoscope.serve.store import NewPrediction, Store, utc_now
from leukoscope.serve.verified_export import (
    MANIFEST_COLUMNS,
    class_folder,
    export_verified,
    safe_name,
)
from tests.helpers.images import png_bytes
from tests.helpers.modelfixtures import smear_image
from tests.serve.legacy_schema import legacy_database

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def image(cls: int, seed: int) -> bytes:
    return png_bytes(smear_image(cls, seed))


def predict(store: Store, data: bytes, *, label: str = "Benign", name: str = "cell.png") -> str:
    """Store one prediction of `data`, as the web app does; returns its id."""
    sha = sha256_bytes(data)
    row = NewPrediction(sample_id="s1", file_name=name, sha256=sha, model_version="tiny@abc", label=label,
                        confidence=0.9, probabilities={c: 0.25 for c in CLASSES}, review=False, review_reasons=[],
                        ood_score=None, width=64, height=64)
    return store.add([row], {sha: data})[0].id


def verify(db: Path, prediction_id: str, label: str | None, *, user: str = "tech1", comment: str = "") -> None:
    """Append a verification with SQL (the append-only trail of schema 5)."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # closed: no reader left open behind the test
        conn.execute("INSERT INTO verifications (uid, prediction_id, created_at, user_name, label, unusable, comment) "
                     "VALUES (?, (SELECT id FROM predictions WHERE uid = ?), ?, ?, ?, ?, ?)",
                     (str(uuid.uuid4()), prediction_id, utc_now(), user, label, int(label is None), comment))


@pytest.fixture
def db(tmp_path: Path):
    path = tmp_path / "data" / "leukoscope.db"
    with Store(path) as store:
        yield path, store


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_is_a_dataset_with_a_manifest_latest_verification_wins(db, tmp_path: Path) -> None:
    path, store = db
    a = predict(store, image(0, 1), label="Benign", name="../../etc/passwd x.png")
    b = predict(store, image(2, 2), label="Benign", name="C:\\slides\\smear 7.PNG")
    c = predict(store, image(3, 3), label="Pro-B", name="noext")
    predict(store, image(1, 4), label="Early Pre-B")  # never verified: not exported
    verify(path, a, "Pre-B", user="ann")
    verify(path, a, "Benign", user="bob", comment="second look")  # later: wins
    verify(path, b, "Pre-B")
    verify(path, c, "Pro-B")
    out = tmp_path / "verified"
    summary = export_verified(path, out)
    assert summary.counts == {"Benign": 1, "Pre-B": 1, "Pro-B": 1} and summary.exported == 3
    assert summary.line().startswith(f"exported 3 verified image(s) (Benign 1, Pre-B 1, Pro-B 1) to {out}")
    rows = {r["prediction_id"]: r for r in read_rows(out / "manifest.csv")}
    assert tuple(read_rows(out / "manifest.csv")[0]) == MANIFEST_COLUMNS
    assert rows[str(a)]["label"] == "Benign" and rows[str(a)]["verifier"] == "bob"
    assert rows[str(b)]["model_label"] == "Benign" and rows[str(b)]["label"] == "Pre-B"
    assert rows[str(a)]["model_version"] == "tiny@abc" and rows[str(a)]["verified_at"].endswith("Z")
    for row in rows.values():  # every file sits in its class folder, named <sha prefix>_<safe name>
        file = out / row["path"]
        assert file.parent.parent == out and file.parent.name == row["label"]
        assert file.name.startswith(row["sha256"][:12] + "_") and sha256_bytes(file.read_bytes()) == row["sha256"]
    assert Path(rows[str(a)]["path"]).name.endswith("_passwd_x.png")
    assert Path(rows[str(b)]["path"]).name.endswith("_smear_7.png")
    assert Path(rows[str(c)]["path"]).suffix == ".png"  # from the bytes: the upload's name had none
    manifest = discover(out, workers=1)
    assert manifest.classes == CLASSES and len(manifest) == 3 and not manifest.problems
    assert manifest.class_counts() == {"Benign": 1, "Early Pre-B": 0, "Pre-B": 1, "Pro-B": 1}
    again = read_manifest_csv(out / "manifest.csv", out)  # also a leukoscope manifest
    assert {r.sha256 for r in again.records} == {r.sha256 for r in manifest.records}
    assert not (out / "missing.csv").exists() and not (out / "conflicts.csv").exists()


def test_an_image_is_exported_once_and_conflicts_are_reported(db, tmp_path: Path) -> None:
    path, store = db
    same = image(2, 9)
    first, second, third = (predict(store, same, name=f"copy{i}.png") for i in range(3))
    other = image(0, 5)
    x, y = predict(store, other), predict(store, other)
    verify(path, first, "Pre-B")
    verify(path, third, "Pre-B")
    verify(path, second, "Pro-B")  # latest overall for this image: wins, and the conflict is listed
    verify(path, x, "Benign")
    verify(path, y, "Benign")  # agrees: a repeat, no conflict
    summary = export_verified(path, tmp_path / "out")
    assert summary.counts == {"Benign": 1, "Pro-B": 1} and summary.duplicates == 1
    assert len(summary.conflicts) == 1 and summary.conflicts[0][0].prediction_id == second
    rows = read_rows(tmp_path / "out" / "manifest.csv")
    assert sorted(r["label"] for r in rows) == ["Benign", "Pro-B"]
    assert len({r["sha256"] for r in rows}) == 2
    conflicts = read_rows(tmp_path / "out" / "conflicts.csv")
    assert conflicts[0]["label"] == "Pro-B" and "Pre-B" in conflicts[0]["other_verdicts"]
    assert "1 image(s) with conflicting verdicts" in summary.line()


def test_unusable_and_purged_images_are_left_out_and_counted(db, tmp_path: Path) -> None:
    path, store = db
    kept = predict(store, image(0, 1))
    unusable = predict(store, image(1, 2))
    purged = predict(store, image(3, 3), name="old.png")
    verify(path, kept, "Benign")
    verify(path, unusable, "Pre-B")
    verify(path, unusable, None)  # latest: unusable
    verify(path, purged, "Pro-B")
    with sqlite3.connect(path) as conn:  # what the retention purge leaves: the row, no bytes
        conn.execute("UPDATE images SET data = zeroblob(0), size = 0 WHERE sha256 = ?", (sha256_bytes(image(3, 3)),))
    summary = export_verified(path, tmp_path / "out")
    assert summary.counts == {"Benign": 1} and summary.unusable == 1 and len(summary.missing) == 1
    assert "1 verified unusable, left out" in summary.line() and "1 missing" in summary.line()
    missing = read_rows(tmp_path / "out" / "missing.csv")
    assert missing == [{"prediction_id": str(purged), "sha256": sha256_bytes(image(3, 3)), "file_name": "old.png",
                        "label": "Pro-B", "reason": "image purged by the retention period"}]
    assert [p.name for p in (tmp_path / "out").iterdir() if p.is_dir()] == ["Benign"]


def test_out_folder_is_refused_unless_empty_or_overwrite_and_written_atomically(db, tmp_path: Path) -> None:
    path, store = db
    verify(path, predict(store, image(0, 1)), "Benign")
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    export_verified(path, out)
    with pytest.raises(UsageError, match=r"not empty.*--overwrite"):
        export_verified(path, out)
    verify(path, predict(store, image(2, 2)), "Pre-B")
    assert export_verified(path, out, overwrite=True).exported == 2
    assert len(read_rows(out / "manifest.csv")) == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an export"):
        export_verified(path, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        export_verified(path, tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file", "notes", "out"]  # no staging left


def test_nothing_is_written_when_nothing_can_be_exported(db, tmp_path: Path) -> None:
    path, store = db
    with pytest.raises(DataError, match="no verified images"):
        export_verified(path, tmp_path / "out")
    verify(path, predict(store, image(0, 1)), None)
    with pytest.raises(DataError, match="1 unusable"):
        export_verified(path, tmp_path / "out")
    verify(path, predict(store, image(1, 1)), "Pre-B")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE images SET data = zeroblob(0), size = 0")
    with pytest.raises(DataError, match="purged"):
        export_verified(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_database_is_only_read(db, tmp_path: Path) -> None:
    path, store = db
    verify(path, predict(store, image(0, 1)), "Benign")
    store.close()
    def contents() -> dict[str, bytes]:
        # -shm is shared memory: readers mark it, so it is not compared; and a reader of a WAL database whose
        # last writer has gone makes an empty -wal and -shm (SQLite's read-only mode; empty: no change)
        return {p.name: p.read_bytes() for p in path.parent.iterdir()
                if not p.name.endswith("-shm") and not (p.name.endswith("-wal") and p.stat().st_size == 0)}

    before = contents()
    export_verified(path, tmp_path / "out")
    assert contents() == before


def test_bad_databases_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="database not found"):
        export_verified(tmp_path / "none.db", tmp_path / "out")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all, just text" * 50)
    with pytest.raises(DataError, match="not a leukoscope database"):
        export_verified(junk, tmp_path / "out")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(DataError, match="not a leukoscope database"):
        export_verified(other, tmp_path / "out")
    old = tmp_path / "old.db"
    legacy_database(old, 4).close()  # leukoscope 0.1 before verifications
    with pytest.raises(DataError, match="schema version 4, from before verifications"):
        export_verified(old, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_and_class_folders_are_safe() -> None:
    png = image(0, 1)
    assert safe_name("a/b/../c d.JPG", png) == "c_d.jpg"
    assert safe_name("..", png) == "image.png"
    assert safe_name("x.exe", png) == "x.png"
    assert len(safe_name("n" * 300 + ".png", png)) == 84
    assert class_folder("Early Pre-B") == "Early Pre-B"
    assert class_folder("../x") is None and class_folder(".hidden") is None and class_folder(" ") is None


def test_a_postgresql_database_exports_the_same_way(postgres_url: str, tmp_path: Path) -> None:
    from leukoscope.serve import verifications

    with Store(postgres_url) as store:
        a, b = predict(store, image(0, 1), label="Benign"), predict(store, image(2, 2), label="Pre-B")
        verifications.add(store, a, "ann", "Pre-B")
        verifications.add(store, a, "bob", "Benign")
        verifications.add(store, b, "ann", None)  # unusable: left out
        summary = export_verified(postgres_url, tmp_path / "out")
    assert summary.counts == {"Benign": 1} and summary.unusable == 1
    (row,) = read_rows(tmp_path / "out" / "manifest.csv")
    assert row["verifier"] == "bob" and (tmp_path / "out" / row["path"]).read_bytes() == image(0, 1)


def test_an_export_is_one_clinics(db, tmp_path: Path) -> None:
    """Each clinic exports only its own verified images (the implicit one without `clinic`)."""
    from leukoscope.serve import verifications
    from leukoscope.serve.clinics import Clinics

    path, store = db
    north = Clinics(store).add("north")
    here = predict(store, image(0, 1), label="Benign", name="default-cell.png")
    data = image(2, 2)
    sha = sha256_bytes(data)
    there = store.add([NewPrediction(sample_id="n", file_name="north-cell.png", sha256=sha, model_version="m@1",
                                     label="Pre-B", confidence=0.9, probabilities={}, review=False, review_reasons=[],
                                     ood_score=None, width=8, height=8, clinic_id=north.id)], {sha: data})[0].id
    verifications.add(store, here, "ann", "Benign")
    verifications.add(store, there, "nora", "Pre-B")
    assert verifications.add(store, there, "ann", "Benign", clinic=1) is None  # not in the default clinic
    mine = export_verified(path, tmp_path / "default")
    theirs = export_verified(path, tmp_path / "north", clinic="north")
    assert (mine.counts, theirs.counts) == ({"Benign": 1}, {"Pre-B": 1})
    assert [r["prediction_id"] for r in read_rows(tmp_path / "north" / "manifest.csv")] == [there]
    with pytest.raises(UsageError, match="unknown clinic 'south'"):
        export_verified(path, tmp_path / "south", clinic="south")
