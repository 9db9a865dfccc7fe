"""Smoke tests of the benchmark scripts' functions on tiny inputs (the tests' tiny model package and a few
synthetic images): they check the structure of what the scripts measure and write, never the timings, so
`make bench` does not discover a broken script after an hour of training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, flops, run_all, shift, speed, speed_e2e, speed_report

# ------------------------------------------------------------------------------------------- common


def test_sections_are_added_replaced_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    common.write_section("speed", "## Speed\nold", path)
    common.write_section("load", "## Load\nkept", path)
    common.write_section("speed", "## Speed\nnew", path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(common.RESULTS_TITLE)
    assert "new" in text and "old" not in text and "## Load\nkept" in text
    assert text.count("<!-- speed:begin -->") == 1 and text.count("<!-- speed:end -->") == 1
    assert text.index("speed:begin") < text.index("load:begin")


def test_bad_section_names_and_broken_markers_are_refused() -> None:
    with pytest.raises(ValueError, match="section name"):
        common.replace_section("", "two words", "x")
    with pytest.raises(ValueError, match="without"):
        common.replace_section("<!-- speed:begin -->\nhalf a section\n", "speed", "x")


def test_header_names_command_date_and_machine() -> None:
    info = common.machine()
    assert info["cores"] >= 1 and {"cpu", "torch", "onnxruntime", "malloc_env"} <= set(info)
    header = common.section_header("Title", "python x.py --flag", info)
    assert header.startswith("## Title") and "`python x.py --flag`" in header
    assert "Date:" in header and f"{info['cores']} cores" in header
    assert common.command_line([speed.__file__, "--no-write"]) == ".venv/bin/python -m benchmarks.speed --no-write"
    assert common.module_argv(["other.py", "--x"]) == ["other.py", "--x"]  # only the benchmarks' own scripts


def test_repeat_timing_and_measure_return_one_value_per_round() -> None:
    calls = []
    rounds = common.repeat_timing(lambda: calls.append(1), repeats=3, warmup=2, inner=4)
    assert len(rounds) == 3 and len(calls) == 2 + 3 * 4
    singles, batches = np.zeros((16, 3, 8, 8), np.float32), [np.zeros((32, 3, 8, 8), np.float32)] * 2
    b1, b32 = speed.measure(lambda x: x.sum(), singles, batches, repeats=3, inner=2)
    assert len(b1) == len(b32) == 3 and min(b1) > 0 and min(b32) > 0


# ------------------------------------------------------------------------------------------- speed


def test_timing_inputs_and_eager_worker(tiny: dict[str, Path], tiny_images, tmp_path: Path) -> None:
    predictor, _, test = tiny_images
    singles, batches = speed.timing_batches(test.pixels, predictor.preprocess, batches=2)
    size = predictor.preprocess.input_size
    assert singles.shape == (16, 3, size, size) and [b.shape[0] for b in batches] == [32, 32]
    np.savez(tmp_path / "inputs.npz", singles=singles, batches=np.stack(batches))
    spec = {"model_pt": str(tiny["package"] / "model.pt"), "inputs": str(tmp_path / "inputs.npz"), "threads": 1,
            "repeats": 2, "inner": 1}
    result = speed.eager_worker(spec)
    assert set(result) == {"contiguous", "channels_last"}
    assert all(len(r["b1_rounds"]) == 2 and len(r["b32_rounds"]) == 2 for r in result.values())


def test_int8_package_scores_and_interleaved_timing(tiny: dict[str, Path], tiny_images, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from leukoscope.inference import int8 as int8_module
    from leukoscope.inference.backends import OnnxBackend, cpu_count
    from leukoscope.inference.predictor import load_predictor

    monkeypatch.setattr(int8_module, "INT8_MIN_AGREEMENT", 0.0)  # quantised whatever int8 computes on this CPU
    predictor, split, test = tiny_images
    pre = predictor.preprocess
    train, val = speed.decoded(split.part("train"), pre, limit=16), speed.decoded(split.part("val"), pre)
    fp32, int8, quant = speed.package_models(tiny["package"], tmp_path, train, val, pre, print)
    assert fp32 == tiny["package"] / "model.onnx" and int8 == tmp_path / "model.int8.onnx"  # quantised here
    assert quant["source"] == "benchmark" and quant["calibration_images"] == 16 and 0.0 <= quant["val_agreement"] <= 1.0
    package = speed.variant_package(tiny["package"], fp32, int8, tmp_path / "pkg")
    variant = load_predictor(package, threads=1)
    assert variant.info["default_onnx"] == "model.int8.onnx" and variant.int8_check["checked"]  # with its reference
    assert not (tiny["package"] / "model.int8.onnx").exists()  # never written into the source package
    scores = speed.test_scores(OnnxBackend(fp32, 1), OnnxBackend(package / "model.int8.onnx", 1), test, pre)
    assert scores["images"] == len(test.labels) and 0.0 <= scores["top1_agreement"] <= 1.0
    assert 0.0 <= scores["accuracy_fp32"] <= 1.0 and 0.0 <= scores["accuracy_int8"] <= 1.0
    singles, batches = speed.timing_batches(test.pixels, pre, batches=1)
    timings = speed.time_onnx({"fp32": tiny["package"] / "model.onnx", "int8": package / "model.int8.onnx"},
                              singles, batches, repeats=2)
    streams = f"{cpu_count()} streams of 1 thread"  # each model also one run per core, side by side
    assert [t.name for t in timings] == ["fp32", "int8", f"fp32, {streams}", f"int8, {streams}"]
    assert all(len(t.b32_rounds) == 2 and t.b32_ips > 0 and t.b1_ms > 0 for t in timings)


def test_an_int8_only_package_is_measured_as_it_ships(tiny: dict[str, Path], tiny_images, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own int8 model and gate numbers are used, fp32 comes from its model.pt, and the variant is fp32."""
    from leukoscope.inference import int8 as int8_module
    from leukoscope.inference.backends import OnnxBackend
    from leukoscope.inference.export import export_run
    from leukoscope.inference.predictor import load_predictor

    monkeypatch.setattr(int8_module, "INT8_MIN_AGREEMENT", 0.0)  # exported whatever int8 computes on this CPU
    predictor, split, test = tiny_images
    pre = predictor.preprocess
    shipped = export_run(tiny["run"], tmp_path / "int8-only", int8_only=True, data_root=tiny["data"],
                         calibration_images=8, threads=1)
    assert not (shipped / "model.onnx").exists()
    fp32, int8, quant = speed.package_models(shipped, tmp_path, None, speed.decoded(split.part("val"), pre), pre, print)
    assert int8 == shipped / "model.int8.onnx" and quant["source"] == "package" and fp32 == tmp_path / "model.onnx"
    reference = OnnxBackend(tiny["package"] / "model.onnx", 1).run(test.pixels[:4].transpose(0, 3, 1, 2).astype("float32"))
    again = OnnxBackend(fp32, 1).run(test.pixels[:4].transpose(0, 3, 1, 2).astype("float32"))
    assert abs(reference[0] - again[0]).max() < 1e-3  # the same fp16-rounded network as the fp32 package
    variant = speed.variant_package(shipped, fp32, int8, tmp_path / "fp32-variant")
    assert load_predictor(variant, threads=1).info["default_onnx"] == "model.onnx"
    rendered = speed_report._package_label({"bundled_default": "int8"}, "fp32")
    assert "same package with the ONNX fp32 model as default" in rendered


