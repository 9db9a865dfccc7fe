"""MODEL_CARD.md of an adapted package: what it was adapted from, on which images, and what changed.

Written from model.json alone (the same numbers, never recomputed), so the card and the package cannot
disagree.
"""

from __future__ import annotations

from typing import Any

from leukoscope.adaptation.scores import LAB_HELD_OUT, REPLAY_TEST

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
        + ("" if datasets.get("replay") else " (no replay data given)") + ".",
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
        "- Adapted to one lab: another lab needs its own adaptation.", "",
    ]
    return "\n".join(lines)
