"""Smoke test of benchmarks/ray_engine.py: the scaling model's arithmetic and caps, the section, the step in
`make bench`, and (slow: a Ray runtime) a tiny run end to end. Structure only, never timings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import common, ray_engine, run_all

COST = {"mean_bytes": 20_000.0, "decode_ms": 5.0, "large_bytes": 400_000, "large_decode_ms": 100.0,
        "driver_rows_per_s": 100_000.0}


def test_the_scaling_model_is_linear_until_a_shared_resource_caps_it() -> None:
    rows = ray_engine.scaling(10.0, COST, node_cores=32, nodes=(1, 10, 1000), fs_gbps=1.0)
    assert [r["cores"] for r in rows] == [32, 320, 32000]
    assert rows[0]["images_per_hour"] == pytest.approx(10.0 * 32 * 3600)
    assert rows[0]["cpu_hours_per_million"] == pytest.approx(rows[1]["cpu_hours_per_million"])  # linear: same cost
    assert rows[0]["cpu_hours_per_million"] == pytest.approx(1e6 / 10.0 / 3600)
    # 1 GB/s / 20 KB = 50,000 files/s < the driver's 100,000 rows/s < 320,000 img/s of 32,000 cores
    assert rows[2]["bound"] == "file system" and rows[2]["images_per_hour"] == pytest.approx(50_000 * 3600)
    assert rows[2]["cpu_hours_per_million"] > rows[1]["cpu_hours_per_million"]


def test_the_section_names_every_number() -> None:
    local = {"images": 100, "threads": 2, "load_s": 0.5, "seconds": 2.0, "ips": 50.0, "steady_ips": 66.7}
    runs = [{"actors": a, "threads": 2 // a, "images": 100, "seconds": 3.0, "ips": 33.3, "startup_s": 1.0,
             "steady_ips": 50.0, "errors": 0, "labels_match": True} for a in (1, 2)]
    result = {"local": local, "ray": runs, "costs": COST, "per_core_ips": 25.0, "per_core_from": 2, "ray_init_s": 3.0,
              "ray_version": "2.x", "scaling": ray_engine.scaling(25.0, COST), "data": "data", "model": "bundled"}
    text = ray_engine.render(result, "cmd")
    assert "| ray, 2 actor(s) | 2 x 1 |" in text and "| local (`predict_paths`) | 1 x 2 |" in text
    assert "0.67x (**not met**) with start-up included" in text and "0.75x (**not met**) after start-up" in text
    assert "### Scaling model on paper" in text and "25.0 img/s per core" in text and "| 100 | 3200 |" in text
    assert "Where it stops scaling" in text


def test_files_are_cycled_when_the_data_has_fewer(tmp_path: Path, make_image) -> None:
    for i in range(3):
        make_image(tmp_path / "data" / f"{i}.jpg", seed=i)
    files = ray_engine.prepare(tmp_path / "data", 7, tmp_path / "work")
    assert len(files) == 7 and len({f.name for f in files}) == 7
    assert [f.resolve().name for f in files] == ["0.jpg", "1.jpg", "2.jpg"] * 2 + ["0.jpg"]


def test_make_bench_runs_it() -> None:
    args = argparse.Namespace(only=["ray-engine"], full=False, no_wait=True, results=common.RESULTS)
    (step,) = run_all.plan(args, Path("/tmp"))
    assert step.name == "ray-engine" and step.command[-2:] == ["benchmarks.ray_engine", "--no-wait"]


@pytest.mark.slow  # a local Ray runtime and two actor pools
def test_a_tiny_run_end_to_end(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    pytest.importorskip("ray")
    assert ray_engine.main(["--tiny", "--data", str(tiny["data"]), "--model", str(tiny["package"]),
                            "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| ray, 1 actor(s) | 1 x 2 |" in out or "| ray, 1 actor(s) | 1 x 1 |" in out
    assert "**no**" not in out  # the Ray rows' labels are the local engine's
    assert (tmp_path / "r.json").is_file()


def test_the_steady_rate_leaves_out_the_first_tenth() -> None:
    arrivals = [(10.0, 10), (11.0, 20), (12.0, 60), (14.0, 100)]  # 10 rows at t=10 (start-up), then 90 in 4 s
    assert ray_engine.steady_rate(arrivals) == pytest.approx(90 / 4)
    assert ray_engine.steady_rate(arrivals[:2]) == 0.0  # too few batches to tell
