"""Choose `leukoscope adapt`'s default learning rate and replay ratio on validation data, by a rule fixed in
advance (this docstring was written before any candidate was measured). Research software, not a medical
device.

Why: with the old defaults (lr 2e-4, replay ratio 1) adapt refuses small labs (the model forgets), and the
only run that looked better used the TEST part, which must not choose defaults. Nothing here reads a
test-part figure to choose; the test part only appears inside adapt's own forgetting gate (part of the
product), and a candidate that gate refuses is recorded as refused.

Data (all from the VAL part of bundle/split.csv, 280 images of ../shared/data/ALL):
- tuning lab B' = every val image through one fixed composite transform of `leukoscope.data.shifts`, other
  than the second-lab benchmark's: hue -10 deg, stain H x1.25 E x0.85, magnification x1.7, blur 0.4 px,
  white balance R x0.92 B x1.08, JPEG q75 (`SHIFT`), written as JPEG files. (Revision 2. Revision 1, hue
  +12, stain H x0.9 E x1.1, x1.4, blur 0.3, R x0.93 B x1.07, JPEG q80, was too mild to tune on: the parent
  scored 98.3% on its evaluation part and 100% on the 30 held-out images, so adapt refused the first
  candidate as "not better" and would refuse every one. The shift was then replaced, before any candidate
  was scored, by the first of two stronger ones tried on the parent alone whose parent lab-B' accuracy is in
  the benchmark's regime (53% here, 64% there; the other, hue +20, x1.8, gave 81%).)
- split duplicate-aware and stratified (`leukoscope.data.split.split`, seed 31, on the originals) into an
  adaptation set of ~100 images and an evaluation part (the rest); the adaptation set is split by adapt's own
  shares (held_out 0.3, val 0.15, seed 0) into adapt / calibrate / held out, as the benchmark does;
- lab A' = the unshifted original files of the evaluation images;
- replay = bundle/split.csv with the evaluation images' val rows taken out of every part (so neither the
  fine-tuning nor the export's calibration sees lab A'); train is replayed, test feeds adapt's gate only.

Candidates (epochs 6, everything else adapt's defaults, shift rules as the parent):
lr in {5e-5, 1e-4} x replay_ratio in {2, 4}; each through `leukoscope.adaptation.adapt.adapt_manifests`,
the adapted package scored by its Predictor on lab B' and lab A' (`benchmarks.second_lab.evaluate`).

Rule:
1. Eligible: not refused by adapt_manifests, and lab-A' accuracy not more than 0.3 points below the
   parent's (with ~180 images: no net image lost).
2. Among the eligible: the highest lab-B' accuracy; ties -> the lower lab-B' flagged share; then the lower
   lr (gentler); then the larger replay ratio (more protection against forgetting).
3. If none is eligible: among the non-refused, the smallest lab-A' drop, then rule 2's order. If every
   candidate is refused: no change to the defaults.

Revision 2 (2026-12-01, written before any of its candidates was measured): simulated replay
(`leukoscope.adaptation.lab_shift`: the parent's training images shown through the lab's shift estimated
from its adaptation images). Candidates: the defaults of revision 1 (lr 5e-5, replay 4, no simulated
replay: `lr5e-05_r4`) and the same with simulate_ratio 2 and 4 (`lr5e-05_r4_s2`, `lr5e-05_r4_s4`), same
data, epochs and rules 1-3, rule 2's ties broken last by the lower simulate ratio (less work). The choice
sets AdaptOptions.simulate_ratio.

Revision 3 (2026-12-01, written after revision 2's numbers and before any of its own was measured): the
revision-2 choice with its simulated images also in the export's training part (AdaptOptions.simulate_review:
the OOD statistics and the image-quality and cell-scale ranges then know the lab's look), candidate
`<choice>_review`. Eligible: rule 1, and no more lab-B' leukemia called Benign without a flag than the
revision-2 choice; then rule 2's order against the revision-2 choice. The choice sets
AdaptOptions.simulate_review.

Revision 4 (2026-12-01, written before any of its numbers was measured). Why: on the second-lab benchmark
(test part) the revision-3 defaults left 2 leukemia images called Benign without a flag at N = 100, where
every tuning candidate had left 0 on lab B'. The test part must not choose, so the question goes back to
validation data, made wider: two more tuning labs from the same val part through other shifts (`LABS`: b2,
b3), each adapted with the revision-2 choice (`lr5e-05_r4_s2`) and the revision-3 choice
(`lr5e-05_r4_s2_review`). Rule: keep simulate_review only if its leukemia called Benign without a flag,
summed over b1 (= lab B'), b2 and b3, is not above the revision-2 choice's; else switch it off (safety
first: fewer flags never buy a missed leukemia). `safety` prints the table and the decision. (Its first
runs left simulate_review out of the "without" candidate, which then took the retuned default, on; b3's was
rerun with it off. b2's refusal comes before the export, where simulate_review acts, so it stands.)

Revision 5 (2026-12-01, written before any of its numbers was measured): the adapted network's own Benign
view check (AdaptOptions.benign_check: leukoscope.inference.benign_check_fit, the bundled package's rule, run
on the joined val parts of both datasets and shifted copies of them). It only adds review flags, so it cannot
add a leukemia image called Benign without a flag; its cost is flags and time. Candidate
`lr5e-05_r4_s2_review_check` (the revision-3/4 choice with the check) on b1 and b3 (b2's adaptations are
refused before the export, where the check is fitted). Rule: keep it on by default unless its lab-B flagged
share is more than 5 points above the revision-3 choice's on b1 or on b3 (the fit's own cap, seen on the
tuning labs), or its unflagged misses summed over b1 and b3 are above that choice's (possible only if the
fine-tuning did not repeat itself; then it is reported, and the check is kept only if it is not above).
`check` prints the table and the decision. (Its runs named the option `benign_check` (True); it is now
`benign_rules` ("check"), the same adaptation.)

Revision 6 (2026-12-01, written before any of its numbers was measured). Why: an adapted package's flags are
dominated by its Benign confidence threshold (the export's shift rule (a) sets it just below the most
confident leukemia image called Benign on the shifted val copies: ~0.999999 on b1), while a view check can
catch such confident misses at a lower cost in flags. Candidate `lr5e-05_r4_s2_review_joint`: benign_rules
"joint" (leukoscope.inference.benign_check_fit.JOINT_RULE: the check and the Benign threshold chosen
together on the same val copies) on b1 and b3, against revision 5's choice ("check"). Rule: switch the
default to "joint" only if its leukemia called Benign without a flag, summed over b1 and b3, is not above
"check"'s, and its mean lab-B flagged share over b1 and b3 is at least 2 points lower; else keep "check".
`joint` prints the table and the decision.

Revision 7 (2026-12-01, written before any of its numbers was measured). Why: an adapted package's
temperature, thresholds and Benign rules are fitted on a val part that holds only ~15 of the lab's images
next to ~280 of the parent's, so they barely see the lab's look. Candidate `lr5e-05_r4_s2_review_check_simval`:
AdaptOptions.simulate_val (the replay's val part through the lab's estimated shift joins the export's val
part) on b1 and b3, against revision 5's choice (`lr5e-05_r4_s2_review_check`). Rule: switch simulate_val on
by default only if its leukemia called Benign without a flag, summed over b1 and b3, is not above the
choice's, its mean lab-B flagged share over b1 and b3 is at least 2 points lower, and its lab-A' accuracy is
not lower on either lab; else keep it off. `simval` prints the table and the decision.

Revision 8 (2026-12-01, a diagnosis: it changes no default). Why: lab-B' accuracy stays near 97.5% on b1 and
b3 (4-5 errors in 181) with every candidate, and the lab's shift as adapt estimates it is off (b1: hue
estimated -30 where the transform turns it -10; blur and JPEG are not estimated at all). Question: is the
estimate what limits the adapted network? Candidate `lr5e-05_r4_s2_review_check_oracle`: revision 5's choice
with the simulated replay made through the tuning lab's TRUE transform (`TrueLabShift`: stain, hue,
magnification, blur, white balance and JPEG exactly as lab B' was made) in place of the estimate. Reading,
fixed before its numbers: if the oracle's lab-B' accuracy, averaged over b1 and b3, is at least 1 point
above revision 5's choice, a better estimate (blur, JPEG tables, colour) is worth building; else the shift
estimate is not the bottleneck. `oracle` prints the table and the reading.

Revision 9 (2026-12-01, written before any of its numbers was measured). Why: on the second-lab benchmark
two more draws of the lab's images (`benchmarks.second_lab --seed 14 / 15`, test part: read, not chosen on)
had adapt refuse N = 100 because the replay's test accuracy fell by 3 images of 588 (0.51 > 0.5 points):
forgetting, not lab B, is what stops a lab there; on b1 and b3 every candidate lost 1 of 181 lab-A' images.
Candidate `lr5e-05_r4_s2_review_check_distill`: AdaptOptions.distill 0.5 (the replayed images' targets are
half their label and half the parent's own probabilities for them, and each simulated image takes the
parent's probabilities for its unshifted original: learning without forgetting, and the parent's knowledge
carried across the lab's shift), on b1 and b3, against revision 5's choice. Rule: switch distill on by
default only if, against that choice, it is no worse on any of (leukemia called Benign without a flag
summed over b1 and b3; lab-A' accuracy on each lab; mean lab-B' accuracy over b1 and b3) and better on at
least one of (lab-A' accuracy on a lab; mean lab-B' accuracy; mean lab-B' flagged share by 2 points or
more); else keep it off. `distill` prints the table and the decision.

Revision 10 (2026-12-01, written before any of its numbers was measured). Why: distillation (revision 9) left
the forgetting it aimed at unchanged (the replay gate lost the same images), and forgetting is what refused
N = 100 in two of three draws of the benchmark's lab. Candidate `lr5e-05_r4_s2_review_check_distill_wise`:
AdaptOptions.interpolate (weight-space ensembling with the parent, WiSE-FT: the shipped weights are
(1 - a) x the parent's + a x the fine-tuned ones, a in INTERPOLATION_WEIGHTS chosen per adaptation on both
datasets' val parts, the lowest mean of the two parts' mean negative log-likelihoods), on b1 and b3, against
revision 9's choice. Rule: revision 9's (no worse on any of misses summed, lab-A' accuracy per lab, mean
lab-B' accuracy; better on one of lab-A' accuracy on a lab, mean lab-B' accuracy, mean flagged share by 2
points or more); else it stays off. `wise` prints the table and the decision.

    nice -n 5 .venv/bin/python scripts/tune_adapt.py run lr5e-5_r2 lr1e-4_r2   # one or more candidates
    nice -n 5 .venv/bin/python scripts/tune_adapt.py run --lab b2 lr5e-05_r4_s2 lr5e-05_r4_s2_review
    .venv/bin/python scripts/tune_adapt.py safety                               # revision 4's decision
    .venv/bin/python scripts/tune_adapt.py check                                # revision 5's decision
    .venv/bin/python scripts/tune_adapt.py joint                                # revision 6's decision
    .venv/bin/python scripts/tune_adapt.py simval                               # revision 7's decision
    .venv/bin/python scripts/tune_adapt.py oracle                               # revision 8's reading
    .venv/bin/python scripts/tune_adapt.py distill                              # revision 9's decision
    .venv/bin/python scripts/tune_adapt.py wise                                 # revision 10's decision
    .venv/bin/python scripts/tune_adapt.py choose                                # table + choice.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmarks package (lab files and scoring are shared with second_lab)

import leukoscope.adaptation.adapt as adapt_module  # noqa: E402
from benchmarks.second_lab import evaluate, lab_b_files, pool_and_evaluation  # noqa: E402
from leukoscope.adaptation.adapt import adapt_manifests  # noqa: E402
from leukoscope.adaptation.data import load_parent, with_classes  # noqa: E402
from leukoscope.adaptation.finetune import AdaptOptions  # noqa: E402
from leukoscope.adaptation.scores import AdaptationRefused  # noqa: E402
from leukoscope.data.fileio import write_json, write_text  # noqa: E402
from leukoscope.data.manifest import Manifest, read_manifest_csv  # noqa: E402
from leukoscope.data.shifts import Shift  # noqa: E402
from leukoscope.data.split import split  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data" / "ALL").resolve()
SPLIT = ROOT / "bundle" / "split.csv"
OUT = Path("/work/scratch/tune_adapt")
SHIFT = Shift(hue_degrees=-10.0, stain_h=1.25, stain_e=0.85, magnification=1.7, blur_sigma=0.4, gain_r=0.92,
              gain_b=1.08, jpeg_quality=75)
LABS = {  # revision 4's tuning labs (b1 is lab B' above; its results stay in OUT itself)
    "b1": SHIFT,
    "b2": Shift(hue_degrees=15.0, stain_h=0.9, stain_e=1.15, magnification=1.4, blur_sigma=0.6, gain_r=1.08,
                gain_b=0.9, jpeg_quality=65),
    "b3": Shift(hue_degrees=-20.0, stain_h=1.2, magnification=0.7, blur_sigma=0.3, gain_r=0.95, gain_b=1.05,
                jpeg_quality=80),
}
SEED, POOL, EPOCHS, LAB_A_TOLERANCE = 31, 100, 6, 0.003
# Every candidate names each option a later revision added, so that a retuned default never changes what an
# earlier candidate measures (revision 4's first runs had simulate_review on where it was meant off).
CANDIDATES = {f"lr{lr:g}_r{ratio:g}": {"lr": lr, "replay_ratio": ratio, "simulate_ratio": 0.0,
                                       "simulate_review": False, "benign_rules": "export",
                                       "simulate_val": False, "distill": 0.0, "interpolate": False}
              for lr in (5e-5, 1e-4) for ratio in (2.0, 4.0)}
CANDIDATES.update({f"lr5e-05_r4_s{sim:g}{'_review' if review else ''}": {
    "lr": 5e-5, "replay_ratio": 4.0, "simulate_ratio": sim, "simulate_review": review, "benign_rules": "export",
    "simulate_val": False, "distill": 0.0, "interpolate": False}
    for sim in (2.0, 4.0) for review in (False, True)})  # revision 2 (without _review) and 3
CANDIDATES["lr5e-05_r4_s2_review_check"] = {**CANDIDATES["lr5e-05_r4_s2_review"], "benign_rules": "check"}  # rev. 5
CANDIDATES["lr5e-05_r4_s2_review_joint"] = {**CANDIDATES["lr5e-05_r4_s2_review"], "benign_rules": "joint"}  # rev. 6
CANDIDATES["lr5e-05_r4_s2_review_check_simval"] = {**CANDIDATES["lr5e-05_r4_s2_review_check"],
                                                   "simulate_val": True}  # revision 7
CANDIDATES["lr5e-05_r4_s2_review_check_oracle"] = {**CANDIDATES["lr5e-05_r4_s2_review_check"],
                                                   "oracle": True}  # revision 8 (a diagnosis)
CANDIDATES["lr5e-05_r4_s2_review_check_distill"] = {**CANDIDATES["lr5e-05_r4_s2_review_check"],
                                                    "distill": 0.5}  # revision 9
CANDIDATES["lr5e-05_r4_s2_review_check_distill_wise"] = {**CANDIDATES["lr5e-05_r4_s2_review_check_distill"],
                                                         "interpolate": True}  # revision 10
ORACLE_MIN_GAIN = 0.01  # revision 8: mean lab-B' accuracy gain that would make a better estimate worth building
JOINT_MIN_FLAG_DROP = 0.02  # revision 6: joint must lower the mean lab-B flagged share (b1, b3) by 2 points
CHECK_MAX_FLAG_RISE = 0.05  # revision 5: the Benign view check fit's own cap
DISCLAIMER = "Research software, not a medical device."


class TrueLabShift:
    """Revision 8's oracle: a tuning lab's true transform where adapt expects its estimated LabShift
    (leukoscope.adaptation.lab_shift): the replay's images go through exactly what made lab B'."""

    def __init__(self, shift: Shift) -> None:
        self.shift = shift
        self.nll_as_given = self.nll_undone = float("nan")

    def apply_batch(self, images: Any) -> Any:
        import torch
        from PIL import Image

        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([np.asarray(self.shift.apply(Image.fromarray(a))) for a in arrays])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)

    def describe(self) -> str:
        return f"the true transform ({self.shift.describe()})"

    def to_dict(self) -> dict[str, Any]:
        return {"magnification": self.shift.magnification, "hue_degrees": self.shift.hue_degrees,
                "colour_slope": [1.0, 1.0, 1.0], "colour_offset": [0.0, 0.0, 0.0], "parent_nll_as_given": math.nan,
                "parent_nll_undone": math.nan, "oracle": asdict(self.shift)}


def tuning_data(work: Path, shift: Shift = SHIFT) -> dict[str, Any]:
    """Lab B' (adaptation set split as adapt splits it, evaluation part), lab A' and the replay split."""
    full = read_manifest_csv(SPLIT, DATA)
    original = full.part("val")
    lab_b = lab_b_files(original, work / "lab-b-prime", shift)
    in_pool = pool_and_evaluation(original, POOL, SEED)
    pool_b = lab_b.with_records(r for r, p in zip(lab_b.records, in_pool, strict=True) if p)
    eval_b = lab_b.with_records(r for r, p in zip(lab_b.records, in_pool, strict=True) if not p)
    lab_a = original.with_records(r for r, p in zip(original.records, in_pool, strict=True) if not p)
    evaluated = {r.path for r in lab_a.records}
    replay = full.with_records(replace(r, part="") if r.part == "val" and r.path in evaluated else r
                               for r in full.records)
    defaults = AdaptOptions()
    lab = split(pool_b, test_size=defaults.held_out, val_size=defaults.val, seed=defaults.seed)
    return {"lab": lab, "eval_b": eval_b, "lab_a": lab_a, "replay": replay}


def scored(package: Path, name: str, eval_b: Manifest, lab_a: Manifest) -> dict[str, Any]:
    return {key: row.__dict__ for key, row in evaluate(package, name, eval_b, lab_a).items()}


def run(names: list[str], out: Path, threads: int | None, shift: Shift = SHIFT) -> None:
    """Adapt and score each named candidate; one JSON per candidate (and the parent's once)."""
    lab_flag = "".join(f"--lab {lab} " for lab, s in LABS.items() if s == shift and lab != "b1")
    import torch

    if threads:
        torch.set_num_threads(threads)
    from leukoscope.inference.package import bundled_package_path

    parent = load_parent(bundled_package_path())
    for name in names:
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}; one of {', '.join(CANDIDATES)}")
        work = out / "work" / name
        data = tuning_data(work, shift)
        lab = with_classes(data["lab"], parent.classes, "lab B'")
        replay = with_classes(data["replay"], parent.classes, "the replay split")
        parent_file = out / "parent.json"
        if not parent_file.exists():
            write_json(parent_file, {"name": "parent", **scored(parent.path, "parent", data["eval_b"],
                                                                 data["lab_a"])})
        chosen = {k: v for k, v in CANDIDATES[name].items() if k != "oracle"}
        options = AdaptOptions(epochs=EPOCHS, threads=threads, **chosen)
        entry: dict[str, Any] = {"name": name, **CANDIDATES[name], "epochs": EPOCHS, "shift": shift.describe(),
                                 "parts": {p: len(lab.part(p)) for p in ("train", "val", "test")},
                                 "evaluation": len(data["eval_b"]), "options": asdict(options),
                                 "command": f"nice -n 5 .venv/bin/python scripts/tune_adapt.py run {lab_flag}{name}"}
        started = time.perf_counter()
        package = out / "packages" / name
        estimate = adapt_module.estimate_lab_shift
        if CANDIDATES[name].get("oracle"):  # revision 8: the true transform in place of the estimate
            adapt_module.estimate_lab_shift = lambda *args, **kwargs: TrueLabShift(shift)
        try:
            result = adapt_manifests(parent, lab, replay, package, options=options, log=print,
                                     command=f"scripts/tune_adapt.py: candidate {name}")
            entry["adapt_metrics"] = result.metrics  # includes the replay test gate's figures: never used to choose
            entry["benign_check_fit"] = result.info.get("benign_check_fit")
            entry.update(scored(package, name, data["eval_b"], data["lab_a"]))
        except AdaptationRefused as exc:
            entry["refused"] = str(exc)
        finally:
            adapt_module.estimate_lab_shift = estimate
        entry["seconds"] = time.perf_counter() - started
        write_json(out / "candidates" / f"{name}.json", entry)
        print(f"{name}: {entry.get('refused') or _line(entry)} ({entry['seconds']:.0f} s)", flush=True)