def test_int8_numbers_are_printed_with_the_cpu_flags_and_the_load_check() -> None:
    results = _speed_results(e2e_ips=450.0)
    results["machine"]["flags"] = ["avx2", "avx512f"]
    results["int8"]["load_check"] = {"checked": True, "images": 16, "top1_agreement": 1.0, "drift": 0.003}
    text = speed_report.render_int8(results)
    assert "avx2 yes, avx512f yes, avx512_vnni no, avx_vnni no (no VNNI" in text
    assert "top-1 agreement 100.00% on 16 reference images" in text and "int8 used" in text
    results["machine"]["flags"] = ["avx2", "avx512_vnni"]
    results["int8"]["load_check"] = {**results["int8"]["load_check"], "fallback": "model.onnx"}
    text = speed_report.render_int8(results)
    assert "avx512_vnni yes" in text and "(VNNI:" in text and "fell back to model.onnx" in text


def test_int8_recipes_table_has_every_candidate_and_the_flags() -> None:
    from benchmarks import int8_recipes

    row = {"top1_agreement": 0.99, "max_abs_prob_diff": 0.2, "exact_top1_agreement": 1.0, "kernel_vs_exact": 0.01,
           "b32_ips": 100.0, "b1_ms": 5.0}
    results = {"machine": {**common.machine(), "flags": ["avx2"]}, "val_images": 280, "calibration_images": 64,
               "load_average": 1.0, "recipes": {"fp32": row, **dict.fromkeys(int8_recipes.RECIPES, row)}}
    text = int8_recipes.render(results, "python -m benchmarks.int8_recipes")
    assert "CPU flags: avx2 (no VNNI" in text and all(name in text for name in int8_recipes.RECIPES)
    assert text.count("| 99.00% | 0.200 | 100.00% | 0.010 |") == len(int8_recipes.RECIPES)


