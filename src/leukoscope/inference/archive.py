"""Archive-scale scoring on Ray Data: `leukoscope predict SOURCE --engine ray --out OUT.parquet`.

A lab scores years of smear images on a cluster it already runs. Ray Data schedules the work, restarts lost
actors and draws the progress bars; leukoscope adds only what is its own. Each actor loads the package once
and scores batches with `Predictor.predict_bytes`, so decoding, quality checks, OOD and review flags are the
local engine's (one implementation), with ONNX Runtime threads = the actor's CPUs (no oversubscription).

- The driver lists the paths and the actors read the files: image bytes never cross the object store, and
  a file that cannot be read becomes an error row instead of a failed read task.
- The package travels through the object store (tens of MB, once per node): nodes need the images on a
  shared file system (or an object store pyarrow reads), not the package.
- Rows (about 0.5 KB) stream back to the driver, which writes OUT as a folder of Parquet parts
  (leukoscope.inference.archive_parts): OUT may live on the driver's disk even on a cluster.
- Resume: actors hash each file's bytes (sha256) before inference and skip those OUT already holds for the
  same package (model.json's sha256); a file that could not be read has no hash and is tried again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.data.fileio import sha256_bytes
from leukoscope.errors import LeukoscopeError, UsageError
from leukoscope.inference.archive_parts import (
    PART_ROWS,
    PartWriter,
    done_hashes,
    first_line,
    locked_output,
    package_files,
    package_id,
    row_schema,
)
from leukoscope.inference.archive_sources import read_url
from leukoscope.inference.backends import cpu_count
from leukoscope.inference.prediction import Prediction
from leukoscope.review import reasons as why

RAY_MISSING = "--engine ray needs Ray: pip install 'leukoscope[ray]'"
MAX_BLOCKS = 20_000  # blocks of paths handed to the actors: 4 batches each, larger past 20,000 blocks
PROBE_SECONDS = 5.0  # how long an unreachable --address may keep the user waiting
READ_THREADS = 8  # file reads per actor in flight (network file systems and object stores have latency)


class ClusterError(LeukoscopeError):
    """A Ray cluster cannot be reached, started or finish the job (one line, exit code 1)."""


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a UsageError saying how to install it."""
    try:
        import pyarrow  # noqa: F401  (Ray Data's block format; comes with ray[data])
        import ray
        import ray.data
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


# ------------------------------------------------------------------------------------------- cluster


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Raise ClusterError unless a TCP connection to the cluster's address opens within `timeout` seconds
    (ray.init itself retries an unreachable address for minutes)."""
    target = address.removeprefix("ray://")
    if not address.startswith("ray://"):
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # a Ray without this helper: probe the address as given
            canonicalize_bootstrap_address_or_die = None
        if canonicalize_bootstrap_address_or_die is not None:
            try:
                target = canonicalize_bootstrap_address_or_die(address)
            except (ConnectionError, ValueError) as exc:
                raise ClusterError(f"no Ray cluster at --address {address}: {first_line(exc)}") from None
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc)
        raise ClusterError(f"cannot reach the Ray cluster at --address {address} ({target}: {reason}); start it "
                           "with `ray start --head` or check the address") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, progress: bool = True) -> bool:
    """Join the cluster at `address` ("host:port", "ray://host:port", "auto") or start a local Ray runtime
    with `num_cpus` (default: this machine's cores). True when this call started Ray: the caller shuts it down."""
    ray = require_ray()
    if address:
        probe(address)
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, logging_level=logging.ERROR)
            else:
                ray.init(num_cpus=num_cpus or cpu_count(), include_dashboard=False, logging_level=logging.ERROR)
        except Exception as exc:  # Ray raises many kinds (ConnectionError, RuntimeError, version mismatch)
            where = f"the Ray cluster at --address {address}" if address else "a local Ray runtime"
            raise ClusterError(f"cannot start or join {where}: {first_line(exc)}") from None
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING if progress else logging.ERROR)  # the bars say the rest
    DataContext.get_current().enable_progress_bars = progress
    return started