def _line(entry: dict[str, Any]) -> str:
    b, a = entry["lab_b"], entry["lab_a"]
    return f"lab B' {b['accuracy']:.2%}, flagged {b['flagged']:.1%}; lab A' {a['accuracy']:.2%}"


def choose(entries: list[dict[str, Any]], parent: dict[str, Any]) -> dict[str, Any] | None:
    """The docstring's rule."""
    base = parent["lab_a"]["accuracy"]
    done = [e for e in entries if "refused" not in e]
    for e in done:
        e["lab_a_drop_points"] = (base - e["lab_a"]["accuracy"]) * 100
    eligible = [e for e in done if e["lab_a_drop_points"] <= LAB_A_TOLERANCE * 100 + 1e-9]
    by_name = {e["name"]: e for e in done}

    def safe(e: dict[str, Any]) -> bool:  # revision 3: no more unflagged misses than without simulate_review
        base = by_name.get(e["name"].removesuffix("_review")) if e.get("simulate_review") else None
        missed = "leukemia_called_benign_not_flagged"
        return base is None or e["lab_b"][missed] <= base["lab_b"][missed]

    eligible = [e for e in eligible if safe(e)]

    def order(e: dict[str, Any]) -> tuple[Any, ...]:
        return (-round(e["lab_b"]["accuracy"] * e["lab_b"]["n"]), e["lab_b"]["flagged"], e["lr"], -e["replay_ratio"],
                e.get("simulate_ratio", 0.0))

    if eligible:
        return min(eligible, key=order)
    if done:
        return min(done, key=lambda e: (round(e["lab_a_drop_points"], 6), *order(e)))
    return None


