"""Choose a model package's Benign view check (leukoscope.review.benign_check) on the val part, and nothing else.

    .venv/bin/python scripts/fit_benign_check.py [PACKAGE] [--data ../shared/data/ALL] [--split bundle/split.csv]

PACKAGE defaults to the bundled one. The network, temperature, OOD statistics, realignment and every review
threshold stay as they are; model.json's `review` gains `benign_check` (the views and the P(Benign) each
must reach) and `benign_check_fit` records the rule, the data (hashes) and the val numbers each candidate
had. model.json is replaced atomically; then the model card is rebuilt as scripts/fit_realign.py does
(`leukoscope evaluate` on the test part, reported and never used to choose) with a section on the check.
`--dry-run` writes nothing. A package whose val copies leave no leukemia image called Benign without a
flag gets no check (nothing to catch: the check would only cost).

The rule (leukoscope.inference.benign_check_fit.RULE, shared with `leukoscope adapt`, which runs it on every
adapted package), written down before the candidates were compared on the bundled package's val numbers that
decided it: on the val part of the split and seeded shifted copies of it, never on the test part, through
Predictor.predict_bytes with the package's realignment; the Benign calls nothing else flags are the check's
images; keep the candidates raising the unshifted val part's flagged share by at most 5 points; the fewest
leukemia images called Benign without a flag over the shifted copies wins, then the fewest flags. The check
only adds flags, so no candidate can change a call; the chosen one is checked through predict_bytes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from leukoscope.errors import DataError
from leukoscope.inference.benign_check_fit import (  # noqa: F401 (tests/scripts read the rule's parts here)
    CANDIDATE_THRESHOLDS,
    CANDIDATE_VIEWS,
    NO_CHECK,
    RULE,
    CopyOutputs,
    all_views,
    candidates,
    choose,
    fit_benign_check,
    with_check,
)
from leukoscope.review.benign_check import BenignCheck

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_realign import fit_record, open_fit, record_fit, val_table

SECTION = "\n## Benign view check: a Benign call must hold at another magnification\n"


def main() -> None:
    opened = open_fit(__doc__, "benign_check_fit", "benign check fit", switch_off="benign_check")
    if opened is None:
        return
    args, package, info, split, predictor = opened
    if predictor.benign_index is None:
        raise DataError(f"{package} has no Benign class: there is no Benign call to check")
    started = time.time()
    fit = fit_benign_check(predictor, split.part("val"), composites=args.composites, seed=args.seed,
                           log=lambda line: print(line, flush=True))
    print(json.dumps({"chosen": fit.chosen, "candidates": fit.summary}, indent=2))
    if args.dry_run or fit.check is None:
        return
    record = {**fit_record("scripts/fit_benign_check.py", RULE, args, split, started), **fit.record()}
    record_fit(package, args, info, "benign_check", fit.check.to_dict(), "benign_check_fit", record)


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
