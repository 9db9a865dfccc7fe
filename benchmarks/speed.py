"""Speed of the bundled model on this CPU (issue #5): every inference path side by side, in one run.

Why each part is measured the way it is:
- Same images and batch sizes (1 and 32) for every path, medians of several rounds after warm-up, and the
  ONNX Runtime rounds interleaved (fp32, int8, fp32, ...) so a load change hits both alike.
- PyTorch eager runs in child processes, once with glibc's default malloc and once with the Makefile's
  malloc settings (common.MALLOC_ENV), because glibc reads them only at process start.
- int8 is leukoscope.inference.int8's static QDQ quantisation (per-channel 7-bit weights), calibrated on *train* images
  and checked on *val* images (as `leukoscope export --int8` does), then scored on the *test* part, written
  to a temporary package with its reference batch (never into the bundled one); the int8 section prints the
  CPU flags (VNNI or not decides which int8 kernels ran) and what the package's load-time check found.
- End to end is the real `leukoscope predict` command on 1,000 image files, decode included, nothing
  subtracted; Predictor.predict_paths in-process shows what the command's start-up costs.
- FLOPs come from torch.utils.flop_counter (2 FLOPs per multiply-add, convolutions and matmuls only),
  and the CPU's peak from a large fp32 matmul on all cores, so "% of peak" has a measured denominator.

    .venv/bin/python -m benchmarks.speed                   # writes the `speed` section of RESULTS.md
    .venv/bin/python -m benchmarks.speed --no-write --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common, speed_report
from benchmarks.flops import model_flops, peak_gflops
from benchmarks.speed_e2e import (
    BATCH,
    E2E_IMAGES,
    decode_timing,
    e2e_folder,
    overlap_check,
    review_view_passes,
    startup_seconds,
    time_cli,
    time_predict_paths,
)
from benchmarks.speed_report import Timing

CALIBRATION_IMAGES = 256


# ------------------------------------------------------------------------------------------- images


def load_split(split_csv: Path, data: Path, classes: tuple[str, ...]) -> Any:
    """The split CSV with labels as indices into the package's classes (so accuracy compares like with like)."""
    from leukoscope.data.manifest import read_manifest_csv

    return read_manifest_csv(split_csv, data, classes=classes)


def decoded(manifest: Any, preprocess: Any, limit: int | None = None, seed: int = 0) -> Any:
    """Images of a manifest at the model's input size (leukoscope.inference.export.load_images: what export uses)."""
    from leukoscope.inference.export import load_images

    return load_images(manifest, preprocess, limit=limit, seed=seed)


