"""Shared helpers of the benchmark scripts: where things are, which machine measured them, how a section of
RESULTS.md is replaced, and how a measurement is repeated.

Every number in RESULTS.md must say which machine and which command produced it, so each script writes
its own section (between `<!-- name:begin -->` and `<!-- name:end -->`) with that header; sections are
replaced atomically under a lock, so two scripts finishing together never lose each other's tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
DATA = (REPO / ".." / "shared" / "data" / "ALL").resolve()
WEIGHTS = (REPO / ".." / "shared" / "weights").resolve()
SPLIT = REPO / "bundle" / "split.csv"

# glibc malloc settings that make PyTorch CPU work ~1.5x faster here (the Makefile exports the same ones)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184",
              "MALLOC_TOP_PAD_": "1073741824"}
RESULTS_TITLE = "# Benchmark results\n"


# ------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware, like leukoscope.inference.backends.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_flags() -> list[str]:
    """The vector-instruction flags that decide fp32 and int8 speed (AVX-512, VNNI, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
            return [f for f in line.split(":", 1)[1].split() if f in wanted]
    return []


def machine() -> dict[str, Any]:
    """What a reader needs to compare these numbers with theirs."""
    import numpy

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": usable_cores(), "logical_cpus": os.cpu_count(),
                            "flags": cpu_flags(), "python": sys.version.split()[0], "numpy": numpy.__version__,
                            "platform": platform.platform()}
    for module in ("torch", "onnxruntime", "timm"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    info["malloc_env"] = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One markdown line describing the machine."""
    info = info or machine()
    flags = ", ".join(info.get("flags") or []) or "none listed"
    return (f"{info['cpu']}, {info['cores']} cores usable ({info['logical_cpus']} logical CPUs; {flags}); "
            f"Python {info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
            f"timm {info['timm']}, numpy {info['numpy']}")


def module_argv(argv: list[str]) -> list[str]:
    """`argv` with a benchmark script's path first (sys.argv[0] under `python -m`, or a script's __file__)
    written as `-m benchmarks.<name>`: the scripts are modules of this package and run only that way."""
    argv = list(argv)
    if argv and argv[0].endswith(".py") and Path(argv[0]).resolve().parent == REPO / "benchmarks":
        return ["-m", f"benchmarks.{Path(argv[0]).stem}", *argv[1:]]
    return argv


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced a section, as one could paste it from the repository root."""
    argv = module_argv(sys.argv if argv is None else argv)
    shown = [display_path(a) if a.startswith("/") else a for a in argv]
    return shlex.join([".venv/bin/python", *shown])


def today() -> str:
    """UTC, so sections written on machines in different time zones sort and compare."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def section_header(title: str, command: str, info: dict[str, Any] | None = None, extra: str = "") -> str:
    """Title, command, date and machine: the first lines of every section."""
    lines = [f"## {title}", "", f"- Command: `{command}`", f"- Date: {today()}",
             f"- Machine: {machine_line(info)}"]
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- RESULTS.md


def markers(name: str) -> tuple[str, str]:
    """The HTML comments around a section (invisible when the markdown is rendered)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise ValueError(f"bad section name {name!r}: use letters, digits and dashes")
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the section `name` replaced by `body` (appended at the end when it is not there yet)."""
    begin, end = markers(name)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    start = text.find(begin)
    if start < 0:
        base = text.rstrip("\n") if text.strip() else RESULTS_TITLE.rstrip("\n")
        return f"{base}\n\n{block}\n"
    stop = text.find(end, start)
    if stop < 0:
        raise ValueError(f"RESULTS.md has {begin} without {end}; fix the file by hand")
    return text[:start] + block + text[stop + len(end):]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock for editing `path`, kept in the temp folder so the repository gets no lock file."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"leukoscope-results-{digest}.lock"  # not in the repository
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Replace one section of RESULTS.md: read, edit and rename under a lock, so readers see either the old
    or the new file and concurrent writers do not drop each other's sections."""
    from leukoscope.data.fileio import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        write_text(path, replace_section(text, name, body))
    return path


def publish(name: str, body: str, *, write: bool, results: Path = RESULTS, json_path: Path | None = None,
            raw: Any = None) -> None:
    """The end of every benchmark: the raw numbers as JSON (when asked), the section into RESULTS.md (unless
    --no-write), and the section on stdout."""
    if json_path is not None:
        import json

        json_path.write_text(json.dumps(raw, indent=2, default=str) + "\n", encoding="utf-8")
    if write:
        write_section(name, body, results)
    print(body)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- timing


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return 0.0


def wait_for_quiet(max_load: float = 1.5, *, timeout: float = 900.0, poll: float = 30.0,
                   log: Callable[[str], None] | None = None) -> float:
    """Wait until the 1-minute load is at most `max_load` (others' jobs distort timings on 2 cores);
    returns the load when it starts, or after `timeout` seconds with a warning."""
    log = log or (lambda message: print(message, file=sys.stderr))
    deadline = time.monotonic() + timeout
    load = load_average()
    while load > max_load and time.monotonic() < deadline:
        log(f"load {load:.2f} > {max_load}: waiting {poll:.0f} s for a quiet machine")
        time.sleep(poll)
        load = load_average()
    if load > max_load:
        log(f"warning: load still {load:.2f} after {timeout:.0f} s; timing anyway (numbers will be low)")
    return load


def repeat_timing(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 2, inner: int = 1) -> list[float]:
    """Seconds per call of `fn` in each of `repeats` rounds of `inner` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        rounds.append((time.perf_counter() - start) / inner)
    return rounds


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> str:
    """min-max of the rounds, to show how steady a median is."""
    digits = 0 if min(values) >= 100 else 2 if min(values) >= 1 else 3
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def display_path(path: str | Path) -> str:
    """A path relative to the repository when it is inside it or beside it (../shared/...), so RESULTS.md
    names paths as a reader's checkout has them, not as one machine's file system does."""
    resolved = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        with contextlib.suppress(ValueError):
            return prefix + str(resolved.relative_to(base))
    return str(path)


def reexec_with_malloc_env(argv: list[str]) -> None:
    """Restart this script with the MALLOC_ENV settings unless they are set (glibc reads them only at
    start-up; they make PyTorch CPU training ~1.5x faster here). Returns only when they are already set."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *module_argv(argv)], {**os.environ, **MALLOC_ENV})
