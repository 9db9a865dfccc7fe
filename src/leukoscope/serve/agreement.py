"""The lab's running validation: the model's calls against the technologists' verified calls.

Per model version (every prediction records the exact weights it came from), from the latest verification
of each verified prediction: the confusion matrix (rows: verified, columns: the model's call; "unusable"
on both sides, so an image the model gave no class and a technologist marked unusable agree), agreement
per class both ways, Cohen's kappa, the clinically worst error (verified leukemia the model called Benign,
and how many of those carried no review flag), and the flagged rate and agreement over time, per day, week
or month so that a plot has at most MAX_POINTS points. Counted in SQL (GROUP BY), so a long history costs
one pass; the plot is plain SVG geometry that the page template draws (no script, no image route).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from leukoscope.serve.store import Store
from leukoscope.serve.verifications import LATEST, UNUSABLE

MAX_POINTS = 60
BENIGN = "Benign"  # the non-leukemic class of the ALL dataset (review.samples uses the same name)
CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 220, 44, 12, 12, 28

_CONFUSION = f"""
SELECT p.model_version AS version, p.label AS model, COALESCE(v.label, '') AS verified, p.review AS review,
       COUNT(*) AS n
FROM predictions AS p JOIN ({LATEST}) AS l ON l.prediction_id = p.id JOIN verifications AS v ON v.id = l.id
WHERE {{clinic}}
GROUP BY version, model, verified, review
"""
_TIMELINE = f"""
SELECT p.model_version AS version, substr(p.created_at, 1, 10) AS day, COUNT(*) AS n, SUM(p.review) AS flagged,
       COUNT(v.id) AS verified,
       SUM(CASE WHEN v.id IS NOT NULL AND COALESCE(v.label, '') = p.label THEN 1 ELSE 0 END) AS agreed
FROM predictions AS p LEFT JOIN ({LATEST}) AS l ON l.prediction_id = p.id LEFT JOIN verifications AS v ON v.id = l.id
WHERE {{clinic}}
GROUP BY version, day ORDER BY day
"""


@dataclass
class Period:
    """One point of the timeline: predictions made in the period, how many flagged, verified and agreed."""

    label: str
    predictions: int = 0
    flagged: int = 0
    verified: int = 0
    agreed: int = 0

    @property
    def flagged_rate(self) -> float | None:
        return self.flagged / self.predictions if self.predictions else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.verified if self.verified else None


@dataclass(frozen=True)
class ClassAgreement:
    """Agreement on one class, both ways: of the cells verified as it, how many the model called it (found),
    and of the model's verified calls of it, how many the technologists confirmed."""

    name: str
    verified: int  # verified as this class
    called: int  # the model called it this class (verified predictions only)
    agreed: int  # both

    @property
    def found_rate(self) -> float | None:
        return self.agreed / self.verified if self.verified else None

    @property
    def confirmed_rate(self) -> float | None:
        return self.agreed / self.called if self.called else None


@dataclass
class Chart:
    """SVG geometry of the timeline: polylines (a gap where a period has no verified prediction) and points."""

    width: int
    height: int
    flagged: list[str]  # polyline "x,y x,y ..." segments
    agreement: list[str]
    points: list[dict[str, object]]  # x, y_flagged, y_agreement (None), the period, for circles and titles
    y_ticks: list[tuple[float, str]]  # (y, "50%")
    x_labels: list[tuple[float, str]]
    bottom: float
    left: float
    right: float