@contextlib.contextmanager
def ray_runtime(address: str | None = None, *, num_cpus: int | None = None, progress: bool = True) -> Iterator[None]:
    """`connect` for the block; shuts down at its end the Ray runtime it started (a joined cluster stays up)."""
    started = connect(address, num_cpus=num_cpus, progress=progress)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


class Scorer:
    """One Ray actor: loads the package once, then reads, hashes and scores batches of paths."""

    def __init__(self, package: Any, *, backend: str, threads: int, review_threshold: float | None,
                 tta: bool, done: Any, model: str, model_sha256: str) -> None:
        import ray

        from leukoscope.inference.predictor import load_predictor

        files = ray.get(package) if isinstance(package, ray.ObjectRef) else package
        with tempfile.TemporaryDirectory(prefix="leukoscope-package-") as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            self.predictor = load_predictor(folder, backend=backend, threads=threads,
                                            confidence_threshold=review_threshold)
        done = ray.get(done) if isinstance(done, ray.ObjectRef) else done
        self.done = np.asarray(done if done is not None else [], dtype="S64")
        self.tta, self.extra = tta, {"model": model, "model_sha256": model_sha256}
        self.schema = row_schema(self.predictor.classes)
        self.pool = ThreadPoolExecutor(max_workers=READ_THREADS)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        items, unread = [], []
        for path, data in zip(paths, self.pool.map(_read, paths), strict=True):
            (items if isinstance(data, bytes) else unread).append((path, data))
        if items and len(self.done):
            digests = np.array([sha256_bytes(data) for _, data in items], dtype="S64")
            where = np.minimum(np.searchsorted(self.done, digests), len(self.done) - 1)
            items = [item for item, seen in zip(items, self.done[where] == digests, strict=True) if not seen]
        predictions = self.predictor.predict_bytes(items, tta=self.tta, batch_size=max(1, len(items)))
        predictions += [self._unreadable(path, str(reason)) for path, reason in unread]
        extra = self.extra | {"scored_at": datetime.now(timezone.utc)}
        return pa.Table.from_pylist([p.to_row() | extra for p in predictions], schema=self.schema)

    def _unreadable(self, path: str, reason: str) -> Prediction:
        """The local engine's own error row for a local path (read again by Predictor.predict_paths), or
        the same kind of row for a URL."""
        if "://" not in path:
            return next(iter(self.predictor.predict_paths([path], batch_size=1)))
        return Prediction.without_call(path, "", self.predictor.classes, [why.unreadable(reason)], error=reason)


def _read(path: str) -> bytes | str:
    """A file's bytes, or why it could not be read."""
    try:
        return read_url(path) if "://" in path else Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    except Exception as exc:  # pyarrow's own errors for URLs
        return f"cannot read file: {first_line(exc)}"


# ------------------------------------------------------------------------------------------- the job


@dataclass
class ArchiveSummary:
    """What one run did (`line()` is the CLI's summary)."""

    out: Path
    listed: int
    actors: int = 0
    threads: int = 0
    scored: int = 0
    skipped: int = 0
    errors: int = 0
    unusable: int = 0
    flagged: int = 0
    parts: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.scored} image(s) scored in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s, "
                f"{self.actors} actor(s) x {self.threads} CPU): {self.flagged} flagged for review, {self.unusable} "
                f"unusable (no class), {self.errors} error(s); {self.skipped} already in the output, skipped "
                f"-> {self.out}")