def report(out: Path) -> None:
    parent = json.loads((out / "parent.json").read_text())
    entries = [json.loads(p.read_text()) for p in sorted((out / "candidates").glob("*.json"))]
    chosen = choose(entries, parent)
    lines = [f"# adapt defaults tuning ({DISCLAIMER})", "", f"lab B' = val part through {SHIFT.describe()}", "",
             "| candidate | lab-B' accuracy | lab-B' flagged | leukemia->Benign unflagged | lab-A' accuracy | "
             "lab-A' drop (points) | refused | time |", "|---|---|---|---|---|---|---|---|"]
    pb, pa = parent["lab_b"], parent["lab_a"]
    lines.append(f"| parent | {pb['accuracy']:.2%} | {pb['flagged']:.1%} | "
                 f"{pb['leukemia_called_benign_not_flagged']} | {pa['accuracy']:.2%} | | | |")
    for e in entries:
        if "refused" in e:
            lines.append(f"| {e['name']} | | | | | | {e['refused']} | {e['seconds']:.0f} s |")
            continue
        b, a = e["lab_b"], e["lab_a"]
        lines.append(f"| {e['name']} | {b['accuracy']:.2%} ({b['n']}) | {b['flagged']:.1%} | "
                     f"{b['leukemia_called_benign_not_flagged']} | {a['accuracy']:.2%} ({a['n']}) | "
                     f"{e['lab_a_drop_points']:+.2f} | no | {e['seconds']:.0f} s |")
    if chosen is None:
        verdict = "none (every candidate refused: keep the defaults)"
    else:
        eligible = chosen["lab_a_drop_points"] <= LAB_A_TOLERANCE * 100 + 1e-9
        verdict = f"{chosen['name']} ({'rule 2' if eligible else 'no candidate eligible: rule 3'})"
    lines += ["", f"chosen: {verdict}"]
    write_text(out / "TABLE.md", "\n".join(lines) + "\n")
    write_json(out / "choice.json", {"chosen": chosen and {k: chosen.get(k, 0.0) for k in (
                                         "name", "lr", "replay_ratio", "simulate_ratio", "simulate_review",
                                         "epochs")},
                                     "disclaimer": DISCLAIMER})
    print("\n".join(lines))


