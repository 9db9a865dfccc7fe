"""`predict --engine ray` against the local engine on the same files, and a scaling model on paper drawn from
the measured per-core rate (section `ray-engine`).

The Ray engine exists for archives that outgrow one machine, so what one machine can show is its overhead
(target: >= 0.8x the local engine's img/s) and how it splits the cores (1 actor of all cores vs one actor a
core). The model then extrapolates the measured per-core rate to 1, 10 and 100 nodes and names the first
shared resource that stops it (the file system's read bandwidth, the driver writing the rows), with the
decode cost that larger images would add.

    .venv/bin/python -m benchmarks.ray_engine                       # 2,000 dataset files, bundled package
    .venv/bin/python -m benchmarks.ray_engine --files 400 --no-write
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

FILES = 2000
NODE_CORES = 32  # the node of the model on paper: 32 cores of this machine's kind
NODES = (1, 10, 100)
SHARED_FS_GBPS = 1.0  # GB/s one NFS server (or a small parallel file system) serves to all nodes together
LARGE_SIDE = (2560, 1920)  # a 5-megapixel microscope camera frame, for the decode cost of larger images
TARGET = 0.8


def prepare(data: Path, count: int, work: Path) -> list[Path]:
    """`count` links to the images under `data` (sorted; cycled when there are fewer), in one folder."""
    from leukoscope.data.imaging import is_image_path

    sources = sorted(p for p in data.rglob("*") if p.is_file() and is_image_path(p))
    if not sources:
        raise SystemExit(f"no images under {data}")
    folder = work / "files"
    folder.mkdir(parents=True)
    links = []
    for i in range(count):
        source = sources[i % len(sources)].resolve()
        link = folder / f"{i:06d}-{source.name}"
        link.symlink_to(source)
        links.append(link)
    return links


def time_local(model: Path | None, files: list[Path], threads: int) -> dict[str, Any]:
    """The local engine as `leukoscope predict` runs it: load the package, then Predictor.predict_paths."""
    from leukoscope.inference.predictor import load_predictor

    started = time.perf_counter()
    predictor = load_predictor(model, threads=threads)
    loaded = time.perf_counter()
    labels, arrivals = {}, []
    for count, prediction in enumerate(predictor.predict_paths(files), 1):
        labels[prediction.source] = prediction.label
        arrivals.append((time.perf_counter(), count))
    done = time.perf_counter()
    return {"images": len(files), "threads": threads, "load_s": loaded - started, "seconds": done - started,
            "ips": len(files) / (done - started), "steady_ips": steady_rate(arrivals), "labels": labels}


def time_ray(model: Path | None, files: list[Path], actors: int, threads: int, work: Path,
             labels: dict[str, str | None]) -> dict[str, Any]:
    """One `score_archive` run into a fresh folder: rate, start-up, and whether its labels are the local ones."""
    import pyarrow.parquet as pq

    from leukoscope.inference.archive import score_archive

    out = work / f"ray-{actors}x{threads}.parquet"
    began = time.time()
    summary = score_archive([str(f) for f in files], out, model=model, actors=actors, threads=threads)
    rows = pq.read_table(out, columns=["path", "label", "scored_at"]).to_pylist()
    times = sorted(r["scored_at"].timestamp() for r in rows)  # when each actor finished each batch
    arrivals = [(t, i) for i, t in enumerate(times, 1)]
    same = len(rows) == len(labels) and all(labels.get(r["path"]) == (r["label"] or None) for r in rows)
    return {"actors": actors, "threads": threads, "images": summary.scored, "seconds": summary.seconds,
            "ips": summary.images_per_second, "startup_s": times[0] - began if times else 0.0,
            "steady_ips": steady_rate(arrivals), "errors": summary.errors, "labels_match": same}


def steady_rate(arrivals: list[tuple[float, int]], skip: float = 0.1) -> float:
    """Images a second from when the first `skip` of them were scored (every actor started and loaded, the
    first batches out of the way) to the last: (time, images scored by then) pairs; 0.0 when too few."""
    if len(arrivals) < 3:
        return 0.0
    total = arrivals[-1][1]
    start = next(a for a in arrivals if a[1] >= skip * total)
    seconds = arrivals[-1][0] - start[0]
    return (total - start[1]) / seconds if seconds > 0 else 0.0


def costs(model: Path | None, files: list[Path], *, rows: int = 20_000) -> dict[str, Any]:
    """What the paper model needs besides the rate: bytes per file, decode cost on one core (these files and
    a 5-megapixel JPEG), and how many rows a second the driver writes as Parquet parts."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from leukoscope.inference.archive_parts import PartWriter, row_schema
    from leukoscope.inference.predictor import load_predictor

    predictor = load_predictor(model, threads=1)
    sample = [(str(f), f.read_bytes()) for f in files[:200]]
    decode = common.repeat_timing(lambda: [predictor._decode(n, b) for n, b in sample], repeats=3, warmup=1)
    with Image.open(io.BytesIO(sample[0][1])) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize(LARGE_SIDE).save(buffer, "JPEG", quality=90)
    large = buffer.getvalue()
    large_s = common.repeat_timing(lambda: predictor._decode("large.jpg", large), repeats=5, warmup=1)
    schema = row_schema(predictor.classes)
    real = [p.to_row() | {"model": "name", "model_sha256": "0" * 64} for p in predictor.predict_bytes(sample[:50])]
    block = pa.Table.from_pylist((real * (1000 // len(real) + 1))[:1000], schema=schema)
    with tempfile.TemporaryDirectory() as folder:
        writer = PartWriter(Path(folder), schema)
        started = time.perf_counter()
        for _ in range(rows // 1000):
            writer.add(block)
        writer.flush()
        write_s = time.perf_counter() - started
    return {"mean_bytes": float(np.mean([f.stat().st_size for f in files])),
            "decode_ms": 1000 * common.median(decode) / len(sample), "large_bytes": len(large),
            "large_decode_ms": 1000 * common.median(large_s), "driver_rows_per_s": rows / write_s}


def scaling(per_core_ips: float, cost: dict[str, Any], *, node_cores: int = NODE_CORES, nodes=NODES,
            fs_gbps: float = SHARED_FS_GBPS) -> list[dict[str, Any]]:
    """Images/hour and CPU-hours per million images at each node count: the per-core rate times the cores,
    capped by the shared file system (fs_gbps / bytes per file) and by the one driver writing the rows."""
    caps = {"file system": fs_gbps * 1e9 / cost["mean_bytes"], "driver": cost["driver_rows_per_s"]}
    table = []
    for n in nodes:
        cores = n * node_cores
        linear = per_core_ips * cores
        bound, cap = min(caps.items(), key=lambda kv: kv[1])
        rate = min(linear, cap)
        table.append({"nodes": n, "cores": cores, "images_per_hour": rate * 3600,
                      "cpu_hours_per_million": cores * (1e6 / rate) / 3600 if rate else float("inf"),
                      "bound": "cores" if linear <= cap else bound, "linear_per_hour": linear * 3600})
    return table


def render(result: dict[str, Any], command: str) -> str:
    """The `ray-engine` section."""
    local, runs, cost = result["local"], result["ray"], result["costs"]
    best = max(runs, key=lambda r: r["ips"])
    ratio = best["ips"] / local["ips"]
    steady = max(r["steady_ips"] for r in runs) / local["steady_ips"] if local["steady_ips"] else 0.0
    rows = [["local (`predict_paths`)", f"1 x {local['threads']}", f"{local['seconds']:.1f}", f"{local['ips']:.1f}",
             f"{local['load_s']:.1f}", f"{local['steady_ips']:.1f}", "1.00x", "-"]]
    rows += [[f"ray, {r['actors']} actor(s)", f"{r['actors']} x {r['threads']}", f"{r['seconds']:.1f}",
              f"{r['ips']:.1f}", f"{r['startup_s']:.1f}", f"{r['steady_ips']:.1f}", f"{r['ips'] / local['ips']:.2f}x",
              "yes" if r["labels_match"] else "**no**"] for r in runs]
    extra = (f"- Ray {result['ray_version']}; local Ray runtime started in {result['ray_init_s']:.1f} s (once per "
             f"cluster, not counted below); {local['images']} files ({cost['mean_bytes'] / 1000:.1f} KB on average) "
             f"from {result['data']}, cycled when fewer; package {result['model']}.")
    body = common.section_header("Archive scoring on Ray Data (`predict --engine ray`)", command, extra=extra) + "\n"
    body += common.table(["engine", "actors x CPUs", "seconds", "img/s", "start-up s", "img/s after the first 10%",
                          "vs local", "labels = local"], rows)
    body += (f"\nOverhead (target >= {TARGET}x the local engine): {_verdict(ratio)} with start-up included, "
             f"{_verdict(steady)} after start-up (best configuration each). Ray's seconds run from the job's start "
             "(actors start and each loads the package) to the last row written as Parquet, the local engine's from "
             "loading the package. Start-up: until the first batch was scored (the local engine: loading the package). "
             "After start-up: images a second once the first 10% were scored (Ray: the rows' `scored_at`, "
             "when each actor finished each batch), both engines; Ray's start-up is paid once per job, so an archive "
             "sees that rate.\n")
    per_core = result["per_core_ips"]
    body += (f"\n### Scaling model on paper\n\nFrom the measured rate after start-up with one actor a core: "
             f"**{per_core:.1f} img/s per core** ({result['per_core_from']} x 1 CPU above, divided by the cores; this "
             f"machine's Ray daemons and driver share those cores, so it is a floor). Node: {NODE_CORES} cores of "
             f"this kind; shared file system: {SHARED_FS_GBPS:g} GB/s for all nodes together (an assumption: one "
             f"NFS server or a small parallel file system); the driver writes "
             f"{cost['driver_rows_per_s']:,.0f} rows/s as Parquet parts (measured here).\n\n")
    body += common.table(["nodes", "cores", "images/hour", "CPU-hours per million images", "bound by"],
                         [[r["nodes"], r["cores"], f"{r['images_per_hour']:,.0f}", f"{r['cpu_hours_per_million']:.1f}",
                           r["bound"]] for r in result["scaling"]])
    fs_cap = SHARED_FS_GBPS * 1e9 / cost["mean_bytes"]
    body += (f"\nWhere it stops scaling: linear in cores until the shared file system serves {fs_cap:,.0f} files/s "
             f"({SHARED_FS_GBPS:g} GB/s / {cost['mean_bytes'] / 1000:.1f} KB), i.e. about "
             f"{fs_cap / per_core:,.0f} cores ({fs_cap / per_core / NODE_CORES:,.0f} nodes); past that, more nodes "
             "add CPU-hours, not images/hour (an object store that scales with the readers moves this cap). The one "
             f"driver writing rows caps at {cost['driver_rows_per_s']:,.0f} images/s (Parquet only; it also hands "
             "Ray Data one block of up to 128 images per actor call, so 100 nodes mean about "
             f"{result['scaling'][-1]['images_per_hour'] / 3600 / 128:,.0f} calls/s to schedule: not measured here). "
             "Decode cost: "
             f"{cost['decode_ms']:.1f} ms/image on one core for these files (read, sha256, decode, resize, quality "
             f"checks) of {1000 / per_core:.1f} ms/image in all; a {LARGE_SIDE[0]}x{LARGE_SIDE[1]} JPEG "
             f"({cost['large_bytes'] / 1e6:.1f} MB) takes {cost['large_decode_ms']:.0f} ms, so an archive of camera "
             f"frames runs about {1 + (cost['large_decode_ms'] - cost['decode_ms']) * per_core / 1000:.1f}x "
             f"slower per core and its file-system cap falls {cost['large_bytes'] / cost['mean_bytes']:.0f}x.\n")
    return body


def _verdict(ratio: float) -> str:
    return f"{ratio:.2f}x ({'met' if ratio >= TARGET else '**not met**'})"


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every timing of the section, local engine first (before Ray's daemons run)."""
    from leukoscope.inference.archive import connect

    cores = common.usable_cores()
    files = prepare(args.data, args.files, work)
    local = time_local(args.model, files, cores)
    started = time.perf_counter()
    owned = connect(None, num_cpus=cores, progress=False)
    ray_init = time.perf_counter() - started
    try:
        runs = [time_ray(args.model, files, actors, cores // actors, work, local["labels"])
                for actors in sorted({1, cores})]
    finally:
        if owned:
            import ray

            ray.shutdown()
    cost = costs(args.model, files)
    spread = max((r for r in runs if r["threads"] == 1), key=lambda r: r["actors"])
    per_core = (spread["steady_ips"] or spread["ips"]) / spread["actors"]
    local.pop("labels")
    return {"local": local, "ray": runs, "costs": cost, "per_core_ips": per_core, "per_core_from": spread["actors"],
            "ray_init_s": ray_init, "ray_version": importlib.metadata.version("ray"),
            "scaling": scaling(per_core, cost), "data": common.display_path(args.data),
            "model": common.display_path(args.model) if args.model else "bundled"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=FILES, help=f"image files to score (default {FILES:,})")
    parser.add_argument("--data", type=Path, default=common.DATA, help="folder of images (default the ALL data)")
    parser.add_argument("--model", type=Path, help="model package (default: the bundled one)")
    parser.add_argument("--tiny", action="store_true", help="smoke mode: 24 files, no waiting, nothing written")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load is below this")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ray") is None:
        parser.exit(1, "ray_engine: Ray is not installed: pip install 'leukoscope[ray]'\n")
    if args.tiny:
        args.files, args.no_wait, args.no_write = min(args.files, 24), True, True
    if args.files < 1:
        parser.error("--files must be at least 1")
    if not args.no_wait:
        common.wait_for_quiet(args.max_load)
    with tempfile.TemporaryDirectory(prefix="leukoscope-ray-bench-") as tmp:
        result = measure(args, Path(tmp))
    common.publish("ray-engine", render(result, common.command_line()), write=not args.no_write,
                   results=args.results, json_path=args.json, raw=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
