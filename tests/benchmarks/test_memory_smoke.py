"""Smoke test of benchmarks/memory_server.py's pieces (the full run starts a real server: make bench)."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import memory_server, run_all


def test_distinct_uploads_decode_to_the_same_pixels() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (215, 185, 210)).save(buffer, "PNG")
    base = buffer.getvalue()
    copies = [memory_server.distinct(base, i) for i in range(3)]
    assert len({hashlib.sha256(c).hexdigest() for c in copies}) == 3
    for copy in copies:
        with Image.open(io.BytesIO(copy)) as image:
            assert image.size == (300, 200) and np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(base))))


def test_memory_is_read_from_proc() -> None:
    assert memory_server.proc_kib(os.getpid(), "VmHWM") > 0 and memory_server.proc_kib(os.getpid(), "VmRSS") > 0


def test_run_all_runs_it() -> None:
    args = argparse.Namespace(only=["memory"], full=False, no_wait=True, results=Path("/tmp/R.md"))
    steps = run_all.plan(args, Path("/tmp"))
    assert [s.name for s in steps] == ["memory"] and "/tmp/R.md" in steps[0].command