def timing_batches(pixels: np.ndarray, preprocess: Any, batches: int = 2) -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalised inputs shared by every path: 16 single images and `batches` distinct batches of 32 (images
    repeat only when there are fewer than that, as in the tests' tiny data)."""
    from leukoscope.models.preprocessing import normalize_numpy

    x = normalize_numpy(pixels[np.arange(BATCH * batches) % len(pixels)], preprocess)
    return x[:16], [x[i:i + BATCH] for i in range(0, BATCH * batches, BATCH)]


def measure(run: Any, singles: np.ndarray, batches: list[np.ndarray], *, repeats: int,
            inner: int) -> tuple[list[float], list[float]]:
    """Per-round batch-1 latency (ms) and batch-32 throughput (img/s) of `run(x)`."""
    position = [0]

    def one() -> None:
        run(singles[position[0] % len(singles)][None])
        position[0] += 1

    def many() -> None:
        for batch in batches:
            run(batch)

    b1 = [s * 1000 for s in common.repeat_timing(one, repeats=repeats, warmup=5, inner=inner)]
    seconds = common.repeat_timing(many, repeats=repeats, warmup=1)
    images = sum(len(b) for b in batches)
    return b1, [images / s for s in seconds]


# ------------------------------------------------------------------------------------------- eager (child)


def eager_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: the package's model.pt in a timm model, plain and channels_last (prints JSON)."""
    import torch

    from leukoscope.inference.backends import load_torch_file

    torch.set_num_threads(spec["threads"])
    model = load_torch_file(spec["model_pt"]).eval()
    data = np.load(spec["inputs"])
    results = {}
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        net = model.to(memory_format=fmt)
        singles = torch.from_numpy(data["singles"]).contiguous(memory_format=fmt)
        batches = [torch.from_numpy(b).contiguous(memory_format=fmt) for b in data["batches"]]

        def run(x: Any, net: Any = net) -> Any:
            with torch.inference_mode():
                return net(x)

        b1, b32 = measure(run, singles, batches, repeats=spec["repeats"], inner=spec["inner"])
        results[layout] = {"b1_rounds": b1, "b32_rounds": b32}
    return results


def run_eager(model_pt: Path, singles: np.ndarray, batches: list[np.ndarray], work: Path, *, malloc: bool,
              repeats: int) -> list[Timing]:
    """PyTorch eager in a fresh interpreter, with or without the malloc settings of common.MALLOC_ENV."""
    inputs = work / "eager-inputs.npz"
    if not inputs.exists():
        np.savez(inputs, singles=singles, batches=np.stack(batches))
    spec = {"model_pt": str(Path(model_pt).resolve()), "inputs": str(inputs.resolve()),
            "threads": common.usable_cores(), "repeats": repeats, "inner": 20}
    env = {k: v for k, v in os.environ.items() if k not in common.MALLOC_ENV}
    if malloc:
        env.update(common.MALLOC_ENV)
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--eager-worker", json.dumps(spec)], env=env,
                          cwd=common.REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eager worker failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    suffix = "malloc env" if malloc else "default malloc"
    timings = []
    for layout, label in (("contiguous", ""), ("channels_last", ", channels_last")):
        r = results[layout]
        timings.append(Timing(f"PyTorch eager fp32{label} ({suffix})", common.median(r["b1_rounds"]),
                              common.median(r["b32_rounds"]), r["b1_rounds"], r["b32_rounds"]))
    return timings


# ------------------------------------------------------------------------------------------- ONNX Runtime


def softmax(logits: np.ndarray) -> np.ndarray:
    """Plain softmax: top-1 and agreement do not depend on the package's temperature."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def run_all_images(backend: Any, pixels: np.ndarray, preprocess: Any) -> np.ndarray:
    """Logits of every image, in batches of 32, through leukoscope.inference.export's own loop."""
    from leukoscope.inference.export import run_backend

    return run_backend(backend, pixels, preprocess, BATCH)[0]


def quantise(fp32: Path, work: Path, train: Any, val: Any, preprocess: Any, log: Any) -> dict[str, Any]:
    """`leukoscope export --int8`'s own recipe and gate (leukoscope.inference.int8.quantize_with_gate): static QDQ
    per-channel, calibrated on train images, checked against fp32 on val images; writes work/model.int8.onnx
    and its reference batch."""
    from leukoscope.inference.backends import OnnxBackend
    from leukoscope.inference.export import write_reference
    from leukoscope.inference.int8 import quantize_with_gate, run_normalised
    from leukoscope.inference.package import ONNX_FP32
    from leukoscope.models.preprocessing import normalize_numpy
    from leukoscope.review.calibration import softmax

    if fp32 != work / ONNX_FP32:
        (work / ONNX_FP32).symlink_to(fp32)
    check = normalize_numpy(val.pixels, preprocess)
    fp32_probs = softmax(run_normalised(OnnxBackend(fp32), check)[0])
    gate = quantize_with_gate(work, normalize_numpy(train.pixels, preprocess), check, fp32_probs, log)
    write_reference(work, val.pixels, preprocess, None)  # so the int8 variant package checks itself at load
    return {"calibration_images": gate["int8_calibration_images"], "val_images": len(check),
            "fp32_ends": gate["int8_fp32_ends"], "val_agreement": gate["int8_top1_agreement"]}


def package_models(package: Path, work: Path, train: Any, val: Any, preprocess: Any,
                   log: Any) -> tuple[Path, Path, dict[str, Any]]:
    """The fp32 and int8 ONNX models of a package, as it ships where it has them: fp32 is exported from its
    model.pt when it has no model.onnx (the export computes both from the same fp16-rounded weights), and
    int8 is quantised here (train images, checked on val) when it has no model.int8.onnx."""
    from leukoscope.inference.backends import load_torch_file
    from leukoscope.inference.export import export_onnx
    from leukoscope.inference.package import ONNX_FP32, ONNX_INT8, TORCH_FILE, read_package_json

    fp32 = package / ONNX_FP32
    if not fp32.is_file():
        fp32 = work / ONNX_FP32
        log("fp32 ONNX from the package's model.pt ...")
        export_onnx(load_torch_file(package / TORCH_FILE), preprocess.input_size, fp32)
    if (package / ONNX_INT8).is_file():
        parity = read_package_json(package).get("parity", {})
        return fp32, package / ONNX_INT8, {"source": "package", "val_images": len(val.pixels),
                                           "calibration_images": parity.get("int8_calibration_images"),
                                           "fp32_ends": bool(parity.get("int8_fp32_ends")),
                                           "val_agreement": parity.get("int8_top1_agreement")}
    return fp32, work / ONNX_INT8, {"source": "benchmark", **quantise(fp32, work, train, val, preprocess, log)}


def variant_package(bundled: Path, fp32: Path, int8: Path, out: Path) -> Path:
    """The bundled package with the other ONNX model as its default (int8 for an fp32 package, fp32 for an
    int8 one), in a temporary folder; temperature and review thresholds stay the bundled ones (they do not
    change speed or top-1)."""
    from leukoscope.inference.package import INT8_REFERENCE, ONNX_FP32, ONNX_INT8, read_package_json, write_package

    info = read_package_json(bundled)
    files = {name: bundled / name for name in info["files"]}
    other = ONNX_FP32 if info.get("default_onnx") == ONNX_INT8 else ONNX_INT8
    files[other] = fp32 if other == ONNX_FP32 else int8
    if other == ONNX_INT8 and (int8.parent / INT8_REFERENCE).is_file():
        files[INT8_REFERENCE] = int8.parent / INT8_REFERENCE  # written with it by `quantise`
    meta = {k: v for k, v in info.items() if k not in ("format", "format_version", "files")}
    meta["default_onnx"] = other
    meta["name"] = f"{info.get('name', 'bundled')}-{'fp32' if other == ONNX_FP32 else 'int8'}-bench"
    return write_package(out, meta, files)


def test_scores(fp32: Any, int8: Any, test: Any, preprocess: Any) -> dict[str, Any]:
    """int8 against fp32 on the test part: top-1 agreement, largest probability change, accuracy (sklearn)."""
    from sklearn.metrics import accuracy_score

    p32 = softmax(run_all_images(fp32, test.pixels, preprocess))
    p8 = softmax(run_all_images(int8, test.pixels, preprocess))
    return {"images": len(test.labels), "top1_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
            "disagreements": int(np.sum(p32.argmax(1) != p8.argmax(1))),
            "max_abs_prob_diff": float(np.abs(p32 - p8).max()),
            "accuracy_fp32": float(accuracy_score(test.labels, p32.argmax(1))),
            "accuracy_int8": float(accuracy_score(test.labels, p8.argmax(1)))}


def time_onnx(paths: dict[str, Path], singles: np.ndarray, batches: list[np.ndarray], repeats: int) -> list[Timing]:
    """ONNX Runtime sessions (as the Predictor builds them), rounds interleaved between the models: one run at a
    time on all cores (a single request), and one run per core side by side on one thread each (how `predict`
    and `evaluate` run folders: Predictor.streams), the model alone either way."""
    from concurrent.futures import ThreadPoolExecutor

    from leukoscope.inference.backends import OnnxBackend, cpu_count

    streams = cpu_count()
    ways = {name: OnnxBackend(path) for name, path in paths.items()}
    singles_1 = {f"{name}, {streams} streams of 1 thread": OnnxBackend(path, 1) for name, path in paths.items()}
    pool = ThreadPoolExecutor(max_workers=streams)

    def side_by_side(backend: Any) -> Any:
        def run(x: np.ndarray) -> None:
            if len(x) == 1:
                backend.run(x)  # batch-1 latency: one request on one thread
            else:  # the round's batches split across the streams, each stream running whole batches
                list(pool.map(backend.run, np.array_split(x, streams)))
        return run

    runs = {**{name: b.run for name, b in ways.items()}, **{name: side_by_side(b) for name, b in singles_1.items()}}
    rounds: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runs}
    wide = [np.concatenate(batches[i:i + streams]) for i in range(0, len(batches), streams)]
    for _ in range(repeats):
        for name, run in runs.items():
            b1, b32 = measure(run, singles, wide if name in singles_1 else batches, repeats=1, inner=50)
            rounds[name][0].extend(b1)
            rounds[name][1].extend(b32)
    pool.shutdown()
    return [Timing(name, common.median(b1), common.median(b32), b1, b32) for name, (b1, b32) in rounds.items()]


