"""Choose a model package's realignment views (leukoscope.review.realign) on the val part, and nothing else.

    .venv/bin/python scripts/fit_realign.py [PACKAGE] [--data ../shared/data/ALL] [--split bundle/split.csv]

PACKAGE defaults to the bundled one. The network, temperature, OOD statistics and every review threshold
stay as they are; model.json's `review` gains `realign` (the views and the margin) and `realign_fit`
records the rule, the data (hashes) and the val numbers each candidate had. model.json is replaced
atomically; then the model card is rebuilt as scripts/refit_review.py does (`leukoscope evaluate` on the
test part, reported and never used to choose) with a section on the realignment. `--dry-run` writes nothing.

The rule (RULE below), written down before the candidates were compared: on the val part of the split
and seeded shifted copies of it (leukoscope.data.shifts.validation_shifts: as is, every named shift, 4
random composites, seeds 1000-1003), never on the test part, every candidate (CANDIDATE_SCALES x
CANDIDATE_HUES x MARGINS, the empty set of views included) is applied to the images the OOD check flags.
Keep the candidates whose unshifted val accuracy is not lower than without realignment; among them the
highest minimum accuracy over the hue (+-20) and magnification (x0.5, x2) copies wins, then the highest
mean accuracy over all shifted copies, then the fewest views, then the smaller margin. A realigned image
keeps its flag, so no candidate can add a leukemia image called Benign without a flag; the script checks
that on the chosen candidate through Predictor.predict_bytes, the path every command uses.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope import __version__
from leukoscope.data.fileio import sha256_file, write_text
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.data.shifts import HUE_SHIFTS, MAGNIFICATION_SHIFTS
from leukoscope.errors import DataError
from leukoscope.inference.export import shifted_copies
from leukoscope.inference.package import MODEL_JSON, ONNX_FP32, bundled_package_path, verify_package
from leukoscope.inference.predictor import Predictor, load_predictor
from leukoscope.inference.val_copies import outputs, read_copy
from leukoscope.review.realign import RealignRule, View

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refit_review import CARD, ROOT, package_arguments, part_digest, rebuild_card

CANDIDATE_SCALES = {"none": (), "x0.5, x2": (0.5, 2.0), "x0.71, x1.41": (0.71, 1.41),
                    "x0.5, x0.71, x1.41, x2": (0.5, 0.71, 1.41, 2.0)}
CANDIDATE_HUES = {"none": (), "+-10": (-10.0, 10.0), "+-20": (-20.0, 20.0), "+-10, +-20": (-20.0, -10.0, 10.0, 20.0)}
MARGINS = (0.0, 5.0, 10.0, 20.0)
TARGET_COPIES = HUE_SHIFTS + MAGNIFICATION_SHIFTS
RULE = ("Chosen on the val part and seeded shifted copies of it (leukoscope.data.shifts.validation_shifts), never "
        "on the test part. Candidates: views = rescalings from {none; x0.5, x2; x0.71, x1.41; all four} combined "
        "with hue rotations from {none; +-10; +-20; both}, margin in {0, 5, 10, 20}, applied to OOD-flagged images "
        "only. Keep the candidates whose unshifted val accuracy is not lower than without realignment; then the "
        "highest minimum accuracy over the hue +-20 and magnification x0.5 / x2 copies, then the highest mean "
        "accuracy over all shifted copies, then the fewest views, then the smaller margin. A realigned image keeps "
        "its review flag.")
SECTION = "\n## Realignment: other magnifications and stain hues\n"


def view_outputs(predictor: Predictor, pixels: np.ndarray, views: list[View]) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (V x N x C) and OOD scores (V x N) of every view of every image."""
    done = [outputs(predictor, pixels, view) for view in views]
    return np.stack([p for p, _ in done]), np.stack([s for _, s in done])


def candidates() -> list[tuple[str, RealignRule | None]]:
    out: list[tuple[str, RealignRule | None]] = []
    for (sname, scales), (hname, hues), margin in itertools.product(CANDIDATE_SCALES.items(), CANDIDATE_HUES.items(),
                                                                    MARGINS):
        views = tuple(View(scale=s) for s in scales) + tuple(View(hue=h) for h in hues)
        if not views:
            if margin == 0:
                out.append(("no realignment", None))
            continue
        out.append((f"scales {sname}; hues {hname}; margin {margin:g}", RealignRule(views, margin)))
    return out


def accuracy_with(rule: RealignRule | None, all_views: list[View], given: tuple[np.ndarray, np.ndarray],
                  outputs: tuple[np.ndarray, np.ndarray], labels: np.ndarray, threshold: float) -> float:
    probs, scores = given[0].copy(), given[1]
    if rule is not None:
        rows = np.flatnonzero(scores > threshold)
        index = [all_views.index(v) for v in rule.views]
        chosen = rule.choose(scores[rows], outputs[1][index][:, rows].T)
        for row, view in zip(rows, chosen, strict=True):
            if view >= 0:
                probs[row] = outputs[0][index[view], row]
    return float(np.mean(probs.argmax(1) == labels))


