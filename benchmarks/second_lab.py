"""A simulated second lab: how many of its verified images `leukoscope adapt` needs before lab B is served well.

Lab B is the test part of bundle/split.csv as another laboratory would photograph it: every image through
one fixed transform of `leukoscope.data.shifts` (LAB_B: another stain's hue, a darker haematoxylin, a
higher-power objective, a little defocus, another camera's white balance and JPEG encoder; one lab, one
recipe, so every image gets the same transform) and written as that lab's JPEG files. Lab B is split
duplicate-aware and stratified (`leukoscope.data.split`, on the original images' copies) into an adaptation
pool and an evaluation part; the adaptation sets of N = 25, 50, 100, 200 verified images are stratified
prefixes of one seeded order of the pool's duplicate groups, so each N holds the smaller ones, and the
evaluation part is the same for every N. For each N, `adaptation.adapt.adapt_manifests` (the library of
`leukoscope adapt`, default options, replaying the parent's training part) splits the N images as the
command does (adapt / calibrate / held out) and writes an adapted package, or refuses (recorded as the
result). Each package is then scored like any upload on lab B's evaluation part and on lab A: the original
files of the same evaluation images (test-part images whose shifted copies were in the pool are left out).

    .venv/bin/python -m benchmarks.second_lab [--model PACKAGE] [--sizes 25 50 100 200] [--no-write] [--json F]

One draw of the lab's images is one sample: `--seed S --sizes 100 --no-write --json F` measures another
(another pool, evaluation part and adaptation set), and `--draws F1 F2 ...` writes the section
`second-lab-draws`, which sets such runs side by side (how much the N = 100 figures move from draw to draw).

Research software, not a medical device.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import common
from benchmarks.common import DATA, REPO, RESULTS, SPLIT, command_line, cpu_flags, publish, section_header, table
from benchmarks.shift import Row, score
from leukoscope.adaptation.adapt import adapt_manifests
from leukoscope.adaptation.data import Parent, load_parent, with_classes
from leukoscope.adaptation.finetune import AdaptOptions
from leukoscope.adaptation.scores import AdaptationRefused
from leukoscope.data.discover import dhash
from leukoscope.data.fileio import sha256_bytes, write_bytes, write_json
from leukoscope.data.manifest import Manifest, read_manifest_csv
from leukoscope.data.shifts import Shift
from leukoscope.data.split import class_groups, split
from leukoscope.errors import LeukoscopeError, UsageError

LAB_B = Shift(hue_degrees=-15.0, stain_h=1.15, stain_e=0.9, magnification=1.5, blur_sigma=0.5, gain_r=1.05,
              gain_b=0.92, jpeg_quality=70)
SEED = 13  # the pool / evaluation split and the order of the pool's groups
SIZES = (25, 50, 100, 200)
POOL = 250  # images of lab B set aside for adaptation (the largest N and some slack); the rest is evaluated
PLOT = REPO / "benchmarks" / "second_lab.png"
TARGET_N, TARGET_ACCURACY, TARGET_FLAGGED, LAB_A_TOLERANCE = 100, 0.99, 0.10, 0.003
DISCLAIMER = "Research software, not a medical device."
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- lab B


def lab_b_files(original: Manifest, folder: Path, shift: Shift = LAB_B) -> Manifest:
    """Lab B's files under `folder` (same relative paths, .jpg when the shift ends in JPEG, else .png), as a
    manifest whose records keep the originals' labels and parts; record i is original record i's copy."""
    suffix = ".jpg" if shift.jpeg_quality is not None else ".png"
    records = []
    for record in original.records:
        data = shift.encode(Image.open(original.root / record.path).convert("RGB"))
        path = str(Path(record.path).with_suffix(suffix))
        write_bytes(folder / path, data)
        image = Image.open(io.BytesIO(data))
        records.append(replace(record, path=path, sha256=sha256_bytes(data), bytes=len(data), mode=image.mode,
                               width=image.width, height=image.height, dhash=dhash(image)))
    return Manifest(folder, original.classes, records)


def pool_and_evaluation(original: Manifest, pool: int, seed: int = SEED) -> list[bool]:
    """True for each record in the adaptation pool: a stratified, duplicate-aware split of the originals (a
    copy of an evaluated image is never adapted on), the pool about `pool` images."""
    if not 0 < pool < len(original):
        raise UsageError(f"the adaptation pool ({pool}) must be smaller than lab B ({len(original)} images)")
    parted = split(original, test_size=1 - pool / len(original), seed=seed)
    return [r.part == "train" for r in parted.records]


def nested_sets(pool: Manifest, sizes: list[int], seed: int = SEED) -> dict[int, list[int]]:
    """For each N, the indices (into `pool`) of its adaptation set: the longest prefix of at most N images of
    one seeded order of the pool's duplicate groups that interleaves the classes in proportion
    (Sainte-Lague), so every set is stratified, holds the smaller ones and never splits a group."""
    if max(sizes) > len(pool):
        raise UsageError(f"--sizes up to {max(sizes)} but the adaptation pool has {len(pool)} images")
    _, members, strata = class_groups(pool)
    rng = np.random.default_rng(seed)
    queues = {}
    for label in pool.classes:
        gids = sorted(strata.get(label, []))
        rng.shuffle(gids)
        queues[label] = gids
    share = {label: sum(len(members[g]) for g in gids) / len(pool) for label, gids in queues.items()}
    taken = dict.fromkeys(queues, 0)
    order: list[list[int]] = []  # groups, in the order they are taken
    while any(queues.values()):
        label = min((lb for lb in pool.classes if queues.get(lb)), key=lambda lb: (taken[lb] + 0.5) / share[lb])
        group = sorted(members[queues[label].pop(0)])
        order.append(group)
        taken[label] += len(group)
    sets = {}
    for n in sorted(sizes):
        chosen: list[int] = []
        for group in order:
            if len(chosen) + len(group) > n:
                break
            chosen.extend(group)
        sets[n] = chosen
    return sets


def replay_without(replay: Manifest, left_out: set[str]) -> Manifest:
    """The parent's split with the test rows in `left_out` (originals of lab B's pool) moved out of every
    part, so adapt's forgetting check and lab A score only images whose copies were never adapted on."""
    return replay.with_records(replace(r, part="") if r.part == "test" and r.path in left_out else r
                               for r in replay.records)


