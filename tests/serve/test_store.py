"""The store on SQLite and PostgreSQL (the same tests on both): ordering, filters, images, transactions,
concurrency, reopening, the retention purge, thumbnails; then what only SQLite has (WAL, secure_delete, the
purge's index) and the schema's versions (tests/serve/test_migrations.py: upgrades from leukoscope 0.1)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from leukoscope.errors import DataError
from leukoscope.serve.store import Filters, NewPrediction, Store, schema_version


def new(i: int, *, label: str = "Benign", review: bool = False, sample: str = "s1", sha: str | None = None):
    return NewPrediction(
        sample_id=sample, file_name=f"cell-{i}.jpg", sha256=sha or f"{i:064x}", model_version="m@1",
        label=label, confidence=0.9, probabilities={"Benign": 0.9, "Pre-B": 0.1}, review=review,
        review_reasons=["low confidence"] if review else [], ood_score=None, width=64, height=64,
    )


def add(store: Store, *items: NewPrediction) -> list:
    return store.add(list(items), {p.sha256: p.sha256.encode() for p in items})


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def test_a_new_database_has_the_current_schema_version(store: Store):
    assert store.version == schema_version() == 8


def test_rows_round_trip_newest_first_with_pagination(store: Store):
    stored = add(store, *[new(i) for i in range(7)])
    assert [s.pk for s in stored] == sorted(s.pk for s in stored)
    first = store.page(1, 3)
    assert first.total == 7 and first.pages == 3
    assert [r.file_name for r in first.items] == ["cell-6.jpg", "cell-5.jpg", "cell-4.jpg"]
    assert [r.file_name for r in store.page(3, 3).items] == ["cell-0.jpg"]
    assert store.page(9, 3).items == []
    row = store.get(stored[2].id)
    assert row is not None and row.probabilities == {"Benign": 0.9, "Pre-B": 0.1}
    assert row.created_at.endswith("Z") and row.review is False and row.confidence == 0.9  # a double, not a float4
    assert store.get(10_000) is None and store.get(2**63) is None and store.get(0) is None


def test_filters_by_class_review_and_sample(store: Store):
    add(store, new(1, label="Benign"), new(2, label="Pre-B", review=True), new(3, label="Pre-B", sample="s2"))
    assert store.count(Filters(label="Pre-B")) == 2
    assert store.count(Filters(review=True)) == 1
    assert store.count(Filters(review=False, label="Pre-B")) == 1
    assert [r.file_name for r in store.iter_all(Filters(sample_id="s2"))] == ["cell-3.jpg"]
    assert store.labels() == ["Benign", "Pre-B"]


def test_images_are_content_addressed_and_stored_once(store: Store):
    add(store, new(1, sha="a" * 64), new(2, sha="a" * 64))
    assert store.image("a" * 64) == ("a" * 64).encode()
    assert store.scalar("SELECT COUNT(*) FROM images") == 1
    with pytest.raises(ValueError, match="no image bytes"):
        store.add([new(3)], {})


def test_iter_all_reads_in_chunks_newest_first(store: Store):
    add(store, *[new(i) for i in range(12)])
    ids = [r.pk for r in store.iter_all(chunk=5)]
    assert ids == sorted(ids, reverse=True) and len(ids) == 12


def test_failed_transaction_leaves_nothing(store: Store):
    with pytest.raises(IntegrityError):
        broken = dataclasses.replace(new(2), width=None)  # NOT NULL fails (label None is stored as '': unusable)
        store.add([new(1), broken], {new(1).sha256: b"x", new(2).sha256: b"y"})
    assert store.count() == 0
    assert store.image(new(1).sha256) is None


def test_concurrent_writers_never_lose_or_duplicate_rows(store: Store):
    threads, per_thread = 8, 10
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(per_thread):
                add(store, new(t * 1000 + i, sample=f"t{t}"), new(99_999, sample=f"t{t}"))  # one image shared by all
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    rows = list(store.iter_all())
    assert len(rows) == 2 * threads * per_thread
    assert len({r.id for r in rows}) == len(rows)
    assert {r.file_name for r in rows} == {f"cell-{t * 1000 + i}.jpg" for t in range(threads)
                                           for i in range(per_thread)} | {"cell-99999.jpg"}


def test_reopen_keeps_rows_and_version(db_url: str):
    with Store(db_url) as s:
        add(s, new(1), new(2))
    with Store(db_url) as s:
        assert s.count() == 2 and s.version == schema_version()


def test_a_database_of_an_unknown_newer_revision_is_refused_in_one_line(db_url: str):
    with Store(db_url) as s:
        s.write(lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '0099'")))
    with pytest.raises(DataError, match=r"schema version 0099, newer than this leukoscope supports \(0008\)") as info:
        Store(db_url).open()
    assert "\n" not in str(info.value)


def test_a_database_of_another_application_is_refused_and_left_as_it_was(db_url: str):
    """A mistyped --db naming another application's database: refused in one line, nothing written into it."""
    if "://" not in db_url:
        Path(db_url).parent.mkdir(parents=True, exist_ok=True)
    foreign = Store(db_url)  # its engine only: writing through it does not migrate
    foreign.write(lambda conn: conn.execute(text("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")))
    foreign.close()
    with pytest.raises(DataError, match=r"holds other tables \(patients\) and no leukoscope data") as info:
        Store(db_url).open()
    assert "\n" not in str(info.value)
    probe = Store(db_url)
    assert [r["n"] for r in probe.query("SELECT COUNT(*) AS n FROM patients")] == [0]
    with pytest.raises(Exception):  # noqa: B017 (the driver's own error): leukoscope made no table
        probe.query("SELECT COUNT(*) FROM predictions")
    probe.close()