def test_decode_e2e_and_overlap(tiny: dict[str, Path], tiny_images, tmp_path: Path) -> None:
    predictor, split, _ = tiny_images
    folder, files = speed_e2e.e2e_folder(split, tmp_path, count=6)
    assert len(files) == 6 and all(f.is_symlink() and f.parent == folder for f in files)
    decode = speed_e2e.decode_timing(predictor, files, repeats=1)
    assert decode["images"] == 6 and decode["serial_ms"] > 0 and decode["parallel_ms"] > 0
    paths = speed_e2e.time_predict_paths(predictor, files, repeats=1)
    assert paths["images"] == 6 and paths["ips"] > 0
    overlap = speed_e2e.overlap_check(predictor, files, paths["seconds"], repeats=1)
    assert {"decode_s", "inference_s", "no_overlap_s", "predict_paths_s", "gain"} <= set(overlap)
    cli = speed_e2e.time_cli(folder, 6, tiny["package"], tmp_path, repeats=1)  # the real command, as a subprocess
    assert cli["images"] == 6 and len(cli["rounds_s"]) == 1 and "predict" in cli["command"]


def test_flops_and_peak(tiny: dict[str, Path]) -> None:
    from leukoscope.inference.backends import load_torch_file

    assert flops.model_flops(load_torch_file(tiny["package"] / "model.pt"), 64) > 0
    peak = flops.peak_gflops(n=64, repeats=1)
    assert peak["gflops"] > 0 and peak["n"] == 64


