"""Rebuild the bundled model package (src/leukoscope/assets/default/) — what `make model` runs.

Steps, each a plain leukoscope command so that every number can be traced to one:
  1. train   — finetune protocol, MobileNetV2, seed 1, batch 64, lr 1e-3, on the committed split
               bundle/split.csv (train 1,678 / val 280 / test 838 images of ../shared/data/ALL);
  2. evaluate the run on the test part (metrics with bootstrap intervals; fits the temperature on val);
  3. export  the run as a package (fp32 ONNX + fp16 model.pt + OOD statistics), parity-checked, with the
               review rules for other labs' images chosen on shifted copies of the val part (--shift-rules);
  3b. choose the package's realignment views (other magnifications and stain hues for images unlike the
               training ones) on the same shifted val copies: scripts/fit_realign.py;
  3c. choose the package's Benign view check (a Benign call nothing else flags must hold at another
               magnification) on the same copies: scripts/fit_benign_check.py;
  4. evaluate the package on the test part (with where the model looks: --localisation) and write
               MODEL_CARD.md + report.html into bundle/.

`--skip-train RUN` reuses a trained run folder (the committed package was trained on one H100 with
scripts/train_bundled_gpu.py, candidate mbv2-s1-b64, the same configuration as step 1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from leukoscope.training.runs import read_config_file  # installed: every step below runs `python -m leukoscope` too

ROOT = Path(__file__).resolve().parents[1]

PACKAGE = ROOT / "src" / "leukoscope" / "assets" / "default"
NAME = "leukoscope-mbv2-all4"
TRAIN_ARGS = ["--protocol", "finetune", "--backbone", "mobilenetv2_100", "--seed", "1", "--batch-size", "64",
              "--lr", "0.001"]


def leukoscope(*args: str) -> None:
    command = [sys.executable, "-m", "leukoscope", *args]
    print("$ leukoscope " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def provenance(run: Path) -> str:
    env = json.loads((run / "env.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    where = env.get("gpu") or env.get("processor") or "CPU"
    split_used = str(read_config_file(run / "config.yaml").get("split_csv") or "bundle/split.csv")
    packed = "" if split_used.endswith("bundle/split.csv") else (
        f" The run read those rows from `{split_used}`, the train and val rows of `bundle/split.csv` copied next "
        "to the images packed for the GPU machine (scripts/train_bundled_gpu.py).")
    return (
        "\n## How this package was built\n\n"
        f"- Training: `leukoscope train` with `{' '.join(TRAIN_ARGS)}` on the split `bundle/split.csv` "
        f"({summary['train_images']} training images; the val part picked the best epoch, {summary['best_epoch']}).{packed}\n"
        f"- Images: the original JPEG bytes of `../shared/data/ALL` (public ALL dataset, Taleqani Hospital), "
        "no re-encoding, decoded once and resized to 224x224 (they are 224x224 already).\n"
        f"- Hardware: {where}, torch {env['torch']}, device `{env['device']}`; "
        f"{summary['epochs_run']} epochs in {summary['seconds_total']:.1f} s "
        "(the epoch loop with per-epoch validation; data loading excluded).\n"
        f"- Rebuild on a CPU: `make model` (runs `scripts/build_bundled_model.py`). The same configuration "
        "retrained on a 2-core CPU is reported in `benchmarks/RESULTS.md` (run `cpu-bundled`): training on "
        "another device does not reproduce the weights bit for bit, so expect test scores within the "
        "intervals above rather than identical ones.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ALL")
    parser.add_argument("--split", default=str(ROOT / "bundle" / "split.csv"))
    parser.add_argument("--weights-dir", default="../shared/weights")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--skip-train", metavar="RUN", help="use this trained run folder instead of training")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.skip_train:
        run = Path(args.skip_train)
    else:
        run = Path(args.runs) / "bundled-mbv2"
        resume = ["--resume", str(run)] if (run / "last.pt").exists() and not (run / "summary.json").exists() else []
        leukoscope("train", args.data, *TRAIN_ARGS, "--split", args.split, "--weights-dir", args.weights_dir,
                   "--name", run.name, "--out-dir", str(run.parent), "--device", args.device, *resume)
    leukoscope("evaluate", str(run), args.data, "--split", args.split, "--part", "test", "--out", str(run))
    leukoscope("export", str(run), "--out", str(PACKAGE), "--data", args.data, "--name", NAME, "--shift-rules")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_realign.py"), str(PACKAGE), "--data", args.data,
                    "--split", args.split, "--no-card"], check=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_benign_check.py"), str(PACKAGE), "--data", args.data,
                    "--split", args.split, "--no-card"], check=True)
    evaluation = ROOT / "bundle" / "evaluation"
    leukoscope("evaluate", str(PACKAGE), args.data, "--split", args.split, "--part", "test", "--out", str(evaluation),
               "--localisation")
    card = (evaluation / "MODEL_CARD.md").read_text(encoding="utf-8") + provenance(run) + fit_sections()
    (PACKAGE / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    (ROOT / "bundle" / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    for name in ("report.html", "metrics.json"):
        shutil.copyfile(evaluation / name, ROOT / "bundle" / name)
    # the run's own report adds the training curves (the package no longer has its history)
    shutil.copyfile(run / "report.html", ROOT / "bundle" / "training_report.html")
    print(f"bundled package: {PACKAGE}")


def fit_sections() -> str:
    """fit_realign's and fit_benign_check's card sections from the package's recorded fits ("" for none)."""
    from fit_realign import sections  # the sibling script (scripts/ is on sys.path when run as a script)

    from leukoscope.inference.package import read_package_json

    return sections(read_package_json(PACKAGE))


if __name__ == "__main__":
    main()