def lab_out(out: Path, lab: str) -> Path:
    return out if lab == "b1" else out / lab


def safety(out: Path) -> None:
    """Revision 4's table and decision."""
    missed = "leukemia_called_benign_not_flagged"
    totals = {"lr5e-05_r4_s2": 0, "lr5e-05_r4_s2_review": 0}
    lines = [f"# adapt defaults, revision 4: safety on three tuning labs ({DISCLAIMER})", "",
             "| tuning lab | shift | candidate | lab-B accuracy | flagged | leukemia called Benign: flagged / not "
             "flagged | lab-A accuracy |", "|---|---|---|---|---|---|---|"]
    for lab, shift in LABS.items():
        for name in totals:
            path = lab_out(out, lab) / "candidates" / f"{name}.json"
            if not path.is_file():
                raise SystemExit(f"{path} is missing: run `scripts/tune_adapt.py run --lab {lab} {name}` first")
            e = json.loads(path.read_text())
            if "refused" in e:
                lines.append(f"| {lab} | {shift.describe()} | {name} | {e['refused']} | | | |")
                continue
            b, a = e["lab_b"], e["lab_a"]
            totals[name] += b[missed]
            lines.append(f"| {lab} | {shift.describe()} | {name} | {b['accuracy']:.2%} ({b['n']}) | {b['flagged']:.1%} "
                         f"| {b['leukemia_called_benign_flagged']} / {b[missed]} | {a['accuracy']:.2%} |")
    keep = totals["lr5e-05_r4_s2_review"] <= totals["lr5e-05_r4_s2"]
    lines += ["", f"leukemia called Benign without a flag, summed: without simulate_review "
              f"{totals['lr5e-05_r4_s2']}, with {totals['lr5e-05_r4_s2_review']}: simulate_review "
              f"{'kept' if keep else 'switched off'}"]
    write_text(out / "SAFETY.md", "\n".join(lines) + "\n")
    write_json(out / "safety.json", {"totals": totals, "simulate_review": keep, "disclaimer": DISCLAIMER})
    print("\n".join(lines))