def _speed_results(e2e_ips: float) -> dict:
    timing = {"b1_rounds": [1.0], "b32_rounds": [100.0]}
    names = [("PyTorch eager fp32 (default malloc)", 14.0, 40.0), ("PyTorch eager fp32 (malloc env)", 12.0, 50.0),
             ("PyTorch eager fp32, channels_last (malloc env)", 8.0, 120.0),
             ("ONNX Runtime fp32 (package model.onnx)", 3.2, 270.0), ("ONNX Runtime int8 (static QDQ)", 2.0, 600.0),
             ("ONNX Runtime fp32 (package model.onnx), 2 streams of 1 thread", 5.0, 275.0)]
    run = {"images": 1000, "seconds": 1000 / e2e_ips, "rounds_s": [1000 / e2e_ips], "ips": e2e_ips, "command": "c"}
    peak = {"gflops": 200.0, "torch_gflops": 190.0, "numpy_gflops": 200.0, "n": 4096, "threads": 2,
            "rounds_gflops": [190.0]}
    return {
        "machine": common.machine(), "package": "/x/default", "name": "m", "load_at_start": 0.1, "load_at_end": 0.2,
        "input_size": 224, "flops": 600_000_000, "peak": peak,
        "timings": [{"name": n, "b1_ms": b1, "b32_ips": b32, **timing} for n, b1, b32 in names],
        "int8": {"calibration_images": 256, "val_images": 280, "fp32_ends": False, "val_agreement": 1.0,
                 "test": {"images": 838, "top1_agreement": 0.995, "disagreements": 4, "max_abs_prob_diff": 0.3,
                          "accuracy_fp32": 0.99, "accuracy_int8": 0.99}},
        "e2e": {"images": 1000, "startup": {"import_inference_s": 1.2, "imports_torch": True},
                "cli_fp32": run, "cli_int8": run, "predict_paths_fp32": run, "predict_paths_int8": run,
                "decode": {"images": 256, "workers": 2, "serial_ms": 1.3, "parallel_ms": 0.8, "normalize_ms": 0.1},
                "overlap": {"decode_s": 1.0, "inference_s": 3.0, "no_overlap_s": 4.0, "predict_paths_s": 3.2,
                            "gain": 0.25}},
    }


def test_speed_section_states_each_target() -> None:
    body = speed_report.render(_speed_results(e2e_ips=450.0), "python -m benchmarks.speed")
    assert body.startswith("## Speed") and "### Targets" in body and "### FLOPs and peak" in body
    targets = body.split("### Targets")[1].split("###")[0]
    assert targets.count("**met**") == 6  # 9x eager (twice), 2.2x int8 at 99.5%, 2.0 ms; #11: 1.64x model, 3.75x tuned
    # the model alone the faster way (its streams here, 275 img/s, not one run on all cores, 270)
    assert "450 vs 275 img/s (ONNX Runtime fp32 (package model.onnx), 2 streams of 1 thread) = 1.64x" in targets
    assert "450 vs 120 img/s = 3.75x" in targets
    assert "0.300 GFLOPs" not in body and "0.600 GFLOPs" in body and "0.300 G multiply-adds" in body
    slow = speed_report.render(_speed_results(e2e_ips=100.0), "python -m benchmarks.speed")
    assert slow.split("### Targets")[1].split("###")[0].count("**not met**") == 4  # 0.36x the model, 0.83x tuned eager
    edge = speed_report.render(_speed_results(e2e_ips=235.0), "python -m benchmarks.speed")  # 0.85x model, 1.96x tuned
    rows = edge.split("### Targets")[1].split("###")[0].splitlines()
    assert [r.endswith("**met** |") for r in rows if "#" not in r and "end to end" in r] == [True, False]


# ------------------------------------------------------------------------------------------- run_all


def test_run_all_plan_and_load_section(tmp_path: Path) -> None:
    import argparse

    args = argparse.Namespace(only=None, full=False, no_wait=True, results=tmp_path / "R.md")
    steps = run_all.plan(args, tmp_path)
    names = [s.name for s in steps]
    assert names[:4] == ["speed", "load", "shift", "accuracy"]
    assert all(s.command[1] == "-m" and importlib.util.find_spec(s.command[2]) for s in steps)  # modules that exist
    assert [s.name for s in steps if s.plain_malloc] == ["speed"]  # ONNX Runtime and the CLI as users run them
    assert str(tmp_path / "R.md") in next(s for s in steps if s.name == "shift").command
    accuracy_step = next(s for s in steps if s.name == "accuracy")
    assert "finetune" not in accuracy_step.command
    args.full = True
    assert "finetune" in next(s for s in run_all.plan(args, tmp_path) if s.name == "accuracy").command
    assert "crossval" in [s.name for s in run_all.plan(args, tmp_path)]  # --full trains the folds
    args.full, args.only = False, ["crossval"]
    assert [s.name for s in run_all.plan(args, tmp_path)] == ["crossval"]
    result = {"date": "2026-01-01T00:00:00+00:00", "model": "m", "backend": "onnx", "requests": 10, "concurrency": 2,
              "workers": 1, "queue": 16, "image_size": 256, "sent": 10, "accepted": 10, "busy_503": 0, "errors": 0,
              "seconds": 1.0, "throughput_rps": 10.0, "p50_ms": 5.0, "p95_ms": 9.0, "p99_ms": 9.5, "db_rows": 10,
              "db_ok": True, "cpu": "x86_64 x2", "statuses": {"200": 10}}
    body = run_all.load_section(result, "python -m benchmarks.load_server --requests 10")
    assert body.startswith("## Load test") and "| req/s |" in body and "no errors" in body


