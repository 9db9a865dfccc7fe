"""Choose a package's Benign view check (leukoscope.review.benign_check) on its val part, by a written rule.

Used by scripts/fit_benign_check.py on the bundled package and by `leukoscope adapt` on every adapted
package: a network fine-tuned on a second lab's images is a new network, and the check its parent was
given says nothing about where the new one is overconfident. Both run the same RULE, fixed before the
bundled package's val numbers decided it: on the val part and seeded shifted copies of it
(leukoscope.data.shifts.validation_shifts: as is, every named shift, 4 random composites), never on the
test part, each image goes through Predictor.predict_bytes as every command runs it (the package's
realignment included); the Benign calls nothing flags are the check's images. Candidates: views from
CANDIDATE_VIEWS x thresholds from CANDIDATE_THRESHOLDS and the package's own Benign confidence threshold.
Keep those that raise the unshifted val part's flagged share by at most MAX_FLAG_RISE (5 points); among
them the fewest leukemia images called Benign without a flag over the shifted copies wins, then the lowest
flagged share of the unshifted part, then the lowest mean flagged share over the shifted copies, then the
fewest views, then the lower threshold. The check only adds flags, so no candidate can change a call; the
chosen one is checked through Predictor.predict_bytes against the table (DataError when they differ).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from leukoscope.data.manifest import Manifest
from leukoscope.data.shifts import VALIDATION_COMPOSITES, VALIDATION_SEED
from leukoscope.errors import DataError
from leukoscope.inference.export import shifted_copies
from leukoscope.inference.predictor import Predictor
from leukoscope.inference.val_copies import outputs, read_copy
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View
from leukoscope.review.rules import MAX_FLAG_RISE, choose_benign_threshold

CANDIDATE_VIEWS = {"x0.5": (0.5,), "x2": (2.0,), "x0.5, x2": (0.5, 2.0), "x0.71, x1.41": (0.71, 1.41),
                   "x0.5, x0.71, x1.41, x2": (0.5, 0.71, 1.41, 2.0)}
CANDIDATE_THRESHOLDS = (0.5, 0.9, 0.99, 0.995, 0.999, 0.9995)  # and the package's Benign confidence threshold
NO_CHECK = "no check"
RULE = ("Chosen on the val part and seeded shifted copies of it (leukoscope.data.shifts.validation_shifts), never on "
        "the test part, through Predictor.predict_bytes with the package's realignment; the check sees the Benign "
        "calls nothing else flags. Candidates: views in {x0.5; x2; x0.5, x2; x0.71, x1.41; all four} x P(Benign) "
        "threshold in {0.5, 0.9, 0.99, 0.995, 0.999, 0.9995, the package's Benign confidence threshold}. Keep those "
        "raising the unshifted val part's flagged share by at most 5 points; then the fewest leukemia images "
        "called Benign without a flag over the shifted copies, then the lowest unshifted flagged share, then the "
        "lowest mean shifted flagged share, then the fewest views, then the lower threshold. The check only adds "
        "flags; it never changes a call.")
Log = Callable[[str], None]


@dataclass
class CopyOutputs:
    """One val copy through the package without the check: what it called and flagged, and P(Benign) of
    every candidate view of the Benign calls nothing flagged (`rows`)."""

    labels: np.ndarray  # N
    called: np.ndarray  # N, class index (-1: no call)
    flagged: np.ndarray  # N bool
    rows: np.ndarray  # the unflagged Benign calls
    p_benign: np.ndarray  # V x len(rows), P(Benign) at each of all_views


@dataclass(frozen=True)
class BenignCheckFit:
    """What the rule chose (`check` None: no check earns its flags) and the val numbers behind it."""

    chosen: str
    check: BenignCheck | None
    summary: dict[str, dict[str, Any]]  # per candidate: unshifted and mean shifted flagged share, shifted misses
    per_copy: dict[str, dict[str, Any]]  # per val copy: the chosen check's numbers before and after
    seconds: float

    def record(self) -> dict[str, Any]:
        """model.json's `benign_check_fit` entries this fit fills (the caller adds command, date and data)."""
        return {"rule": RULE, "chosen": self.chosen, "candidates": self.summary, "per_copy": self.per_copy,
                "seconds": round(self.seconds, 1)}


