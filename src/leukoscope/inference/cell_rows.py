"""`predict --cells` results as rows: one per cell, per field and per sample, with counts per class.

Why three levels in one table: a CSV that pandas reads in one call (`df[df.level == "field"]`), with the
same columns on every row, and a JSON that nests cells in fields in samples for programs. Column names
follow `Prediction.to_row` and `SampleCall.to_row` (p_<class> probabilities, n_<class> counts).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leukoscope.inference.cells import OK, CellResult, FieldResult, sample_of
from leukoscope.review.samples import SampleCall

DISCLAIMER = "Research software, not a certified medical device: never use it alone for a diagnosis."
CALL_KEYS = ("call", "label", "headline", "summary", "confidence", "review", "review_codes", "review_reasons")


def _call_part(call: SampleCall | None, nested: bool) -> dict[str, Any]:
    if call is None:
        return {"call": None if nested else "", "label": None if nested else "", "headline": "no call",
                "summary": "", "confidence": 0.0, "review": False, "review_codes": [] if nested else "",
                "review_reasons": [] if nested else ""}
    row = call.to_row(nested=nested)
    return {key: row[key] for key in CALL_KEYS}


def cell_row(result: FieldResult, cell: CellResult, classes: Sequence[str], *, nested: bool = False) -> dict[str, Any]:
    """One cell: where it is, its class, probabilities and review flag."""
    p = cell.prediction
    row: dict[str, Any] = {"level": "cell", "path": result.source, "cell_id": cell.cell_id, "status": p.status,
                           "reason": "", "x0": cell.bbox[0], "y0": cell.bbox[1], "x1": cell.bbox[2],
                           "y1": cell.bbox[3], "area": cell.area, "nucleus_fraction": cell.nucleus_fraction,
                           "label": p.label if nested else p.label or "", "confidence": round(p.confidence, 6),
                           "review": p.review,
                           "review_codes": list(p.review_codes) if nested else "; ".join(p.review_codes),
                           "review_reasons": "; ".join(p.review_reasons),
                           "ood_score": None if p.ood_score is None else round(p.ood_score, 4)}
    row.update({f"p_{c}": round(float(p.probabilities.get(c, 0.0)), 6) for c in classes})
    return row


def field_row(result: FieldResult, classes: Sequence[str], *, nested: bool = False) -> dict[str, Any]:
    """One field: its status (and reason), the call from its cells and the cells per class."""
    row: dict[str, Any] = {"level": "field", "path": result.source, "status": result.status, "reason": result.reason,
                           "cells": len(result.cells), "width": result.width, "height": result.height,
                           "sha256": result.sha256, **_call_part(result.call, nested)}
    row.update({f"n_{c}": n for c, n in result.counts(classes).items()})
    return row


def sample_row(name: str, fields: Sequence[FieldResult], classes: Sequence[str], *, benign_class: str = "Benign",
               nested: bool = False) -> dict[str, Any]:
    """One sample (a folder, or every image given): the call from the cells of all its fields and the cells
    per class; fields with no cell found are counted but left out of the call."""
    call = sample_of(fields, classes, benign_class=benign_class)
    statuses = [f.status for f in fields]
    row: dict[str, Any] = {"level": "sample", "path": name, "status": OK if call.call is not None else "no call",
                           "reason": "", "fields": len(fields), "fields_no_cell": statuses.count("no cell found"),
                           "fields_unusable": statuses.count("unusable"), "fields_failed": statuses.count("error"),
                           "cells": sum(len(f.cells) for f in fields), **_call_part(call, nested)}
    row.update({f"n_{c}": sum(f.counts(classes)[c] for f in fields) for c in classes})
    return row


def group(fields: Sequence[FieldResult], by_folder: bool) -> dict[str, list[FieldResult]]:
    """Samples: one per folder of the fields' paths, or one holding every field ("all images")."""
    if not by_folder:
        return {"all images": list(fields)}
    groups: dict[str, list[FieldResult]] = {}
    for result in fields:
        groups.setdefault(str(Path(result.source).parent), []).append(result)
    return dict(sorted(groups.items()))


def flat_rows(fields: Sequence[FieldResult], classes: Sequence[str], *, by_folder: bool = False,
              benign_class: str = "Benign") -> list[dict[str, Any]]:
    """Sample rows, then for each field its row and its cells' rows, for CSV."""
    rows: list[dict[str, Any]] = []
    for name, members in group(fields, by_folder).items():
        rows.append(sample_row(name, members, classes, benign_class=benign_class))
        for result in members:
            rows.append(field_row(result, classes))
            rows.extend(cell_row(result, cell, classes) for cell in result.cells)
    return rows


def nested_document(fields: Sequence[FieldResult], classes: Sequence[str], *, model_unit: str, by_folder: bool = False,
                    benign_class: str = "Benign") -> dict[str, Any]:
    """Samples holding fields holding cells, for JSON."""
    samples = []
    for name, members in group(fields, by_folder).items():
        sample = sample_row(name, members, classes, benign_class=benign_class, nested=True)
        sample["fields"] = [{**field_row(f, classes, nested=True),
                             "cells": [cell_row(f, c, classes, nested=True) for c in f.cells]} for f in members]
        samples.append(sample)
    return {"unit": "cells", "model_unit": model_unit, "classes": list(classes), "disclaimer": DISCLAIMER,
            "samples": samples}


def summary_line(fields: Sequence[FieldResult]) -> str:
    """What a run did, in one line."""
    statuses = [f.status for f in fields]
    return (f"{len(fields)} field(s), {sum(len(f.cells) for f in fields)} cell(s): {statuses.count('no cell found')} "
            f"without a white cell, {statuses.count('unusable')} unusable, {statuses.count('error')} failed")


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Every row under the union of their columns (first-seen order); missing values empty."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"
