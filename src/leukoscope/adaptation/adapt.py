"""`leukoscope adapt MODEL LAB_DATA --out NEW`: a package taught by a second lab's verified images.

Order of work, and why:
1. Everything that can be refused cheaply is refused first: the options, --out, the parent package
   (sha256-checked), the replay split, the lab's classes and its duplicate-aware split.
2. The parent is scored on the lab's held-out part and the replay test part; the network is fine-tuned
   (`adaptation.finetune`), rounded to fp16 as its package will hold it, and scored again. The refusal rules
   (`adaptation.scores.judge`) run before anything is exported, so a refused adaptation costs no export.
3. The adapted network is written as a run folder (best.pt, split.csv over both datasets, config.yaml) in a
   temporary folder and exported by `leukoscope.inference.export.export_run`, which refits the temperature,
   the review thresholds and the OOD statistics on both datasets' train and val parts and checks ONNX parity.
   With `benign_rules` "check" the new network's Benign view check is chosen on the joined val parts and
   shifted copies of them by the rule the bundled package's was; with "joint" the check and the Benign
   confidence threshold are chosen together there (leukoscope.inference.benign_check_fit).
4. model.json gains `parent` and `adaptation` (both datasets' digests, before/after figures, options), the
   package gains MODEL_CARD.md, adaptation.yaml and the two split CSVs, and the folder is renamed into --out.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from leukoscope.adaptation.card import interpolation_table, model_card
from leukoscope.adaptation.data import (
    Parent,
    describe,
    joined,
    lab_split,
    load_parent,
    replay_split,
    with_classes,
    with_simulated,
)
from leukoscope.adaptation.finetune import AdaptOptions, Progress, distilled, finetune, round_fp16
from leukoscope.adaptation.lab_shift import LabShift
from leukoscope.adaptation.lab_shift import estimate as estimate_lab_shift
from leukoscope.adaptation.scores import LAB_HELD_OUT, REPLAY_TEST, judge, network_scores, review_figures, summary_line
from leukoscope.data.fileio import sha256_file, write_text
from leukoscope.data.manifest import Manifest
from leukoscope.errors import UsageError
from leukoscope.inference.package import MODEL_JSON, ONNX_FP32
from leukoscope.models.scoring import score_model
from leukoscope.training.dataset import TensorSet, load_part
from leukoscope.training.devices import pick_device

Log = Callable[[str], None]
CARD, CONFIG, LAB_SPLIT, REPLAY_SPLIT = "MODEL_CARD.md", "adaptation.yaml", "lab_split.csv", "replay_split.csv"
METHOD = ("fine-tuned on the lab's train part (BatchNorm frozen), each epoch with as many of the replay data's "
          "train images as --replay-ratio says; temperature, review thresholds and OOD statistics refitted on "
          "both datasets' train and val parts by the export")
SIMULATED_METHOD = ("; simulated replay: as many of the replay's train images per lab image as --simulate-ratio "
                    "says, shown through the lab's shift estimated from its adaptation images (magnification and "
                    "hue by the parent's likelihood of their verified classes, colour by per-channel statistics)")
BENIGN_CHECK_METHOD = ("; a Benign view check for the new network chosen on both datasets' val parts and shifted "
                       "copies of them (leukoscope.inference.benign_check_fit)")
BENIGN_JOINT_METHOD = ("; the new network's Benign view check and Benign confidence threshold chosen together on "
                       "both datasets' val parts and shifted copies of them (leukoscope.inference.benign_check_fit)")
SIMULATED_VAL = ("; the replay's val part through the lab's shift also joined the export's val part (temperature, "
                 "thresholds, Benign rules)")
DISTILL_METHOD = ("; distillation from the parent against forgetting: the replayed (and simulated) images learned "
                  "--distill x the parent's probabilities for the (unshifted) image + the rest x their label")
INTERPOLATE_METHOD = ("; weight-space ensembling with the parent (WiSE-FT): {weight:g} x the fine-tuned weights "
                      "+ the rest x the parent's, the share chosen on both datasets' val parts "
                      "(leukoscope.adaptation.interpolate)")
SIMULATED_REVIEW = ("; the simulated images also joined the export's training part (OOD statistics, image-quality "
                    "and cell-scale ranges)")


@dataclass(frozen=True)
class AdaptResult:
    """The package written and its before/after figures."""

    out: Path
    info: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.info["adaptation"]["metrics"]

    def line(self) -> str:
        return f"wrote {self.out} (adapted from {self.info['parent']['name']}): {summary_line(self.metrics)}"


def check_out(out: Path, model: Path) -> None:
    """--out must be new or an empty folder, and not the parent."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; choose a new folder for the adapted package")
    if out.resolve() == Path(model).resolve():
        raise UsageError("--out must not be the parent package")


