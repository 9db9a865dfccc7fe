"""Smoke tests of benchmarks/second_lab.py: the nested, stratified adaptation sets stay out of the evaluation
part, and the benchmark's core runs end to end on the adaptation tests' small parent package with a handful
of images (one N too small for adapt's own split, recorded instead of crashing; one N adapted or refused),
so `make bench` does not discover a broken script after an hour."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import second_lab
from leukoscope.adaptation.finetune import AdaptOptions
from leukoscope.data.manifest import ImageRecord, Manifest, read_manifest_csv
from leukoscope.data.split import class_groups
from tests.adaptation.fixtures import shared_parent

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def synthetic(per_class: tuple[int, ...] = (30, 60, 55, 45), copies: int = 6) -> Manifest:
    """Records without files (splitting reads only labels, sha256 and dhash), `copies` of them exact copies."""
    rng = np.random.default_rng(0)
    records = []
    for label, count in zip(CLASSES, per_class, strict=True):
        for i in range(count):
            records.append(ImageRecord(f"{label}/{i}.jpg", label, f"{label}-{i}", dhash=f"{rng.integers(2**63):016x}"))
    for k in range(copies):  # a copy of an earlier image of its class: one group of two
        source = records[k * 17]
        records.append(ImageRecord(source.path.replace(".jpg", "-copy.jpg"), source.label, source.sha256,
                                   dhash=source.dhash))
    return Manifest(Path("."), CLASSES, records)


def test_adaptation_sets_are_nested_stratified_whole_groups_and_never_evaluated() -> None:
    lab = synthetic()
    in_pool = second_lab.pool_and_evaluation(lab, 90)
    pool = lab.with_records(r for r, p in zip(lab.records, in_pool, strict=True) if p)
    evaluated = {r.sha256 for r, p in zip(lab.records, in_pool, strict=True) if not p}
    assert 85 <= len(pool) <= 95 and len(pool) + len(evaluated) >= len(lab) - 6
    assert not evaluated & {r.sha256 for r in pool.records}  # no copy on both sides
    sizes = [10, 25, 50, 80]
    sets = second_lab.nested_sets(pool, sizes)
    assert second_lab.nested_sets(pool, sizes) == sets  # seeded
    ids, _, _ = class_groups(pool)
    share = Counter(r.label for r in pool.records)
    previous: set[int] = set()
    for n in sizes:
        chosen = sets[n]
        assert n - 1 <= len(chosen) <= n and len(set(chosen)) == len(chosen)
        assert previous <= set(chosen)  # each N holds the smaller ones
        previous = set(chosen)
        groups = {ids[i] for i in chosen}
        assert all(ids[j] not in groups for j in range(len(pool)) if j not in set(chosen))  # groups kept whole
        counts = Counter(pool.records[i].label for i in chosen)
        for label in CLASSES:  # stratified: within one image of the pool's proportions
            assert abs(counts[label] - len(chosen) * share[label] / len(pool)) <= 1.5
    with pytest.raises(Exception, match="pool"):
        second_lab.nested_sets(pool, [len(pool) + 1])


def test_replay_leaves_out_the_pools_originals_from_every_part() -> None:
    lab = synthetic(copies=0)
    parted = lab.with_records(replace(r, part="test" if i % 3 else "train") for i, r in enumerate(lab.records))
    left_out = {parted.records[1].path, parted.records[0].path}  # a test row and a train row
    replay = second_lab.replay_without(parted, left_out)
    assert len(replay.part("test")) == len(parted.part("test")) - 1
    assert len(replay.part("train")) == len(parted.part("train"))  # only test rows are moved out
    assert replay.records[1].part == ""


@pytest.mark.slow
def test_core_runs_on_a_small_parent_and_counts_add_up(tmp_path_factory: pytest.TempPathFactory,
                                                       tmp_path: Path) -> None:
    parent = shared_parent(tmp_path_factory)
    run, data = parent.parent / "run", parent.parent / "data"
    split_all = read_manifest_csv(run / "split.csv", data)
    records = split_all.part("test")  # 6 per class
    options = AdaptOptions(epochs=3, lr=5e-4, replay_ratio=1.0, augment="paper", device="cpu", threads=1)
    lines: list[str] = []
    result = second_lab.measure(parent, records, split_all, tmp_path, sizes=[8, 12], pool=16, options=options,
                                log=lines.append)
    assert result["pool"] + result["evaluation"] == len(records) and result["lab_a"] == result["evaluation"]
    assert set(result["sets"][8]) <= set(result["sets"][12])
    assert not set(result["sets"][12]) & set(result["evaluation_paths"])
    assert all(p.endswith(".jpg") for p in result["evaluation_paths"])  # the other lab's JPEG files
    rows = result["rows"]
    assert [r["n"] for r in rows] == [0, 8, 12]
    assert rows[1]["refused"].startswith("error:")  # 2 images a class: too few for adapt / calibrate / held out
    assert "refused" in rows[2] or "lab_b" in rows[2]
    for row in (r for r in rows if "lab_b" in r):
        for key in ("lab_b", "lab_a"):
            figures = row[key]
            assert figures["n"] == result["evaluation"] == figures["n_leukemia"] + figures["n_benign"]
            assert (figures["leukemia_called_benign_flagged"] + figures["leukemia_called_benign_not_flagged"]
                    == figures["leukemia_called_benign"] <= figures["n_leukemia"])
            assert 0.0 <= figures["accuracy"] <= 1.0 and 0.0 <= figures["flagged"] <= 1.0
    if "parts" in rows[2]:
        assert sum(rows[2]["parts"].values()) == rows[2]["images"] == len(result["sets"][12])
    checks = second_lab.targets(result)
    assert len(checks) == 4 and all(not met for _, met, _ in checks)  # N = 100 was not measured: FAIL
    text = second_lab.render(result, "python -m benchmarks.second_lab", "model parent", 1.0, "x.png")
    assert second_lab.DISCLAIMER in text and text.count("**FAIL**") == 4 and "N=12" in text
    estimate = {"magnification": 1.5, "hue_degrees": -15.0, "colour_slope": [1.0, 1.1, 0.9],
                "colour_offset": [0.0, -3.0, 2.0]}
    with_shift = {**result, "rows": [*rows, {**rows[0], "n": 99, "lab_shift": estimate}]}
    text = second_lab.render(with_shift, "python -m benchmarks.second_lab", "model parent", 1.0, None)
    assert "- N=99: magnification x1.50, hue -15 deg, colour R x1.00+0, G x1.10-3, B x0.90+2\n" in text
    assert "Why lab-B images were flagged" in text and "- parent (not adapted): " in text
    assert all("flag_codes" in r["lab_b"] for r in rows if "lab_b" in r)
    adapted = {**rows[0], "name": "adapted on N=99", "lab_b": {**rows[0]["lab_b"], "flag_codes": {
        "out_of_distribution": 0.1, "benign_low_confidence": 0.25}},
        "benign_rules": {"benign_confidence_threshold": 0.9954, "benign_check": None, "chosen": "no check"}}
    text = second_lab.render({**result, "rows": [adapted]}, "python -m benchmarks.second_lab", "m", 1.0, None)
    assert ("- adapted on N=99: benign_low_confidence 25.0%, out_of_distribution 10.0%; Benign calls reviewed below "
            "confidence 0.9954; Benign view check: no check\n") in text
    second_lab.save_plot(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _figures(accuracy: float, flagged: float, missed: int, caught: int = 3) -> dict[str, float | int]:
    return {"n": 588, "accuracy": accuracy, "flagged": flagged, "n_leukemia": 498, "n_benign": 90,
            "leukemia_called_benign": missed + caught, "leukemia_called_benign_flagged": caught,
            "leukemia_called_benign_not_flagged": missed, "benign_called_leukemia_not_flagged": 0}


def _draw(seed: int, accuracy: float, flagged: float, missed: int) -> dict[str, object]:
    parent = {"n": 0, "name": "parent (not adapted)", "lab_b": _figures(0.85, 0.9, 2), "lab_a": _figures(0.995, 0.05, 0)}
    adapted = {"n": 100, "name": "adapted on N=100", "lab_b": _figures(accuracy, flagged, missed),
               "lab_a": _figures(0.994, 0.05, 0)}
    return {"seed": seed, "rows": [parent, adapted], "command": f"python -m benchmarks.second_lab --seed {seed}"}


def test_draws_section_counts_the_targets_each_draw_meets(tmp_path: Path) -> None:
    paths = []
    for seed, figures in ((15, (0.991, 0.08, 0)), (13, (0.9677, 0.235, 2))):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps(_draw(seed, *figures)), encoding="utf-8")
        paths.append(path)
    draws = second_lab.read_draws(paths)
    assert [d["seed"] for d in draws] == [13, 15]  # seed order, whatever the order given
    text = second_lab.render_draws(draws, "python -m benchmarks.second_lab --draws a b")
    assert second_lab.DISCLAIMER in text and "`python -m benchmarks.second_lab --seed 15`" in text
    assert "| 13 | 85.00% / 90.0% / 2 | 96.77% | 23.5% | 3 / **2** of 498 | 0 of 90 | 99.40% (99.50%) | 1 of 4 |" in text
    assert "| 15 |" in text and "4 of 4 |" in text
    assert "- N=100: 0 leukemia called Benign without a flag: 1 of 2\n" in text
    assert "- N=100: lab-A accuracy within 0.3 points of the parent: 2 of 2\n" in text
    refused = {**draws[0], "seed": 16, "rows": [draws[0]["rows"][0], {"n": 100, "refused": "refused: forgets"}]}
    assert "| 16 |" in second_lab.render_draws([refused], "c") and "refused: forgets" in second_lab.render_draws(
        [refused], "c")


def test_draws_refuses_a_file_that_is_not_a_result_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{\"rows\": 3}", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.json: not a second-lab --json file") as caught:
        second_lab.main(["--draws", str(bad), "--no-write"])
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit, match="not a second-lab"):
        second_lab.read_draws([tmp_path / "missing.json"])
