"""leukoscope.adaptation.finetune.AdaptOptions.check: options that cannot work are one ConfigError, before any
image is read (NaN and infinite values used to pass "not below 0" and train)."""

from __future__ import annotations

import pytest

from leukoscope.adaptation.finetune import AdaptOptions
from leukoscope.errors import ConfigError


@pytest.mark.parametrize(("changes", "message"), [
    ({"replay_ratio": float("nan")}, "--replay-ratio must be a finite number, 0 or more, got nan"),
    ({"replay_ratio": float("inf")}, "--replay-ratio must be a finite number, 0 or more, got inf"),
    ({"lr": float("inf")}, "--lr must be above 0 and finite"),
    ({"lr": float("nan")}, "--lr must be above 0 and finite"),
    ({"simulate_ratio": float("nan")}, "--simulate-ratio must be a finite number, 0 or more, got nan"),
    ({"simulate_ratio": -1.0}, "--simulate-ratio must be a finite number, 0 or more, got -1"),
    ({"seed": -1}, "--seed must be 0 or more, got -1"),  # numpy refused it after the parent was loaded
])
def test_bad_options_are_one_config_error(changes, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        AdaptOptions(**changes).check()


def test_the_defaults_pass() -> None:
    AdaptOptions().check()