def adapt(model: str | Path, lab_data: str | Path, out: str | Path, *, replay: str | Path | None = None,
          split_csv: str | Path | None = None, options: AdaptOptions | None = None, command: str | None = None,
          log: Log | None = None, progress: Progress | None = None) -> AdaptResult:
    """Adapt the package `model` to the labelled images of `lab_data` (one folder per class) and write the new
    package at `out`; see the module doc. Raises AdaptationRefused (exit 1) when it would not help or would
    forget, UsageError / DataError / ModelError for bad input; nothing is written at `out` then."""
    options = options or AdaptOptions()
    options.check()
    log = log or (lambda message: None)
    out = Path(out)
    if split_csv is not None and replay is None:
        raise UsageError("--split says which rows of the --replay data are train and test: give --replay DATA too")
    check_out(out, Path(model))
    parent = load_parent(model)
    replayed = replay_split(replay, split_csv, parent, log=log) if replay is not None else None
    exclude = {r.sha256 for r in replayed.part("test").records} if replayed is not None else None
    lab = lab_split(lab_data, parent.classes, held_out=options.held_out, val=options.val, seed=options.seed,
                    exclude=exclude, log=log)
    return adapt_manifests(parent, lab, replayed, out, options=options, command=command, log=log, progress=progress)


def _scores(model: Any, data: TensorSet, parent: Parent) -> dict[str, Any]:
    return network_scores(model, data.images, data.labels, parent.preprocess, parent.classes)


def adapt_manifests(parent: Parent, lab: Manifest, replay: Manifest | None, out: str | Path, *,
                    options: AdaptOptions | None = None, command: str | None = None, log: Log | None = None,
                    progress: Progress | None = None) -> AdaptResult:
    """`adapt` on datasets already split: `lab` with train/val/test parts (adapt on train, calibrate on val,
    judge on test) and optionally `replay` (the parent's data: train replayed, val calibrates, test judged)."""
    options = (options or AdaptOptions()).resolved(parent.info)
    options.check()
    log = log or (lambda message: None)
    out = Path(out)
    check_out(out, parent.path)
    command = command or shlex.join(["leukoscope", *sys.argv[1:]])
    lab = with_classes(lab, parent.classes, "the lab data")
    replay = with_classes(replay, parent.classes, "the replay data") if replay is not None else None
    device = pick_device(options.device)
    pre = parent.preprocess
    lab_train, lab_test = (load_part(lab, p, pre, device, 2) for p in ("train", "test"))
    replay_train = replay_test = None
    if replay is not None:
        replay_train, replay_test = (load_part(replay, p, pre, device, 2) for p in ("train", "test"))
    log(f"lab: {len(lab_train)} images to adapt on, {len(lab.part('val'))} to calibrate on, {len(lab_test)} held "
        "out" + (f"; replay: {len(replay_train)} train, {len(replay_test)} test" if replay is not None else ""))
    model = copy.deepcopy(parent.model).to(device).eval()
    shift, simulated = _simulated(model, lab_train, replay_train, options, pre, log)
    replay_train, simulated = _distilled(model, replay_train, simulated, options, parent, log)
    metrics: dict[str, Any] = {LAB_HELD_OUT: {"before": _scores(model, lab_test, parent)}}
    if replay_test is not None:
        metrics[REPLAY_TEST] = {"before": _scores(model, replay_test, parent)}
    with tempfile.TemporaryDirectory(prefix="leukoscope-adapt-") as tmp:
        work = Path(tmp)
        data = joined(lab, replay, work / "data")
        if simulated is not None and replay is not None and options.simulate_review:
            data = with_simulated(data, replay.part("train"), simulated.images)
        if shift is not None and replay is not None and options.simulate_val:
            replay_val = load_part(replay, "val", pre, device, 2)
            data = with_simulated(data, replay.part("val"), shift.apply_batch(replay_val.images), part="val")
        name = options.name or f"{parent.name}-adapted"
        config = options.train_config(str(work / "data"), parent.spec, pre, name)
        history = finetune(model, lab_train, replay_train, config, pre, replay_ratio=options.replay_ratio,
                           num_classes=len(parent.classes), progress=progress, simulated=simulated,
                           simulate_ratio=options.simulate_ratio)
        interpolation = _interpolated(parent, model, lab, replay, options, device, log)
        if interpolation is not None:
            model = interpolation.pop("model")
        model = model.cpu()
        round_fp16(model)
        model.to(device)
        metrics[LAB_HELD_OUT]["after"] = _scores(model, lab_test, parent)
        if replay_test is not None:
            metrics[REPLAY_TEST]["after"] = _scores(model, replay_test, parent)
        log(summary_line(metrics))
        judge(metrics, max_replay_drop=options.max_replay_drop)
        run = _write_run(work / "run", model.cpu(), parent, config, data, history, command)
        from leukoscope.inference.export import export_run

        extra = {"shift_rules": True} if options.shift_rules else {}  # older export_run: no such option
        package = export_run(run, work / "package", int8=options.int8, data_root=work / "data", name=name,
                             threads=options.threads, log=log, **extra)
        checked = _benign_check(package, data, options, command, log) if options.benign_rules != "export" else None
        for key, part in ((LAB_HELD_OUT, lab.part("test")), (REPLAY_TEST, replay.part("test") if replay else None)):
            if part is not None:
                metrics[key]["before"]["review"] = review_figures(parent.path, part, threads=options.threads)
                metrics[key]["after"]["review"] = review_figures(package, part, threads=options.threads)
        info = _finish(package, parent, lab, replay, metrics, options, history, command, config.to_dict(), shift,
                       checked, interpolation)
        _place(package, out)
    return AdaptResult(out, info)