# revisions 5-10, each a pair (baseline, candidate) on b1 and b3: its action, report name and title
PAIRED = {
    5: ("check", "CHECK", ("lr5e-05_r4_s2_review", "lr5e-05_r4_s2_review_check"),
        "the adapted network's own Benign view check"),
    6: ("joint", "JOINT", ("lr5e-05_r4_s2_review_check", "lr5e-05_r4_s2_review_joint"),
        "the Benign view check and Benign threshold chosen together"),
    7: ("simval", "SIMVAL", ("lr5e-05_r4_s2_review_check", "lr5e-05_r4_s2_review_check_simval"),
        "the replay's val part through the lab's shift in the export's val part"),
    8: ("oracle", "ORACLE", ("lr5e-05_r4_s2_review_check", "lr5e-05_r4_s2_review_check_oracle"),
        "simulated replay through the lab's true transform (a diagnosis)"),
    9: ("distill", "DISTILL", ("lr5e-05_r4_s2_review_check", "lr5e-05_r4_s2_review_check_distill"),
        "distillation from the parent against forgetting"),
    10: ("wise", "WISE", ("lr5e-05_r4_s2_review_check_distill", "lr5e-05_r4_s2_review_check_distill_wise"),
         "weight-space ensembling with the parent (WiSE-FT)"),
}