# ------------------------------------------------------------------------------------------- measuring


def evaluate(package: Path, name: str, lab_b: Manifest, lab_a: Manifest) -> dict[str, Row]:
    """The package's Predictor on lab B's evaluation files and lab A's originals of them."""
    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(package)
    rows = {}
    for key, part in (("lab_b", lab_b), ("lab_a", lab_a)):
        items = [(r.path, (part.root / r.path).read_bytes()) for r in part.records]
        rows[key] = score(predictor, f"{name}, {key}", key, items, [r.label for r in part.records])
    return rows


def measure(model: str | Path, records: Manifest, replay: Manifest, work: Path, *, sizes: list[int],
            pool: int = POOL, seed: int = SEED, shift: Shift = LAB_B, options: AdaptOptions | None = None,
            keep: Path | None = None, log: Log = print) -> dict[str, Any]:
    """Everything the section reports. `records`: lab A's images (the test part, labelled, with dhash);
    `replay`: the parent's split (train replayed). Adapted packages go to `keep` (or `work`)."""
    parent: Parent = load_parent(model)
    original = with_classes(records, parent.classes, "lab A's images")
    replay = with_classes(replay, parent.classes, "the replay split")
    lab_b = lab_b_files(original, work / "lab-b", shift)
    in_pool = pool_and_evaluation(original, pool, seed)
    pool_b = lab_b.with_records(r for r, p in zip(lab_b.records, in_pool, strict=True) if p)
    eval_b = lab_b.with_records(r for r, p in zip(lab_b.records, in_pool, strict=True) if not p)
    lab_a = original.with_records(r for r, p in zip(original.records, in_pool, strict=True) if not p)
    sets = nested_sets(pool_b, sizes, seed)
    left_out = {r.path for r, p in zip(original.records, in_pool, strict=True) if p}
    replay = replay_without(replay, left_out)
    log(f"lab B: {len(lab_b)} images ({shift.describe()}); pool {len(pool_b)}, evaluation {len(eval_b)}; "
        f"replay: {len(replay.part('train'))} train, {len(replay.part('test'))} test")
    options = options or AdaptOptions()
    rows = [{"n": 0, "name": "parent (not adapted)", "images": 0, **_scored(parent.path, "parent", eval_b, lab_a)}]
    for n in sorted(sizes):
        chosen = pool_b.with_records(pool_b.records[i] for i in sets[n])
        entry: dict[str, Any] = {"n": n, "name": f"adapted on N={n}", "images": len(chosen),
                                 "classes": chosen.class_counts(), "paths": [r.path for r in chosen.records]}
        started = time.perf_counter()
        out = (keep or work) / f"adapted-n{n}"
        try:
            lab = split(chosen, test_size=options.held_out, val_size=options.val, seed=options.seed)
            entry["parts"] = {p: len(lab.part(p)) for p in ("train", "val", "test")}
            result = adapt_manifests(parent, lab, replay, out, options=options, log=log,
                                     command=f"benchmarks.second_lab: adapt on lab B, N={n}")
            entry["adapt_metrics"] = result.metrics
            entry["lab_shift"] = result.info["adaptation"].get("lab_shift")
            entry["benign_rules"] = benign_rules(result.info)
            entry.update(_scored(out, f"N={n}", eval_b, lab_a))
        except AdaptationRefused as exc:
            entry["refused"] = str(exc)
        except LeukoscopeError as exc:  # e.g. a DataError when N is too small to split: recorded, not fatal
            entry["refused"] = f"error: {exc}"
        entry["adapt_seconds"] = time.perf_counter() - started
        log(f"N={n}: {entry.get('refused') or _line(entry)} ({entry['adapt_seconds']:.0f} s)")
        rows.append(entry)
    return {"shift": shift.to_dict(), "shift_words": shift.describe(), "seed": seed, "pool": len(pool_b),
            "evaluation": len(eval_b), "lab_a": len(lab_a), "options": asdict(options), "rows": rows,
            "sets": {n: [pool_b.records[i].path for i in idx] for n, idx in sets.items()},
            "evaluation_paths": [r.path for r in eval_b.records]}


