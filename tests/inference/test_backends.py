"""ONNX Runtime session settings that are measured choices, not defaults (benchmarks/speed_e2e.py)."""

from __future__ import annotations

import pytest

from leukoscope.inference.backends import OnnxBackend, cpu_count
from leukoscope.inference.package import ONNX_FP32, bundled_package_path


@pytest.fixture(scope="module")
def backend() -> OnnxBackend:
    path = bundled_package_path() / ONNX_FP32
    if not path.is_file():
        pytest.skip("the bundled package has no fp32 ONNX model")
    return OnnxBackend(path)


def test_worker_threads_sleep_instead_of_spinning(backend: OnnxBackend) -> None:
    """Spinning ONNX Runtime threads take the cores from predict's decode threads."""
    options = backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_one_intra_op_thread_per_usable_core(backend: OnnxBackend) -> None:
    options = backend.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (cpu_count(), 1)