# ------------------------------------------------------------------------------------------- shift


def test_shift_row_counts_what_evaluate_counts(tiny_images) -> None:
    """A shifted image set scored as the shift table scores it: counts from the package's review flags."""
    import io

    from PIL import Image

    predictor = tiny_images[0]
    items, labels = [], []
    for k, (name, colour) in enumerate((("Benign", (40, 160, 60)), ("Pro-B", (200, 200, 200)))):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
        items.append((f"{k}.png", buffer.getvalue()))
        labels.append(name)
    row = shift.score(predictor, "solid colours", "beyond", items, labels)
    assert (row.n, row.flagged, row.n_leukemia, row.n_benign) == (2, 1.0, 1, 1)  # solid colours: both flagged
    assert row.leukemia_called_benign_not_flagged == 0 and row.benign_called_leukemia_not_flagged == 0
    assert row.cells()[0] == "solid colours" and row.cells()[8] == "**0**"
    assert row.accuracy_as_given == row.accuracy and row.realigned == 0  # the tiny package has no realignment


def test_shift_rows_cover_the_family_and_the_targets_are_stated(tiny: dict[str, Path], tiny_images) -> None:
    from leukoscope.data.shifts import NAMED

    records = shift.test_records(tiny["split"])[:4]
    rows = shift.run(tiny_images[0], records, tiny["data"], composites=1, beyond=False, log=lambda m: None)
    assert [r.kind for r in rows] == ["none"] + ["named"] * len(NAMED) + ["composite"]
    assert all(r.n == 4 and 0 <= r.accuracy <= 1 and 0 <= r.flagged <= 1 for r in rows)
    assert all(r.leukemia_called_benign == r.leukemia_called_benign_flagged + r.leukemia_called_benign_not_flagged
               for r in rows)
    body = shift.render(rows, "python -m benchmarks.shift", "tiny")
    assert body.startswith("## Review flag under distribution shift (tiny, test part)")
    assert "| hue -20 deg |" in body and "| random composite, seed 0 |" in body
    assert body.count("**met**") + body.count("**not met**") == 3
    met = dict((name, ok) for name, ok, _ in shift.targets(rows))
    assert len(met) == 3 and all(isinstance(ok, bool) for ok in met.values())


def test_shift_row_scores_realigned_calls_with_and_without_their_view() -> None:
    from leukoscope.inference.prediction import Prediction

    classes = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")

    def call(label: str, as_given: str | None) -> Prediction:
        details = {"realigned": {"label_as_given": as_given}} if as_given else {}
        codes = ["out_of_distribution", "realigned"] if as_given else []
        return Prediction("x", "", label, dict.fromkeys(classes, 0.25), 0.99, bool(as_given), codes, None, 1, 1,
                          None, "ok", codes, details)

    class Fake:
        def __init__(self) -> None:
            self.classes = classes

        def predict_bytes(self, items):
            return [call("Pro-B", "Benign"), call("Pre-B", None), call("Benign", "Pre-B"), call("Benign", None)]

    row = shift.score(Fake(), "x2", "named", [("a", b"")] * 4, ["Pro-B", "Pre-B", "Pre-B", "Benign"])
    assert (row.accuracy, row.accuracy_as_given, row.realigned) == (0.75, 0.75, 0.5)
    assert row.leukemia_called_benign == 1 and row.leukemia_called_benign_flagged == 1