def candidates(benign_threshold: float) -> list[tuple[str, BenignCheck | None]]:
    """No check, then every view set of CANDIDATE_VIEWS with every threshold (the package's own included)."""
    thresholds = sorted({*CANDIDATE_THRESHOLDS, float(benign_threshold)})
    out: list[tuple[str, BenignCheck | None]] = [(NO_CHECK, None)]
    for (name, scales), t in itertools.product(CANDIDATE_VIEWS.items(), thresholds):
        out.append((f"views {name}; P(Benign) >= {t:g}", BenignCheck(tuple(View(scale=s) for s in scales), t)))
    return out


def all_views() -> list[View]:
    """Every view some candidate reads, each once (the network runs once per view per image)."""
    return sorted({View(scale=s) for scales in CANDIDATE_VIEWS.values() for s in scales}, key=lambda v: v.scale)


def with_check(check: BenignCheck | None, views: list[View], copy_out: CopyOutputs, benign: int) -> dict[str, Any]:
    """Flagged share and leukemia called Benign without a flag on one copy, had `check` run."""
    doubted = np.zeros(len(copy_out.rows), bool)
    if check is not None and len(copy_out.rows):
        index = [views.index(v) for v in check.views]
        doubted = check.doubting_view(copy_out.p_benign[index].T) >= 0
    flagged = copy_out.flagged.copy()
    flagged[copy_out.rows[doubted]] = True
    return copy_counts(copy_out.labels, copy_out.called, flagged, benign)


def copy_counts(labels: np.ndarray, called: np.ndarray, flagged: np.ndarray, benign: int) -> dict[str, Any]:
    """One copy's flagged share and its leukemia images called Benign without a flag."""
    missed = (labels != benign) & (called == benign) & ~flagged
    return {"flagged": float(flagged.mean()), "leukemia_called_benign_not_flagged": int(missed.sum())}


def copies_summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A candidate's per-copy counts in the rules' terms: the unshifted flagged share (copy "none"), the mean
    flagged share over the shifted copies and their leukemia called Benign without a flag."""
    shifted = [row for name, row in rows.items() if name != "none"]
    return {"unshifted_flagged": rows["none"]["flagged"],
            "shifted_mean_flagged": float(np.mean([r["flagged"] for r in shifted])) if shifted else 0.0,
            "shifted_missed": sum(r["leukemia_called_benign_not_flagged"] for r in shifted)}


def _order(rows: dict[str, dict[str, Any]], check: BenignCheck | None) -> tuple[int, float, float, int, float]:
    """Both rules' order: fewest shifted misses, then fewest unshifted flags, then fewest shifted flags, then the
    fewest views, then the lower check threshold."""
    summary = copies_summary(rows)
    return (summary["shifted_missed"], summary["unshifted_flagged"], summary["shifted_mean_flagged"],
            len(check.views) if check else 0, check.threshold if check else 0.0)


def choose(table: dict[str, dict[str, dict[str, Any]]], checks: dict[str, BenignCheck | None],
           max_flag_rise: float = MAX_FLAG_RISE) -> str:
    """RULE's choice among the candidates' per-copy numbers (copy "none" is the unshifted val part)."""
    base = table[NO_CHECK]["none"]["flagged"]
    eligible = [name for name in table if table[name]["none"]["flagged"] <= base + max_flag_rise + 1e-12]
    return min(eligible, key=lambda name: _order(table[name], checks[name]))


def copy_outputs(predictor: Predictor, files: list[bytes], pixels: np.ndarray, labels: np.ndarray,
                 views: list[View], name: str) -> CopyOutputs:
    """One val copy through the predictor (its check off) and P(Benign) of every view of its unflagged Benign
    calls."""
    calls = read_copy(predictor, files, name)
    called, flagged = calls.called, calls.flagged
    rows = np.flatnonzero((called == predictor.benign_index) & ~flagged)
    p_benign = np.zeros((len(views), 0))
    if len(rows):
        p_benign = np.stack([outputs(predictor, pixels[rows], view)[0][:, predictor.benign_index] for view in views])
    return CopyOutputs(labels, called, flagged, rows, p_benign)


def checked_on_val(predictor: Predictor, check: BenignCheck | None,
                   val_copies: dict[str, tuple[list[bytes], np.ndarray]],
                   expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The chosen check (None: none, under the predictor's Benign threshold) through Predictor.predict_bytes on
    every val copy: the table's numbers, or DataError."""
    predictor.benign_check = check
    out = {}
    try:
        for name, (files, labels) in val_copies.items():
            calls = read_copy(predictor, files, name)
            row = {"flagged": float(calls.flagged.mean()),
                   "leukemia_called_benign_not_flagged": int(calls.missed(labels, predictor.benign_index).sum()),
                   "benign_view_flags": sum("benign_view" in p.review_codes for p in calls.predictions)}
            if (row["leukemia_called_benign_not_flagged"] != expected[name]["leukemia_called_benign_not_flagged"]
                    or abs(row["flagged"] - expected[name]["flagged"]) > 1e-9):
                raise DataError(f"the chosen check gave other numbers through predict_bytes on {name!r} than in "
                                f"the table: {row} vs {expected[name]}")
            out[name] = row
    finally:
        predictor.benign_check = None
    return out