def main() -> None:
    opened = open_fit(__doc__, "realign_fit", "realign fit", switch_off="realign")
    if opened is None:
        return
    args, package, info, split, predictor = opened
    if predictor.ood is None:
        raise DataError(f"{package} has no OOD statistics: realignment chooses views by their OOD score")
    val = split.part("val")
    started = time.time()
    rules = dict(candidates())
    all_views = sorted({v for rule in rules.values() if rule is not None for v in rule.views},
                       key=lambda v: (v.hue, v.scale))
    table: dict[str, dict[str, float]] = {name: {} for name in rules}
    val_copies: dict[str, list[bytes]] = {}
    for copy_name, files, pixels, labels in shifted_copies(val, predictor.preprocess, composites=args.composites,
                                                           seed=args.seed):
        val_copies[copy_name] = files
        given = outputs(predictor, pixels)
        views_out = view_outputs(predictor, pixels, all_views)
        for name, rule in rules.items():
            table[name][copy_name] = accuracy_with(rule, all_views, given, views_out, labels, predictor.ood.threshold)
        print(f"val copy {copy_name!r}: {len(labels)} images, {time.time() - started:.0f} s", flush=True)
    shifted = [c for c in val_copies if c != "none"]
    baseline = table["no realignment"]["none"]

    def key(name: str) -> tuple[float, float, int, float]:
        rule = rules[name]
        views, margin = (len(rule.views), rule.margin) if rule else (0, 0.0)
        return (-min(table[name][c] for c in TARGET_COPIES), -float(np.mean([table[name][c] for c in shifted])),
                views, margin)

    eligible = [name for name in table if table[name]["none"] >= baseline]
    chosen = min(eligible, key=key)
    rule = rules[chosen]
    check = checked_on_val(predictor, rule, val_copies, labels, info)
    summary = {name: {"unshifted": table[name]["none"], "min_hue_magnification": -key(name)[0],
                      "mean_shifted": -key(name)[1]} for name in table}
    print(json.dumps({"chosen": chosen, "check": check, "candidates": summary}, indent=2))
    if args.dry_run or rule is None:
        return
    fit = {**fit_record("scripts/fit_realign.py", RULE, args, split, started), "chosen": chosen,
           "candidates": summary,
           "per_copy": {c: {"before": table["no realignment"][c], "after": table[chosen][c]} for c in val_copies},
           "check": check}
    record_fit(package, args, info, "realign", rule.to_dict(), "realign_fit", fit)


def open_fit(doc: str | None, fit_key: str, what: str, *, switch_off: str,
             ) -> tuple[argparse.Namespace, Path, dict[str, Any], Manifest, Predictor] | None:
    """A fit script's start: its options, the verified package, its model.json, the split it was exported with
    (DataError for another one) and its fp32 Predictor with the rule being fitted (`switch_off`, a Predictor
    attribute) off; None after --card-only rebuilt the card from the recorded `fit_key`."""
    args = package_arguments(doc, "fit").parse_args()
    package = Path(args.package)
    info = verify_package(package)
    if args.card_only:
        if fit_key not in info or "review_refit" not in info:
            raise DataError(f"{package} has no recorded {what} and review refit; run without --card-only")
        write_card(package, args, info)
        return None
    split = read_manifest_csv(args.split, args.data, classes=tuple(info["classes"]))
    if split.digest() != info.get("data", {}).get("split_digest"):
        raise DataError(f"{args.split} is not the split {package} was exported with (split digest differs)")
    predictor = load_predictor(package, onnx_file=ONNX_FP32)
    setattr(predictor, switch_off, None)
    return args, package, info, split, predictor


