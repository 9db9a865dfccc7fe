"""Continue training a model package's network for other labs' stain and optics (issue #13, part 1).

Why a script and not `leukoscope train`: the fit loop starts from ImageNet or a backbone-only state dict
(the head is always new), while this run continues from the bundled package's whole network. The run folder
it writes is a normal one (config.yaml, manifest.csv, split.csv, env.json, metrics.csv, best.pt, last.pt,
summary.json, written with leukoscope.training's own functions), so `leukoscope export` and `leukoscope
evaluate` take it as they take any run. Research software, not a medical device.

Recipe: the parent's network, BatchNorm in inference mode, AdamW at a low learning rate with a cosine
schedule, the parent's loss (label smoothing, class-balanced weights). Each batch: a `--replay-share` of its
images with the parent's own "strong" recipe (what the network was trained on, so it does not forget the
unshifted images), the rest with the "robust" recipe (zoom 0.5-2x with background padding, H&E stain jitter,
hue +-20 degrees, white balance, blur, JPEG-like). Train part of the split only. A checkpoint per epoch
(epoch_NN.pt). After every epoch (and once for the parent, as epoch 0) the val part is scored as it is and
through every copy of leukoscope.data.shifts.validation_shifts (encoded as the other lab's file, decoded as
a Predictor decodes it, fp16-rounded weights as the package will hold them, ONNX Runtime): shift_val.json.

MODEL CHOICE RULE (written before any test-part number was looked at; the test part never chooses):
  candidates: epoch 0 (the parent itself) and every completed epoch of this run;
  eligible:   unshifted val correct >= parent's unshifted val correct - 1 (at most one more val error);
  choose:     the eligible epoch with the highest minimum accuracy over the hue and magnification copies of
              the val part (HUE_SHIFTS + MAGNIFICATION_SHIFTS of validation_shifts: hue -20, hue +20,
              magnification x0.5, magnification x2); ties -> the earlier epoch.
If epoch 0 wins, the run recommends keeping the parent. The chosen epoch is copied to best.pt (what export
takes) and written to choice.json before summary.json scores it on the test part.

    python scripts/train_robust.py --out /work/scratch/robust/runs --name robust-mbv2 --epochs 6
    python scripts/train_robust.py ... --resume   # continue after an interruption (last.pt)
    python scripts/train_robust.py ... --finish   # stop here: apply the rule to the epochs done, write summary
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoscope.adaptation.data import load_parent
from leukoscope.data.fileio import write_json
from leukoscope.data.imaging import load_rgb
from leukoscope.data.manifest import Manifest
from leukoscope.data.shifts import HUE_SHIFTS, MAGNIFICATION_SHIFTS, validation_shifts
from leukoscope.inference.backends import OnnxBackend
from leukoscope.inference.export import export_onnx, run_backend
from leukoscope.inference.predictor import DECODE_SIDE_FACTOR
from leukoscope.models.checkpoint import read_checkpoint, save_checkpoint
from leukoscope.models.inputs import normalize
from leukoscope.models.preprocessing import Preprocess, resize_rgb
from leukoscope.models.scoring import ClassificationScores
from leukoscope.training import runs
from leukoscope.training.augment import augment
from leukoscope.training.config import TrainConfig
from leukoscope.training.dataset import TensorSet, load_part, prepare_data
from leukoscope.training.distributed import DistContext
from leukoscope.training.network import Classifier
from leukoscope.training.optim import make_loss, make_optimizer, make_scheduler
from leukoscope.training.stages import Stage
from leukoscope.training.steps import epoch_order
from leukoscope.training.summary import write_run_summary

ROOT = Path(__file__).resolve().parents[1]
FOCUS = (*HUE_SHIFTS, *MAGNIFICATION_SHIFTS)
SHIFT_FILE, CHOICE_FILE = "shift_val.json", "choice.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parent", default=str(ROOT / "src/leukoscope/assets/default"), help="model package")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ALL"))
    parser.add_argument("--split", default=str(ROOT / "bundle/split.csv"))
    parser.add_argument("--out", default="runs")
    parser.add_argument("--name", default="robust-mbv2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--replay-share", type=float, default=0.25, help="share of each batch with 'strong'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from last.pt")
    parser.add_argument("--finish", action="store_true", help="train no more; choose and summarise")
    return parser.parse_args()


def make_config(args: argparse.Namespace, parent: Any) -> TrainConfig:
    """The run's TrainConfig: the parent's loss settings, this script's optimiser; `extra` says the rest."""
    parent_config = (parent.info.get("training") or {}).get("config") or {}
    return TrainConfig(
        data=str(Path(args.data).resolve()), split_csv=str(Path(args.split).resolve()), out_dir=args.out,
        name=args.name, protocol="custom", seed=args.seed, backbone=parent.spec.backbone, weights="none",
        pad_type=parent.spec.pad_type, drop_rate=parent.spec.drop_rate, input_size=parent.preprocess.input_size,
        warmup_epochs=0, epochs=args.epochs, trainable="all", freeze_bn=True, optimizer="adamw", lr=args.lr,
        weight_decay=1e-4, schedule="cosine", label_smoothing=float(parent_config.get("label_smoothing", 0.05)),
        class_balance="loss", augment="robust", batch_size=args.batch_size, select="last", patience=0,
        device="cpu", amp=False, channels_last=True, workers=2,
        extra={"script": "scripts/train_robust.py", "init_from_package": str(Path(args.parent).resolve()),
               "init_package_name": parent.info.get("name"), "init_package_created": parent.info.get("created"),
               "replay_share": args.replay_share, "replay_recipe": "strong", "choice_rule": "see choice.json"},
    )


