"""int8 models that give the answers they were checked to give, on every CPU they run on.

`quantize_int8` writes the same model on every machine: static QDQ, uint8 activations, per-channel int8
weights limited to 7 bits (`reduce_range`), so that the integer arithmetic is exact on CPUs with VNNI and
on those without (whose kernels saturate full-range weights): a model checked on one kind of CPU answers the
same on the other.

`checked_onnx` checks it where it runs: export stores a reference batch (`int8_reference.npz`: a few val
images with fp32's top-1 and the int8 model's probabilities), and at load the int8 model must agree with
fp32 (INT8_MIN_AGREEMENT) and stay within INT8_MAX_DRIFT of the exporting machine's probabilities, or the
Predictor uses fp32 with one warning line (an int8-only package is refused).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.errors import ModelError
from leukoscope.inference.backends import OnnxBackend
from leukoscope.inference.package import ONNX_FP32, ONNX_INT8
from leukoscope.models.preprocessing import Preprocess, normalize_numpy
from leukoscope.review.calibration import softmax

INT8_MIN_AGREEMENT = 0.99  # top-1 agreement with fp32 required at export and again at load
REDUCE_RANGE = True  # 7-bit weights: exact integer arithmetic with and without VNNI (see quantize_int8)
REFERENCE_IMAGES = 16
INT8_MAX_DRIFT = 0.1  # largest probability change on the reference batch from where it was exported (see checked_onnx)
REFERENCE_MIN_MARGIN = 0.05  # top-1 minus top-2 probability, fp32 and int8, for an image to be a reference
REFERENCE_JPEG_QUALITY = 90
log = logging.getLogger("leukoscope")
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- quantisation


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, *, exclude_ends: bool = False,
                  reduce_range: bool = REDUCE_RANGE, weights: str = "int8", per_channel: bool = True,
                  batch_size: int = 16) -> None:
    """Static int8 QDQ, MinMax-calibrated on `calibration` (normalised NCHW), by the module's rule.

    Why 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime's u8s8 kernels add
    pairs of uint8 x int8 products into int16 with saturation (VPMADDUBSW); 255 x 127 x 2 overflows int16,
    255 x 64 x 2 does not, so with `reduce_range` the arithmetic is exact on both kinds of CPU, as ONNX Runtime
    documents (issue #11). On the bundled MobileNetV2 (benchmarks/int8_recipes.py), 8-bit weights agreed with
    fp32 on 98.2% of top-1 calls with saturating kernels and on 100% with exact ones; 7-bit weights agree on
    99.3% either way, at 1.7-1.9x fp32's speed. U8U8 is CPU-independent too but slower; per-tensor weights
    lose too much. The export gate still guards accuracy model by model.

    `exclude_ends` keeps the first convolution and the classifier in fp32, the usual fix when int8
    disagrees with fp32 on borderline images. `reduce_range`, `weights` ("int8"/"uint8") and `per_channel`
    exist so benchmarks/int8_recipes.py can measure the alternatives; export uses the defaults.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared))
    except Exception:  # optimisation is a nicety: quantise the plain export if it fails
        prepared = fp32_path
    nodes = onnx.load(str(prepared)).graph.node
    exclude = []
    if exclude_ends:
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
        exclude = convs[:1] + heads[-1:]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)]
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return {"input": self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = 0

    weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[weights]
    quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=weight_type,
                    nodes_to_exclude=exclude)
    if prepared != fp32_path:
        prepared.unlink(missing_ok=True)