def _simulated(model: Any, lab_train: TensorSet, replay_train: TensorSet | None, options: AdaptOptions, pre: Any,
               log: Log) -> tuple[LabShift | None, TensorSet | None]:
    """The lab's estimated shift and the replay's training images through it (adaptation.lab_shift), when
    simulated replay is on and there are replay images to simulate from; else (None, None)."""
    if options.simulate_ratio <= 0:
        return None, None
    if replay_train is None or not len(replay_train) or not len(lab_train):
        log("simulated replay needs the parent's training images (--replay) and lab images to adapt on: skipped")
        return None, None
    shift = estimate_lab_shift(model, lab_train.images, lab_train.labels, replay_train.images, pre,
                               seed=options.seed)
    log(f"the lab's estimated shift: {shift.describe()} (the parent's NLL on its adaptation images "
        f"{shift.nll_as_given:.3f}, undone {shift.nll_undone:.3f})")
    return shift, TensorSet(shift.apply_batch(replay_train.images), replay_train.labels)


def _distilled(model: Any, replay_train: TensorSet | None, simulated: TensorSet | None, options: AdaptOptions,
               parent: Parent, log: Log) -> tuple[TensorSet | None, TensorSet | None]:
    """The replayed and simulated images with the parent's soft targets (AdaptOptions.distill) when it is on:
    the parent's probabilities for each replayed image, which its simulated copy (same order) shares."""
    if options.distill <= 0 or replay_train is None or not len(replay_train):
        return replay_train, simulated
    logits = score_model(model, replay_train.images, parent.preprocess, batch_size=64).logits
    teacher = torch.softmax(logits.float(), dim=1)
    classes = len(parent.classes)
    log(f"distillation: replayed{' and simulated' if simulated is not None else ''} images learn "
        f"{options.distill:g} x the parent's probabilities + {1 - options.distill:g} x their labels")
    return (distilled(replay_train, teacher, options.distill, classes),
            None if simulated is None else distilled(simulated, teacher, options.distill, classes))


def _interpolated(parent: Parent, tuned: Any, lab: Manifest, replay: Manifest | None, options: AdaptOptions,
                  device: Any, log: Log) -> dict[str, Any] | None:
    """When AdaptOptions.interpolate is on: the record of the weight-space ensemble chosen on both datasets' val
    parts (adaptation.interpolate), with the network to ship under "model"; else None."""
    if not options.interpolate:
        return None
    from leukoscope.adaptation.interpolate import choose_interpolation

    pre = parent.preprocess
    parts = {"lab_val": load_part(lab, "val", pre, device, 2) if len(lab.part("val")) else None,
             "replay_val": load_part(replay, "val", pre, device, 2) if replay is not None and len(replay.part("val"))
             else None}
    start = parent.model.to(device).eval()
    weight, model, record = choose_interpolation(start, tuned.eval(), parts, pre)
    log(f"weight-space ensemble with the parent: {weight:g} x the fine-tuned weights (mean val NLL by share: "
        f"{interpolation_table(record) or record.get('reason', '')})")
    return {**record, "model": model}


