"""Peak memory of `leukoscope serve` under worst-case large images (issue #11 item 9).

A 143 KB PNG can hold 7000x7000 pixels (under the 50-megapixel limit): 147 MB once decoded, and before
the fix one Grad-CAM of it took 2.6 GB and 8 thumbnail requests took the server from 2.7 to 6.6 GB. This
starts the real server (`python -m leukoscope serve`, as load_server.py does: 127.0.0.1 only, a fresh
database in a temporary folder, the model warmed at start-up), then from `--concurrency` concurrent
clients sends `--uploads` single-file uploads of highly compressible 7000x7000 PNGs (RGB, RGBA, palette
and grey, each made distinct by a text chunk), then for every stored prediction a Grad-CAM, an original
and a thumbnail request, all at once. Clients wait and retry on 503 as the page does (bounded tries).

It reads the server's peak resident memory from /proc/PID/status (VmHWM: the high-water mark since the
process started, so the start-up and warm-up are included) and samples VmRSS every 50 ms. Verdict: peak
under `--limit-mb` (2048) with 0 errors other than 503s.

    .venv/bin/python -m benchmarks.memory_server                     # bundled model, 16 uploads, 16 clients
    .venv/bin/python -m benchmarks.memory_server --uploads 16 --concurrency 16 --out mem.json --no-write

Writes the `memory` section of benchmarks/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks import common
from benchmarks.load_server import Server

SIDE = 7000
MODES = ("RGB", "RGBA", "P", "L")
RETRIES = 60  # per request, on 503 (the client waits Retry-After each time): bounded


def worst_case_png(mode: str) -> bytes:
    """A 7000x7000 PNG of a few flat regions: ~0.1-0.3 MB on the wire, 147-196 MB decoded."""
    pixels = np.full((SIDE, SIDE, 3), (215, 185, 210), dtype=np.uint8)
    pixels[SIDE // 4: SIDE // 2, SIDE // 4: SIDE // 2] = (95, 45, 150)  # a large "nucleus"
    pixels[:256, :256] = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def distinct(png: bytes, index: int) -> bytes:
    """The same pixels with a tEXt chunk before IEND: a different file (sha256), the same decode cost."""
    data = b"leukoscope\x00" + str(index).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    return png[:-12] + chunk + png[-12:]


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Sampler(threading.Thread):
    """VmRSS of the server every 50 ms (the high-water mark VmHWM is read at the end as well)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.05)


