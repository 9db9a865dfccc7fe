"""The cell model against the field model: the same test fields, the shift family and lab B, called per field.

DECISION RULE (written on 2026-11-30, before any test-part, shift or lab-B number of a cell model was read;
not to be changed after):

Both models are judged per field, as a technologist receives the answer: the field model (the bundled
package, src/leukoscope/assets/default) by `Predictor.predict_bytes` on the whole field; the cell model by
`leukoscope.inference.cells` (segment the field, classify every cell crop, the field's call from its cells
with the sample rule of leukoscope.review.samples: leukemia as soon as one cell is called a leukemia
subtype). A field where no cell is found, or that is unusable, counts as wrong (no class) for the model.
Measured for each: (A) accuracy on the unshifted test part of bundle/split.csv (838 fields, 4 classes);
(U) leukemia fields called Benign without a review flag, summed over the rows of the shift family
(unshifted, the 13 named shifts, 3 random composites; leukoscope.data.shifts, as benchmarks/shift.py) and
lab B (benchmarks/second_lab.LAB_B on the same test part); (F) the share of fields flagged for review on
the unshifted test part.

The cell model replaces the field model as the recommended model only if all three hold:
  1. A(cell) >= A(field) (no tolerance: the incumbent keeps ties);
  2. U(cell) < U(field) (strictly fewer unflagged leukemia-called-Benign fields);
  3. F(cell) <= F(field) + 0.10 (a flag on every field is no safety gain).
Otherwise the field model stays, and both are reported. Why the test part and not the val part: the
bundled field model was trained on the train and val rows of the split (its model.json `training`), so its
val numbers are in-sample and cannot be compared; the cell model's own choices (its epoch) are made on
its val crops only. Choosing between two fixed models with a rule fixed beforehand uses the test part
once; the numbers of the chosen model are therefore slightly optimistic, which the section says.

    .venv/bin/python -m benchmarks.cell_model --cell-model PACKAGE [--field-model PACKAGE] [--composites 3]
        [--limit N] [--no-write] [--json out.json]

Research software, not a medical device.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import DATA, RESULTS, command_line, publish, section_header, table
from benchmarks.shift import Row, score, test_records
from leukoscope.data.shifts import NAMED, Shift, sample_shifts

MAX_FLAG_RISE = 0.10  # rule 3
LAB_B_NAME = "lab B (second_lab.LAB_B)"
DISCLAIMER = "Research software, not a medical device."
Log = Callable[[str], None]


def lab_b_shift() -> Shift:
    """benchmarks/second_lab's lab B transform (imported late: second_lab pulls in the adaptation code)."""
    from benchmarks.second_lab import LAB_B

    return LAB_B


def score_cells(predictor: Any, name: str, kind: str, items: list[tuple[str, bytes]], labels: list[str]) -> Row:
    """`shift.score`'s counts for calls made from cells (leukoscope.inference.cells): a field's class is its
    call's label (leukemia: the subtype), its flag the call's review flag; no cell found, unusable or
    unreadable fields have no class (wrong) and count as flagged."""
    from leukoscope.inference.cells import predict_cells_bytes

    results = predict_cells_bytes(predictor, items)
    classes = list(predictor.classes)
    benign = classes.index("Benign") if "Benign" in classes else -1
    y = np.array([classes.index(label) for label in labels])
    called = np.array([classes.index(r.call.label) if r.call is not None and r.call.label is not None else -1
                       for r in results])
    flagged = np.array([r.call.review if r.call is not None else True for r in results], bool)
    leukemia, missed = y != benign, (y != benign) & (called == benign)
    return Row(name, kind, len(y), float((called == y).mean()), float(flagged.mean()), int(leukemia.sum()),
               int(missed.sum()), int((missed & flagged).sum()), int((missed & ~flagged).sum()),
               int((~leukemia).sum()), int((~leukemia & (called != benign) & (called >= 0) & ~flagged).sum()))


def plans(count: int, composites: int) -> list[tuple[str, str, list[Shift]]]:
    """The shift family as benchmarks/shift.py runs it, then lab B."""
    rows: list[tuple[str, str, list[Shift]]] = [("none (test part as is)", "none", [Shift()] * count)]
    rows += [(name, "named", [shift] * count) for name, shift in NAMED.items()]
    rows += [(f"random composite, seed {k}", "composite", sample_shifts(count, k)) for k in range(composites)]
    rows.append((LAB_B_NAME, "lab B", [lab_b_shift()] * count))
    return rows


def run(field_model: Any, cell_model: Any, records: list[dict[str, str]], data: Path, *, composites: int = 3,
        log: Log = print) -> dict[str, list[Row]]:
    """Both models on every plan: the field model on whole fields, the cell model from its cells."""
    labels = [row["label"] for row in records]
    originals = [Image.open(data / row["path"]).convert("RGB") for row in records]
    out: dict[str, list[Row]] = {"field": [], "cell": []}
    for name, kind, shifts in plans(len(records), composites):
        items = [(row["path"], shift.encode(image)) for row, image, shift in zip(records, originals, shifts, strict=True)]
        out["field"].append(score(field_model, name, kind, items, labels))
        out["cell"].append(score_cells(cell_model, name, kind, items, labels))
        log(f"{name}: field {out['field'][-1].cells()[2:]} | cells {out['cell'][-1].cells()[2:]}")
    return out


