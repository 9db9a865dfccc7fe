"""Choose a model package's Benign view check (leukoscope.review.benign_check) on the val part, and nothing else.

    .venv/bin/python scripts/fit_benign_check.py [PACKAGE] [--data ../shared/data/ALL] [--split bundle/split.csv]

PACKAGE defaults to the bundled one. The network, temperature, OOD statistics, realignment and every review
threshold stay as they are; model.json's `review` gains `benign_check` (the views and the P(Benign) each
must reach) and `benign_check_fit` records the rule, the data (hashes) and the val numbers each candidate
had. model.json is replaced atomically; then the model card is rebuilt as scripts/fit_realign.py does
(`leukoscope evaluate` on the test part, reported and never used to choose) with a section on the check.
`--dry-run` writes nothing. A package whose val copies leave no leukemia image called Benign without a
flag gets no check (nothing to catch: the check would only cost).

The rule (RULE below), written down before the candidates were compared on the bundled package's val
numbers that decided it: on the val part of the split and seeded shifted copies of it
(leukoscope.data.shifts.validation_shifts: as is, every named shift, 4 random composites, seeds 1000-1003),
never on the test part, each image goes through Predictor.predict_bytes as every command runs it (the
package's realignment included); the Benign calls nothing flags are the check's images. Candidates: views
from CANDIDATE_VIEWS x thresholds from CANDIDATE_THRESHOLDS and the package's own Benign confidence
threshold. Keep those that raise the unshifted val part's flagged share by at most MAX_FLAG_RISE (5
points); among them the fewest leukemia images called Benign without a flag over the shifted copies wins,
then the lowest flagged share of the unshifted part, then the lowest mean flagged share over the shifted
copies, then the fewest views, then the lower threshold. The check only adds flags, so no candidate can
change a call; the script checks the chosen one through Predictor.predict_bytes against the table.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.errors import DataError
from leukoscope.inference.export import shifted_copies
from leukoscope.inference.predictor import Predictor
from leukoscope.review.benign_check import BenignCheck
from leukoscope.review.realign import View
from leukoscope.review.rules import MAX_FLAG_RISE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_realign import fit_record, open_fit, outputs, read_copy, record_fit, val_table

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
SECTION = "\n## Benign view check: a Benign call must hold at another magnification\n"


@dataclass
class CopyOutputs:
    """One val copy through the package without the check: what it called and flagged, and P(Benign) of
    every candidate view of the Benign calls nothing flagged (`rows`)."""

    labels: np.ndarray  # N
    called: np.ndarray  # N, class index (-1: no call)
    flagged: np.ndarray  # N bool
    rows: np.ndarray  # the unflagged Benign calls
    p_benign: np.ndarray  # V x len(rows), P(Benign) at each of all_views


def candidates(benign_threshold: float) -> list[tuple[str, BenignCheck | None]]:
    thresholds = sorted({*CANDIDATE_THRESHOLDS, float(benign_threshold)})
    out: list[tuple[str, BenignCheck | None]] = [(NO_CHECK, None)]
    for (name, scales), t in itertools.product(CANDIDATE_VIEWS.items(), thresholds):
        out.append((f"views {name}; P(Benign) >= {t:g}", BenignCheck(tuple(View(scale=s) for s in scales), t)))
    return out


def all_views() -> list[View]:
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
    for name, (files, labels) in val_copies.items():
        calls = read_copy(predictor, files, name)
        row = {"flagged": float(calls.flagged.mean()),
               "leukemia_called_benign_not_flagged": int(calls.missed(labels, predictor.benign_index).sum()),
               "benign_view_flags": sum("benign_view" in p.review_codes for p in calls.predictions)}
        if (row["leukemia_called_benign_not_flagged"] != expected[name]["leukemia_called_benign_not_flagged"]
                or abs(row["flagged"] - expected[name]["flagged"]) > 1e-9):
            raise DataError(f"the chosen check gave other numbers through predict_bytes on {name!r} than in the "
                            f"table: {row} vs {expected[name]}")
        out[name] = row
    predictor.benign_check = None
    return out


def main() -> None:
    opened = open_fit(__doc__, "benign_check_fit", "benign check fit", switch_off="benign_check")
    if opened is None:
        return
    args, package, info, split, predictor = opened
    benign = predictor.benign_index
    if benign is None:
        raise DataError(f"{package} has no Benign class: there is no Benign call to check")
    val = split.part("val")
    started = time.time()
    checks = dict(candidates(predictor.benign_threshold))
    views = all_views()
    table: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in checks}
    val_copies: dict[str, tuple[list[bytes], np.ndarray]] = {}
    for copy_name, files, pixels, labels in shifted_copies(val, predictor.preprocess, composites=args.composites,
                                                           seed=args.seed):
        val_copies[copy_name] = (files, labels)
        out = copy_outputs(predictor, files, pixels, labels, views, copy_name)
        for name, check in checks.items():
            table[name][copy_name] = with_check(check, views, out, benign)
        print(f"val copy {copy_name!r}: {len(labels)} images, {len(out.rows)} unflagged Benign calls, "
              f"{time.time() - started:.0f} s", flush=True)
    chosen = choose(table, checks)
    check = checks[chosen]
    summary = {name: {"unshifted_flagged": rows["none"]["flagged"],
                      "shifted_mean_flagged": float(np.mean([r["flagged"] for c, r in rows.items() if c != "none"])),
                      "shifted_missed": sum(r["leukemia_called_benign_not_flagged"] for c, r in rows.items()
                                            if c != "none")}
               for name, rows in table.items()}
    verified = checked_on_val(predictor, check, val_copies, table[chosen]) if check is not None else {}
    print(json.dumps({"chosen": chosen, "candidates": summary}, indent=2))
    if args.dry_run or check is None:
        return
    fit = {**fit_record("scripts/fit_benign_check.py", RULE, args, split, started), "chosen": chosen,
           "candidates": summary,
           "per_copy": {c: {"before": table[NO_CHECK][c], "after": verified[c]} for c in val_copies}}
    record_fit(package, args, info, "benign_check", check.to_dict(), "benign_check_fit", fit)


def section(check: BenignCheck, fit: dict[str, Any]) -> str:
    """The model card's section on the Benign view check (val numbers; the test part is in RESULTS.md)."""
    views = ", ".join(v.describe(why=False) for v in check.views)
    lines = [SECTION.lstrip("\n"), f"Chosen by `{fit['command']}` ({fit['date']}): a Benign call that no other "
             f"reason flags is also read {views}; when P(Benign) there is below {check.threshold:g}, the image is "
             "flagged (`benign_view`) and keeps its call.", "",
             f"Rule, fixed before the candidates were compared: {RULE}", ""]
    rows = {name: f"{row['before']['flagged']:.3f} -> {row['after']['flagged']:.3f} | "
                  f"{row['before']['leukemia_called_benign_not_flagged']} -> "
                  f"{row['after']['leukemia_called_benign_not_flagged']}" for name, row in fit["per_copy"].items()}
    return "\n".join(lines) + "\n" + val_table(fit, ["flagged without -> with", "leukemia called Benign, not flagged"], rows)


if __name__ == "__main__":
    main()
