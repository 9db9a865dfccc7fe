"""Train the bundled-model candidates on one GPU (the device machine), without the CLI's web/ONNX imports.

Usage (on the GPU machine, from the repo root, with the train+val images and fp16 ImageNet weights packed in
.gpu/ by scripts/pack_gpu_data.py):
    PYTHONPATH=src python3 scripts/train_bundled_gpu.py --out $OUT
Each candidate trains with the finetune protocol on the same split (bundle/split.csv, test part left here);
its run folder, minus optimizer state, comes back as <name>.tar. The candidate with the best validation
macro-F1 (then lowest validation loss) becomes the bundled model; the test part is scored afterwards.
"""

from __future__ import annotations

import argparse
import io
import shlex
import tarfile
import time
from pathlib import Path

import torch

from leukoscope.runtime import tune_process
from leukoscope.training.config import resolve_config
from leukoscope.training.loop import fit

CANDIDATES = {
    "mbv2-s0": {"backbone": "mobilenetv2_100", "seed": 0},
    "mbv2-s1-b64": {"backbone": "mobilenetv2_100", "seed": 1, "batch_size": 64, "lr": 1e-3},
    "lite0-s0": {"backbone": "tf_efficientnet_lite0", "seed": 0},
}


def pack(run_dir: Path, target: Path) -> None:
    """Tar the run folder with best.pt stripped of optimizer state (the transfer limit is 16 MB a file)."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    for key in ("optimizer", "scheduler"):
        best.pop(key, None)
    buffer = io.BytesIO()
    torch.save(best, buffer)
    with tarfile.open(target, "w") as tar:
        info = tarfile.TarInfo("best.pt")
        info.size = buffer.tell()
        buffer.seek(0)
        tar.addfile(info, buffer)
        for name in ("config.yaml", "env.json", "metrics.csv", "summary.json", "split.csv", "manifest.csv"):
            if (run_dir / name).exists():
                tar.add(run_dir / name, arcname=name)


def main() -> None:
    tune_process()  # glibc malloc settings (leukoscope.runtime): fit() here runs outside the CLI's entry point
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=".gpu/data/ALL")
    parser.add_argument("--split", default=".gpu/split_trainval.csv")
    parser.add_argument("--weights-dir", default=".gpu/weights")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides (smoke tests)")
    args = parser.parse_args()
    extra = dict(pair.split("=", 1) for pair in args.set)
    for name in args.only:
        overrides = {"data": args.data, "split_csv": args.split, "weights_dir": args.weights_dir, "device": args.device,
                     "out_dir": "/tmp/leukoscope-runs", "name": name, **CANDIDATES[name], **extra}
        config = resolve_config("finetune", {}, overrides)
        # what config.yaml records as the command: the equivalent CLI call
        command = shlex.join(["leukoscope", "train", args.data, "--protocol", "finetune",
                              *(f"--set={k}={v}" for k, v in {**CANDIDATES[name], **extra}.items()),
                              "--split", args.split, "--device", args.device, "--name", name])
        started = time.perf_counter()
        run_dir = fit(config, quiet=True, command=command)
        print(f"{name}: {time.perf_counter() - started:.1f} s wall (data loading included)", flush=True)
        print((run_dir / "metrics.csv").read_text(), flush=True)
        pack(run_dir, Path(args.out) / f"{name}.tar")


if __name__ == "__main__":
    main()