def fit_record(script: str, rule: str, args: argparse.Namespace, split: Manifest, started: float) -> dict[str, Any]:
    """What every fit records of itself: command, date, version, time, rule, shifts and data hashes."""
    return {"script": script, "command": shlex.join([script, *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "leukoscope_version": __version__,
            "seconds": round(time.time() - started, 1), "rule": rule,
            "shifts": {"composites": args.composites, "seed": args.seed},
            "data": {"split_sha256": sha256_file(args.split), "split_digest": split.digest(),
                     "val_images": len(split.part("val")), "val_digest": part_digest(split, "val")}}


def record_fit(package: Path, args: argparse.Namespace, info: dict[str, Any], review_key: str, value: Any,
               fit_key: str, fit: dict[str, Any]) -> None:
    """model.json with review[`review_key`] = value and `fit_key` = fit, replaced atomically and verified; then
    the card, unless --no-card."""
    updated = {k: copy.deepcopy(v) for k, v in info.items() if k != "files"}
    updated["review"] = {**info.get("review", {}), review_key: value}
    updated[fit_key] = fit
    updated["files"] = {name: sha256_file(package / name) for name in info["files"]}
    write_text(package / MODEL_JSON, json.dumps(updated, indent=2, default=str) + "\n")
    verify_package(package)
    print(f"wrote {package / MODEL_JSON}")
    if not args.no_card and "review_refit" in updated:
        write_card(package, args, updated)


def write_card(package: Path, args: argparse.Namespace, info: dict[str, Any]) -> None:
    """refit_review's card of the package (it evaluates the test part) with the sections of the fits the
    package records after it; for the bundled package, bundle/MODEL_CARD.md too."""
    card = rebuild_card(package, args.data, args.split, info["review"], info["review_refit"])
    card = card.rstrip("\n") + "\n" + sections(info)
    mirrors = [ROOT / "bundle" / CARD] if package.resolve() == bundled_package_path().resolve() else []
    for path in [package / CARD, *mirrors]:  # bundle/ keeps a copy of the bundled package's card
        write_text(path, card)
        print(f"wrote {path}")


def sections(info: dict[str, Any]) -> str:
    """The card sections of the realignment and of the Benign view check the package records ("" for none)."""
    from fit_benign_check import section as benign_section  # the sibling script, which imports this one

    from leukoscope.review.benign_check import BenignCheck

    review, text = info.get("review", {}), ""
    if review.get("realign") and "realign_fit" in info:
        text += "\n" + section(RealignRule.from_dict(review["realign"]), info["realign_fit"])
    if review.get("benign_check") and "benign_check_fit" in info:
        text += "\n" + benign_section(BenignCheck.from_dict(review["benign_check"]), info["benign_check_fit"])
    return text


def checked_on_val(predictor: Predictor, rule: RealignRule | None, val_copies: dict[str, list[bytes]], labels: np.ndarray,
                   info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The chosen rule through Predictor.predict_bytes on every val copy, against no realignment: accuracy,
    flagged share and leukemia called Benign without a flag (must not rise)."""
    benign = list(info["classes"]).index(info.get("review", {}).get("benign_class", "Benign"))
    out = {}
    for name, files in val_copies.items():
        row = {}
        for label, applied in (("before", None), ("after", rule)):
            predictor.realign = applied
            calls = read_copy(predictor, files, name)
            row[label] = {"accuracy": float(np.mean(calls.called == labels)), "flagged": float(calls.flagged.mean()),
                          "leukemia_called_benign_not_flagged": int(calls.missed(labels, benign).sum())}
        out[name] = row
        if row["after"]["leukemia_called_benign_not_flagged"] > row["before"]["leukemia_called_benign_not_flagged"]:
            raise DataError(f"realignment left more leukemia images called Benign without a flag on {name!r}")
    predictor.realign = None
    return out


def section(rule: RealignRule, fit: dict[str, Any]) -> str:
    """The model card's section on realignment (val numbers; the test part is in RESULTS.md)."""
    views = ", ".join(v.describe() for v in rule.views)
    by = "" if rule.margin == 0 else f" by more than {rule.margin:g}"
    lines = [SECTION.lstrip("\n"), f"Chosen by `{fit['command']}` ({fit['date']}): an image the OOD check flags is "
             f"also tried {views}; the view whose features lie closest to the training classes gives the call when "
             f"its OOD score is lower than the image's own{by}, and the image stays flagged (`realigned`).", "",
             f"Rule, fixed before the candidates were compared: {RULE}", ""]
    rows = {name: f"{b['accuracy']:.3f} -> {a['accuracy']:.3f} | {b['flagged']:.3f} -> {a['flagged']:.3f} | "
                  f"{b['leukemia_called_benign_not_flagged']} -> {a['leukemia_called_benign_not_flagged']}"
            for name, (b, a) in ((name, (row["before"], row["after"])) for name, row in fit["check"].items())}
    return "\n".join(lines) + "\n" + val_table(fit, ["accuracy without -> with", "flagged without -> with",
                                              "leukemia called Benign, not flagged"], rows)


def val_table(fit: dict[str, Any], columns: list[str], rows: dict[str, str]) -> str:
    """A fit section's table of the val copies (one row of cells per copy) and its pointer to the test part."""
    lines = [f"Val part ({fit['data']['val_images']} images) and its shifted copies, through Predictor.predict_bytes:",
             "", "| val copy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | {cells} |" for name, cells in rows.items()]
    lines += ["", "Test part under every shift: `benchmarks/RESULTS.md`, *Review flag under distribution shift* "
              "(`python -m benchmarks.shift`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
