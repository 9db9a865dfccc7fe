"""Smoke test of benchmarks/as_typed.py on a tiny workload: the three ways get the environments they
claim, the process applies (or leaves) the settings accordingly, and the section renders. No timings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import as_typed, common, run_all
from leukoscope import runtime


def test_each_way_gets_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")  # a variable of the caller's shell never leaks into a way
    typed, make, none = (as_typed.environment(w) for w in as_typed.WAYS)
    assert not any(k in typed for k in common.MALLOC_ENV) and runtime.OPT_OUT_ENV not in typed
    assert all(make[k] == v for k, v in common.MALLOC_ENV.items())
    assert none[runtime.OPT_OUT_ENV] == "0" and not any(k in none for k in common.MALLOC_ENV)


@pytest.mark.skipif(runtime.glibc_version() is None, reason="mallopt needs glibc")
def test_every_way_applies_its_settings_in_a_fresh_process_and_renders(tmp_path: Path) -> None:
    """Three fresh interpreters with 0 proxy steps: the settings each way applies, without importing torch."""
    args = argparse.Namespace(workload="proxy", steps=0, batch=2, rounds=1, baseline=True)
    results = as_typed.measure(args, lambda message: None)
    applied = {way: set(v["applied"].values()) for way, v in results["ways"].items()}
    assert applied["as typed"] == {"set 33554432", "set -1", "set 1073741824"}
    assert applied["make"] == {"left to the user's environment"}
    assert applied["no tuning"] == {f"skipped: {runtime.OPT_OUT_ENV}=0"}
    text = as_typed.render(results, "cmd")
    assert "| as typed |" in text and "| make |" in text and "as typed / make =" in text


def test_run_all_runs_it() -> None:
    args = argparse.Namespace(only=["as-typed"], full=False, no_wait=True, results=common.RESULTS)
    steps = run_all.plan(args, Path("/tmp"))
    assert [s.name for s in steps] == ["as-typed"] and not steps[0].plain_malloc


def test_the_proxy_steps_train_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's PyTorch steps, in this process (its malloc settings left alone): they run and are timed."""
    monkeypatch.setattr(runtime, "tune_process", lambda: {"stub": "not applied in the test process"})
    result = as_typed.proxy_worker(steps=1, batch=1, threads=1)
    assert result["seconds"] > 0 and result["applied"] == {"stub": "not applied in the test process"}