def _benign_of(predictor: Predictor, val: Manifest, what: str) -> int:
    """The Benign class index, with the predictor's own Benign check switched off for a fit; DataError when
    there is no Benign class or no val image."""
    if predictor.benign_index is None:
        raise DataError("the package has no Benign class: there is no Benign call to check")
    if not len(val):
        raise DataError(f"there are no val images to choose {what} on")
    predictor.benign_check = None
    return predictor.benign_index


def fit_benign_check(predictor: Predictor, val: Manifest, *, composites: int = VALIDATION_COMPOSITES,
                     seed: int = VALIDATION_SEED, log: Log | None = None) -> BenignCheckFit:
    """RULE on `val` (a package's val part) through `predictor`, whose own Benign check is switched off for
    the fit and left off. DataError when the package has no Benign class or `val` no images."""
    log = log or (lambda message: None)
    benign = _benign_of(predictor, val, "the Benign view check")
    started = time.time()
    checks = dict(candidates(predictor.benign_threshold))
    views = all_views()
    table: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in checks}
    val_copies: dict[str, tuple[list[bytes], np.ndarray]] = {}
    for copy_name, files, pixels, labels in shifted_copies(val, predictor.preprocess, composites=composites,
                                                           seed=seed):
        val_copies[copy_name] = (files, labels)
        out = copy_outputs(predictor, files, pixels, labels, views, copy_name)
        for name, check in checks.items():
            table[name][copy_name] = with_check(check, views, out, benign)
        log(f"Benign check: val copy {copy_name!r}, {len(labels)} images, {len(out.rows)} unflagged Benign calls, "
            f"{time.time() - started:.0f} s")
    chosen = choose(table, checks)
    check = checks[chosen]
    summary = {name: copies_summary(rows) for name, rows in table.items()}
    verified = checked_on_val(predictor, check, val_copies, table[chosen]) if check is not None else {}
    per_copy = {c: {"before": table[NO_CHECK][c], "after": verified.get(c, table[NO_CHECK][c])} for c in val_copies}
    return BenignCheckFit(chosen, check, summary, per_copy, time.time() - started)


# ------------------------------------------------------------------------------------------- joint rule

