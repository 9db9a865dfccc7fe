"""`leukoscope adapt`'s option defaults are AdaptOptions' defaults: the library (benchmarks, scripts) and the
command must adapt the same way when nothing is asked for, and a retuned default must reach both."""

from __future__ import annotations

import inspect
from dataclasses import fields

from leukoscope.adaptation.finetune import AdaptOptions
from leukoscope.cli.adapt_cmd import adapt


def test_the_command_defaults_are_the_library_defaults() -> None:
    library = {f.name: f.default for f in fields(AdaptOptions)}
    command = {name: getattr(p.default, "default", p.default) for name, p in inspect.signature(adapt).parameters.items()}
    shared = sorted(set(library) & set(command))
    assert {"epochs", "lr", "replay_ratio", "batch_size", "held_out", "val", "seed"} <= set(shared)
    assert {name: command[name] for name in shared} == {name: library[name] for name in shared}
