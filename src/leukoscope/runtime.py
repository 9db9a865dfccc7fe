"""Process start-up tuning: glibc malloc settings applied inside the process, so a command typed in a plain
shell runs as fast as it does under `make`.

PyTorch on the CPU allocates and frees large activation buffers on every step. With glibc's defaults those
buffers are mmap'ed and unmapped each time, and the heap is trimmed back to the kernel after every free, so
the process spends much of its time in page faults, unless the Makefile's `MALLOC_*` variables are set.
glibc reads those variables only when a process starts, but `mallopt(3)` sets the same parameters at run
time, so every entry point (the `leukoscope` command, `python -m leukoscope`, the server, the scripts and
benchmarks) calls `tune_process()` first.

Rules: a setting is applied only where glibc is the C library; a variable the user set (or a
`GLIBC_TUNABLES` entry for the same parameter) wins; `LEUKOSCOPE_MALLOC_TUNING=0` turns it off.
It imports nothing of leukoscope, so anything may call it first.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

# Parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1

OPT_OUT_ENV = "LEUKOSCOPE_MALLOC_TUNING"


@dataclass(frozen=True)
class MallocSetting:
    """One glibc malloc parameter: its environment variable, its GLIBC_TUNABLES name, mallopt number, value."""

    env: str
    tunable: str
    param: int
    value: int

    def mallopt_value(self) -> int:
        """mallopt takes a C int: the 16 GiB trim threshold becomes -1, which mallopt(3) documents as
        "disables trimming completely" (what 16 GiB means in practice)."""
        if self.value <= _INT_MAX:
            return self.value
        if self.param == M_TRIM_THRESHOLD:
            return -1
        raise ValueError(f"{self.env}={self.value} does not fit mallopt's int")


# The values the Makefile exports: keep 32 MiB buffers on the heap (no mmap/munmap per tensor), never give
# freed heap back, and grow it 1 GiB at a time (address space only; pages are touched, and count towards
# RSS, only when used).
MALLOC_SETTINGS = (
    MallocSetting("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", M_MMAP_THRESHOLD, 33_554_432),
    MallocSetting("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", M_TRIM_THRESHOLD, 17_179_869_184),
    MallocSetting("MALLOC_TOP_PAD_", "glibc.malloc.top_pad", M_TOP_PAD, 1_073_741_824),
)

_applied: dict[str, str] | None = None


def glibc_version() -> str | None:
    """"2.36" on glibc, None elsewhere (musl, macOS, Windows): only glibc's mallopt has these parameters."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    return text.split()[1]


def _user_tunables(environ: dict[str, str] | os._Environ[str]) -> set[str]:
    """The GLIBC_TUNABLES names the user set ("glibc.malloc.top_pad=..:glibc.malloc.trim_threshold=..")."""
    entries = environ.get("GLIBC_TUNABLES", "")
    return {entry.split("=", 1)[0].strip() for entry in entries.split(":") if "=" in entry}


def apply_malloc_settings(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """Apply MALLOC_SETTINGS through mallopt; returns {env name: what happened} ("set 33554432",
    "left to the user's environment", "failed", or "skipped: ..." for the whole call)."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "no", "false", "off"):
        return dict.fromkeys((s.env for s in MALLOC_SETTINGS), f"skipped: {OPT_OUT_ENV}=0")
    if glibc_version() is None:
        return dict.fromkeys((s.env for s in MALLOC_SETTINGS), "skipped: not glibc")
    try:
        mallopt = ctypes.CDLL(None, use_errno=True).mallopt
    except (OSError, AttributeError):
        return dict.fromkeys((s.env for s in MALLOC_SETTINGS), "skipped: mallopt not found")
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    tunables = _user_tunables(environ)
    result = {}
    for setting in MALLOC_SETTINGS:
        if setting.env in environ or setting.tunable in tunables:
            result[setting.env] = "left to the user's environment"
        elif mallopt(setting.param, setting.mallopt_value()) == 1:
            result[setting.env] = f"set {setting.mallopt_value()}"
        else:
            result[setting.env] = "failed"
    return result


def tune_process() -> dict[str, str]:
    """Start-up tuning of this process, once (later calls return the first call's result)."""
    global _applied
    if _applied is None:
        _applied = apply_malloc_settings()
    return _applied
