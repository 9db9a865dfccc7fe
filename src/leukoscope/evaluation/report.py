"""Human-readable outputs of an evaluation: the self-contained HTML report, the model card, and the
side-by-side comparison of runs (HTML or Markdown).

All three take the plain dicts that `evaluation` writes as JSON, so they can be re-rendered from saved
results, and the model card writer is shared with the package export. The Jinja2 templates are package
data (`templates/*.j2`, the CSS in `templates/report.css`): the report stays one self-contained HTML file
with inline CSS and figures as data URIs. HTML templates are autoescaped, the Markdown card is not.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from leukoscope import __version__
from leukoscope.data.fileio import write_text
from leukoscope.evaluation.intervals import BOOTSTRAP, CLOPPER_PEARSON, METHOD_TEXT

DISCLAIMER = (
    "Research software, not a certified medical device: never use it alone for a diagnosis. "
    "Every result must be reviewed by a qualified specialist."
)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("leukoscope.evaluation", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)


@functools.cache
def _css() -> str:
    """The report's stylesheet, inlined into every HTML page (escaped like any other value)."""
    return resources.files("leukoscope.evaluation").joinpath("templates", "report.css").read_text(encoding="utf-8")


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for display: 3 decimals, "n/a" when undefined."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "n/a"
    if isinstance(value, bool | int):
        return str(value)
    return f"{float(value):.{digits}f}"


def interval(headline: dict[str, Any]) -> str:
    """"[low, high]" of a headline entry, or "n/a"."""
    low, high = headline.get("low"), headline.get("high")
    return "n/a" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def with_interval(value: Any, entry: Any) -> str:
    """A value with the interval of its `proportion` entry: "0.990 [0.962, 0.999]"; the value alone when
    there is none (n of 0, or results saved before per-class intervals)."""
    if not isinstance(entry, dict) or entry.get("low") is None:
        return fmt(value)
    return f"{fmt(value)} {interval(entry)}"


def method_name(headline: dict[str, Any]) -> str:
    """How a headline entry's interval was made, in words ("" when it has none)."""
    return METHOD_TEXT.get(headline.get("method") or "", "")


def rate(entry: Any, k: Any = None, n: Any = None) -> str:
    """A `proportion` entry in words: "0 of 710 (0.0%, exact interval 0.0% to 0.5%)"; "k of n" from the
    plain counts when there is no entry (results saved before rates were recorded)."""
    if not isinstance(entry, dict) or entry.get("n") is None:
        return "n/a" if k is None or n is None or isinstance(k, jinja2.Undefined) else f"{k} of {n}"
    text = f"{entry['k']} of {entry['n']}"
    if entry.get("low") is None:
        return text
    return (f"{text} ({100 * entry['value']:.1f}%, exact interval {100 * entry['low']:.1f}% to "
            f"{100 * entry['high']:.1f}%)")


def intervals_text(result: dict[str, Any]) -> str:
    """One sentence on how the intervals were made, from the method of each headline entry (results saved
    before methods were recorded were all percentile bootstrap)."""
    boot = result.get("bootstrap") or {}
    labels: dict[str, list[str]] = {CLOPPER_PEARSON: [], BOOTSTRAP: []}
    degenerate = False  # a bootstrap interval of zero width: every resample gave the same value
    for key, h in (result.get("headline") or {}).items():
        method = h.get("method", BOOTSTRAP if h.get("low") is not None else None)
        if method in labels:
            labels[method].append(h.get("label", key))
            degenerate |= method == BOOTSTRAP and h.get("low") == h.get("high")
    parts = []
    if labels[CLOPPER_PEARSON]:
        parts.append("exact Clopper-Pearson intervals for the proportions ("
                     + ", ".join([*labels[CLOPPER_PEARSON], "per-class precision, recall and specificity",
                                  "error and review-flag rates"]) + ")")
    if labels[BOOTSTRAP]:
        parts.append(f"percentile bootstrap intervals over {boot.get('n_resamples')} resamples of the images "
                     f"(seed {boot.get('seed')}) for {', '.join(labels[BOOTSTRAP])}")
    if not parts:
        return "No intervals were computed."
    note = (" A bootstrap interval never reaches beyond the values the sample shows: one of zero width means "
            "no resample differed, not certainty." if degenerate else "")
    return f"{round(100 * boot.get('level', 0.95))}% intervals: " + "; ".join(parts) + "." + note


def _pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _globals() -> dict[str, Any]:
    return {"fmt": fmt, "interval": interval, "with_interval": with_interval, "method_name": method_name,
            "rate": rate, "pval": _pval, "css": _css(), "disclaimer": DISCLAIMER, "version": __version__,
            "created": _now()}


def _png_base64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _join(values: Any) -> str:
    """Dicts as "k: v, ...", lists as "a, b", floats with 4 significant digits."""
    if isinstance(values, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in values.items())
    if isinstance(values, list | tuple):
        return ", ".join(_text(v) for v in values)
    return _text(values)