def test_purged_images_lose_their_bytes_but_keep_their_predictions(store: Store):
    first = add(store, new(1, sha="a" * 64))[0]
    boundary = first.created_at
    time.sleep(0.01)  # the times have millisecond resolution
    second = add(store, new(2, sha="b" * 64))[0]
    later = second.created_at
    assert store.purge_images(boundary) == 0  # "before" is strict
    assert store.purge_images(later) == 1  # only the image uploaded before the second one
    assert store.image("a" * 64) is None and store.image("b" * 64) == ("b" * 64).encode()
    assert store.count() == 2 and store.get(first.id).file_name == "cell-1.jpg"
    raw = store.query("SELECT size, data FROM images WHERE sha256 = :sha", {"sha": "a" * 64})[0]
    assert raw["size"] == 0 and bytes(raw["data"]) == b""
    assert store.purge_images(later) == 0  # nothing left to purge
    add(store, new(3, sha="a" * 64))  # the same image uploaded again is kept anew
    assert store.image("a" * 64) == ("a" * 64).encode()


def test_thumbnails_are_stored_with_their_image_kept_on_reupload_and_purged_with_it(store: Store):
    first = new(1, sha="c" * 64)
    store.add([first], {first.sha256: b"image"}, {first.sha256: b"thumb-png"})
    assert store.thumbnail("c" * 64) == b"thumb-png"
    store.add([new(2, sha="c" * 64)], {"c" * 64: b"image"})  # the same image again, no thumbnail given
    assert store.thumbnail("c" * 64) == b"thumb-png"
    assert store.thumbnail("d" * 64) is None
    assert store.purge_images("9999") == 1
    assert store.thumbnail("c" * 64) is None  # a thumbnail is a picture of the image: it goes with it
    store.set_thumbnail("c" * 64, b"late")  # nor can a late one come back for a purged image
    assert store.thumbnail("c" * 64) is None


# -- SQLite only ---------------------------------------------------------------------------------------------

@pytest.fixture
def sqlite_store(tmp_path: Path):
    with Store(tmp_path / "sub" / "db.sqlite") as s:
        yield s


def test_a_new_sqlite_database_makes_its_folder_and_uses_wal(sqlite_store: Store):
    assert sqlite_store.path is not None and sqlite_store.path.parent.is_dir()
    assert sqlite3.connect(sqlite_store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_purge_finds_old_images_by_an_index(sqlite_store: Store):
    plan = " ".join(str(row["detail"]) for row in sqlite_store.query(
        "EXPLAIN QUERY PLAN UPDATE images SET size = 0 WHERE created_at < :x AND size > 0", {"x": "x"}))
    assert "USING INDEX images_created" in plan


def test_the_database_overwrites_deleted_content(sqlite_store: Store):
    assert sqlite_store.scalar("PRAGMA secure_delete") == 1  # set on every connection
    assert sqlite_store.scalar("PRAGMA foreign_keys") == 1


def test_not_a_database_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="cannot open the prediction database"):
        Store(path).open()


def test_a_closed_store_says_so(tmp_path: Path):
    store = Store(tmp_path / "db.sqlite").open()
    store.close()
    with pytest.raises(DataError, match="closed"):
        store.count()
