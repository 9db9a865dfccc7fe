"""End-to-end timings of the speed benchmark: decoding, `leukoscope predict` on a folder, the in-process
predictor, whether decoding overlaps with inference, and start-up cost (benchmarks/speed.py runs them).

Run alone, it is issue #11 item 13's check in one run: the CPU flags, a per-image budget of the command's
stages (read, hash, decode, resize, quality checks, normalise, model, OOD score, write, and the network passes
the package's review views add), the command as typed
(plain shell: no MALLOC_* variables) on N dataset JPEGs, and the ratios to the package's model-only ONNX
throughput (target >= 0.85x) and to tuned PyTorch eager (channels_last + malloc settings, batch 32; >= 2x):

    .venv/bin/python -m benchmarks.speed_e2e                  # 1,000 files, 3 timed runs
    .venv/bin/python -m benchmarks.speed_e2e --images 500 --repeats 1 --no-eager
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

BATCH = 32
E2E_IMAGES = 1000
TARGET_VS_MODEL = 0.85
TARGET_VS_EAGER = 2.0


def decode_timing(predictor: Any, files: list[Path], repeats: int) -> dict[str, Any]:
    """The predictor's per-image preparation (read, sha256, JPEG decode, resize, quality checks) on one
    core, the same with its decode pool, and input normalisation per image of a batch of 32."""
    from leukoscope.inference.backends import cpu_count
    from leukoscope.models.preprocessing import normalize_numpy

    workers = min(4, cpu_count())  # what Predictor.predict_paths uses

    def serial() -> list[Any]:
        return [predictor._decode_path(f) for f in files]

    one = common.repeat_timing(serial, repeats=repeats, warmup=1)
    many = common.repeat_timing(lambda: _pooled_decode(predictor, files), repeats=repeats, warmup=1)
    batch = np.stack([d.pixels for d in serial()[:BATCH]])
    norm = common.repeat_timing(lambda: normalize_numpy(batch, predictor.preprocess), repeats=repeats, warmup=2,
                                inner=10)
    n = len(files)
    return {"images": n, "workers": workers, "serial_ms": 1000 * common.median(one) / n,
            "parallel_ms": 1000 * common.median(many) / n, "normalize_ms": 1000 * common.median(norm) / len(batch),
            "serial_rounds_s": one, "parallel_rounds_s": many}


# ------------------------------------------------------------------------------------------- end to end


def e2e_folder(split: Any, work: Path, count: int = E2E_IMAGES, seed: int = 0) -> tuple[Path, list[Path]]:
    """A folder of `count` symlinks to dataset images (a seeded sample of every part)."""
    paths = split.paths()
    chosen = np.random.default_rng(seed).choice(len(paths), size=min(count, len(paths)), replace=False)
    folder = work / "e2e-images"
    folder.mkdir()
    links = []
    for i, index in enumerate(sorted(chosen)):
        source = Path(paths[index]).resolve()
        link = folder / f"{i:04d}-{source.name}"
        link.symlink_to(source)
        links.append(link)
    return folder, links


def cli_command(folder: Path, out: Path, model: Path | None) -> list[str]:
    """The real command line (`python -m leukoscope` is the installed `leukoscope` script's entry point)."""
    command = [sys.executable, "-m", "leukoscope", "predict", str(folder), "--format", "csv", "--out", str(out),
               "--quiet"]
    return command + (["--model", str(model)] if model is not None else [])


def time_cli(folder: Path, expected: int, model: Path | None, work: Path, repeats: int) -> dict[str, Any]:
    """Wall time of the real command as a user runs it (no malloc settings), median of `repeats` after a
    warm-up run that also fills the page cache; every run must exit 0 with one CSV row per image."""
    out = work / "predict.csv"
    env = {k: v for k, v in os.environ.items() if k not in common.MALLOC_ENV}
    command = cli_command(folder, out, model)
    seconds = []
    for attempt in range(repeats + 1):
        out.unlink(missing_ok=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        rows = max(0, len(out.read_text(encoding="utf-8").splitlines()) - 1) if out.exists() else 0
        if done.returncode != 0 or rows != expected:
            raise SystemExit(f"`{' '.join(command)}` exited {done.returncode} with {rows} rows:\n{done.stderr[-2000:]}")
        if attempt:
            seconds.append(elapsed)
    display = ["leukoscope", *command[3:]]
    return {"images": expected, "seconds": common.median(seconds), "rounds_s": seconds,
            "ips": expected / common.median(seconds), "command": " ".join(display)}


def time_predict_paths(predictor: Any, files: list[Path], repeats: int) -> dict[str, Any]:
    """Predictor.predict_paths in this process (no interpreter start, imports or model load)."""
    def run() -> int:
        return sum(1 for _ in predictor.predict_paths(files, batch_size=BATCH))

    seconds = common.repeat_timing(run, repeats=repeats, warmup=1)
    return {"images": len(files), "seconds": common.median(seconds), "rounds_s": seconds,
            "ips": len(files) / common.median(seconds)}


def overlap_check(predictor: Any, files: list[Path], pp_seconds: float, repeats: int) -> dict[str, Any]:
    """Does predict_paths gain from decoding batch k+1 while batch k runs? Time the same work without that
    overlap (decode a batch with the same pool, wait, run it), and each half alone."""
    batches = [files[i:i + BATCH] for i in range(0, len(files), BATCH)]

    def no_overlap() -> None:
        for batch in batches:
            predictor._finish(_pooled_decode(predictor, batch), False)

    decoded_batches = [_pooled_decode(predictor, batch) for batch in batches]
    serial_s = common.median(common.repeat_timing(no_overlap, repeats=repeats, warmup=1))
    decode_s = common.median(common.repeat_timing(lambda: _pooled_decode(predictor, files), repeats=repeats, warmup=0))
    infer_s = common.median(common.repeat_timing(lambda: [predictor._finish(b, False) for b in decoded_batches],
                                                 repeats=repeats, warmup=1))
    return {"decode_s": decode_s, "inference_s": infer_s, "no_overlap_s": serial_s, "predict_paths_s": pp_seconds,
            "gain": serial_s / pp_seconds - 1.0}


def _pooled_decode(predictor: Any, files: list[Path]) -> list[Any]:
    """Decode with the same pool size as Predictor.predict_paths."""
    from leukoscope.inference.backends import cpu_count

    with ThreadPoolExecutor(max_workers=min(4, cpu_count())) as pool:
        return list(pool.map(predictor._decode_path, files))


def startup_seconds(repeats: int = 3) -> dict[str, Any]:
    """What every command pays before the first image: importing leukoscope.inference.predictor (does it pull in
    torch?) in a fresh interpreter."""
    code = "import sys, time; t = time.perf_counter(); import leukoscope.inference.predictor; " \
           "print(time.perf_counter() - t, 'torch' in sys.modules)"
    seconds, torch_loaded = [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        seconds.append(float(out[0]))
        torch_loaded = out[1] == "True"
    return {"import_inference_s": common.median(seconds), "imports_torch": torch_loaded}


# ------------------------------------------------------------------------------------------- per-image budget


def budget(predictor: Any, files: list[Path], repeats: int = 3) -> dict[str, float]:
    """Milliseconds per image of each stage of `leukoscope predict`: single-threaded stages as CPU time of
    this thread (steady on a busy machine), the model as wall time per image of a batch of 32 on all cores
    and as process CPU time (its threads included). `checks` is the predictor's own preparation minus read,
    hash, decode and resize: quality checks, size and JPEG-quality reasons, its bookkeeping."""
    import time as clock

    from leukoscope.cli.predict_cmd import _render
    from leukoscope.data.fileio import sha256_bytes
    from leukoscope.data.imaging import load_rgb
    from leukoscope.models.preprocessing import normalize_numpy, resize_rgb

    def cpu_ms(fn: Any, n: int, timer: Any = clock.thread_time) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            started = timer()
            fn()
            best = min(best, timer() - started)
        return 1000 * best / n

    n = len(files)
    data = [Path(f).read_bytes() for f in files]
    images = [load_rgb(d) for d in data]
    items = [predictor._decode(str(f), d) for f, d in zip(files, data, strict=True)]
    batch = np.stack([i.pixels for i in items if i.pixels is not None][:BATCH])
    x = normalize_numpy(batch, predictor.preprocess)
    out: dict[str, float] = {
        "read": cpu_ms(lambda: [Path(f).read_bytes() for f in files], n),
        "hash": cpu_ms(lambda: [sha256_bytes(d) for d in data], n),
        "decode": cpu_ms(lambda: [load_rgb(d) for d in data], n),
        "resize": cpu_ms(lambda: [resize_rgb(i, predictor.preprocess) for i in images], n),
    }
    prepare = cpu_ms(lambda: [predictor._decode(str(f), d) for f, d in zip(files, data, strict=True)], n)
    out["checks"] = max(0.0, prepare - out["hash"] - out["decode"] - out["resize"])
    out["normalise"] = cpu_ms(lambda: normalize_numpy(batch, predictor.preprocess), len(batch))
    out["model_wall"] = cpu_ms(lambda: predictor._backend.run(x), len(batch), clock.perf_counter)
    out["model_cpu"] = cpu_ms(lambda: predictor._backend.run(x), len(batch), clock.process_time)
    _, feats = predictor._backend.run(x)
    out["ood"] = cpu_ms(lambda: predictor.ood.score(feats), len(batch)) if predictor.ood is not None else 0.0
    rows = [p.to_row() for p in predictor._finish(items[:BATCH], False)]
    out["write"] = cpu_ms(lambda: _render(rows, "csv"), len(rows))
    out["non_model_cpu"] = sum(v for k, v in out.items() if not k.startswith("model"))
    out["review_view_passes"] = review_view_passes(predictor, items)
    out["review_views_cpu"] = out["review_view_passes"] * out["model_cpu"]
    return out


def review_view_passes(predictor: Any, items: list[Any]) -> float:
    """Network passes per image beyond its own one, made by the package's review views (realignment of
    OOD-flagged images, the Benign view check of unflagged Benign calls): counted, not timed, so the budget
    says how much model time they add at the model's own cost per image."""
    backend, passes = predictor._backend, [0]

    class Counting:
        name = backend.name

        def run(self, x: np.ndarray) -> Any:
            passes[0] += len(x)
            return backend.run(x)

    predictor._backend = Counting()
    try:
        for start in range(0, len(items), BATCH):
            predictor._finish(items[start:start + BATCH], False)
    finally:
        predictor._backend = backend
    usable = sum(1 for item in items if item.pixels is not None)
    return (passes[0] - usable) / max(1, len(items))


def model_only_ips(predictor: Any, files: list[Path], repeats: int) -> float:
    """The package's model alone (ONNX Runtime as the predictor runs it), batches of 32, img/s (median)."""
    from leukoscope.models.preprocessing import normalize_numpy

    pixels = [d.pixels for d in (predictor._decode_path(f) for f in files[: 4 * BATCH]) if d.pixels is not None]
    batches = [normalize_numpy(np.stack(pixels[i:i + BATCH]), predictor.preprocess)
               for i in range(0, len(pixels) - BATCH + 1, BATCH)]
    seconds = common.repeat_timing(lambda: [predictor._backend.run(b) for b in batches], repeats=repeats, warmup=1)
    return BATCH * len(batches) / common.median(seconds)


def main(argv: list[str] | None = None) -> int:
    """Item 13's check: flags, budget, the command as typed vs the model alone and vs tuned eager."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=E2E_IMAGES, help="dataset JPEG files (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the command (default 3)")
    parser.add_argument("--data", type=Path, default=common.DATA)
    parser.add_argument("--model", type=Path, help="model package (default: the bundled one, run without --model)")
    parser.add_argument("--no-eager", dest="eager", action="store_false", help="skip the PyTorch eager figure")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    import tempfile

    from leukoscope.data.imaging import is_image_path
    from leukoscope.inference.package import TORCH_FILE, bundled_package_path
    from leukoscope.inference.predictor import load_predictor

    info = common.machine()
    print(f"CPU: {info['cpu']}; {info['cores']} cores; flags: {', '.join(info['flags']) or 'none listed'}; "
          f"onnxruntime {info['onnxruntime']}; load {common.load_average():.2f}", flush=True)
    paths = sorted(p for p in args.data.rglob("*") if p.is_file() and is_image_path(p))
    chosen = [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), min(args.images, len(paths)),
                                                                         replace=False))]
    predictor = load_predictor(args.model)
    result: dict[str, Any] = {"machine": info, "images": len(chosen)}
    sample = chosen[::max(1, len(chosen) // 256)][:256]  # evenly spaced: every class, as in the whole folder
    result["budget_ms"] = budget(predictor, sample)
    print("per-image budget, ms: " + ", ".join(f"{k} {v:.3f}" for k, v in result["budget_ms"].items()
                                               if k != "review_view_passes"), flush=True)
    print(f"review views: {result['budget_ms']['review_view_passes']:.3f} network passes per image beyond its own "
          f"(realignment, Benign view check), about {result['budget_ms']['review_views_cpu']:.2f} CPU-ms", flush=True)
    result["model_only_ips"] = model_only_ips(predictor, chosen, repeats=5)
    with tempfile.TemporaryDirectory(prefix="leukoscope-e2e-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, source in enumerate(chosen):
            (folder / f"{i:04d}-{source.name}").symlink_to(source.resolve())
        result["cli"] = time_cli(folder, len(chosen), args.model, Path(tmp), args.repeats)
        result["cli"]["command"] = result["cli"]["command"].replace(str(folder), f"FOLDER_OF_{len(chosen)}_JPEGS").replace(
            str(Path(tmp) / "predict.csv"), "OUT.csv")
        if args.eager:
            from benchmarks import speed  # here, not at the top: speed.py imports this module

            package = args.model or bundled_package_path()
            pixels = np.stack([d.pixels for d in map(predictor._decode_path, chosen[:64]) if d.pixels is not None])
            singles, batches = speed.timing_batches(pixels, predictor.preprocess)
            eager = speed.run_eager(Path(package) / TORCH_FILE, singles, batches, Path(tmp), malloc=True, repeats=3)
            result["eager_tuned_ips"] = max(t.b32_ips for t in eager)
    ips, model = result["cli"]["ips"], result["model_only_ips"]
    print(f"model only (ONNX, batch 32): {model:.0f} img/s; `{result['cli']['command']}` as typed: {ips:.0f} img/s "
          f"(runs {common.spread(result['cli']['rounds_s'])} s) = {ips / model:.2f}x the model "
          f"(target >= {TARGET_VS_MODEL}x)", flush=True)
    if "eager_tuned_ips" in result:
        print(f"tuned PyTorch eager (channels_last + malloc settings, batch 32): {result['eager_tuned_ips']:.0f} img/s; "
              f"end to end = {ips / result['eager_tuned_ips']:.2f}x it (target >= {TARGET_VS_EAGER}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
