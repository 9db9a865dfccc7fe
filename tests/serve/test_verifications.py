"""The verification trail in the store (leukoscope.serve.verifications): appended, never overwriting; the latest
supersedes; who verified is kept; the "disagrees with the model" filters; the worklist's order."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from leukoscope.serve import verifications
from leukoscope.serve.store import Filters, NewPrediction, Store
from leukoscope.serve.verifications import TrailFilters


def new(i: int, *, label: str | None = "Benign", review: bool = False, sha: str | None = None) -> NewPrediction:
    return NewPrediction(
        sample_id="s1", file_name=f"cell-{i}.jpg", sha256=sha or f"{i:064x}", model_version="m@1", label=label,
        confidence=0.9, probabilities={"Benign": 0.9, "Pre-B": 0.1}, review=review,
        review_reasons=["low confidence"] if review else [], ood_score=None, width=64, height=64,
        status="ok" if label else "unusable",
    )


def add(store: Store, *items: NewPrediction) -> list[int]:
    return [row.id for row in store.add(list(items), {p.sha256: p.sha256.encode() for p in items})]


@pytest.fixture
def store(any_store: Store) -> Store:
    """On SQLite and PostgreSQL."""
    return any_store


@pytest.fixture
def days(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each verification one day after the previous one (2026-01-01, 02, ...), so time filters never
    depend on how fast the test runs."""
    count = iter(range(1, 29))
    monkeypatch.setattr(verifications, "utc_now", lambda: f"2026-01-{next(count):02d}T12:00:00.000Z")


def raw(store: Store, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in store.query(sql)]


def test_verifications_are_appended_and_the_model_call_is_never_touched(store: Store):
    (pid,) = add(store, new(1, label="Pre-B"))
    first = verifications.add(store, pid, "alice", "Benign", "looks mature")
    second = verifications.add(store, pid, "bob", None)
    assert first is not None and second is not None and second.pk > first.pk
    rows = raw(store, "SELECT v.uid, p.uid, user_name, v.label, unusable, comment FROM verifications AS v "
                      "JOIN predictions AS p ON p.id = v.prediction_id ORDER BY v.id")
    assert rows == [(first.id, pid, "alice", "Benign", 0, "looks mature"), (second.id, pid, "bob", None, 1, "")]
    assert store.get(pid).label == "Pre-B"  # the model's call stays what it was
    assert [v.user_name for v in verifications.trail(store, pid)] == ["alice", "bob"]  # both stay, oldest first
    assert first.created_at.endswith("Z")


def test_the_latest_verification_supersedes_and_is_attached_to_its_prediction(store: Store):
    a, b, c = add(store, new(1), new(2, label="Pre-B"), new(3))
    verifications.add(store, a, "alice", "Pre-B")
    verifications.add(store, a, "bob", "Benign")
    verifications.add(store, b, "alice", None)
    pks = {store.get(x).pk: x for x in (a, b, c)}
    latest = {pks[pk]: v for pk, v in verifications.latest(store, list(pks)).items()}
    assert set(latest) == {a, b}
    assert (latest[a].user_name, latest[a].label) == ("bob", "Benign")
    assert latest[b].unusable and latest[b].call == "unusable"
    rows = {r.id: r for r in verifications.attach(store, store.page().items)}
    assert rows[a].verification == latest[a] and rows[c].verification is None
    assert rows[a].to_json()["verification"] == {"id": latest[a].id, "prediction_id": a, "user": "bob",
                                                 "label": "Benign", "unusable": False, "comment": "",
                                                 "created_at": latest[a].created_at}
    assert rows[c].to_json()["verification"] is None
    streamed = list(verifications.attach_all(store, store.iter_all(), chunk=2))
    assert [r.verification for r in streamed] == [rows[r.id].verification for r in streamed]


def test_a_verification_of_a_missing_prediction_writes_nothing(store: Store):
    add(store, new(1))
    assert verifications.add(store, "00000000-0000-4000-8000-000000000999", "alice", "Benign") is None
    assert verifications.add(store, "1", "alice", "Benign") is None  # an integer is no id
    assert raw(store, "SELECT COUNT(*) FROM verifications") == [(0,)]
    with pytest.raises(IntegrityError):  # and the database itself refuses an orphan
        store.write(lambda conn: conn.execute(text("INSERT INTO verifications (prediction_id, created_at, user_name, "
                                                   "label) VALUES (999, 'now', 'x', 'Benign')")))
    assert raw(store, "SELECT COUNT(*) FROM verifications") == [(0,)]


