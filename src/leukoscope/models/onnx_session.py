"""ONNX Runtime's settings on the CPU, in one place: prediction (leukoscope.inference.backends) and training's
frozen-backbone passes (leukoscope.training.frozen_body) run their graphs the same, measured way.

Free of torch, like `preprocessing`: the ONNX prediction path imports it without PyTorch.
"""

from __future__ import annotations

from typing import Any


def cpu_session_options(threads: int) -> Any:
    """SessionOptions for `threads` intra-op threads, one inter-op thread and every graph optimisation.

    Worker threads sleep between operators instead of spinning. While `predict` decodes the next batch (or
    anything else runs) on the same cores, spinning threads take CPU from the decoder and from each other: on
    2 busy cores, 15-17 instead of 20-22 CPU-ms/image for the model and 26-29 instead of 30-34 end to end,
    batch-1 and batch-32 wall time no worse (benchmarks/speed_e2e.py).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
