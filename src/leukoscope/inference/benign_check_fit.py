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
from leukoscope.review.rules import MAX_FLAG_RISE

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
    missed = (copy_out.labels != benign) & (copy_out.called == benign) & ~flagged
    return {"flagged": float(flagged.mean()), "leukemia_called_benign_not_flagged": int(missed.sum())}


def choose(table: dict[str, dict[str, dict[str, Any]]], checks: dict[str, BenignCheck | None],
           max_flag_rise: float = MAX_FLAG_RISE) -> str:
    """RULE's choice among the candidates' per-copy numbers (copy "none" is the unshifted val part)."""
    base = table[NO_CHECK]["none"]["flagged"]

    def key(name: str) -> tuple[int, float, float, int, float]:
        rows, check = table[name], checks[name]
        shifted = [row for copy_name, row in rows.items() if copy_name != "none"]
        return (sum(r["leukemia_called_benign_not_flagged"] for r in shifted), rows["none"]["flagged"],
                float(np.mean([r["flagged"] for r in shifted])) if shifted else 0.0,
                len(check.views) if check else 0, check.threshold if check else 0.0)

    eligible = [name for name in table if table[name]["none"]["flagged"] <= base + max_flag_rise + 1e-12]
    return min(eligible, key=key)


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


def checked_on_val(predictor: Predictor, check: BenignCheck, val_copies: dict[str, tuple[list[bytes], np.ndarray]],
                   expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The chosen check through Predictor.predict_bytes on every val copy: the table's numbers, or DataError."""
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


def fit_benign_check(predictor: Predictor, val: Manifest, *, composites: int = VALIDATION_COMPOSITES,
                     seed: int = VALIDATION_SEED, log: Log | None = None) -> BenignCheckFit:
    """RULE on `val` (a package's val part) through `predictor`, whose own Benign check is switched off for
    the fit and left off. DataError when the package has no Benign class or `val` no images."""
    log = log or (lambda message: None)
    benign = predictor.benign_index
    if benign is None:
        raise DataError("the package has no Benign class: there is no Benign call to check")
    if not len(val):
        raise DataError("there are no val images to choose the Benign view check on")
    predictor.benign_check = None
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
    summary = {name: {"unshifted_flagged": rows["none"]["flagged"],
                      "shifted_mean_flagged": float(np.mean([r["flagged"] for c, r in rows.items() if c != "none"])),
                      "shifted_missed": sum(r["leukemia_called_benign_not_flagged"] for c, r in rows.items()
                                            if c != "none")}
               for name, rows in table.items()}
    verified = checked_on_val(predictor, check, val_copies, table[chosen]) if check is not None else {}
    per_copy = {c: {"before": table[NO_CHECK][c], "after": verified.get(c, table[NO_CHECK][c])} for c in val_copies}
    return BenignCheckFit(chosen, check, summary, per_copy, time.time() - started)
