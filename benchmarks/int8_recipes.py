"""int8 quantisation recipes side by side on this CPU (issue #11): agreement with fp32 and speed.

Why: ONNX Runtime's u8s8 int8 kernels saturate on x86 CPUs without VNNI, so the recipe export uses
(leukoscope.inference.int8.quantize_int8's defaults) must be one whose answers hold on both kinds of CPU. This script
quantises the package's fp32 model with each candidate (calibrated on train images as export does), and
reports top-1 agreement with fp32 on the val images and batch-32 throughput (rounds interleaved with fp32),
next to the CPU flags that decide which kernels ran. Run it on a VNNI and a non-VNNI machine to compare.

    .venv/bin/python -m benchmarks.int8_recipes --no-write          # bundled package, prints the table
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common, speed

# name -> keyword arguments of leukoscope.inference.int8.quantize_int8
RECIPES: dict[str, dict[str, Any]] = {
    "u8s8 per-channel, 8-bit weights": {"reduce_range": False, "weights": "int8"},
    "u8s8 per-channel, reduce_range (7-bit weights) [export's rule]": {"reduce_range": True, "weights": "int8"},
    "u8u8 per-channel": {"reduce_range": False, "weights": "uint8"},
    "u8s8 per-tensor, reduce_range": {"reduce_range": True, "weights": "int8", "per_channel": False},
}


class ExactInt8:
    """An int8 QDQ model run with ONNX Runtime's QDQ fusion off: each Conv/MatMul computes in fp32 on the
    dequantised values, so nothing saturates - what the integer kernels compute on a VNNI CPU (up to fp32
    rounding), measurable on any machine."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(["logits", "features"], {self.session.get_inputs()[0].name: x})
        return np.asarray(logits), np.asarray(feats)


def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Quantise with every recipe, then agreement on val and interleaved timing rounds against fp32."""
    from leukoscope.inference.backends import OnnxBackend
    from leukoscope.inference.int8 import quantize_int8, run_normalised
    from leukoscope.inference.package import ONNX_FP32, bundled_package_path
    from leukoscope.inference.predictor import load_predictor
    from leukoscope.models.preprocessing import normalize_numpy
    from leukoscope.review.calibration import softmax

    package = Path(args.model).resolve() if args.model else bundled_package_path()
    pre = load_predictor(package, backend="onnx").preprocess
    split = speed.load_split(args.split, args.data, tuple(load_predictor(package, backend="onnx").classes))
    train = speed.decoded(split.part("train"), pre, limit=args.calibration_images, seed=0)
    val = speed.decoded(split.part("val"), pre, limit=args.val_images, seed=0)
    check = normalize_numpy(val.pixels, pre)
    fp32_path = package / ONNX_FP32
    fp32_probs = softmax(run_normalised(OnnxBackend(fp32_path), check)[0])
    results: dict[str, Any] = {"machine": common.machine(), "package": str(package), "val_images": len(check),
                               "calibration_images": len(train.pixels), "recipes": {}}
    singles, batches = speed.timing_batches(val.pixels, pre, batches=1)
    with tempfile.TemporaryDirectory(prefix="leukoscope-int8-recipes-") as tmp:
        paths = {"fp32": fp32_path}
        for name, options in RECIPES.items():
            log(f"quantising: {name} ...")
            paths[name] = Path(tmp) / f"{len(paths)}.onnx"
            quantize_int8(fp32_path, paths[name], normalize_numpy(train.pixels, pre), **options)
            probs = softmax(run_normalised(OnnxBackend(paths[name]), check)[0])
            exact = softmax(run_normalised(ExactInt8(paths[name]), check)[0])
            results["recipes"][name] = {"top1_agreement": float(np.mean(probs.argmax(1) == fp32_probs.argmax(1))),
                                        "max_abs_prob_diff": float(np.abs(probs - fp32_probs).max()),
                                        "exact_top1_agreement": float(np.mean(exact.argmax(1) == fp32_probs.argmax(1))),
                                        "kernel_vs_exact": float(np.abs(probs - exact).max())}
        log("timing (rounds interleaved) ...")
        for timing in speed.time_onnx(paths, singles, batches, args.repeats):
            results["recipes"].setdefault(timing.name, {}).update({"b32_ips": timing.b32_ips, "b1_ms": timing.b1_ms})
    results["load_average"] = common.load_average()
    return results


def render(results: dict[str, Any], command: str) -> str:
    """The markdown section: one row per recipe, fp32 first, the CPU flags in the header."""
    flags = ", ".join(results["machine"]["flags"]) or "none listed"
    vnni = any(f in results["machine"]["flags"] for f in ("avx512_vnni", "avx_vnni"))
    header = common.section_header("int8 recipes", command, results["machine"],
                                   f"- CPU flags: {flags} ({'VNNI' if vnni else 'no VNNI'}: "
                                   f"{'u8s8 kernels accumulate exactly' if vnni else 'u8s8 kernels may saturate'})")
    fp32 = results["recipes"]["fp32"]
    rows = [["ONNX Runtime fp32", "-", "-", "-", "-", f"{fp32['b32_ips']:.0f}", f"{fp32['b1_ms']:.2f}", "1.00x"]]
    for name in RECIPES:
        r = results["recipes"][name]
        rows.append([name, common.pct(r["top1_agreement"], 2), f"{r['max_abs_prob_diff']:.3f}",
                     common.pct(r["exact_top1_agreement"], 2), f"{r['kernel_vs_exact']:.3f}", f"{r['b32_ips']:.0f}",
                     f"{r['b1_ms']:.2f}", f"{r['b32_ips'] / fp32['b32_ips']:.2f}x"])
    return (header + f"\nTop-1 agreement with fp32 on {results['val_images']} val images, with this CPU's int8 kernels "
            "and with exact arithmetic (QDQ fusion off: what a VNNI CPU's kernels compute, up to fp32 rounding); "
            "the kernels-vs-exact column is how much an answer can depend on the kind of CPU. Calibration on "
            f"{results['calibration_images']} train images; 1-min load at the end {results['load_average']:.2f}.\n\n"
            + common.table(["recipe", "top-1 agreement (this CPU)", "largest probability change",
                            "top-1 agreement (exact)", "kernels vs exact", "batch 32 img/s", "batch 1 ms",
                            "vs fp32 (batch 32)"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model package with a model.onnx (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=common.DATA, help="dataset root (default ../shared/data/ALL)")
    parser.add_argument("--split", type=Path, default=common.SPLIT, help="split CSV (default bundle/split.csv)")
    parser.add_argument("--calibration-images", type=int, default=64, help="train images to calibrate on (64)")
    parser.add_argument("--val-images", type=int, default=None, help="val images to check on (default all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="RESULTS.md to update")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[int8-recipes] {message}", file=sys.stderr, flush=True)

    body = render(measure(args, log), common.command_line([__file__, *(sys.argv[1:] if argv is None else argv)]))
    common.publish("int8-recipes", body, write=not args.no_write, results=args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