async def send_all(url: str, jobs: list[tuple[str, str, Any]], concurrency: int) -> dict[str, dict[str, int]]:
    """Run (kind, method+path, payload) jobs from `concurrency` clients; status counts per kind (final
    status after retries) and the number of 503 answers seen on the way."""
    counts: dict[str, dict[str, int]] = {}
    queue = iter(jobs)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for kind, path, payload in queue:
            seen = counts.setdefault(kind, {})
            for _ in range(RETRIES):
                try:
                    if payload is None:
                        response = await client.get(path)
                    else:
                        response = await client.post(path, files=[("files", payload)])
                    status = response.status_code
                except httpx.HTTPError:
                    status = -1
                if status != 503:
                    break
                seen["503 (retried)"] = seen.get("503 (retried)", 0) + 1
                await asyncio.sleep(float(response.headers.get("Retry-After", "2")))
            seen[str(status)] = seen.get(str(status), 0) + 1
            if payload is not None and status == 200:
                ids.extend(r["id"] for r in response.json()["results"] if r.get("id") is not None)

    ids: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    counts["_ids"] = {str(i): 1 for i in ids}
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model package or run folder (default: the bundled package)")
    parser.add_argument("--uploads", type=int, default=16, help="7000x7000 PNG uploads (default 16)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="server inference threads (default 1)")
    parser.add_argument("--queue", type=int, default=16, help="server queue beyond workers (default 16)")
    parser.add_argument("--limit-mb", type=float, default=2048.0, help="peak RSS the verdict allows (MiB)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    parser.add_argument("--results", type=Path, default=None, help="RESULTS.md to update (default: benchmarks/)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    if not 1 <= args.uploads <= 64 or not 1 <= args.concurrency <= 64:
        parser.error("--uploads and --concurrency must be 1..64 (a bounded benchmark)")

    started = time.perf_counter()
    bases = {mode: worst_case_png(mode) for mode in MODES}
    uploads = [(f"huge-{i}-{MODES[i % len(MODES)]}.png", distinct(bases[MODES[i % len(MODES)]], i))
               for i in range(args.uploads)]
    sizes_kb = {mode: round(len(data) / 1024) for mode, data in bases.items()}
    with tempfile.TemporaryDirectory(prefix="leukoscope-memory-") as tmp:
        server = Server(args, Path(tmp))
        try:
            card = server.wait_ready(timeout=300)
            pid = server.process.pid
            ready_kib = proc_kib(pid, "VmRSS")
            sampler = Sampler(pid)
            sampler.start()
            t0 = time.perf_counter()
            upload_jobs = [("upload", "/api/v1/predict", (name, data, "image/png")) for name, data in uploads]
            counts = asyncio.run(send_all(server.url, upload_jobs, args.concurrency))
            ids = sorted(int(i) for i in counts.pop("_ids"))
            view_jobs = [(kind, f"/api/v1/predictions/{i}/{kind}", None)
                         for i in ids for kind in ("gradcam", "image", "thumbnail")]
            view_counts = asyncio.run(send_all(server.url, view_jobs, args.concurrency))
            view_counts.pop("_ids")
            seconds = time.perf_counter() - t0
            hwm_kib = proc_kib(pid, "VmHWM")
            sampler.stop.set()
            sampler.join()
        finally:
            server.stop()
    counts.update(view_counts)
    errors = sum(n for kind in counts.values() for status, n in kind.items() if status not in ("200", "503 (retried)"))
    peak_mb = max(hwm_kib, sampler.peak_kib) / 1024
    ok = errors == 0 and peak_mb < args.limit_mb and len(ids) == args.uploads
    result = {
        "date": common.today(), "model": card.get("model_version"), "backend": card.get("backend"),
        "uploads": args.uploads, "concurrency": args.concurrency, "workers": args.workers, "queue": args.queue,
        "png_kb": sizes_kb, "stored": len(ids), "statuses": counts, "errors": errors,
        "rss_ready_mb": round(ready_kib / 1024), "peak_rss_mb": round(peak_mb), "limit_mb": args.limit_mb,
        "seconds": round(seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        "verdict": "ok" if ok else "FAILED", "machine": common.machine_line(),
    }
    retried = sum(kind.get("503 (retried)", 0) for kind in counts.values())
    extra = (f"- Server: `python -m leukoscope serve` on 127.0.0.1, fresh database, model warmed at start-up; "
             f"{args.uploads} uploads of 7000x7000 PNGs ({', '.join(f'{m} {kb} KB' for m, kb in sizes_kb.items())}) "
             f"from {args.concurrency} clients, then a Grad-CAM, an original and a thumbnail request per prediction, "
             f"all at once; 503 answers retried after Retry-After. Peak = VmHWM of the server process (start-up "
             f"included). Verdict: **{result['verdict']}** (peak under {args.limit_mb:.0f} MB, 0 errors other "
             f"than 503s). Final statuses: {json.dumps(counts)}.")
    body = (common.section_header("Server memory under worst-case large images", common.command_line(), extra=extra)
            + "\n" + common.table(
                ["model", "uploads", "clients", "workers", "RSS ready MB", "peak RSS MB", "errors", "503s retried", "s"],
                [[result["model"], args.uploads, args.concurrency, args.workers, result["rss_ready_mb"],
                  result["peak_rss_mb"], errors, retried, result["seconds"]]]))
    print(body)
    if not args.no_write:
        common.write_section("memory", body, *([args.results] if args.results else []))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