# ------------------------------------------------------------------------------------------- the run


def measure_models(package: Path, fp32_onnx: Path, int8_onnx: Path, test: Any, preprocess: Any, work: Path,
                   args: argparse.Namespace, log: Any) -> list[Timing]:
    """Every model-only path on the same inputs: eager (two mallocs, two layouts), ORT fp32 and int8."""
    from leukoscope.inference.package import TORCH_FILE

    singles, batches = timing_batches(test.pixels, preprocess, args.batches)
    timings: list[Timing] = []
    for malloc in (False, True):
        log(f"PyTorch eager ({'malloc env' if malloc else 'default malloc'}) ...")
        timings += run_eager(package / TORCH_FILE, singles, batches, work, malloc=malloc, repeats=args.repeats)
    log("ONNX Runtime fp32 and int8 ...")
    timings += time_onnx({"ONNX Runtime fp32": fp32_onnx,
                          "ONNX Runtime int8 (static QDQ, per-channel)": int8_onnx},
                         singles, batches, args.repeats + 2)
    return timings


def measure_e2e(packages: dict[str, Path], bundled: str, split: Any, work: Path, args: argparse.Namespace,
                log: Any) -> dict[str, Any]:
    """The command line and predict_paths on the same 1,000 files, for the package with fp32 and with int8
    as its default; `bundled` ("fp32" or "int8") is the one that ships, run without --model as a user does."""
    from leukoscope.inference.backends import cpu_count
    from leukoscope.inference.predictor import load_predictor

    folder, files = e2e_folder(split, work, args.e2e_images)
    out: dict[str, Any] = {"images": len(files), "startup": startup_seconds()}
    variant = packages["int8" if bundled == "fp32" else "fp32"]
    for key in ("fp32", "int8"):
        model = None if key == bundled and args.model is None else packages[key]
        log(f"`leukoscope predict` on {len(files)} images ({key}) ...")
        out[f"cli_{key}"] = time_cli(folder, len(files), model, work, args.e2e_repeats)
        streamed = load_predictor(packages[key], streams=cpu_count())  # as `predict` loads it for a folder
        out[f"predict_paths_{key}"] = time_predict_paths(streamed, files, args.e2e_repeats)
        if key == "fp32":
            predictor = load_predictor(packages[key])  # one batch at a time on every core
            out["predict_paths_fp32_one_stream"] = time_predict_paths(predictor, files, args.e2e_repeats)
            out["decode"] = decode_timing(predictor, files[: args.decode_images], args.repeats)
            out["overlap"] = overlap_check(predictor, files, out["predict_paths_fp32_one_stream"]["seconds"],
                                           args.e2e_repeats)
            out["review_view_passes"] = review_view_passes(predictor, [predictor._decode_path(f) for f in files])
    for key in ("cli_fp32", "cli_int8"):  # readable commands: placeholders for the temporary paths
        for path, name in ((folder, f"FOLDER_OF_{len(files)}_IMAGES"), (work / "predict.csv", "OUT.csv"),
                           (variant, f"{'INT8' if bundled == 'fp32' else 'FP32'}_PACKAGE")):
            out[key]["command"] = out[key]["command"].replace(str(path), name)
    return out