@dataclass
class VersionReport:
    """Everything the agreement page shows for one model version."""

    model_version: str
    categories: list[str]
    matrix: list[list[int]]  # [verified][model]
    predictions: int = 0
    flagged: int = 0
    verified: int = 0
    agreed: int = 0
    leukemia_called_benign: int = 0
    leukemia_called_benign_unflagged: int = 0
    benign_called_leukemia: int = 0
    last_day: str = ""
    bucket: str = "day"
    timeline: list[Period] = field(default_factory=list)
    per_class: list[ClassAgreement] = field(default_factory=list)
    chart: Chart | None = None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.verified if self.verified else None

    @property
    def flagged_rate(self) -> float | None:
        return self.flagged / self.predictions if self.predictions else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa of the matrix (None when undefined: nothing verified, or one category only)."""
        n = sum(map(sum, self.matrix))
        if not n:
            return None
        observed = sum(self.matrix[i][i] for i in range(len(self.matrix))) / n
        expected = sum(sum(self.matrix[i]) * sum(row[i] for row in self.matrix) for i in range(len(self.matrix))) / n**2
        return None if expected >= 1 else (observed - expected) / (1 - expected)


def _category(label: str) -> str:
    return label or UNUSABLE


def _bucket(days: Sequence[str]) -> tuple[str, dict[str, str]]:
    """Group days into days, ISO weeks (their Monday) or months, whichever gives at most MAX_POINTS points."""
    if len(days) <= MAX_POINTS:
        return "day", {d: d for d in days}
    weeks = {d: (date.fromisoformat(d) - timedelta(days=date.fromisoformat(d).weekday())).isoformat() for d in days}
    if len(set(weeks.values())) <= MAX_POINTS:
        return "week", weeks
    return "month", {d: d[:7] for d in days}


def chart(periods: Sequence[Period]) -> Chart:
    """Plot geometry: x evenly spaced by period, y from 0% (bottom) to 100% (top)."""
    left, right, top, bottom = PAD_L, CHART_W - PAD_R, PAD_T, CHART_H - PAD_B
    step = (right - left) / max(1, len(periods) - 1)

    def y(rate: float) -> float:
        return round(bottom - rate * (bottom - top), 1)

    flagged: list[list[str]] = [[]]
    agreement: list[list[str]] = [[]]
    points: list[dict[str, object]] = []
    for i, period in enumerate(periods):
        x = round(left + i * step if len(periods) > 1 else (left + right) / 2, 1)
        yf = None if period.flagged_rate is None else y(period.flagged_rate)
        ya = None if period.agreement is None else y(period.agreement)
        for line, value in ((flagged, yf), (agreement, ya)):
            if value is None:
                line.append([])
            else:
                line[-1].append(f"{x},{value}")
        points.append({"x": x, "y_flagged": yf, "y_agreement": ya, "period": period})
    ticks = [(y(v / 4), f"{25 * v}%") for v in range(5)]
    wanted = sorted({0, len(periods) // 2, len(periods) - 1}) if periods else []
    labels = [(float(points[i]["x"]), periods[i].label) for i in wanted]  # type: ignore[arg-type]
    return Chart(CHART_W, CHART_H, [" ".join(s) for s in flagged if len(s) > 1],
                 [" ".join(s) for s in agreement if len(s) > 1], points, ticks, labels, bottom, left, right)


def agreement_report(store: Store, classes: Sequence[str], serving: str | None = None, *,
                     clinic: int | None = None) -> list[VersionReport]:
    """One report per model version, of `clinic`'s predictions (None: every clinic's): the one `serving` now
    first, then the most recently used first."""
    reports: dict[str, VersionReport] = {}
    mine, params = ("p.clinic_id = :clinic", {"clinic": clinic}) if clinic is not None else ("1 = 1", {})
    confusion = store.query(_CONFUSION.format(clinic=mine), params)
    seen = {_category(r["model"]) for r in confusion} | {_category(r["verified"]) for r in confusion}
    categories = [*classes, *sorted(seen - {*classes, UNUSABLE}), UNUSABLE]
    index = {name: i for i, name in enumerate(categories)}

    def report(version: str) -> VersionReport:
        if version not in reports:
            size = len(categories)
            reports[version] = VersionReport(version, categories, [[0] * size for _ in range(size)])
        return reports[version]

    leukemic = {c for c in categories if c not in (BENIGN, UNUSABLE)} if BENIGN in classes else set()
    for r in confusion:
        rep = report(r["version"])
        model, verified, n = _category(r["model"]), _category(r["verified"]), int(r["n"])
        rep.matrix[index[verified]][index[model]] += n
        if verified in leukemic and model == BENIGN:
            rep.leukemia_called_benign += n
            rep.leukemia_called_benign_unflagged += 0 if r["review"] else n
        if verified == BENIGN and model in leukemic:
            rep.benign_called_leukemia += n
    days: dict[str, dict[str, Period]] = defaultdict(dict)
    for r in store.query(_TIMELINE.format(clinic=mine), params):
        rep = report(r["version"])
        rep.predictions += int(r["n"])
        rep.flagged += int(r["flagged"] or 0)
        rep.verified += int(r["verified"])
        rep.agreed += int(r["agreed"] or 0)
        rep.last_day = max(rep.last_day, r["day"])
        days[r["version"]][r["day"]] = Period(r["day"], int(r["n"]), int(r["flagged"] or 0), int(r["verified"]),
                                              int(r["agreed"] or 0))
    for version, rep in reports.items():
        rep.bucket, into = _bucket(sorted(days[version]))
        merged: dict[str, Period] = {}
        for day, p in sorted(days[version].items()):
            q = merged.setdefault(into[day], Period(into[day]))
            q.predictions, q.flagged = q.predictions + p.predictions, q.flagged + p.flagged
            q.verified, q.agreed = q.verified + p.verified, q.agreed + p.agreed
        rep.timeline = list(merged.values())
        rep.chart = chart(rep.timeline) if rep.timeline else None
        rep.per_class = [ClassAgreement(name, sum(rep.matrix[i]), sum(row[i] for row in rep.matrix), rep.matrix[i][i])
                         for i, name in enumerate(categories)]
    return sorted(reports.values(), key=lambda r: (r.model_version == serving, r.last_day, r.model_version),
                  reverse=True)