def _benign_check(package: Path, data: Manifest, options: AdaptOptions, command: str, log: Log
                  ) -> dict[str, Any] | None:
    """Choose the adapted network's Benign view check on `data`'s val part (both datasets') and write it into
    the package's model.json before anything reads the package; returns model.json's `benign_check_fit`, or
    None when there is no Benign class or no val image to choose on."""
    from leukoscope.inference.benign_check_fit import fit_benign_check, fit_benign_rules
    from leukoscope.inference.predictor import load_predictor

    val = data.part("val")
    predictor = load_predictor(package, onnx_file=ONNX_FP32, threads=options.threads)
    if predictor.benign_index is None or not len(val):
        log("Benign view check: skipped (no Benign class or no val images)")
        return None
    joint = options.benign_rules == "joint"
    fit = fit_benign_rules(predictor, val, log=log) if joint else fit_benign_check(predictor, val, log=log)
    log(f"Benign view check: {fit.chosen}" + (f"; Benign calls reviewed below confidence {fit.threshold:.6f}"
                                               if joint else "") + f" ({fit.seconds:.0f} s)")
    record = {**fit.record(), "command": command, "data": {"val_images": len(val), "val_digest": val.digest()}}
    info = json.loads((package / MODEL_JSON).read_text(encoding="utf-8"))
    review = {key: value for key, value in info["review"].items() if key != "benign_check"}
    if fit.check is not None:
        review["benign_check"] = fit.check.to_dict()
    if joint:
        review["benign_confidence_threshold_exported"] = review.get("benign_confidence_threshold")
        review["benign_confidence_threshold"] = fit.threshold
        review["benign_confidence_threshold_source"] = ("chosen with the Benign view check on both datasets' val "
                                                        "parts and shifted copies of them (benign_check_fit)")
    info["review"] = review
    info["benign_check_fit"] = record
    write_text(package / MODEL_JSON, json.dumps(info, indent=2, default=str) + "\n")
    return record


def _write_run(run: Path, model: Any, parent: Parent, config: Any, data: Manifest, history: list[dict[str, Any]],
               command: str) -> Path:
    """A run folder export_run reads: best.pt, split.csv (both datasets), config.yaml."""
    from leukoscope.models.checkpoint import save_checkpoint
    from leukoscope.training.runs import write_config

    run.mkdir(parents=True)
    data.write_csv(run / "split.csv")
    write_config(run, {**config.to_dict(), "eval_part": "val"}, command)
    save_checkpoint(run / "best.pt", {
        "model": model.state_dict(), "spec": parent.spec.to_dict(), "classes": list(parent.classes),
        "preprocess": parent.preprocess.to_dict(), "epoch": config.epochs, "best_score": None, "stage": "adapt",
        "history": history, "config": config.to_dict(), "manifest_digest": data.digest(),
    })
    return run


def _finish(package: Path, parent: Parent, lab: Manifest, replay: Manifest | None, metrics: dict[str, Any],
            options: AdaptOptions, history: list[dict[str, Any]], command: str,
            config: dict[str, Any], shift: LabShift | None = None,
            benign_check: dict[str, Any] | None = None, interpolation: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """model.json's parent and adaptation entries, the card, the config and the splits, in the package."""
    info = json.loads((package / MODEL_JSON).read_text(encoding="utf-8"))
    datasets = {"lab": describe(lab), "replay": describe(replay) if replay is not None else None}
    lab.write_csv(package / LAB_SPLIT)
    added = [LAB_SPLIT]
    if replay is not None:
        replay.write_csv(package / REPLAY_SPLIT)
        added.append(REPLAY_SPLIT)
    settings = {"command": command, "parent": parent.identity(), "options": asdict(options), "datasets": datasets,
                "training_config": config}
    write_text(package / CONFIG, yaml.safe_dump(settings, sort_keys=False))
    added.append(CONFIG)
    info["parent"] = parent.identity()
    method = METHOD  # a shift exists only where there was replay to simulate from (_simulated)
    if shift is not None:
        method += (SIMULATED_METHOD + (SIMULATED_REVIEW if options.simulate_review else "")
                   + (SIMULATED_VAL if options.simulate_val and replay is not None else ""))
    if options.distill > 0 and replay is not None:
        method += DISTILL_METHOD
    if interpolation is not None:
        method += INTERPOLATE_METHOD.format(weight=interpolation["chosen"])
    if benign_check is not None:
        method += BENIGN_JOINT_METHOD if options.benign_rules == "joint" else BENIGN_CHECK_METHOD
    info["adaptation"] = {"method": method, "command": command, "datasets": datasets, "metrics": metrics,
                          "options": asdict(options), "history": history,
                          "lab_shift": shift.to_dict() if shift is not None else None,
                          "interpolation": interpolation,
                          "files": {"config": CONFIG, "lab_split": LAB_SPLIT,
                                    "replay_split": REPLAY_SPLIT if replay is not None else None}}
    info["files"] = {**info["files"], **{name: sha256_file(package / name) for name in added}}
    write_text(package / MODEL_JSON, json.dumps(info, indent=2, default=str) + "\n")
    write_text(package / CARD, model_card(info))
    return info


def _place(package: Path, out: Path) -> None:
    """Copy the finished package beside `out`, then rename it into place (an empty `out` is replaced)."""
    check_out(out, package)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(package, staging, dirs_exist_ok=True)
        staging.chmod(0o755)
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