def collect(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Run every measurement; returns plain data (rendered by `render`)."""
    from leukoscope.inference.backends import OnnxBackend, load_torch_file
    from leukoscope.inference.package import ONNX_INT8, TORCH_FILE, bundled_package_path
    from leukoscope.inference.predictor import load_predictor

    package = Path(args.model).resolve() if args.model else bundled_package_path()
    predictor = load_predictor(package, backend="onnx")
    pre = predictor.preprocess
    split = load_split(args.split, args.data, predictor.classes)
    results: dict[str, Any] = {"machine": common.machine(), "package": str(package), "name": predictor.info.get("name"),
                               "load_at_start": common.load_average(), "input_size": pre.input_size}
    test = decoded(split.part("test"), pre)
    val = decoded(split.part("val"), pre)
    train = decoded(split.part("train"), pre, limit=CALIBRATION_IMAGES, seed=0)
    with tempfile.TemporaryDirectory(prefix="leukoscope-speed-") as tmp:
        work = Path(tmp)
        fp32_onnx, int8_onnx, quant = package_models(package, work, train, val if len(val.pixels) else test, pre, log)
        bundled = "int8" if predictor.info.get("default_onnx") == ONNX_INT8 else "fp32"
        variant = variant_package(package, fp32_onnx, int8_onnx, work / "variant-package")
        quant["test"] = test_scores(OnnxBackend(fp32_onnx), OnnxBackend(int8_onnx), test, pre)
        int8_package = variant if bundled == "fp32" else package
        quant["load_check"] = load_predictor(int8_package, backend="onnx").int8_check  # what a user's load finds here
        results["int8"], results["bundled_default"] = quant, bundled
        results["timings"] = [asdict(t) for t in measure_models(package, fp32_onnx, int8_onnx, test, pre, work,
                                                                args, log)]
        packages = {"fp32": package, "int8": variant} if bundled == "fp32" else {"fp32": variant, "int8": package}
        results["e2e"] = measure_e2e(packages, bundled, split, work, args, log)
        shutil.rmtree(work / "e2e-images", ignore_errors=True)
    results["flops"] = model_flops(load_torch_file(package / TORCH_FILE), pre.input_size)
    log("peak fp32 matmul ...")
    results["peak"] = peak_gflops(args.peak_n)
    results["load_at_end"] = common.load_average()
    return results


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are the issue's protocol (bundled model, 1,000 files, batch 32)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model package (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=common.DATA, help="dataset root (default ../shared/data/ALL)")
    parser.add_argument("--split", type=Path, default=common.SPLIT, help="split CSV (default bundle/split.csv)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (default 5)")
    parser.add_argument("--batches", type=int, default=2, help="batches of 32 per throughput round (default 2)")
    parser.add_argument("--e2e-images", type=int, default=E2E_IMAGES, help="files for end to end (default 1000)")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="timed end-to-end runs (default 3)")
    parser.add_argument("--decode-images", type=int, default=256, help="files for the decode columns (default 256)")
    parser.add_argument("--peak-n", type=int, default=4096, help="matrix side for the peak matmul (default 4096)")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load is below this")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--eager-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Wait for a quiet machine, measure everything, write the `speed` section (and --json)."""
    args = parse_args(argv)
    if args.eager_worker:
        print(json.dumps(eager_worker(json.loads(args.eager_worker))))
        return 0

    def log(message: str) -> None:
        print(f"[speed] {message}", file=sys.stderr, flush=True)

    if not args.no_wait:
        common.wait_for_quiet(args.max_load, log=log)
    results = collect(args, log)
    command = common.command_line([__file__, *(sys.argv[1:] if argv is None else argv)])
    body = speed_report.render(results, command)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    if not args.no_write:
        common.write_section("speed", body, args.results)
        log(f"wrote the speed section of {args.results}")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
