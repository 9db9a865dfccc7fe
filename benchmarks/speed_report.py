"""The `speed` section of RESULTS.md from the numbers benchmarks/speed.py measured (plain data in, markdown
out), kept apart from the measuring so either can change without the other; `Timing`, the row both share,
lives here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common


@dataclass
class Timing:
    """One inference path: batch-1 latency and batch-32 throughput, with the per-round values."""

    name: str
    b1_ms: float
    b32_ips: float
    b1_rounds: list[float] = field(default_factory=list)
    b32_rounds: list[float] = field(default_factory=list)

    @property
    def b32_ms(self) -> float:
        """Milliseconds per image at batch 32."""
        return 1000.0 / self.b32_ips


def _timings(results: dict[str, Any]) -> list[Timing]:
    """The Timing rows back from their JSON form."""
    return [Timing(**t) for t in results["timings"]]


def _find(results: dict[str, Any], prefix: str) -> Timing:
    """The timing whose path name starts with `prefix`."""
    return next(t for t in _timings(results) if t.name.startswith(prefix))


def render_models(results: dict[str, Any]) -> str:
    """The side-by-side table of model-only paths, with decode + preprocessing as its own columns."""
    decode, flops, peak = results["e2e"]["decode"], results["flops"], results["peak"]["gflops"]
    prep_1 = decode["serial_ms"] + decode["normalize_ms"]
    prep_n = decode["parallel_ms"] + decode["normalize_ms"]
    rows = []
    for t in _timings(results):
        gflops = t.b32_ips * flops / 1e9
        rows.append([t.name, f"{t.b1_ms:.2f} ({common.spread(t.b1_rounds)})", f"{1000 / t.b1_ms:.0f}",
                     f"{t.b32_ips:.0f} ({common.spread(t.b32_rounds)})", f"{t.b32_ms:.2f}",
                     f"{gflops:.1f} ({gflops / peak:.1%})", f"{prep_1:.2f}", f"{prep_n:.2f}"])
    header = ["path (model only, no decode)", "batch 1: ms/image (min-max)", "batch 1: img/s",
              "batch 32: img/s (min-max)", "batch 32: ms/image", "batch 32: GFLOP/s (% of peak)",
              "decode + preprocess ms/image, 1 core", f"decode + preprocess ms/image, {decode['workers']} threads"]
    notes = (f"\nDecode + preprocess = the predictor's own per-image work (read file, sha256, PIL JPEG decode, "
             f"resize to {results['input_size']}, quality checks: {decode['serial_ms']:.2f} ms on one core, "
             f"{decode['parallel_ms']:.2f} ms/image with its pool of {decode['workers']} threads) plus input "
             f"normalisation ({decode['normalize_ms']:.3f} ms/image in batches of 32); measured on "
             f"{decode['images']} dataset files. It is the same for every path, so it is one pair of columns.\n")
    return common.table(header, rows) + notes


def render_e2e(results: dict[str, Any]) -> str:
    """Whole-command throughput against the eager baseline, and the decode/inference overlap check."""
    e2e = results["e2e"]
    eager = _find(results, "PyTorch eager fp32 (malloc env)").b32_ips
    eager_plain = _find(results, "PyTorch eager fp32 (default malloc)").b32_ips
    rows = []
    for key, label in (("cli_fp32", f"`leukoscope predict`, {_package_label(results, 'fp32')}"),
                       ("cli_int8", f"`leukoscope predict`, {_package_label(results, 'int8')}"),
                       ("predict_paths_fp32", "Predictor.predict_paths in-process, ONNX fp32 (streams, as predict)"),
                       ("predict_paths_fp32_one_stream", "Predictor.predict_paths in-process, ONNX fp32, one batch "
                        "at a time on every core"),
                       ("predict_paths_int8", "Predictor.predict_paths in-process, ONNX int8 (streams, as predict)")):
        if key not in e2e:  # results written before streams existed
            continue
        r = e2e[key]
        rows.append([label, f"{r['seconds']:.2f} ({common.spread(r['rounds_s'])})", f"{r['ips']:.0f}",
                     f"{r['ips'] / eager:.1f}x", f"{r['ips'] / eager_plain:.1f}x"])
    header = [f"end to end, {e2e['images']} JPEG files, decode included", "seconds (min-max)", "img/s",
              "x eager fp32 b32 (malloc env)", "x eager fp32 b32 (default malloc)"]
    o, s = e2e["overlap"], e2e["startup"]
    text = common.table(header, rows)
    text += (f"\nCommands: `{e2e['cli_fp32']['command']}` and `{e2e['cli_int8']['command']}`, run as "
             "subprocesses without the malloc settings (as a user runs them), median of the runs after one "
             "warm-up run; every run exited 0 with one CSV row per image. Nothing is subtracted: the times "
             f"include interpreter start, imports ({s['import_inference_s']:.2f} s to import "
             f"leukoscope.inference.predictor, which {'imports' if s['imports_torch'] else 'does not import'} torch), "
             "model loading with sha256 checks, decoding and writing the CSV.\n\n"
             f"Decode and inference in Predictor.predict_paths (1,000 files, ONNX fp32): decode alone with its "
             f"thread pool {o['decode_s']:.2f} s, the rest (normalise, network, calibration, OOD score, results) "
             f"alone {o['inference_s']:.2f} s; the same work without overlap (decode a batch, wait, run it) "
             f"{o['no_overlap_s']:.2f} s; predict_paths with one stream (decoding batch k+1 in threads while batch k "
             f"runs) {o['predict_paths_s']:.2f} s: {overlap_verdict(o)}\n")
    if "review_view_passes" in e2e:
        text += (f"\nThe network ran {e2e['review_view_passes']:.3f} more passes per image than one on these files: the "
                 "package's review views (realignment of images the OOD check flags, the Benign view check of Benign "
                 "calls nothing else flags), counted in Predictor._finish. The model-only figure makes one pass per "
                 f"image, so with the views the end-to-end ceiling is about {1 / (1 + e2e['review_view_passes']):.2f}x "
                 "it before any decoding or start-up.\n")
    return text


def _package_label(results: dict[str, Any], kind: str) -> str:
    """Which package an end-to-end row ran: the bundled one as it ships, or its variant."""
    if results.get("bundled_default", "fp32") == kind:
        return f"bundled package (ONNX {kind}, its default)"
    return f"the same package with the ONNX {kind} model as default"


def overlap_verdict(o: dict[str, Any]) -> str:
    """What the overlap measurement says, in words."""
    if o["gain"] > 0.05:
        return f"decoding does overlap with inference ({o['gain']:.0%} faster than without overlap)."
    return (f"decoding runs in parallel with inference, but gains only {o['gain']:+.0%} over no overlap here: "
            "ONNX Runtime already keeps both cores busy, so decode threads can only take turns with it.")


def cpu_flags_line(flags: list[str]) -> str:
    """The CPU flags that decide which int8 kernels ran, next to the int8 numbers (issue #11)."""
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni"))
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni"))
    why = ("VNNI: int8 products accumulate exactly" if vnni
           else "no VNNI: u8s8 kernels would saturate with 8-bit weights, hence 7-bit ones")
    return f"CPU flags: {shown} ({why})."


def load_check_line(check: dict[str, Any] | None) -> str:
    """What the int8 package's check at load (leukoscope.inference.int8.checked_onnx) found on this CPU."""
    if not check:
        return ""
    if not check.get("checked"):
        return " Load-time int8 check: not possible (no reference batch)."
    used = f"fell back to {check['fallback']}" if check.get("fallback") else "int8 used"
    return (f" Load-time int8 check on this CPU: top-1 agreement {check['top1_agreement']:.2%} on {check['images']} "
            f"reference images, largest probability change from export {check['drift']:.4f}: {used}.")


def render_int8(results: dict[str, Any]) -> str:
    """int8 against fp32 on the test part, and how the int8 model was made (without the test part)."""
    q = results["int8"]
    t = q["test"]
    tried = (f"{'first conv + classifier in fp32' if q['fp32_ends'] else 'all layers int8'}: "
             f"{q['val_agreement']:.2%} top-1 agreement on val")
    rows = [[t["images"], f"{t['top1_agreement']:.2%} ({t['disagreements']} images differ)",
             f"{t['max_abs_prob_diff']:.3f}", f"{t['accuracy_fp32']:.2%}", f"{t['accuracy_int8']:.2%}"]]
    header = ["test images", "int8 top-1 agreement with fp32", "largest probability change",
              "accuracy fp32 (sklearn)", "accuracy int8 (sklearn)"]
    where = ("the bundled package's own model.int8.onnx, written by `leukoscope export --int8-only`"
             if q.get("source") == "package" else "written to a temporary package by this benchmark")
    return (common.table(header, rows) + f"\n{cpu_flags_line(results['machine'].get('flags') or [])}"
            f"{load_check_line(q.get('load_check'))}\n" +
            "\nint8 model: leukoscope.inference.int8.quantize_int8 (static QDQ, per-channel 7-bit int8 weights (`reduce_range`), "
            f"uint8 activations, MinMax) calibrated on {q['calibration_images']} random images of the *train* part of "
            f"bundle/split.csv, checked on the {q['val_images']} *val* images as `leukoscope export --int8` "
            f"does ({tried}), {where}; the test part was not used to make it. fp32 is the same network's "
            "fp32 ONNX model. Probabilities here are plain softmax (temperature does not change top-1).\n")


def render_flops(results: dict[str, Any]) -> str:
    """FLOPs of the model, the measured peak, and the share of it the best paths reach."""
    flops, peak, size = results["flops"], results["peak"], results["input_size"]
    lines = [f"- Model: {flops / 1e9:.3f} GFLOPs per {size}x{size} image = {flops / 2e9:.3f} G multiply-adds "
             "(MACs); torch.utils.flop_counter.FlopCounterMode counts 2 FLOPs per multiply-add and only "
             "convolutions and matrix products (BatchNorm, activations and pooling are not counted).",
             f"- Measured peak: fp32 torch.mm of two {peak['n']}x{peak['n']} matrices on {peak['threads']} threads "
             f"{peak['torch_gflops']:.0f} GFLOP/s (rounds {common.spread(peak['rounds_gflops'])}); numpy's matmul "
             f"(OpenBLAS) on the same matrices {peak['numpy_gflops']:.0f} GFLOP/s. The larger, "
             f"{peak['gflops']:.0f} GFLOP/s, is the peak used here (torch's MKL does not use its fastest kernels "
             "on AMD CPUs, and ONNX Runtime's fp32 convolutions beat it). Both are lower bounds of the hardware's "
             "peak, so the fractions below are of what a large matmul reaches, not of the chip's theoretical "
             "FLOP rate."]
    fp32 = [t for t in _timings(results) if "int8" not in t.name]
    for label, pool in (("Best fp32 path", fp32), ("Best path overall", _timings(results))):
        best = max(pool, key=lambda t: t.b32_ips)
        achieved = best.b32_ips * flops / 1e9
        lines.append(f"- {label}: {best.name}, batch 32: {best.b32_ips:.0f} img/s x {flops / 1e9:.3f} GFLOPs = "
                     f"{achieved:.0f} GFLOP/s = {achieved / peak['gflops']:.0%} of that fp32 peak"
                     + (" (int8 multiply-adds counted against the fp32 peak: int8 VNNI does 4x the operations "
                        "per instruction, so this is no efficiency above 100%)." if "int8" in best.name else "."))
    return "\n".join(lines) + "\n"


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """Each issue #5 target (and #11 item 13's two) with the measured number and met / not met.

    The 8x target is judged against PyTorch eager as installed (default malloc), the baseline the issue
    quotes (about 44 img/s on this CPU); the ratio to eager with the Makefile's malloc settings is shown too.
    """
    e2e, t = results["e2e"], results["int8"]["test"]
    eager = _find(results, "PyTorch eager fp32 (default malloc)").b32_ips
    tuned = _find(results, "PyTorch eager fp32 (malloc env)").b32_ips
    fp32, int8 = _find(results, "ONNX Runtime fp32"), _find(results, "ONNX Runtime int8")
    best = min(_timings(results), key=lambda x: x.b1_ms)

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    rows = []
    for key in ("cli_fp32", "cli_int8"):
        ratio = e2e[key]["ips"] / eager
        label = _package_label(results, key.removeprefix("cli_"))
        kind = key.removeprefix("cli_")
        shipped = results.get("bundled_default", "fp32") == kind
        other = "fp32" if kind == "int8" else "int8"
        caveat = "" if shipped else (f"; not the shipped default: this network's test accuracy is "
                                     f"{t['accuracy_' + kind]:.2%} with it, {t['accuracy_' + other]:.2%} as shipped")
        rows.append([f"`leukoscope predict` on {e2e['images']} images >= 8x PyTorch eager (batch 32), {label}",
                     f"{e2e[key]['ips']:.0f} vs {eager:.0f} img/s = {ratio:.1f}x (vs eager with the malloc "
                     f"settings, {tuned:.0f} img/s: {e2e[key]['ips'] / tuned:.1f}x){caveat}", verdict(ratio >= 8)])
    speedup = int8.b32_ips / fp32.b32_ips
    rows.append(["int8 >= 1.5x ONNX Runtime fp32 with >= 99% top-1 agreement",
                 f"{speedup:.2f}x at batch 32 ({fp32.b1_ms / int8.b1_ms:.2f}x at batch 1), agreement "
                 f"{t['top1_agreement']:.2%}", verdict(speedup >= 1.5 and t["top1_agreement"] >= 0.99)])
    rows.append(["batch-1 latency <= 3 ms (best path)", f"{best.b1_ms:.2f} ms ({best.name}, model only)",
                 verdict(best.b1_ms <= 3.0)])
    return rows + item13_rows(results, verdict)


def item13_rows(results: dict[str, Any], verdict: Callable[[bool], str]) -> list[list[str]]:
    """Issue #11 item 13: end to end as typed against the shipped default model alone (>= 0.85x) and against the
    best PyTorch a user could write (channels_last + malloc settings, batch 32: >= 2x)."""
    e2e = results["e2e"]
    shipped = results.get("bundled_default", "fp32")
    prefix = "ONNX Runtime int8" if shipped == "int8" else "ONNX Runtime fp32"
    best = max((t for t in _timings(results) if t.name.startswith(prefix)), key=lambda t: t.b32_ips)
    model = best.b32_ips  # the default model alone the fastest way measured here (one run, or streams)
    tuned = _find(results, "PyTorch eager fp32, channels_last (malloc env)").b32_ips
    ips = e2e[f"cli_{shipped}"]["ips"]
    other = "int8" if shipped == "fp32" else "fp32"
    return [[f"`leukoscope predict` end to end >= 0.85x its default model alone (ONNX {shipped}, batch 32, the "
             "faster of one run on all cores and one run per core)",
             f"{ips:.0f} vs {model:.0f} img/s ({best.name}) = {ips / model:.2f}x", verdict(ips >= 0.85 * model)],
            ["`leukoscope predict` end to end >= 2x tuned PyTorch eager (channels_last + malloc, batch 32)",
             f"{ips:.0f} vs {tuned:.0f} img/s = {ips / tuned:.2f}x (with the {other} model as default: "
             f"{e2e[f'cli_{other}']['ips'] / tuned:.2f}x)", verdict(ips >= 2 * tuned)]]


def render(results: dict[str, Any], command: str) -> str:
    """The `speed` section of RESULTS.md."""
    extra = (f"- Package: {results['name']} (`{Path(results['package']).name}`); load average "
             f"{results['load_at_start']:.2f} at the start, {results['load_at_end']:.2f} at the end (that one is mostly "
             "this script's own work); this process "
             f"{'with' if results['machine']['malloc_env'] else 'without'} the Makefile's malloc settings "
             "(PyTorch eager is measured both ways in child processes).")
    parts = [common.section_header("Speed (issue #5)", command, results["machine"], extra),
             "### Targets\n", common.table(["target", "measured", "verdict"], target_rows(results)),
             "\n### Model only, side by side (same 64 test images, medians of rounds)\n", render_models(results),
             "\n### End to end\n", render_e2e(results),
             "\n### int8 against fp32 (test part of bundle/split.csv)\n", render_int8(results),
             "\n### FLOPs and peak\n", render_flops(results)]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)
