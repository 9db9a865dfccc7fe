"""leukoscope.runtime: the glibc malloc settings the Makefile exports, applied inside the process.

Each check runs in a fresh interpreter (malloc parameters are process-wide and cannot be read back), and
looks at what glibc does rather than at what the code says it did: a 24 MiB block is mmap'ed under glibc's
defaults but comes from the heap under a 32 MiB mmap threshold, and a 1 GiB top pad makes the heap at least 1 GiB
of address space (mallinfo2). No timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from leukoscope import runtime

pytestmark = pytest.mark.skipif(runtime.glibc_version() is None or tuple(map(int, (runtime.glibc_version() or "0.0")
                                .split(".")[:2])) < (2, 33), reason="needs glibc >= 2.33 (mallopt, mallinfo2)")

PROBE = r"""
import ctypes, json, sys
{setup}
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2()
block = libc.malloc(24 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({{"result": result, "mmapped": during.hblks > before.hblks, "heap": during.arena,
                  "trimmed": during.arena - after.arena}}))
"""
GIB = 1 << 30


def probe(setup: str, **env: str) -> dict:
    """Run `setup` (which sets `result`) in a fresh interpreter without the Makefile's variables, then
    allocate and free 24 MiB and report what glibc did."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", runtime.OPT_OUT_ENV)}
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


TUNE = "from leukoscope.runtime import tune_process; result = tune_process()"


def test_glibc_defaults_mmap_a_large_block() -> None:
    """The probe can tell the settings apart: without them, 24 MiB is mmap'ed and the heap stays small."""
    out = probe("result = None")
    assert out["mmapped"] and out["heap"] < GIB


def test_the_command_line_entry_point_applies_the_makefile_settings() -> None:
    setup = ("import contextlib\nfrom leukoscope.cli import main\nwith contextlib.suppress(SystemExit):\n"
             "    main(['--help'])\nfrom leukoscope import runtime\nresult = runtime._applied")
    out = probe(setup)
    assert out["result"] == {"MALLOC_MMAP_THRESHOLD_": "set 33554432", "MALLOC_TRIM_THRESHOLD_": "set -1",
                             "MALLOC_TOP_PAD_": "set 1073741824"}
    assert not out["mmapped"]  # mmap threshold 32 MiB
    assert out["heap"] >= GIB  # top pad 1 GiB


def test_a_variable_the_user_set_wins_and_the_others_still_apply() -> None:
    out = probe(TUNE, MALLOC_TOP_PAD_="0")
    assert out["result"]["MALLOC_TOP_PAD_"] == "left to the user's environment"
    assert out["result"]["MALLOC_MMAP_THRESHOLD_"] == "set 33554432"
    assert not out["mmapped"]
    assert out["heap"] < GIB  # the user's top pad of 0
    assert out["trimmed"] == 0  # trimming disabled: the freed 24 MiB stays in the heap


def test_trimming_is_on_by_default() -> None:
    """The control for the line above: with glibc's default trim threshold the freed block goes back."""
    out = probe("result = None", MALLOC_TOP_PAD_="0", MALLOC_MMAP_THRESHOLD_="33554432")
    assert out["trimmed"] >= 16 << 20


def test_mallopt_does_what_the_makefiles_variables_do() -> None:
    """Same observable behaviour as the variables glibc reads at start-up (speed: benchmarks/as_typed.py)."""
    by_env = probe("result = None", **{s.env: str(s.value) for s in runtime.MALLOC_SETTINGS})
    by_mallopt = probe(TUNE)
    assert (by_env["mmapped"], by_env["heap"] >= GIB, by_env["trimmed"]) == (False, True, 0)
    assert (by_mallopt["mmapped"], by_mallopt["heap"] >= GIB, by_mallopt["trimmed"]) == (False, True, 0)


def test_glibc_tunables_count_as_the_users_setting() -> None:
    out = probe(TUNE, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert out["result"]["MALLOC_MMAP_THRESHOLD_"] == "left to the user's environment"
    assert out["mmapped"]


def test_it_can_be_turned_off() -> None:
    out = probe(TUNE, **{runtime.OPT_OUT_ENV: "0"})
    assert set(out["result"].values()) == {f"skipped: {runtime.OPT_OUT_ENV}=0"}
    assert out["mmapped"]


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "glibc_version", lambda: None)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *a, **k: pytest.fail("mallopt looked up without glibc"))
    assert set(runtime.apply_malloc_settings({}).values()) == {"skipped: not glibc"}


def test_values_fit_mallopts_int() -> None:
    values = {s.env: s.mallopt_value() for s in runtime.MALLOC_SETTINGS}
    assert values == {"MALLOC_MMAP_THRESHOLD_": 33554432, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": 1073741824}


def test_the_prediction_path_starts_without_scipy_or_torch() -> None:
    """`leukoscope predict` on 1,000 files takes a few seconds, so importing scipy (~1 s here, through the
    int8 check's softmax) or torch at start-up would cost a large share of it (issue #11 item 13)."""
    code = ("import sys, leukoscope.cli, leukoscope.cli.predict_cmd, leukoscope.inference.predictor; "
            "print(sorted(m for m in ('scipy', 'torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_the_per_image_checks_run_without_scipy() -> None:
    """The checks every predicted image goes through: cell_scale used scipy.fft, imported on the first image,
    which cost `leukoscope predict` 0.5-0.9 s (issue #11 item 13)."""
    code = ("import sys, numpy as np; from leukoscope.review.rules import cell_scale; "
            "from leukoscope.review.quality import QualityThresholds, quality_reasons; "
            "rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8); "
            "cell_scale(rgb); quality_reasons(rgb, QualityThresholds(1.0, 1.0, 0.0, 0.0)); "
            "print(sorted(m for m in ('scipy', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