def test_the_disagree_and_verified_filters_use_the_latest_verification(store: Store):
    agree, disagree, fixed, unusable_both, unverified = add(
        store, new(1, label="Benign"), new(2, label="Pre-B"), new(3, label="Pre-B"), new(4, label=None), new(5))
    verifications.add(store, agree, "alice", "Benign")
    verifications.add(store, disagree, "alice", "Benign")
    verifications.add(store, fixed, "alice", "Benign")  # superseded by a call that agrees
    verifications.add(store, fixed, "bob", "Pre-B")
    verifications.add(store, unusable_both, "bob", None)  # no class from the model, unusable to the technologist

    def ids(**filters: object) -> list[str]:
        order = [agree, disagree, fixed, unusable_both, unverified]
        return sorted((r.id for r in store.iter_all(Filters(**filters))), key=order.index)

    assert ids(disagrees=True) == [disagree]
    assert ids(disagrees=False) == [agree, fixed, unusable_both]
    assert ids(verified=True) == [agree, disagree, fixed, unusable_both]
    assert ids(verified=False) == [unverified]
    assert store.count(Filters(disagrees=True, label="Pre-B")) == 1 and store.count(Filters(disagrees=True,
                                                                                           label="Benign")) == 0


def test_the_trail_lists_every_verification_with_the_model_call_and_filters(store: Store, days: None):
    a, b = add(store, new(1, label="Benign"), new(2, label="Pre-B"))
    v1 = verifications.add(store, a, "alice", "Pre-B")
    v2 = verifications.add(store, a, "bob", "Benign")
    v3 = verifications.add(store, b, "alice", "Pre-B", "sure")
    page = verifications.page(store)
    assert page.total == 3 and [e.verification.id for e in page.items] == [v3.id, v2.id, v1.id]  # newest first
    by_id = {e.verification.id: e for e in page.items}
    assert by_id[v1.id].to_json() | {"created_at": ""} == {
        "id": v1.id, "prediction_id": a, "created_at": "", "user": "alice", "label": "Pre-B", "unusable": False,
        "comment": "", "model_label": "Benign", "model_version": "m@1", "agrees": False, "latest": False}
    assert by_id[v2.id].latest and by_id[v2.id].to_json()["agrees"]

    def listed(**filters: object) -> list[int]:
        return [e.verification.id for e in verifications.page(store, filters=TrailFilters(**filters)).items]

    assert listed(user="alice") == [v3.id, v1.id]
    assert listed(disagrees=True) == [v1.id]
    assert listed(disagrees=False) == [v3.id, v2.id]
    assert listed(latest=True) == [v3.id, v2.id] and listed(latest=False) == [v1.id]
    assert v2.created_at == "2026-01-02T12:00:00.000Z"
    assert listed(since=v2.created_at) == [v3.id, v2.id]  # since: at or after
    assert listed(until=v2.created_at) == [v1.id]  # until: before
    assert listed(since="2026-01-02", until="2026-01-03") == [v2.id]
    assert listed(since="9999") == [] and listed(until="0000") == []
    two = verifications.page(store, 2, 2)
    assert [e.verification.id for e in two.items] == [v1.id] and two.pages == 2


def test_the_worklist_is_unverified_kept_images_flagged_first_newest_first(store: Store):
    p1, p2, p3, p4, p5, _ = add(store, new(1), new(2, review=True), new(3), new(4, review=True), new(5), new(6))
    verifications.add(store, p5, "alice", "Benign")  # verified: no longer awaiting
    store.purge_images("9999")  # every image's bytes purged (retention) ...
    p7, p8, p9, p10 = add(store, new(7, sha=f"{1:064x}"), new(8, sha=f"{2:064x}"), new(9, sha=f"{3:064x}", review=True),
                          new(10, sha=f"{4:064x}"))  # ... then the images of 1-4 uploaded again (6's stays gone)
    rows, total = verifications.pending(store, 50)
    assert [r.id for r in rows] == [p9, p4, p2, p10, p8, p7, p3, p1] and total == 8
    first, _ = verifications.pending(store, 3)
    rest, _ = verifications.pending(store, 50, after_pk=first[-1].pk, after_flagged=first[-1].review)
    assert [r.id for r in first + rest] == [r.id for r in rows]  # the cursor continues without repeating


def test_users_seen_lists_each_verifier_once(store: Store):
    (pid,) = add(store, new(1))
    for name in ("bob", "alice", "bob"):
        verifications.add(store, pid, name, "Benign")
    assert verifications.users_seen(store) == ["alice", "bob"]