def score_archive(paths: Sequence[str], out: str | Path, *, model: str | Path | None = None, backend: str = "auto",
                  actors: int | None = None, threads: int = 1, batch_size: int = 32,
                  review_threshold: float | None = None, tta: bool = False, part_rows: int = PART_ROWS,
                  on_error: Callable[[str, str], None] | None = None) -> ArchiveSummary:
    """Score `paths` on the connected Ray cluster (see `connect`) into the Parquet folder `out`; resumable.

    `actors` model actors (default: the cluster's CPUs // threads) of `threads` CPUs each; `on_error(path,
    reason)` hears of every error row as it arrives. Returns the counts of this run.
    """
    ray = require_ray()
    if not ray.is_initialized():
        raise ClusterError("Ray is not running: call leukoscope.inference.archive.connect() first")
    if threads < 1 or batch_size < 1 or (actors is not None and actors < 1):
        raise UsageError("--threads, --batch-size and --actors must be at least 1")
    out, package = Path(out), package_id(model)
    actors = _check_resources(ray, actors, threads)
    summary = ArchiveSummary(out, len(paths), actors, threads)
    with locked_output(out):
        if not paths:
            return summary
        done = done_hashes(out, package)
        writer = PartWriter(out, row_schema(package.classes), rows=part_rows)
        kwargs = {"package": ray.put(package_files(package)), "backend": backend, "threads": threads,
                  "review_threshold": review_threshold, "tta": tta, "done": ray.put(done) if len(done) else None,
                  "model": package.name, "model_sha256": package.sha256}
        started = time.perf_counter()
        try:
            for table in _dataset(ray, list(paths), actors, threads, batch_size, kwargs).iter_batches(
                    batch_size=None, batch_format="pyarrow"):
                _count(summary, table, on_error)
                writer.add(table)
        except (KeyboardInterrupt, LeukoscopeError):
            raise
        except Exception as exc:  # a Ray task or actor failed past its retries
            raise ClusterError(f"the Ray job failed: {first_line(exc)}; the rows written so far are kept in "
                               f"{out}: rerun the same command to resume") from None
        finally:
            writer.flush()
            summary.parts, summary.seconds = writer.parts, time.perf_counter() - started
    summary.skipped = summary.listed - summary.scored
    return summary


def _check_resources(ray: Any, actors: int | None, threads: int) -> int:
    """The number of actors (default: the cluster's CPUs // threads); refuses a pool that could never start
    (Ray Data would wait for the CPUs forever)."""
    nodes = [node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    total, largest = int(sum(nodes)), int(max(nodes, default=0))
    if threads > largest:
        raise UsageError(f"--threads {threads} CPUs per actor, but the largest node of the cluster has {largest}")
    if actors is not None and actors * threads > total:
        raise UsageError(f"--actors {actors} x --threads {threads} needs {actors * threads} CPUs; the cluster has "
                         f"{total}")
    return actors or max(1, total // threads)


def _dataset(ray: Any, paths: list[str], actors: int, threads: int, batch_size: int, kwargs: dict[str, Any]) -> Any:
    """The paths in blocks of a few batches, mapped by an actor pool of `actors` Scorers."""
    block = max(1, min(4 * batch_size, math.ceil(len(paths) / (4 * actors))), math.ceil(len(paths) / MAX_BLOCKS))
    items = [{"path": path} for path in paths]  # built into blocks here, in the driver: no task per block
    return ray.data.from_items(items, override_num_blocks=math.ceil(len(paths) / block)).map_batches(
        Scorer, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads)


def _count(summary: ArchiveSummary, table: Any, on_error: Callable[[str, str], None] | None) -> None:
    status = table.column("status").to_pylist()
    review = table.column("review").to_pylist()
    summary.scored += table.num_rows
    summary.unusable += status.count("unusable")
    summary.flagged += sum(1 for s, r in zip(status, review, strict=True) if s == "ok" and r)
    if "error" in status:
        for path, s, reason in zip(table.column("path").to_pylist(), status, table.column("error").to_pylist(),
                                   strict=True):
            if s == "error":
                summary.errors += 1
                if on_error is not None:
                    on_error(path, reason)
