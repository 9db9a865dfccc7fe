"""MODEL_CARD.md of an adapted package: what it was adapted from, on which images, and what changed.

Written from model.json alone (the same numbers, never recomputed), so the card and the package cannot
disagree.
"""

from __future__ import annotations

from typing import Any

from leukoscope.adaptation.scores import LAB_HELD_OUT, REPLAY_TEST
from leukoscope.review.benign_check import BenignCheck

DISCLAIMER = ("Research software, not a certified medical device: never use it alone for a diagnosis. Every "
              "result must be reviewed by a qualified specialist.")
_FIGURES = (("accuracy", "accuracy", "{:.1%}"), ("macro_f1", "macro F1", "{:.3f}"),
            ("leukemia_called_benign", "leukemia called Benign", "{}"),
            ("flagged_fraction", "flagged for review", "{:.1%}"), ("wrong_not_flagged", "wrong without a flag", "{}"),
            ("leukemia_called_benign_not_flagged", "leukemia called Benign without a flag", "{}"))


def _value(values: dict[str, Any], key: str, pattern: str) -> str:
    value = values.get(key, values.get("review", {}).get(key))
    return "n/a" if value is None else pattern.format(value)


def _table(title: str, block: dict[str, Any]) -> list[str]:
    lines = [f"### {title} ({block['before']['images']} images)", "", "| | parent | adapted |", "|---|---|---|"]
    for key, words, pattern in _FIGURES:
        lines.append(f"| {words} | {_value(block['before'], key, pattern)} | {_value(block['after'], key, pattern)} |")
    return [*lines, ""]


def _dataset(title: str, data: dict[str, Any]) -> list[str]:
    parts = ", ".join(f"{n} {p}" for p, n in data["parts"].items())
    classes = ", ".join(f"{name} {n}" for name, n in data["classes"].items())
    return [f"- **{title}:** `{data['root']}`: {data['images']} images ({parts}; {classes}); manifest sha256 "
            f"`{data['manifest_digest']}`, split sha256 `{data['split_digest']}`"]


def _simulated(options: dict[str, Any], shift: dict[str, Any] | None) -> list[str]:
    """The simulated-replay line: the lab's estimated shift, or why there was none."""
    ratio = float(options.get("simulate_ratio") or 0.0)
    if ratio <= 0:
        return []
    if not shift:
        return [f"- Simulated replay ({ratio:g} per lab image) was asked for but skipped: no replay data."]
    colour = ", ".join(f"{c} x{s:.2f}{o:+.0f}" for c, s, o in zip("RGB", shift["colour_slope"],
                                                                  shift["colour_offset"], strict=True))
    return [f"- Simulated replay: {ratio:g} of the replay's train images per lab image each epoch, shown as this "
            f"lab would show them. The lab's shift, estimated from its adaptation images: magnification "
            f"x{shift['magnification']:.2f}, hue {shift['hue_degrees']:+.0f} degrees, colour {colour} (the "
            f"parent's mean negative log-likelihood of their verified classes {shift['parent_nll_as_given']:.3f}, "
            f"{shift['parent_nll_undone']:.3f} with magnification and hue undone)."
            + (" The replay's val part shown that way also joined the val part the temperature, the thresholds and "
               "the Benign rules were fitted on." if options.get("simulate_val") else "")]


def interpolation_table(record: dict[str, Any]) -> str:
    """"0.5: 0.1695, 0.75: 0.0784, 1: 0.0702": the mean val NLL of each share tried (adaptation.interpolate),
    for the card and adapt's log line."""
    return ", ".join(f"{row['weight']:g}: {row['mean_nll']:.4f}" for row in record.get("table", []))


def _interpolation(record: dict[str, Any] | None) -> list[str]:
    """The weight-space ensemble line: the share of the fine-tuned weights shipped and why."""
    if not record:
        return []
    table = interpolation_table(record)
    why = f"mean val negative log-likelihood by share {table}" if table else record.get("reason", "")
    return [f"- Weight-space ensemble with the parent (WiSE-FT): {record['chosen']:g} x the fine-tuned weights + "
            f"the rest x the parent's ({why}; rule: {record['rule']})."]


