"""Weight-space ensembling with the parent (WiSE-FT, Wortsman et al., CVPR 2022): the adapted package ships
(1 - a) x the parent's weights + a x the fine-tuned ones.

Why: a few epochs on a lab's few dozen images move the network a little way from its parent, and along that
short path the weights stay in one basin, so a point part-way keeps most of what the lab taught and more of
what the parent knew. Forgetting is what refuses a lab's adaptation most often (the replay gate), and the
interpolation costs nothing at prediction time: the package holds one network.

Rule (INTERPOLATION_RULE): `a` from INTERPOLATION_WEIGHTS, the lowest mean over the datasets' val parts (the
lab's and the replay's, each that has images) of the network's mean negative log-likelihood of the true
class there; ties -> the larger `a` (closer to what was fine-tuned). Neither part is a judge's: the lab's
held-out part and the replay's test part stay unseen until the refusal rules read them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from leukoscope.models.preprocessing import Preprocess
from leukoscope.models.scoring import score_model
from leukoscope.training.dataset import TensorSet

INTERPOLATION_WEIGHTS = (0.5, 0.75, 1.0)  # the fine-tuned network's share; 1.0: no interpolation
INTERPOLATION_RULE = ("a from {weights}: the lowest mean over the lab's and the replay's val parts of the mean "
                      "negative log-likelihood of the true class; ties -> the larger a")


def interpolated(parent: nn.Module, tuned: nn.Module, weight: float) -> nn.Module:
    """A copy of `tuned` whose floating-point weights and buffers are (1 - weight) x `parent`'s + weight x
    `tuned`'s (integer buffers, e.g. BatchNorm's batch counters, are `tuned`'s)."""
    start = parent.state_dict()
    state = {name: (torch.lerp(start[name].to(value), value, weight) if value.is_floating_point() else value)
             for name, value in tuned.state_dict().items()}
    out = copy.deepcopy(tuned)
    out.load_state_dict(state)
    return out


def mean_nll(model: nn.Module, data: TensorSet, preprocess: Preprocess) -> float:
    """Mean negative log-likelihood of the labels (no temperature: the network as it stands)."""
    return score_model(model, data.images, preprocess, labels=data.labels.cpu().numpy(), batch_size=64).mean_nll()


def choose_interpolation(parent: nn.Module, tuned: nn.Module, parts: Mapping[str, TensorSet],
                         preprocess: Preprocess, weights: Sequence[float] = INTERPOLATION_WEIGHTS,
                         ) -> tuple[float, nn.Module, dict[str, Any]]:
    """(chosen weight, the network at that weight, record) by the module doc's rule over the named val
    `parts`; with no val image at all the fine-tuned network stays (weight 1.0) and the record says why."""
    used = {name: part for name, part in parts.items() if part is not None and len(part)}
    record: dict[str, Any] = {"rule": INTERPOLATION_RULE.format(weights=", ".join(f"{w:g}" for w in weights)),
                              "parts": {name: len(part) for name, part in used.items()}, "table": []}
    if not used:
        record.update(chosen=1.0, reason="no val images: the fine-tuned network is kept")
        return 1.0, tuned, record
    models = {}
    for weight in weights:
        models[float(weight)] = model = tuned if weight == 1.0 else interpolated(parent, tuned, weight)
        nll = {name: mean_nll(model.eval(), part, preprocess) for name, part in used.items()}
        record["table"].append({"weight": float(weight), "nll": nll, "mean_nll": sum(nll.values()) / len(nll)})
    best = min(record["table"], key=lambda row: (round(row["mean_nll"], 9), -row["weight"]))
    record["chosen"] = best["weight"]
    return best["weight"], models[best["weight"]], record
