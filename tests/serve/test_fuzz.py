"""Schemathesis against the app in-process (fake predictor): no server error and no schema violation.

The same as `st run http://HOST/openapi.json --checks all --max-examples N -H "Authorization: Bearer T"`
(issue #11 item 7 found 500s, a dropped connection and schema mismatches that way), bounded to stay under a
minute: every phase (coverage, fuzzing, stateful), every check, a fixed seed, a few examples per operation.
The app has a token and the fuzzer sends it, so it acts as an admin and reaches every route, verifications
and the user routes included (without credentials they would all stop at 401).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from leukoscope.serve import Settings, create_app
from leukoscope.serve.store import NewPrediction, Store
from tests.helpers.images import noise_image_bytes
from tests.serve.fakes import CLASSES, FakeCells, FakePredictor, fake_gradcam

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e .[dev])")
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.engine import events, from_schema  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

MAX_EXAMPLES = 10
TOKEN = "fuzzing-token-0123456789"
REPO_CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"  # what `st run` uses in the repo


def fuzz_config() -> SchemathesisConfig:
    """The repository's schemathesis.toml with every check on, a fixed seed, few examples and the token."""
    config = SchemathesisConfig.from_path(REPO_CONFIG)
    config.update(seed=0, max_failures=None)  # as `st run --seed 0 --checks all --max-examples N`
    config.projects.override.update(continue_on_failure=True, headers={"Authorization": f"Bearer {TOKEN}"})
    config.projects.override.checks.update(included_check_names=["all"])
    config.projects.override.generation.update(max_examples=MAX_EXAMPLES, database="none")  # same cases every run
    return config


def run_schemathesis(app) -> tuple[int, Counter, dict]:
    """Run every phase against `app`; returns (cases, failures by (operation, check, title), one example each)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config(),
                                            headers={"Authorization": f"Bearer {TOKEN}"})
    cases, failures, examples = 0, Counter(), {}
    try:
        cases = _collect(from_schema(schema).execute(), failures, examples)
    finally:
        asgi.shutdown_lifespans()  # schemathesis started the app's lifespan: close its database and pool
    return cases, failures, examples


def _collect(stream, failures: Counter, examples: dict) -> int:
    cases = 0
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status == "failure" and node.failure_info is not None:
                        key = (event.recorder.label, node.name, node.failure_info.failure.title)
                        failures[key] += 1
                        examples.setdefault(key, node.failure_info.code_sample)
        elif isinstance(event, events.NonFatalError):
            failures[(event.label, "error", str(event.value)[:200])] += 1
        elif isinstance(event, events.FatalError):
            raise event.exception
    return cases


def seed_predictions(db: Path | str, n: int = 3) -> None:
    """n stored predictions, so that the list, CSV, sample and worklist routes answer with rows (the by-id
    routes take UUIDs, which the fuzzer draws at random: they answer 404, in the declared shape)."""
    images = {f"{i:064x}": noise_image_bytes(seed=i) for i in range(1, n + 1)}
    rows = [NewPrediction(sample_id="fuzz", file_name=f"{i}.jpg", sha256=sha, model_version="fake@0",
                          label=CLASSES[i % len(CLASSES)], confidence=0.9, probabilities=dict.fromkeys(CLASSES, 0.25),
                          review=bool(i % 2), review_reasons=[], ood_score=None, width=64, height=64)
            for i, sha in enumerate(images, start=1)]
    with Store(db) as store:
        store.add(rows, images)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(db_url: str) -> None:
    """On SQLite and on PostgreSQL (stricter: NUL in text, integer ranges, types in comparisons)."""
    # "testserver" is the Host schemathesis' in-process client sends; a real server gets --allowed-host.
    settings = Settings(db=db_url, allowed_hosts=("testserver",), warmup=False, token=TOKEN)
    seed_predictions(settings.database)
    app = create_app(settings, FakePredictor(), gradcam=fake_gradcam, cells=FakeCells())
    cases, failures, examples = run_schemathesis(app)
    assert cases > 100, f"schemathesis ran only {cases} cases"
    report = "\n".join(f"{n} x {key}: {examples.get(key, '')[:300]}" for key, n in failures.most_common())
    assert not failures, f"{sum(failures.values())} failures in {cases} cases:\n{report}"
