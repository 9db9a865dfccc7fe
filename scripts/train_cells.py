"""Train the cell model and export it as a cell package, in one reproducible command (issue #16, part 2).

The recipe, fixed here so that a rerun repeats it: the bundled field package's MobileNetV2 backbone
(model.pt; its head is not used) frozen; every training field of bundle/split.csv segmented
(leukoscope.segmentation) and at most 8 of its cells kept (seeded), each labelled with its field's label;
crops of 64 working px resized to 96 px; pooled features of 3 views per crop (as is, and twice through the
"robust" recipe: zoom, stain, hue, white balance, blur, JPEG-like), cached; the classifier trained 30
epochs (AdamW 1e-3, cosine, label smoothing 0.05, class-balanced loss, batch 128); the epoch chosen on the
val part's crops (every cell) by macro-F1. The test part is never read here. The run folder holds
config.yaml, manifest.csv, split.csv, env.json, cells.csv, metrics.csv, best.pt, summary.json; the package
(leukoscope.inference.cell_export) fits its temperature, review threshold and OOD statistics on the crops.
It is `leukoscope train DATA --unit cells ...` (the command printed at the start) followed by the export.

    nice -n 10 python scripts/train_cells.py --out runs --name cells-mbv2-96 --package runs/cells-package

About 25-55 min on 2 shared CPU cores (most of it the cached features). Research software, not a medical
device.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

RECIPE = {"backbone": "mobilenetv2_100", "weights": "src/leukoscope/assets/default/model.pt", "input_size": 96,
          "cells_per_field": 8, "frozen_views": 3, "augment": "robust", "epochs": 30, "lr": 1e-3, "batch_size": 128,
          "eval_batch_size": 128, "seed": 0, "device": "cpu"}


def command(data: str, out: str, name: str) -> list[str]:
    """The `leukoscope train` command line of the recipe."""
    args = ["leukoscope", "train", data, "--unit", "cells", "--split", "bundle/split.csv", "--out-dir", out,
            "--name", name]
    for key in ("weights", "epochs", "lr", "batch_size", "seed", "device"):
        args += [f"--{key.replace('_', '-')}", str(RECIPE[key])]
    for key in ("input_size", "cells_per_field", "frozen_views", "augment", "eval_batch_size"):
        args += ["--set", f"{key}={RECIPE[key]}"]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str((REPO / ".." / "shared" / "data" / "ALL").resolve()))
    parser.add_argument("--out", default="runs", help="folder of run folders")
    parser.add_argument("--name", default="cells-mbv2-96")
    parser.add_argument("--package", default="runs/cells-package", help="where the cell package goes")
    parser.add_argument("--skip-train", action="store_true", help="only export an existing run")
    args = parser.parse_args()
    import os

    os.chdir(REPO)  # the recipe's relative paths (weights, split) are the repository's
    from leukoscope import runtime
    from leukoscope.inference.cell_export import export_cell_run

    runtime.tune_process()
    line = command(args.data, args.out, args.name)
    print(shlex.join(line), flush=True)
    started = time.perf_counter()
    if not args.skip_train:
        from leukoscope.cli import main as cli

        try:
            cli(line[1:])
        except SystemExit as exc:
            if exc.code:
                raise
    export_cell_run(Path(args.out) / args.name, args.package, name=args.name, log=print)
    print(f"package: {args.package} ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