def run_normalised(backend: Any, x: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of normalised NCHW float32 input, in batches."""
    outs = [backend.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def gate_message(tried: Sequence[dict[str, Any]], images: int, required: float) -> str:
    """Why export refuses int8: every recipe's agreement, the number of images and the gate."""
    numbers = "; ".join(f"{t['int8_top1_agreement']:.2%}" + (" with first conv and classifier in fp32"
                                                            if t["int8_fp32_ends"] else "") for t in tried)
    return (f"int8 model disagrees with fp32 too often: top-1 agreement {numbers} on {images} images, "
            f"below the required {required:.0%}; export without --int8")


def quantize_with_gate(work: Path, calibration: np.ndarray, check: np.ndarray, fp32_probs: np.ndarray,
                       log: Log, threads: int | None = None) -> dict[str, Any]:
    """Quantise into work/model.int8.onnx and check top-1 agreement with fp32 on `check` (normalised).

    All layers int8 first; when that changes any top-1 call, again with the first convolution and the
    classifier kept in fp32, and the better of the two is kept (all-int8 on a tie: it is faster). Refuses
    with the numbers when neither reaches INT8_MIN_AGREEMENT. Only validation images decide, never test ones.
    """
    tried: list[dict[str, Any]] = []
    files: list[Path] = []  # each recipe's model, so the better one is kept without quantising it again
    for exclude_ends in (False, True):
        files.append(work / f"int8-recipe-{len(files)}.onnx")
        quantize_int8(work / ONNX_FP32, files[-1], calibration, exclude_ends=exclude_ends)
        probs = softmax(run_normalised(OnnxBackend(files[-1], threads), check)[0])
        tried.append({"int8_top1_agreement": float(np.mean(probs.argmax(1) == fp32_probs.argmax(1))),
                      "int8_max_abs_prob_diff": float(np.abs(probs - fp32_probs).max()),
                      "int8_fp32_ends": exclude_ends, "int8_calibration_images": len(calibration),
                      "int8_reduce_range": REDUCE_RANGE})
        log(f"int8 top-1 agreement with fp32: {tried[-1]['int8_top1_agreement']:.2%} on {len(check)} images"
            + (" with first conv and classifier in fp32" if exclude_ends else ""))
        if tried[-1]["int8_top1_agreement"] == 1.0:
            break
    best = max(range(len(tried)), key=lambda i: tried[i]["int8_top1_agreement"])  # max keeps the first of equals
    passed = tried[best]["int8_top1_agreement"] >= INT8_MIN_AGREEMENT
    if passed:
        files[best].replace(work / ONNX_INT8)
    for other in files:  # the other recipe's model, or both when refused
        other.unlink(missing_ok=True)
    if not passed:
        raise ModelError(gate_message(tried, len(check), INT8_MIN_AGREEMENT))
    return dict(tried[best])


# ------------------------------------------------------------------------------------------- reference batch


@dataclass
class Reference:
    """The images a package's int8 model is checked on where it runs, with fp32's top-1 on them and the int8
    model's probabilities where it was exported."""

    pixels: np.ndarray  # N x S x S x 3 uint8, decoded from the stored JPEGs
    fp32_top1: np.ndarray  # N int64
    int8_probs: np.ndarray  # N x C float32 (softmax of the logits, no temperature), on the exporting machine


def _margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, -1] - (top2[:, 0] if probs.shape[1] > 1 else 0.0)


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=REFERENCE_JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _pack(coded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """JPEG byte strings as one uint8 array and N + 1 offsets (npz without pickles)."""
    return (np.frombuffer(b"".join(coded), dtype=np.uint8),
            np.cumsum([0] + [len(c) for c in coded]).astype(np.int64))


def _decode(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The stored JPEGs decoded with Pillow's plain decoder (not leukoscope.data.imaging, whose decoding may be tuned
    for speed): the same bytes give the same pixels wherever the package goes."""
    from PIL import Image

    images = [np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
              for a, b in pairwise(offsets.tolist())]
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


def make_reference(path: Path, pixels: np.ndarray, fp32_backend: Any, int8_backend: Any, preprocess: Preprocess,
                   *, count: int = REFERENCE_IMAGES, seed: int = 0) -> dict[str, Any]:
    """Write the reference batch to `path` from candidate images `pixels` (NHWC uint8, val images); the
    backends are the package's fp32 and int8 models.

    The JPEG round trip comes first and both models judge the decoded pixels, so what is stored is their
    answer on exactly what the check will feed. Kept: images where int8 (here) agrees with fp32 and both
    have a top-1 margin >= REFERENCE_MIN_MARGIN (a rounding-level difference elsewhere cannot flip them),
    spread over fp32's classes. Returns a summary for model.json.
    """
    order = np.random.default_rng(seed).permutation(len(pixels))[: 4 * count]
    coded = [_jpeg(pixels[i]) for i in order]
    x = normalize_numpy(_decode(*_pack(coded)), preprocess)
    fp32, int8 = (softmax(run_normalised(backend, x)[0]) if len(x) else np.zeros((0, 0))
                  for backend in (fp32_backend, int8_backend))
    good = np.flatnonzero((fp32.argmax(1) == int8.argmax(1))
                          & (np.minimum(_margin(fp32), _margin(int8)) >= REFERENCE_MIN_MARGIN)) if len(x) else []
    by_class = [[i for i in good if fp32[i].argmax() == c] for c in range(fp32.shape[1])]
    chosen: list[int] = []
    for rank in range(len(order)):  # round robin over classes
        chosen += [int(group[rank]) for group in by_class if rank < len(group)]
    chosen = sorted(chosen[:count])
    blob, offsets = _pack([coded[i] for i in chosen])
    np.savez(path, jpeg=blob, offsets=offsets, fp32_top1=fp32.argmax(1)[chosen].astype(np.int64) if chosen
             else np.zeros(0, np.int64), int8_probs=int8[chosen].astype(np.float32) if chosen else np.zeros((0, 0)))
    return {"images": len(chosen), "min_margin": REFERENCE_MIN_MARGIN, "jpeg_quality": REFERENCE_JPEG_QUALITY,
            "bytes": path.stat().st_size}


def read_reference(path: Path) -> Reference:
    """The reference batch of a package (its sha256 was checked with the package's other files)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            blob, offsets, top1, probs = data["jpeg"], data["offsets"], data["fp32_top1"], data["int8_probs"]
        pixels = _decode(blob, offsets)
    except Exception as exc:
        raise ModelError(f"cannot read the int8 reference batch {path}: {type(exc).__name__}: {exc}") from None
    if not len(pixels) == len(top1) == len(probs):
        raise ModelError(f"int8 reference batch {path} has {len(pixels)} images but {len(top1)} labels")
    return Reference(pixels, np.asarray(top1, dtype=np.int64), np.asarray(probs, dtype=np.float32))


def run_reference(backend: Any, reference: Reference, preprocess: Preprocess) -> dict[str, Any]:
    """What `backend` does on the reference batch: top-1 agreement with the stored fp32 top-1, and the largest
    probability change from the int8 model's answers where it was exported ("drift"); 1.0 and 0.0 when empty."""
    if not len(reference.fp32_top1):
        return {"images": 0, "top1_agreement": 1.0, "drift": 0.0}
    probs = softmax(run_normalised(backend, normalize_numpy(reference.pixels, preprocess))[0])
    return {"images": len(probs), "top1_agreement": float(np.mean(probs.argmax(1) == reference.fp32_top1)),
            "drift": float(np.abs(probs - reference.int8_probs).max())}


def checked_onnx(package: Path, info: dict[str, Any], name: str, threads: int | None = None
                 ) -> tuple[OnnxBackend, str, dict[str, Any]]:
    """The ONNX Runtime backend a package should run, its file name, and what the int8 check found.

    `name` is used as it is unless it is the int8 model. That one first runs the package's reference batch:
    it is used when its top-1 agreement with fp32 is at least INT8_MIN_AGREEMENT and its probabilities are
    within INT8_MAX_DRIFT of those where it was exported (the same integer arithmetic gives the same answers;
    saturating kernels do not, and 16 images are too few to see a 1% drop in agreement by top-1 alone).
    Otherwise the fp32 model is used with one warning line, and a package without fp32 ONNX is refused (its
    answers here would not be the ones that were checked). A package written before reference batches
    existed (or whose batch is empty: no val image qualified) cannot be checked: it is used, saying so in one
    warning line.
    """
    from leukoscope.inference.package import INT8_REFERENCE, package_file

    path = package_file(package, info, name)
    if path is None:
        raise ModelError(f"model package {package} has no {name}")
    backend = OnnxBackend(path, threads)
    if name != ONNX_INT8:
        return backend, name, {}
    reference_path = package_file(package, info, INT8_REFERENCE)
    reference = read_reference(reference_path) if reference_path is not None else None
    if reference is None or not len(reference.fp32_top1):
        why = f"the package has no {INT8_REFERENCE}" if reference is None else f"its {INT8_REFERENCE} is empty"
        log.warning("%s: %s is used unchecked on this CPU (%s; re-export it to add one)", package, name, why)
        return backend, name, {"checked": False}
    found = run_reference(backend, reference, Preprocess.from_dict(info["preprocess"]))
    check = {"checked": True, **found, "required": INT8_MIN_AGREEMENT, "max_drift": INT8_MAX_DRIFT}
    if found["top1_agreement"] >= INT8_MIN_AGREEMENT and found["drift"] <= INT8_MAX_DRIFT:
        return backend, name, check
    n = found["images"]
    problem = (f"{name} does not answer on this CPU as where it was checked: top-1 agreement with fp32 "
               f"{round(found['top1_agreement'] * n)} of {n} reference images ({found['top1_agreement']:.2%}, "
               f"required {INT8_MIN_AGREEMENT:.0%}), probabilities moved by up to {found['drift']:.3f} "
               f"(allowed {INT8_MAX_DRIFT})")
    fp32_path = package_file(package, info, ONNX_FP32)
    if fp32_path is None:
        raise ModelError(f"model package {package}: {problem}; it has no {ONNX_FP32} to use instead: "
                         "use --backend torch, or re-export it with fp32")
    log.warning("%s: %s; using %s instead", package, problem, ONNX_FP32)
    return OnnxBackend(fp32_path, threads), ONNX_FP32, {**check, "fallback": ONNX_FP32}
