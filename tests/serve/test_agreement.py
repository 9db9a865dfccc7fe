"""The agreement report (leukoscope.serve.agreement): the confusion matrix of verified against model calls per
model version, per-class agreement both ways, kappa, the worst error, and the timeline and its plot."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from leukoscope.serve import verifications
from leukoscope.serve.agreement import MAX_POINTS, Period, agreement_report, chart
from leukoscope.serve.store import NewPrediction, Store

CLASSES = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]


@pytest.fixture
def store(any_store: Store) -> Store:
    """On SQLite and PostgreSQL: the report is counted in SQL."""
    return any_store


def predict(store: Store, label: str | None, *, version: str = "m@1", review: bool = False,
            day: str | None = None) -> str:
    sha = f"{store.count() + 1:064x}"
    row = NewPrediction(sample_id="s", file_name="x.png", sha256=sha, model_version=version, label=label,
                        confidence=0.9, probabilities=dict.fromkeys(CLASSES, 0.25), review=review, review_reasons=[],
                        ood_score=None, width=64, height=64, status="ok" if label else "unusable")
    pid = store.add([row], {sha: b"x"})[0].id
    if day:
        store.write(lambda conn: conn.execute(text("UPDATE predictions SET created_at = :at WHERE uid = :id"),
                                              {"at": f"{day}T10:00:00.000Z", "id": pid}))
    return pid


def verify(store: Store, pid: str, *labels: str | None) -> None:
    for label in labels:
        verifications.add(store, pid, "alice", label)


def test_the_matrix_counts_the_latest_verification_per_model_version(store: Store):
    verify(store, predict(store, "Benign"), "Benign")
    verify(store, predict(store, "Benign"), "Benign", "Pre-B")  # the later call counts: leukemia called Benign
    verify(store, predict(store, "Benign", review=True), "Pro-B")  # ... this one was flagged
    verify(store, predict(store, "Pre-B"), "Pre-B")
    verify(store, predict(store, None), None)  # no class from the model, unusable to the technologist: agree
    verify(store, predict(store, "Pro-B"), "Benign")  # benign called leukemia
    predict(store, "Pre-B")  # not verified: counted in predictions only
    verify(store, predict(store, "Pre-B", version="m@2"), "Pre-B")
    (new, old) = agreement_report(store, CLASSES)  # the most recently used version first (same day: by name)
    assert (new.model_version, old.model_version) == ("m@2", "m@1")
    assert old.categories == [*CLASSES, "unusable"]
    assert old.predictions == 7 and old.flagged == 1 and old.verified == 6 and old.agreed == 3
    assert old.agreement == pytest.approx(0.5) and old.flagged_rate == pytest.approx(1 / 7)
    b, _, p, r, u = range(5)
    expected = [[0] * 5 for _ in range(5)]
    expected[b][b], expected[p][b], expected[r][b], expected[p][p], expected[u][u], expected[b][r] = 1, 1, 1, 1, 1, 1
    assert old.matrix == expected  # rows: verified, columns: the model's call
    assert (old.leukemia_called_benign, old.leukemia_called_benign_unflagged, old.benign_called_leukemia) == (2, 1, 1)
    per_class = {c.name: c for c in old.per_class}
    assert (per_class["Benign"].verified, per_class["Benign"].called, per_class["Benign"].agreed) == (2, 3, 1)
    assert per_class["Benign"].found_rate == pytest.approx(0.5)
    assert per_class["Benign"].confirmed_rate == pytest.approx(1 / 3)
    assert per_class["Early Pre-B"].found_rate is None
    # kappa from the matrix: observed 3/6; expected (2*3 + 2*1 + 1*1 + 1*1) / 36
    assert old.kappa == pytest.approx((0.5 - 10 / 36) / (1 - 10 / 36))
    assert new.verified == new.agreed == 1 and new.kappa is None  # one category only: kappa undefined
    serving_first = agreement_report(store, CLASSES, serving="m@1")
    assert [r.model_version for r in serving_first] == ["m@1", "m@2"]  # the version serving now comes first


def test_classes_of_an_older_model_get_their_own_row_and_nothing_verified_has_no_matrix_numbers(store: Store,
                                                                                               tmp_path: Path):
    verify(store, predict(store, "Myeloid", version="old@1"), "Benign")
    predict(store, "Benign", version="m@1")
    reports = {r.model_version: r for r in agreement_report(store, CLASSES)}
    assert reports["old@1"].categories == [*CLASSES, "Myeloid", "unusable"]
    assert reports["m@1"].verified == 0 and reports["m@1"].agreement is None and reports["m@1"].kappa is None
    assert agreement_report(Store(tmp_path / "empty.db").open(), CLASSES) == []


def test_the_timeline_is_per_day_week_or_month_with_at_most_max_points(store: Store):
    verify(store, predict(store, "Benign", day="2026-01-05"), "Benign")
    predict(store, "Benign", review=True, day="2026-01-05")
    predict(store, "Pre-B", day="2026-01-07")
    (report,) = agreement_report(store, CLASSES)
    assert report.bucket == "day" and [p.label for p in report.timeline] == ["2026-01-05", "2026-01-07"]
    first, second = report.timeline
    assert (first.predictions, first.flagged, first.verified, first.agreed) == (2, 1, 1, 1)
    assert second.agreement is None and second.flagged_rate == 0
    for day in range(1, 29):  # 28 days of February and 30 of January and March: more than MAX_POINTS days
        for month in ("02", "03"):
            predict(store, "Benign", day=f"2026-{month}-{day:02d}")
    for day in range(1, 29):
        predict(store, "Benign", day=f"2026-04-{day:02d}")
    (report,) = agreement_report(store, CLASSES)
    assert report.bucket == "week" and len(report.timeline) <= MAX_POINTS
    assert report.timeline[0].label == "2026-01-05"  # weeks are named by their Monday
    assert sum(p.predictions for p in report.timeline) == report.predictions
    for year in range(2027, 2029):  # two more years, one prediction a week: too many weeks, so months
        for week in range(52):
            predict(store, "Benign", day=f"{year}-{1 + week // 5:02d}-{1 + (week % 5) * 5:02d}"[:10])
    (report,) = agreement_report(store, CLASSES)
    assert report.bucket == "month" and report.timeline[0].label == "2026-01" and len(report.timeline) <= MAX_POINTS


def test_the_chart_breaks_its_agreement_line_where_nothing_was_verified():
    periods = [Period("d1", 4, 1, 2, 2), Period("d2", 4, 2, 0, 0), Period("d3", 4, 0, 2, 1), Period("d4", 2, 0, 2, 0)]
    plot = chart(periods)
    assert len(plot.flagged) == 1 and len(plot.flagged[0].split()) == 4  # every period has predictions
    assert len(plot.agreement) == 1 and len(plot.agreement[0].split()) == 2  # d1 alone is a point, d3-d4 a line
    ys = [p["y_agreement"] for p in plot.points]
    assert ys[1] is None and ys[0] < ys[2] < ys[3] == plot.bottom  # 100% at the top, 0% at the bottom
    assert [t for _, t in plot.y_ticks] == ["0%", "25%", "50%", "75%", "100%"]
    assert [t for _, t in plot.x_labels] == ["d1", "d3", "d4"]
    single = chart([Period("only", 1, 1, 1, 1)])
    assert single.flagged == [] and single.points[0]["x"] == (single.left + single.right) / 2