def model_rows(model_info: dict[str, Any]) -> list[tuple[str, str]]:
    """The model's description as (label, text) rows; unknown keys are skipped, missing ones omitted."""
    labels = (("name", "Name"), ("kind", "Loaded from"), ("source", "Path"), ("backbone", "Backbone"),
              ("classes", "Classes (output order)"), ("input_size", "Input size (px)"),
              ("mean", "Normalisation mean"), ("std", "Normalisation std"), ("interpolation", "Resize"),
              ("epoch", "Epochs trained"), ("best_score", "Best validation score"),
              ("temperature", "Temperature"), ("manifest_digest", "Training data digest"))
    rows = []
    for key, label in labels:
        if model_info.get(key) not in (None, "", []):
            rows.append((label, _join(model_info[key])))
    return rows


def data_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The data summary as (label, text) rows for the report."""
    leak = summary.get("leakage") or {}
    leak_text = "not checked (no training split known)"
    if leak.get("checked"):
        leak_text = f"{leak.get('train_overlap', 0)} image(s) also in the training part"
    rows = [
        ("Data root", summary.get("data_root")), ("Split file", summary.get("split_csv") or "none"),
        ("Evaluated part", summary.get("part")), ("Images evaluated", summary.get("n_images")),
        ("Images per class (evaluated)", _join(summary.get("class_counts"))),
        ("Split sizes", _join(summary.get("split_sizes")) or "n/a"),
        ("Exact-duplicate groups in the data", summary.get("duplicate_groups")),
        ("Images in duplicate groups", summary.get("duplicate_images")),
        ("Unreadable files skipped", summary.get("problems")),
        ("Overlap with training (leakage)", leak_text),
    ]
    return [(k, "n/a" if v is None or v == "" else str(v)) for k, v in rows]


def _calibration_context(cal: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cal:
        return None
    return {**cal, "description": calibration_text(cal)}


def calibration_text(cal: dict[str, Any] | None) -> str:
    """One sentence on where the temperature came from."""
    if not cal:
        return "uncalibrated softmax outputs."
    source = cal.get("source")
    if source == "fitted":
        return f"temperature {fmt(cal.get('temperature'))} fitted on {cal.get('n_fit')} {cal.get('fitted_on')} images."
    if source == "stored":
        return f"temperature {fmt(cal.get('temperature'))} read from the run's calibration.json."
    if source == "package":
        return "calibrated by the model package's own temperature."
    return "uncalibrated (temperature 1: no validation part to fit one on)."


def localisation_context(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The "where the model looks" section as the templates show it (None when it was not measured)."""
    if not summary:
        return None
    from leukoscope.evaluation.localisation import TABLE_HEADER, table_rows

    findings = list(summary.get("findings") or [])
    return {"header": TABLE_HEADER, "rows": table_rows(summary), "findings": findings,
            "findings_plain": [line.replace("**", "") for line in findings], "method": summary.get("method", ""),
            "looks_at_background": summary.get("looks_at_background")}