def benign_rules(info: dict[str, Any]) -> dict[str, Any]:
    """How an adapted package reviews its Benign calls: its Benign confidence threshold and the Benign view
    check adapt chose for it (None: none)."""
    review, fit = info.get("review", {}), info.get("benign_check_fit") or {}
    return {"benign_confidence_threshold": review.get("benign_confidence_threshold"),
            "benign_check": review.get("benign_check"), "chosen": fit.get("chosen")}


def _scored(package: Path, name: str, eval_b: Manifest, lab_a: Manifest) -> dict[str, Any]:
    scored = evaluate(package, name, eval_b, lab_a)
    return {key: row.__dict__ for key, row in scored.items()}


def _line(entry: dict[str, Any]) -> str:
    b, a = entry["lab_b"], entry["lab_a"]
    return (f"lab B accuracy {b['accuracy']:.2%}, flagged {b['flagged']:.1%}, leukemia called Benign unflagged "
            f"{b['leukemia_called_benign_not_flagged']}; lab A accuracy {a['accuracy']:.2%}")


# ------------------------------------------------------------------------------------------- report


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for issue #13's targets with N = 100."""
    rows = {row["n"]: row for row in result["rows"]}
    parent, row = rows[0], rows.get(TARGET_N)
    names = [f"lab-B accuracy >= {TARGET_ACCURACY:.0%}", f"flagged <= {TARGET_FLAGGED:.0%}",
             "0 leukemia called Benign without a flag",
             f"lab-A accuracy within {LAB_A_TOLERANCE * 100:.1f} points of the parent"]
    if row is None or "lab_b" not in row:
        why = "not measured" if row is None else row["refused"]
        return [(f"N={TARGET_N}: {name}", False, why) for name in names]
    b, a, pa = row["lab_b"], row["lab_a"]["accuracy"], parent["lab_a"]["accuracy"]
    return [
        (f"N={TARGET_N}: {names[0]}", b["accuracy"] >= TARGET_ACCURACY, f"{b['accuracy']:.2%}"),
        (f"N={TARGET_N}: {names[1]}", b["flagged"] <= TARGET_FLAGGED, f"{b['flagged']:.1%}"),
        (f"N={TARGET_N}: {names[2]}", b["leukemia_called_benign_not_flagged"] == 0,
         str(b["leukemia_called_benign_not_flagged"])),
        (f"N={TARGET_N}: {names[3]}", a >= pa - LAB_A_TOLERANCE - 1e-9,
         f"{a:.2%} vs the parent's {pa:.2%} ({(a - pa) * 100:+.2f} points)"),
    ]