JOINT_RULE = (
    "Chosen on the val part and seeded shifted copies of it (leukoscope.data.shifts.validation_shifts), never on "
    "the test part, through Predictor.predict_bytes. For every Benign view check candidate of RULE (no check "
    "included), the Benign confidence threshold is chosen again by the export's shift rule (a) "
    "(leukoscope.review.rules.choose_benign_threshold: 1 - m / 2, m the smallest 1 - P(Benign) among leukemia "
    "images called Benign that no reason flags, now counting the check's flags as reasons) over all copies at once. "
    "Keep the pairs whose unshifted flagged share is at most 5 points above the share flagged by every reason "
    "but the Benign rules (Benign confidence, Benign view, cell scale); then the fewest leukemia images called "
    "Benign without a flag over the shifted copies, then the lowest unshifted flagged share, then the lowest mean "
    "shifted flagged share, then the fewest views, then the lower check threshold. The pair only sets when a "
    "Benign call is flagged; it never changes a call.")
BENIGN_RULE_CODES = frozenset({"benign_low_confidence", "benign_view"})  # what the joint rule decides
NOT_IN_BASELINE = BENIGN_RULE_CODES | {"cell_scale"}  # the export's cap baseline leaves the scale range out too


@dataclass
class JointCopy:
    """One val copy through the package with no Benign rule of its own: calibrated probabilities, whether a
    reason other than the Benign rules flags each image (`other`; no call counts as flagged), and P(Benign)
    at every candidate view of the Benign calls nothing else flags (`rows`)."""

    labels: np.ndarray  # N
    probs: np.ndarray  # N x C (zeros without a call)
    other: np.ndarray  # N bool
    baseline: np.ndarray  # N bool: flagged by a reason the export's cap counts as the package's own
    rows: np.ndarray
    p_benign: np.ndarray  # V x len(rows)


@dataclass(frozen=True)
class BenignRulesFit:
    """The joint rule's choice: the Benign view check (None: none) and the Benign confidence threshold."""

    chosen: str
    check: BenignCheck | None
    threshold: float
    summary: dict[str, dict[str, Any]]
    per_copy: dict[str, dict[str, Any]]
    seconds: float

    def record(self) -> dict[str, Any]:
        return {"rule": JOINT_RULE, "chosen": self.chosen, "benign_confidence_threshold": self.threshold,
                "candidates": self.summary, "per_copy": self.per_copy, "seconds": round(self.seconds, 1)}


def joint_copy(predictor: Predictor, files: list[bytes], pixels: np.ndarray, labels: np.ndarray,
               views: list[View], name: str) -> JointCopy:
    """One val copy through `predictor` (its Benign check off) and P(Benign) of every view of the Benign calls
    no other reason flags."""
    calls = read_copy(predictor, files, name)
    probs = np.array([[p.probabilities[c] for c in predictor.classes] for p in calls.predictions], np.float64)
    other = np.array([bool(set(p.review_codes) - BENIGN_RULE_CODES) or p.label is None for p in calls.predictions])
    baseline = np.array([bool(set(p.review_codes) - NOT_IN_BASELINE) or p.label is None for p in calls.predictions])
    rows = np.flatnonzero((calls.called == predictor.benign_index) & ~other)
    p_benign = np.zeros((len(views), 0))
    if len(rows):
        p_benign = np.stack([outputs(predictor, pixels[rows], view)[0][:, predictor.benign_index] for view in views])
    return JointCopy(labels, probs.reshape(len(labels), len(predictor.classes)), other, baseline, rows, p_benign)