def check(out: Path, revision: int = 5) -> None:
    """A paired revision's (PAIRED) table and decision, or revision 8's reading."""
    missed = "leukemia_called_benign_not_flagged"
    _, report, pair, title = PAIRED[revision]
    lines = [f"# adapt defaults, revision {revision}: {title} ({DISCLAIMER})", "",
             "| tuning lab | candidate | lab-B accuracy | flagged | leukemia called Benign: flagged / not flagged | "
             "lab-A accuracy | Benign check chosen | time |", "|---|---|---|---|---|---|---|---|"]
    totals, rises, gains, lab_a_changes = dict.fromkeys(pair, 0), [], [], []
    for lab in ("b1", "b3"):
        rows = {}
        for name in pair:
            path = lab_out(out, lab) / "candidates" / f"{name}.json"
            if not path.is_file():
                raise SystemExit(f"{path} is missing: run `scripts/tune_adapt.py run --lab {lab} {name}` first")
            rows[name] = e = json.loads(path.read_text())
            b, a = e["lab_b"], e["lab_a"]
            totals[name] += b[missed]
            fit = e.get("benign_check_fit") or {}
            chosen = fit.get("chosen", "(off)") + (f"; Benign threshold {fit['benign_confidence_threshold']:.6f}"
                                                   if "benign_confidence_threshold" in fit else "")
            lines.append(f"| {lab} | {name} | {b['accuracy']:.2%} ({b['n']}) | {b['flagged']:.1%} | "
                         f"{b['leukemia_called_benign_flagged']} / {b[missed]} | {a['accuracy']:.2%} | {chosen} | "
                         f"{e['seconds']:.0f} s |")
        rises.append(rows[pair[1]]["lab_b"]["flagged"] - rows[pair[0]]["lab_b"]["flagged"])
        gains.append(rows[pair[1]]["lab_b"]["accuracy"] - rows[pair[0]]["lab_b"]["accuracy"])
        lab_a_changes.append(rows[pair[1]]["lab_a"]["accuracy"] - rows[pair[0]]["lab_a"]["accuracy"])
    safe = totals[pair[1]] <= totals[pair[0]]
    lab_a_kept = all(change >= -1e-12 for change in lab_a_changes)
    if revision == 5:
        keep = max(rises) <= CHECK_MAX_FLAG_RISE + 1e-12 and safe
        verdict = f"benign_check {'kept on' if keep else 'switched off'}"
    elif revision == 6:
        keep = -float(np.mean(rises)) >= JOINT_MIN_FLAG_DROP - 1e-12 and safe
        verdict = f"benign_rules {'joint' if keep else 'check (kept)'}"
    elif revision == 7:
        keep = -float(np.mean(rises)) >= JOINT_MIN_FLAG_DROP - 1e-12 and safe and lab_a_kept
        verdict = f"simulate_val {'on' if keep else 'off (kept)'}"
    elif revision in (9, 10):
        no_worse = safe and lab_a_kept and float(np.mean(gains)) >= -1e-12
        better = (any(c > 1e-12 for c in lab_a_changes) or float(np.mean(gains)) > 1e-12
                  or -float(np.mean(rises)) >= JOINT_MIN_FLAG_DROP - 1e-12)
        keep = no_worse and better
        verdict = (f"distill {'0.5 by default' if keep else 'off (kept)'}" if revision == 9
                   else f"interpolate {'on by default' if keep else 'off (kept)'}")
    else:
        keep = float(np.mean(gains)) >= ORACLE_MIN_GAIN - 1e-12
        verdict = (f"lab-B' accuracy change with the true transform {', '.join(f'{g * 100:+.2f}' for g in gains)} "
                   f"points (b1, b3): " + ("a better estimate is worth building" if keep else
                                           "the shift estimate is not what limits the adapted network"))
    lines += ["", f"flagged share change: {', '.join(f'{r * 100:+.1f} points' for r in rises)} (b1, b3); "
              f"leukemia called Benign without a flag, summed: {pair[0]} {totals[pair[0]]}, {pair[1]} "
              f"{totals[pair[1]]}: {verdict}"]
    write_text(out / f"{report}.md", "\n".join(lines) + "\n")
    write_json(out / f"{report.lower()}.json", {"totals": totals, "flag_changes": rises, "adopted": keep,
                                                "accuracy_changes": gains, "disclaimer": DISCLAIMER})
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = {action: revision for revision, (action, *_) in PAIRED.items()}
    parser.add_argument("action", choices=("run", "choose", "safety", *actions))
    parser.add_argument("--lab", choices=tuple(LABS), default="b1", help="tuning lab (revision 4)")
    parser.add_argument("candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads")
    args = parser.parse_intermixed_args()  # `run --lab b2 NAME ...`: options between the positionals
    print(DISCLAIMER, flush=True)
    if args.action == "run":
        run(args.candidates, lab_out(args.out, args.lab), args.threads, LABS[args.lab])
    elif args.action == "safety":
        safety(args.out)
    elif args.action in actions:
        check(args.out, actions[args.action])
    else:
        report(lab_out(args.out, args.lab))


if __name__ == "__main__":
    main()