def _options(options: dict[str, Any]) -> str:
    """"default options" or the options that differ from adapt's defaults."""
    default = asdict(AdaptOptions())
    changed = {k: v for k, v in options.items() if default.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "default options"


def cells(row: dict[str, Any]) -> list[Any]:
    """One table row: the package, the N images it adapted on, lab B's and lab A's figures."""
    parts = row.get("parts")
    name = (f"{row['name']} ({row['images']} images: {parts['train']} adapt / {parts['val']} calibrate / "
            f"{parts['test']} held out)") if parts else row["name"]
    if "lab_b" not in row:
        return [name, row["refused"], *[""] * 5]
    b, a = row["lab_b"], row["lab_a"]
    return [name, f"{b['accuracy']:.2%}", f"{b['flagged']:.1%}",
            f"{b['leukemia_called_benign_flagged']} / **{b['leukemia_called_benign_not_flagged']}** "
            f"of {b['n_leukemia']}",
            f"{b['benign_called_leukemia_not_flagged']} of {b['n_benign']}", f"{a['accuracy']:.2%}",
            f"{row['adapt_seconds']:.0f} s" if "adapt_seconds" in row else ""]


def render(result: dict[str, Any], command: str, model: str, wall: float, plot: str | None) -> str:
    """The RESULTS.md section."""
    body = section_header(f"Second lab: adapting to a simulated lab B ({model})", command) + "\n"
    body += (f"{DISCLAIMER} Lab B = the test part of bundle/split.csv through one fixed transform of "
             f"`leukoscope.data.shifts` ({result['shift_words']}), written as JPEG files. Split duplicate-aware "
             f"and stratified (seed {result['seed']}) into an adaptation pool of {result['pool']} images and an "
             f"evaluation part of {result['evaluation']}; the adaptation sets are nested, stratified prefixes of "
             "the pool (at most N images: duplicate groups are never cut). Each set is given to "
             f"`adapt_manifests` (`leukoscope adapt`'s library, {_options(result['options'])}, replaying the "
             "parent's training part; the test rows whose shifted copies are in the pool are left out of its "
             "forgetting check), which splits it adapt / calibrate / held out (first column) and may refuse. "
             f"Lab A = the original files of the same {result['lab_a']} evaluation images. Counts as the "
             "shift benchmark gives them (the review flag of each package's Predictor). "
             f"Wall time {wall / 60:.0f} min.\n\n")
    header = ["package", "lab-B accuracy", "lab-B flagged", "leukemia called Benign: flagged / not flagged",
              "benign called leukemia, not flagged", "lab-A accuracy", "adapt + score time"]
    body += table(header, [cells(row) for row in result["rows"]]) + "\n"
    shifts = [(row["n"], row["lab_shift"]) for row in result["rows"] if row.get("lab_shift")]
    if shifts:
        body += ("Lab B's shift as each adaptation estimated it from its adaptation images (simulated replay, "
                 "`leukoscope.adaptation.lab_shift`; the true one is above):\n\n" + "".join(
                     f"- N={n}: magnification x{s['magnification']:.2f}, hue {s['hue_degrees']:+.0f} deg, colour "
                     + ", ".join(f"{c} x{a:.2f}{b:+.0f}" for c, a, b in zip("RGB", s["colour_slope"],
                                                                             s["colour_offset"], strict=True))
                     + "\n" for n, s in shifts) + "\n")
    body += _review_lines(result["rows"])
    body += "Issue #13's targets with N = 100:\n\n" + "".join(
        f"- {name}: {measured}: **{'PASS' if met else 'FAIL'}**\n" for name, met, measured in targets(result))
    if plot:
        body += f"\n![lab-B figures against N]({plot})\n"
    return body


def render_draws(results: list[dict[str, Any]], command: str) -> str:
    """The RESULTS.md section that repeats N = 100 over other draws of the lab's images (other --seed runs'
    JSON): how much issue #13's figures move with which images a lab happens to verify and be judged on."""
    body = section_header("Second lab: N = 100 over several draws of the lab's images", command) + "\n"
    body += (f"{DISCLAIMER} Each row is one run of this benchmark with another `--seed` (another adaptation pool "
             "and evaluation part of the same lab B, other adaptation images), adapt's default options; the runs: "
             + "; ".join(f"`{r.get('command', '(command not recorded)')}`" for r in results) + ".\n\n")
    header = ["seed", "parent: lab-B accuracy / flagged / unflagged misses", "N=100: lab-B accuracy",
              "lab-B flagged", "leukemia called Benign: flagged / not flagged", "benign called leukemia, not flagged",
              "lab-A accuracy (parent)", "targets met"]
    rows, met_by_target = [], {}
    for result in results:
        by_n = {row["n"]: row for row in result["rows"]}
        parent, row = by_n[0], by_n.get(TARGET_N)
        pb = parent["lab_b"]
        first = [str(result["seed"]), f"{pb['accuracy']:.2%} / {pb['flagged']:.1%} / "
                                      f"{pb['leukemia_called_benign_not_flagged']}"]
        checks = targets(result)
        for name, met, _ in checks:
            met_by_target.setdefault(name, []).append(met)
        met_count = f"{sum(met for _, met, _ in checks)} of {len(checks)}"
        if row is None or "lab_b" not in row:
            rows.append([*first, row["refused"] if row else "not measured", *[""] * 4, met_count])
            continue
        b, a = row["lab_b"], row["lab_a"]
        rows.append([*first, f"{b['accuracy']:.2%}", f"{b['flagged']:.1%}",
                     f"{b['leukemia_called_benign_flagged']} / **{b['leukemia_called_benign_not_flagged']}** of "
                     f"{b['n_leukemia']}", f"{b['benign_called_leukemia_not_flagged']} of {b['n_benign']}",
                     f"{a['accuracy']:.2%} ({parent['lab_a']['accuracy']:.2%})", met_count])
    body += table(header, rows) + "\n"
    body += "Issue #13's targets with N = 100, draws that meet each:\n\n" + "".join(
        f"- {name}: {sum(mets)} of {len(mets)}\n" for name, mets in met_by_target.items())
    return body


def _review_lines(rows: list[dict[str, Any]]) -> str:
    """Why lab-B images were flagged (share with each review code; an image may have several) and each adapted
    package's Benign rules."""
    lines = []
    for row in rows:
        codes = row.get("lab_b", {}).get("flag_codes")
        if codes is None:
            continue
        reasons = ", ".join(f"{code} {share:.1%}" for code, share in sorted(codes.items(), key=lambda kv: -kv[1]))
        rules = row.get("benign_rules")
        extra = ""
        if rules:
            threshold = rules.get("benign_confidence_threshold")
            extra = (f"; Benign calls reviewed below confidence {threshold:.6g}" if threshold is not None else "")
            extra += f"; Benign view check: {rules.get('chosen') or 'not fitted'}"
        lines.append(f"- {row['name']}: {reasons or 'none'}{extra}\n")
    if not lines:
        return ""
    return ("Why lab-B images were flagged (share of the evaluation images with each review code, "
            "`leukoscope.review.reasons`; an image may have several), and each adapted package's Benign rules:\n\n"
            + "".join(lines) + "\n")


def save_plot(result: dict[str, Any], path: Path) -> None:
    """Lab B's accuracy, flagged share and unflagged misses (and lab A's accuracy) against N, as a PNG; an N
    whose adaptation was refused is marked on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "lab_b" in r]
    refused = [r["n"] for r in result["rows"] if "lab_b" not in r]
    n = [r["n"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    left.plot(n, [100 * r["lab_b"]["accuracy"] for r in rows], "o-", label="lab B accuracy")
    left.plot(n, [100 * r["lab_a"]["accuracy"] for r in rows], "s--", label="lab A accuracy")
    left.axhline(100 * TARGET_ACCURACY, color="grey", lw=0.8, ls=":", label="target (lab B)")
    left.set(ylabel="%", title="accuracy")
    right.plot(n, [100 * r["lab_b"]["flagged"] for r in rows], "o-", label="lab B flagged %")
    right.axhline(100 * TARGET_FLAGGED, color="grey", lw=0.8, ls=":", label="target")
    right.bar(n, [r["lab_b"]["leukemia_called_benign_not_flagged"] for r in rows], width=6, alpha=0.5,
              color="red", label="leukemia called Benign, not flagged (count)")
    right.set(title="review")
    for axis in (left, right):
        if refused:
            low = axis.get_ylim()[0]
            axis.plot(refused, [low] * len(refused), "kx", ms=9, clip_on=False, label="adaptation refused")
        axis.set_xticks(sorted({0, *n, *refused}))
        axis.set_xlabel("verified lab-B images N (0 = parent)")
        axis.legend(fontsize=8)
    fig.suptitle(f"Simulated second lab B: {result['shift_words']}\n{DISCLAIMER}", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def read_draws(paths: list[Path]) -> list[dict[str, Any]]:
    """Earlier runs' --json files, in seed order; a missing or unreadable one ends the run with one line."""
    results = []
    for path in paths:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            result["rows"] = [{**row, "n": int(row["n"])} for row in result["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a second-lab --json file ({exc})") from None
        results.append(result)
    return sorted(results, key=lambda r: r.get("seed", 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="adaptation set sizes N")
    parser.add_argument("--pool", type=int, default=POOL, help="lab-B images set aside for adaptation")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the pool / evaluation split and of the "
                        "adaptation sets (another seed: another draw of the lab's images)")
    parser.add_argument("--no-write", action="store_true", help="print the section only (no RESULTS.md, no plot)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where the PNG goes")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures as JSON")
    parser.add_argument("--keep", type=Path, default=None, help="keep the adapted packages in this folder")
    parser.add_argument("--draws", type=Path, nargs="+", default=None, metavar="JSON",
                        help="instead of measuring: the section that compares earlier runs' --json files "
                        "(other --seed draws)")
    parser.add_argument("--epochs", type=int, default=None, help="adapt's --epochs (default: adapt's own)")
    parser.add_argument("--lr", type=float, default=None, help="adapt's --lr (default: adapt's own)")
    parser.add_argument("--replay-ratio", type=float, default=None, help="adapt's --replay-ratio (default: its own)")
    args = parser.parse_args(argv)
    if argv is None:
        common.reexec_with_malloc_env(sys.argv)  # glibc settings that make PyTorch CPU training ~1.5x faster here
    if any(n < 1 for n in args.sizes):
        raise SystemExit("--sizes must be positive")
    if args.draws:
        publish("second-lab-draws", render_draws(read_draws(args.draws), command_line()),
                write=not args.no_write, results=args.results)
        return
    from leukoscope.inference.package import bundled_package_path

    print(DISCLAIMER)
    print(f"CPU flags: {', '.join(cpu_flags()) or 'none listed'}")
    model = Path(args.model) if args.model else bundled_package_path()
    started = time.perf_counter()
    records = read_manifest_csv(SPLIT, DATA).part("test")
    replay = read_manifest_csv(SPLIT, DATA)
    chosen = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("replay_ratio", args.replay_ratio))
              if v is not None}
    with tempfile.TemporaryDirectory(prefix="leukoscope-second-lab-") as tmp:
        result = measure(model, records, replay, Path(tmp), sizes=sorted(set(args.sizes)), pool=args.pool,
                         seed=args.seed, keep=args.keep, options=AdaptOptions(**chosen))
    wall = time.perf_counter() - started
    result["wall_seconds"] = wall
    result["command"] = command_line()
    plot = None
    if not args.no_write:
        save_plot(result, args.plot)
        plot = os.path.relpath(args.plot.resolve(), args.results.resolve().parent)
    if args.json is not None:
        write_json(args.json, result)
    name = "bundled model" if args.model is None else f"model {model.name}"
    publish("second-lab", render(result, command_line(), name, wall, plot), write=not args.no_write,
            results=args.results)


if __name__ == "__main__":
    main()