def joint_table(copies: dict[str, JointCopy], checks: dict[str, BenignCheck | None], views: list[View], *,
                benign: int, confidence_threshold: float, max_flag_rise: float = MAX_FLAG_RISE,
                ) -> dict[str, dict[str, Any]]:
    """Per candidate check: the Benign threshold rule (a) then chooses over all copies, and per copy the flagged
    share and the leukemia called Benign without a flag under the pair."""
    names = list(copies)
    labels = np.concatenate([copies[n].labels for n in names])
    probs = np.concatenate([copies[n].probs for n in names])
    other = np.concatenate([copies[n].other for n in names])
    shifted = np.concatenate([np.full(len(copies[n].labels), n != "none") for n in names])
    plain = ~shifted
    baseline = float(np.concatenate([copies[n].baseline for n in names])[plain].mean()) if plain.any() else 0.0
    offsets = np.cumsum([0, *(len(copies[n].labels) for n in names)])
    called, p_benign = probs.argmax(1), probs[:, benign]
    out: dict[str, dict[str, Any]] = {}
    for cname, check in checks.items():
        doubt = np.zeros(len(labels), bool)
        if check is not None:
            index = [views.index(v) for v in check.views]
            for k, n in enumerate(names):
                c = copies[n]
                if len(c.rows):
                    doubt[offsets[k] + c.rows[check.doubting_view(c.p_benign[index].T) >= 0]] = True
        flagged_before = other | doubt
        threshold, _ = choose_benign_threshold(probs, labels, flagged_before, shifted, benign=benign,
                                               confidence_threshold=confidence_threshold, baseline=baseline,
                                               max_flag_rise=max_flag_rise)
        flagged = flagged_before | ((called == benign) & (p_benign < threshold))
        per_copy = {n: copy_counts(*(a[offsets[k]:offsets[k + 1]] for a in (labels, called, flagged)), benign)
                    for k, n in enumerate(names)}
        out[cname] = {"threshold": threshold, "copies": per_copy,
                      "within_cap": per_copy.get("none", {"flagged": 0.0})["flagged"] <= baseline + max_flag_rise + 1e-12}
    return out


def choose_joint(table: dict[str, dict[str, Any]], checks: dict[str, BenignCheck | None]) -> str:
    """JOINT_RULE's choice (no check stands when no pair keeps within the cap)."""
    eligible = [name for name in table if table[name]["within_cap"]] or [NO_CHECK]
    return min(eligible, key=lambda name: _order(table[name]["copies"], checks[name]))


def fit_benign_rules(predictor: Predictor, val: Manifest, *, composites: int = VALIDATION_COMPOSITES,
                     seed: int = VALIDATION_SEED, log: Log | None = None) -> BenignRulesFit:
    """JOINT_RULE on `val` through `predictor`; the predictor is left with its Benign check off and its Benign
    threshold as it was. DataError when the package has no Benign class or `val` no images."""
    log = log or (lambda message: None)
    benign = _benign_of(predictor, val, "the Benign rules")
    started = time.time()
    checks = dict(candidates(predictor.benign_threshold))
    views = all_views()
    copies: dict[str, JointCopy] = {}
    val_copies: dict[str, tuple[list[bytes], np.ndarray]] = {}
    for copy_name, files, pixels, labels in shifted_copies(val, predictor.preprocess, composites=composites,
                                                           seed=seed):
        val_copies[copy_name] = (files, labels)
        copies[copy_name] = joint_copy(predictor, files, pixels, labels, views, copy_name)
        log(f"Benign rules: val copy {copy_name!r}, {len(labels)} images, {len(copies[copy_name].rows)} Benign calls "
            f"no other reason flags, {time.time() - started:.0f} s")
    table = joint_table(copies, checks, views, benign=benign, confidence_threshold=predictor.confidence_threshold)
    chosen = choose_joint(table, checks)
    check, threshold = checks[chosen], float(table[chosen]["threshold"])
    summary = {name: {"benign_confidence_threshold": row["threshold"], "within_cap": row["within_cap"],
                      **copies_summary(row["copies"])} for name, row in table.items()}
    kept = predictor.benign_threshold
    predictor.benign_threshold = threshold
    try:
        verified = checked_on_val(predictor, check, val_copies, table[chosen]["copies"])
    finally:
        predictor.benign_threshold = kept
    per_copy = {c: {"package_as_exported": _as_exported(copies[c], benign, kept), "after": verified[c]}
                for c in val_copies}
    return BenignRulesFit(chosen, check, threshold, summary, per_copy, time.time() - started)


def _as_exported(copy: JointCopy, benign: int, threshold: float) -> dict[str, Any]:
    """The copy's numbers under the package's own Benign threshold and no check."""
    called = copy.probs.argmax(1)
    return copy_counts(copy.labels, called, copy.other | ((called == benign) & (copy.probs[:, benign] < threshold)),
                       benign)
