"""End-to-end timings of the speed benchmark: decoding, `leukoscope predict` on a folder, the in-process
predictor, whether decoding overlaps with inference, and start-up cost (benchmarks/speed.py runs them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import common  # the benchmarks folder is not a package: its scripts import each other by path

BATCH = 32
E2E_IMAGES = 1000



def decode_timing(predictor: Any, files: list[Path], repeats: int) -> dict[str, Any]:
    """The predictor's per-image preparation (read, sha256, JPEG decode, resize, quality checks) on one
    core, the same with its decode pool, and input normalisation per image of a batch of 32."""
    from leukoscope.backends import cpu_count
    from leukoscope.preprocessing import normalize_numpy

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
    from leukoscope.backends import cpu_count

    with ThreadPoolExecutor(max_workers=min(4, cpu_count())) as pool:
        return list(pool.map(predictor._decode_path, files))


def startup_seconds(repeats: int = 3) -> dict[str, Any]:
    """What every command pays before the first image: importing leukoscope.inference (does it pull in
    torch?) in a fresh interpreter."""
    code = "import sys, time; t = time.perf_counter(); import leukoscope.inference; " \
           "print(time.perf_counter() - t, 'torch' in sys.modules)"
    seconds, torch_loaded = [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        seconds.append(float(out[0]))
        torch_loaded = out[1] == "True"
    return {"import_inference_s": common.median(seconds), "imports_torch": torch_loaded}