def totals(rows: list[Row]) -> dict[str, float]:
    """The rule's three numbers of one model: A, U and F."""
    plain = next(r for r in rows if r.kind == "none")
    return {"A": plain.accuracy, "U": sum(r.leukemia_called_benign_not_flagged for r in rows), "F": plain.flagged}


def decide(field_rows: list[Row], cell_rows: list[Row]) -> tuple[str, list[tuple[str, bool, str]]]:
    """The module docstring's rule: ("cell" or "field", [(condition, held, numbers)])."""
    f, c = totals(field_rows), totals(cell_rows)
    checks = [
        ("1. accuracy on the unshifted test part: cell >= field", c["A"] >= f["A"], f"cell {c['A']:.2%}, field {f['A']:.2%}"),
        ("2. unflagged leukemia called Benign over the family and lab B: cell < field", c["U"] < f["U"],
         f"cell {c['U']:.0f}, field {f['U']:.0f}"),
        (f"3. flagged share (unshifted): cell <= field + {MAX_FLAG_RISE:.0%}", c["F"] <= f["F"] + MAX_FLAG_RISE + 1e-12,
         f"cell {c['F']:.1%}, field {f['F']:.1%}"),
    ]
    return ("cell" if all(held for _, held, _ in checks) else "field"), checks


def render(result: dict[str, list[Row]], command: str, cell_name: str, extra: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    body = section_header("Cell model vs field model (test part, shift family, lab B)", command) + "\n"
    body += (f"Field model: the bundled package, on whole fields. Cell model: `{cell_name}`, via `predict --cells` "
             "(each field's call from its cells with the sample rule). Counts per field, as `benchmarks/shift.py` "
             "counts them; a field with no cell found has no class. The decision rule is in "
             "`benchmarks/cell_model.py`'s docstring, written before these numbers were read. "
             f"{DISCLAIMER}\n\n")
    header = ["images", "n", "accuracy field / cells", "flagged field / cells", "leukemia called Benign field / cells",
              "of them not flagged field / cells", "benign called leukemia, not flagged field / cells"]
    rows = []
    for f, c in zip(result["field"], result["cell"], strict=True):
        rows.append([f.name, f.n, f"{f.accuracy:.3f} / {c.accuracy:.3f}", f"{f.flagged:.3f} / {c.flagged:.3f}",
                     f"{f.leukemia_called_benign} / {c.leukemia_called_benign} of {f.n_leukemia}",
                     f"**{f.leukemia_called_benign_not_flagged} / {c.leukemia_called_benign_not_flagged}**",
                     f"{f.benign_called_leukemia_not_flagged} / {c.benign_called_leukemia_not_flagged} of {f.n_benign}"])
    body += table(header, rows) + "\n"
    choice, checks = decide(result["field"], result["cell"])
    body += "Decision rule:\n\n" + "".join(f"- {name}: {numbers}: **{'holds' if held else 'fails'}**\n"
                                          for name, held, numbers in checks)
    body += (f"\n**Outcome: the {'cell' if choice == 'cell' else 'field'} model "
             f"{'replaces the field model' if choice == 'cell' else 'stays the recommended model'}.** The test part "
             "was used once, for this choice between two fixed models: the chosen model's numbers are slightly "
             "optimistic.\n")
    for line in extra.get("notes", []):
        body += f"\n{line}\n"
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell-model", required=True, help="the cell model package (leukoscope train --unit cells)")
    parser.add_argument("--field-model", default=None, help="field model package (default: the bundled one)")
    parser.add_argument("--composites", type=int, default=3, help="random composite copies (seeds 0, 1, ...)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    import leukoscope
    from leukoscope.inference.package import unit_of

    field_model, cell_model = leukoscope.load_model(args.field_model), leukoscope.load_model(args.cell_model)
    if unit_of(cell_model.info) != "cells":
        parser.error(f"--cell-model {args.cell_model} is not a cell package (model.json unit: cells)")
    records = test_records()[: args.limit] if args.limit else test_records()
    result = run(field_model, cell_model, records, DATA, composites=args.composites)
    choice, checks = decide(result["field"], result["cell"])
    body = render(result, command_line(), Path(args.cell_model).name, {})
    raw = {"choice": choice, "checks": [list(c) for c in checks],
           **{k: [r.__dict__ for r in v] for k, v in result.items()}}
    publish("cell-model", body, write=not args.no_write and not args.limit, results=args.results,
            json_path=args.json, raw=raw)


if __name__ == "__main__":
    main()