# ------------------------------------------------------------------------------------------- training


def train_epoch(net: Classifier, data: TensorSet, config: TrainConfig, preprocess: Preprocess, epoch: int,
                optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: nn.Module, share: float) -> tuple[float, float]:
    """One epoch: in every batch the first `share` of its images get "strong", the rest "robust"."""
    order = epoch_order(len(data), config, epoch, data.labels, DistContext())
    generator = torch.Generator().manual_seed(config.seed * 7919 + epoch)
    torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout
    net.train()
    loss_sum, correct, count, started = 0.0, 0, 0, time.perf_counter()
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        if index.numel() < 2:
            continue
        k = round(len(index) * share)
        parts = [augment(data.images[index[:k]], "strong", generator), augment(data.images[index[k:]], "robust", generator)]
        x = normalize(torch.cat(parts), preprocess).contiguous(memory_format=torch.channels_last)
        y = data.labels[index]
        logits = net(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
        if (start // config.batch_size) % 10 == 0:
            print(f"  epoch {epoch + 1} batch {start // config.batch_size + 1}/{-(-len(order) // config.batch_size)} "
                  f"loss {loss_sum / count:.4f} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return loss_sum / max(1, count), correct / max(1, count)


# ------------------------------------------------------------------------------------------- shifted val


def shifted_val(val: Manifest, preprocess: Preprocess) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every copy of validation_shifts of the val part as uint8 pixels, made once (as export makes them)."""
    images = [load_rgb(path) for path in val.paths()]
    side = DECODE_SIDE_FACTOR * preprocess.input_size
    copies = {}
    for name, shifts in validation_shifts(len(images)).items():
        copies[name] = np.stack([resize_rgb(load_rgb(shift.encode(image), max_side=side), preprocess)
                                 for image, shift in zip(images, shifts, strict=True)])
    return copies, np.asarray(val.labels, np.int64)


def score_copies(model: nn.Module, copies: dict[str, np.ndarray], labels: np.ndarray, preprocess: Preprocess,
                 classes: tuple[str, ...], threads: int) -> dict[str, dict[str, Any]]:
    """Per copy: accuracy, correct, leukemia called Benign (argmax, before any review rule), val loss/F1."""
    rounded = copy.deepcopy(model).float().eval()
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    rounded = rounded.to(memory_format=torch.contiguous_format)
    benign = classes.index("Benign") if "Benign" in classes else -1
    out = {}
    with tempfile.TemporaryDirectory(prefix="train-robust-") as tmp:
        export_onnx(rounded, preprocess.input_size, Path(tmp) / "m.onnx")
        backend = OnnxBackend(Path(tmp) / "m.onnx", threads)
        for name, pixels in copies.items():
            logits, _ = run_backend(backend, pixels, preprocess)
            called = logits.argmax(1)
            scores = ClassificationScores.of(labels, torch.as_tensor(logits, dtype=torch.float32), len(classes))
            out[name] = {"n": len(labels), "correct": int((called == labels).sum()), "accuracy": scores.accuracy,
                         "loss": scores.loss, "macro_f1": scores.macro_f1,
                         "leukemia_called_benign": int(((labels != benign) & (called == benign)).sum())}
    return out


# ------------------------------------------------------------------------------------------- the rule


def choose(shift_rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The module docstring's rule over epochs "0", "1", ...; returns the choice and why."""
    parent_correct = shift_rows["0"]["none"]["correct"]
    table = []
    for epoch in sorted(shift_rows, key=int):
        rows = shift_rows[epoch]
        eligible = rows["none"]["correct"] >= parent_correct - 1
        table.append({"epoch": int(epoch), "eligible": eligible, "val_correct": rows["none"]["correct"],
                      "min_focus_accuracy": min(rows[name]["accuracy"] for name in FOCUS)})
    best = None
    for row in table:  # in epoch order: a later epoch must be strictly better
        if row["eligible"] and (best is None or row["min_focus_accuracy"] > best["min_focus_accuracy"]):
            best = row
    assert best is not None  # epoch 0 is always eligible
    rule = ("eligible: unshifted val correct >= parent's - 1; choose the highest min accuracy over the val copies "
            f"{', '.join(FOCUS)}; ties -> earlier epoch; epoch 0 = the parent")
    return {"chosen_epoch": best["epoch"], "rule": rule, "parent_val_correct": parent_correct, "candidates": table}


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    parent = load_parent(args.parent)
    config = make_config(args, parent)
    run_dir = Path(args.out) / args.name
    resume = args.resume or args.finish
    checkpoint = read_checkpoint(run_dir / "last.pt") if resume and (run_dir / "last.pt").exists() else None
    if not resume:
        runs.check_run_dir(run_dir, resume=False)
    full, parted = prepare_data(config, run_dir / "split.csv" if resume else None, classes=parent.classes)
    preprocess, classes = parent.preprocess, tuple(full.classes)
    model = parent.model.float()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model = model.to(memory_format=torch.channels_last)
    if not resume:
        runs.prepare_run_dir(run_dir, resume=False)
        command = shlex.join(["python", "scripts/train_robust.py", *sys.argv[1:]])
        runs.write_config(run_dir, {**config.to_dict(), "eval_part": "val"}, command)
        runs.write_manifests(run_dir, full, parted)
        runs.write_env(run_dir, "cpu", config.seed)
    shift_path = run_dir / SHIFT_FILE
    shift_rows: dict[str, Any] = json.loads(shift_path.read_text()) if shift_path.exists() else {}
    history: list[dict[str, Any]] = list(checkpoint["history"]) if checkpoint else []
    started = time.perf_counter()
    if not args.finish:
        t0 = time.perf_counter()
        copies, val_labels = shifted_val(parted.part("val"), preprocess)
        print(f"shifted val copies: {len(copies)} x {len(val_labels)} images ({time.perf_counter() - t0:.0f}s)",
              file=sys.stderr, flush=True)
        if "0" not in shift_rows:
            shift_rows["0"] = score_copies(model, copies, val_labels, preprocess, classes, args.threads)
            write_json(shift_path, shift_rows)
            report(0, shift_rows["0"])
        train_epochs(args, config, model, parted, preprocess, classes, checkpoint, history, shift_rows,
                     copies, val_labels, run_dir)
    finish(run_dir, parted, preprocess, config, history, shift_rows, time.perf_counter() - started)


def train_epochs(args: argparse.Namespace, config: TrainConfig, model: nn.Module, parted: Manifest,
                 preprocess: Preprocess, classes: tuple[str, ...], checkpoint: dict[str, Any] | None,
                 history: list[dict[str, Any]], shift_rows: dict[str, Any], copies: dict[str, np.ndarray],
                 val_labels: np.ndarray, run_dir: Path) -> None:
    """The epochs after the last completed one; a checkpoint, a metrics row and shifted val scores each."""
    device = torch.device("cpu")
    train = load_part(parted, "train", preprocess, device, config.workers)
    net = Classifier(model, freeze_bn=True)
    net.train()
    steps = max(1, -(-len(train) // config.batch_size))
    stage = Stage("main", config.epochs, "all", config.lr)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad], config.lr)
    scheduler = make_scheduler(config, stage, optimizer, steps)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    loss_fn = make_loss(config, train.labels, len(classes))
    for epoch in range(int(checkpoint["epoch"]) if checkpoint else 0, config.epochs):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(net, train, config, preprocess, epoch, optimizer, scheduler, loss_fn,
                                            args.replay_share)
        train_seconds = time.perf_counter() - t0
        rows = score_copies(model, copies, val_labels, preprocess, classes, args.threads)
        model.to(memory_format=torch.channels_last)
        shift_rows[str(epoch + 1)] = rows
        history.append({"epoch": epoch + 1, "stage": "main", "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": rows["none"]["loss"], "val_acc": rows["none"]["accuracy"],
                        "val_macro_f1": rows["none"]["macro_f1"], "lr": float(optimizer.param_groups[0]["lr"]),
                        "seconds": train_seconds, "seconds_with_shift_val": time.perf_counter() - t0})
        payload = {"model": model.state_dict(), "spec": {**config_spec(config)}, "classes": list(classes),
                   "preprocess": preprocess.to_dict(), "epoch": epoch + 1, "stage": "main",
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_score": None,
                   "stale": 0, "history": list(history), "config": config.to_dict(),
                   "manifest_digest": parted.digest()}
        save_checkpoint(run_dir / f"epoch_{epoch + 1:02d}.pt", payload)
        save_checkpoint(run_dir / "last.pt", payload)
        write_json(run_dir / SHIFT_FILE, shift_rows)
        runs.write_metrics_csv(run_dir, history)
        report(epoch + 1, rows, train_seconds, time.perf_counter() - t0)


def config_spec(config: TrainConfig) -> dict[str, Any]:
    return {"backbone": config.backbone, "num_classes": 4, "drop_rate": config.drop_rate, "pad_type": config.pad_type}


def report(epoch: int, rows: dict[str, dict[str, Any]], train_s: float = 0.0, total_s: float = 0.0) -> None:
    focus = " ".join(f"{name.replace(' ', '')}={rows[name]['correct']}" for name in FOCUS)
    worst = min(rows, key=lambda n: rows[n]["accuracy"])
    lcb = sum(r["leukemia_called_benign"] for r in rows.values())
    print(f"epoch {epoch}: val {rows['none']['correct']}/{rows['none']['n']} | {focus} | worst {worst!r} "
          f"{rows[worst]['accuracy']:.3f} | leukemia->Benign over all copies {lcb} | train {train_s:.0f}s, "
          f"total {total_s:.0f}s", file=sys.stderr, flush=True)


def finish(run_dir: Path, parted: Manifest, preprocess: Preprocess, config: TrainConfig,
           history: list[dict[str, Any]], shift_rows: dict[str, Any], seconds: float) -> None:
    """Apply the rule, write choice.json, make best.pt the choice, then (only then) score it on test."""
    choice = choose(shift_rows)
    write_json(run_dir / CHOICE_FILE, choice)
    epoch = choice["chosen_epoch"]
    print(f"chosen epoch: {epoch} ({json.dumps(choice['candidates'])})", file=sys.stderr, flush=True)
    if epoch == 0:
        print("the rule keeps the parent: no epoch of this run beats it on the shifted val copies", file=sys.stderr)
        return
    shutil.copyfile(run_dir / f"epoch_{epoch:02d}.pt", run_dir / "best.pt")
    write_run_summary(run_dir, parted, preprocess, torch.device("cpu"), config, history, seconds)


if __name__ == "__main__":
    main()