def write_report_html(
    path: str | Path,
    *,
    result: dict[str, Any],
    figures: Sequence[dict[str, Any]],
    config: dict[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Write one self-contained HTML report (figures as base64 data URIs, inline CSS, no scripts).

    `result` is the metrics.json dict of an evaluation; `figures` are {"title", "caption", "path"} of
    PNG files, embedded in order; `config` the run's config.yaml.
    """
    summary = result.get("data_summary", {})
    model_info = result.get("model", {})
    embedded = [{"title": f["title"], "caption": f.get("caption", ""), "data": _png_base64(f["path"])}
                for f in figures]
    config_text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True) if config else ""
    html = _ENV.get_template("report.html.j2").render(
        **_globals(), title=title or f"Evaluation of {model_info.get('name', 'model')}", m=result,
        on=summary, warnings=result.get("warnings", []), cal=_calibration_context(result.get("calibration")),
        intervals_text=intervals_text(result), where=localisation_context(result.get("localisation")),
        figures=embedded, data_rows=data_rows(summary), model_rows=model_rows(model_info),
        config_text=config_text,
    )
    write_text(path, html)
    return Path(path)


def _yaml_number(value: Any) -> str | None:
    return None if value is None else f"{float(value):.4f}"


def write_model_card(
    path: str | Path,
    *,
    model_info: dict[str, Any],
    metrics: dict[str, Any],
    data_summary: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write MODEL_CARD.md in the style of Hugging Face model cards (YAML header, then intended use,
    out-of-scope use, training data, evaluation protocol, metrics with intervals, limitations).

    `metrics` is an evaluation's metrics.json dict (compute_metrics output, optionally with
    "calibration" and "leakage"); `data_summary` says what the numbers are on (part, n_images,
    class_counts, data_root, split_csv, split_sizes); `config` is the training config (may be empty).
    Every key is optional, so the package export can pass what it has.
    """
    headline = metrics.get("headline", {})
    boot = metrics.get("bootstrap", {})
    classes = list(model_info.get("classes") or metrics.get("classes") or [])
    leak = data_summary.get("leakage") or metrics.get("leakage") or {}
    leakage_text = ""
    if leak.get("train_overlap"):
        leakage_text = (f"Warning: {leak['train_overlap']} evaluated image(s) also occur in the training part "
                        "(leakage): these numbers are optimistic.")
    training_rows = [
        ("Dataset", config.get("data") or data_summary.get("data_root") or "not recorded"),
        ("Split", _join(data_summary.get("split_sizes")) or "not recorded"),
        ("Split method", "stratified by class; copies of an image (same bytes or near-identical) kept in one part"
         + (f", read from the split file {config['split_csv']}" if config.get("split_csv")
            else f", seed {config['seed']}" if "seed" in config else "")),
        ("Protocol", config.get("protocol", "not recorded")),
        ("Augmentation", config.get("augment", "not recorded")),
        ("Epochs", config.get("epochs", model_info.get("epoch", "not recorded"))),
    ]
    if config.get("soft_targets"):
        training_rows.append(("Distilled from", f"{config['soft_targets']} (weight {config.get('soft_target_weight')})"))
    text = _ENV.get_template("model_card.md.j2").render(
        **_globals(), name=model_info.get("name", "leukoscope model"), classes=classes,
        benign="Benign" in classes, model_rows=model_rows(model_info), training_rows=training_rows,
        on=data_summary, class_counts=list((data_summary.get("class_counts") or {}).items()),
        dataset_name=Path(str(data_summary.get("data_root") or "ALL")).name or "ALL",
        level_pct=round(100 * boot.get("level", 0.95)), n_resamples=boot.get("n_resamples", 0),
        seed=boot.get("seed", 0), calibration_text=calibration_text(metrics.get("calibration")),
        intervals_text=intervals_text(metrics),
        leakage_text=leakage_text, lv=metrics.get("leukemia_vs_benign"), rv=metrics.get("review"),
        evaluated_on=(f"all **{data_summary.get('n_images')} images** of the folder" if data_summary.get("part") == "all"
                      else f"the `{data_summary.get('part')}` part, **{data_summary.get('n_images')} images**"),
        metric_rows=[(h.get("label", k), fmt(h.get("value")), interval(h), method_name(h) or "n/a")
                     for k, h in headline.items()],
        headline_yaml=[(k, _yaml_number(h.get("value"))) for k, h in headline.items()
                       if h.get("value") is not None],
        per_class=list((metrics.get("per_class") or {}).items()),
        command=config.get("command", ""), where=localisation_context(metrics.get("localisation")),
    )
    write_text(path, text)
    return Path(path)


# ------------------------------------------------------------------------------------------ compare


def comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """Table rows: one per headline metric (value and interval per run), then images and wall times."""
    runs = comparison["runs"]
    names = list(dict.fromkeys(k for r in runs for k in r.get("headline", {})))
    rows = []
    for key in names:
        label = next((r["headline"][key].get("label", key) for r in runs if key in r.get("headline", {})), key)
        cells = []
        for r in runs:
            h = r.get("headline", {}).get(key)
            cells.append("n/a" if h is None else f"{fmt(h.get('value'))} {interval(h)}")
        rows.append([label, *cells])
    rows.append(["Images evaluated", *[str(r.get("n_images", "n/a")) for r in runs]])
    rows.append(["Part", *[str(r.get("part", "n/a")) for r in runs]])
    rows.append(["Training wall time (s)", *[fmt(r.get("train_seconds"), 1) for r in runs]])
    rows.append(["Evaluation wall time (s)", *[fmt(r.get("eval_seconds"), 1) for r in runs]])
    return rows


def _markdown_comparison(comparison: dict[str, Any]) -> str:
    runs = comparison["runs"]
    lines = [f"# {comparison.get('title', 'Comparison of runs')}", "", f"> {DISCLAIMER}", "",
             "| metric | " + " | ".join(r["name"] for r in runs) + " |",
             "|---" * (len(runs) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(comparison)]
    lines += ["", "## Paired tests (exact McNemar on shared test images)", ""]
    if comparison["tests"]:
        lines += ["| A | B | shared images | A right, B wrong | B right, A wrong | p-value |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t['a']} | {t['b']} | {t['n']} | {t['a_only']} | {t['b_only']} | {_pval(t['p_value'])} |"
                  for t in comparison["tests"]]
    else:
        lines.append("No pair of runs shares test images; no paired test possible.")
    lines += ["", *comparison.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(path: str | Path, comparison: dict[str, Any]) -> Path:
    """Write the comparison as HTML (.html/.htm) or Markdown (.md); the suffix decides."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        text = _markdown_comparison(comparison)
    elif suffix in (".html", ".htm"):
        text = _ENV.get_template("compare.html.j2").render(
            **_globals(), title=comparison.get("title", "Comparison of runs"), runs=comparison["runs"],
            rows=comparison_rows(comparison), tests=comparison["tests"], notes=comparison.get("notes", []))
    else:
        raise ValueError(f"comparison output must end in .html or .md, got {path.name!r}")
    write_text(path, text)
    return path