def _benign_check(info: dict[str, Any]) -> list[str]:
    """The Benign view check line: the views and threshold chosen for this network (with the Benign confidence
    threshold when both were chosen together), or that none earned its flags on val, or nothing when the
    package was adapted without the fit."""
    fit = info.get("benign_check_fit")
    if not fit:
        return []
    check = info.get("review", {}).get("benign_check")
    joint = "benign_confidence_threshold" in fit
    where = (f"chosen on both datasets' val parts ({fit['data']['val_images']} images) and shifted copies of them "
             + ("together with the Benign confidence threshold (leukoscope.inference.benign_check_fit.JOINT_RULE)"
                if joint else "by the rule the bundled package's check was (leukoscope.inference.benign_check_fit)"))
    threshold = (f" Benign calls below confidence {fit['benign_confidence_threshold']:.6f} are flagged "
                 f"(`benign_low_confidence`)." if joint else "")
    if not check:
        return [f"- Benign view check: none ({where}: no candidate caught a leukemia image called Benign without a "
                f"flag there at a lower cost, so none was worth its flags).{threshold}"]
    parsed = BenignCheck.from_dict(check)
    views = ", ".join(v.describe(why=False) for v in parsed.views)
    return [f"- Benign view check: a Benign call no other reason flags is read again {views}; below "
            f"P(Benign) {parsed.threshold:g} there it is flagged (`benign_view`); {where}.{threshold}"]


def model_card(info: dict[str, Any]) -> str:
    """The card's Markdown from an adapted package's model.json."""
    parent, adaptation = info["parent"], info["adaptation"]
    options, metrics, datasets = adaptation["options"], adaptation["metrics"], adaptation["datasets"]
    review = info.get("review", {})
    lines = [
        "---", "library_name: leukoscope", "pipeline_tag: image-classification", f"base_model: {parent['name']}",
        "tags:", "- medical-imaging", "- blood-smear", "- research-only", "- adapted", "---", "",
        f"# Model card: {info['name']}", "", f"> **{DISCLAIMER}**", "",
        f"{info['name']} is **{parent['name']}** (`{parent['model_version']}`) fine-tuned on one lab's verified "
        f"images, so that it reads that lab's stain, optics and camera. Classes (output order): "
        f"{', '.join(info['classes'])}.", "",
        "## Parent", "", f"- **Name:** {parent['name']}", f"- **Version:** `{parent['model_version']}`",
        f"- **Files sha256:** `{parent['files_sha256']}`", f"- **Read from:** `{parent['path']}`", "",
        "## Data", "",
        *_dataset("Lab (adapted on its train part, calibrated on val, judged on test)", datasets["lab"]),
    ]
    if datasets.get("replay"):
        lines += _dataset("Replay (the parent's data: train part replayed, test part checked)", datasets["replay"])
    lines += [
        "", "## Adaptation", "",
        f"- {options['epochs']} epoch(s), learning rate {options['lr']:g}, batch {options['batch_size']}, seed "
        f"{options['seed']}, trainable: {options['trainable']}, augmentation: {options['augment']}; BatchNorm frozen.",
        f"- Replay: {options['replay_ratio']:g} replayed image(s) per lab image each epoch"
        + ("" if datasets.get("replay") else " (no replay data given)")
        + (f"; their targets {options['distill']:g} x the parent's own probabilities for them (distillation "
           "against forgetting; simulated images take their original's)"
           if float(options.get("distill") or 0.0) > 0 and datasets.get("replay") else "") + ".",
        *_simulated(options, adaptation.get("lab_shift")),
        *_interpolation(adaptation.get("interpolation")),
        *_benign_check(info),
        f"- Temperature {info.get('temperature', 1.0):.3f} ({info.get('temperature_source', '')}); review below "
        f"confidence {review.get('confidence_threshold', 'n/a')}; out-of-distribution statistics refitted on both "
        "datasets' train parts, thresholded on their val parts.",
        f"- Command: `{adaptation.get('command') or 'library call'}`", "",
        "## Before and after", "",
        "The refusal rules: the lab's held-out accuracy must improve, and accuracy on the replay data's test part "
        f"may drop by at most {options['max_replay_drop'] * 100:g} points.", "",
        *_table("Lab, held-out part", metrics[LAB_HELD_OUT]),
    ]
    if metrics.get(REPLAY_TEST):
        lines += _table("Replay data, test part", metrics[REPLAY_TEST])
    lines += [
        "## Limitations", "",
        "- The held-out part is small: its accuracy has a wide interval. Keep verifying calls in the web app; the "
        "lab's verified images are its running validation.",
        "- Adapted to one lab: another lab needs its own adaptation.",
        "- An adapted package does not carry its parent's realignment, and on the project's simulated second lab "
        "adapted packages have called leukemia images Benign without a review flag (benchmarks/RESULTS.md, second "
        "lab): verify Benign calls, with their Grad-CAM, until the lab's own verified images show how the package "
        "does there.", "",
    ]
    return "\n".join(lines)
