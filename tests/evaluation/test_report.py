"""Figures, the self-contained HTML report, the model card and the comparison page, from synthetic results."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.evaluation.intervals import proportion
from leukoscope.evaluation.metrics import compute_metrics
from leukoscope.evaluation.plots import evaluation_figures, prediction_grid, training_curves
from leukoscope.evaluation.report import DISCLAIMER, write_comparison, write_model_card, write_report_html
from leukoscope.review.calibration import softmax

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects images, external references and text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.external: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values)
        for key in ("src", "href"):
            if values.get(key) and not values[key].startswith(("data:", "#")):
                self.external.append(values[key])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def synthetic_eval(tmp_path_factory) -> dict:
    """A small evaluation's arrays, image files and metrics, as `evaluate` would have them."""
    folder = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    logits = rng.normal(size=(24, 4))
    logits[np.arange(24), y] += 2.0
    paths = []
    for i in range(24):
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    probs, raw = softmax(logits, 1.5), softmax(logits)
    metrics = compute_metrics(y, probs, classes=CLASSES, n_bootstrap=50)
    return {"folder": folder, "y": y, "probs": probs, "raw": raw, "paths": paths, "metrics": metrics}


@pytest.fixture(scope="module")
def figures(synthetic_eval) -> list[dict]:
    s = synthetic_eval
    history = [{"epoch": i, "stage": "warmup" if i < 2 else "main", "train_loss": 1 / i, "train_acc": 1 - 1 / (i + 1),
                "val_loss": 1.1 / i, "val_acc": "" if i == 1 else 0.9 - 1 / (i + 1)} for i in range(1, 6)]
    return evaluation_figures(s["folder"] / "figures", y=s["y"], probs=s["probs"], raw_probs=s["raw"],
                              classes=CLASSES, paths=s["paths"], confusion=s["metrics"]["confusion_matrix"],
                              history=history, seed=0)


def result_dict(metrics: dict, warnings: list[str] | None = None) -> dict:
    return {
        **metrics,
        "model": {"name": "tiny-run", "kind": "run", "backbone": "test_efficientnet", "classes": list(CLASSES),
                  "input_size": 64, "temperature": 1.5},
        "data_summary": {"data_root": "/data/ALL", "split_csv": "/runs/x/split.csv", "part": "test", "n_images": 24,
                         "class_counts": dict.fromkeys(CLASSES, 6), "split_sizes": {"train": 50, "val": 10, "test": 24},
                         "duplicate_groups": 1, "duplicate_images": 2, "problems": 0,
                         "leakage": {"checked": True, "train_overlap": 0}},
        "calibration": {"source": "fitted", "temperature": 1.5, "fitted_on": "val", "n_fit": 10, "n_bins": 15,
                        "ece_before": 0.2, "ece_after": 0.05, "brier_before": 0.4, "brier_after": 0.3,
                        "log_loss_before": 0.9, "log_loss_after": 0.7},
        "warnings": warnings or [],
    }


def test_every_figure_is_a_png(figures):
    assert [f["title"] for f in figures] == ["Training curves", "Confusion matrix", "Example predictions",
                                             "ROC curves", "Reliability diagram"]
    for figure in figures:
        assert Path(figure["path"]).read_bytes()[:8] == PNG_MAGIC
        assert figure["caption"]


def test_figures_cope_with_empty_inputs(tmp_path):
    assert prediction_grid([], [], [], [], tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC
    rows = [{"epoch": 1, "train_loss": "", "train_acc": ""}]
    assert training_curves(rows, tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_html_report_is_self_contained_and_embeds_every_figure(synthetic_eval, figures, tmp_path):
    leak = "LEAKAGE: 3 of 24 evaluated images are in the model's training part"
    config = {"data": "/data/ALL", "backbone": "test_efficientnet", "command": "leukoscope train /data/ALL"}
    path = write_report_html(tmp_path / "report.html", result=result_dict(synthetic_eval["metrics"], [leak]),
                             figures=figures, config=config)
    html = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(html)
    parser.close()
    assert html.startswith("<!DOCTYPE html>")
    assert parser.external == [] and "script" not in parser.tags and "link" not in parser.tags
    sources = [img["src"] for img in parser.images]
    assert len(sources) == len(figures)
    for src, figure in zip(sources, figures, strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == Path(figure["path"]).read_bytes()
    text = " ".join(parser.text)
    for expected in (DISCLAIMER, leak, "Accuracy", "Cohen's kappa", "Pro-B", "test_efficientnet", "split.csv",
                     "leukoscope train /data/ALL", "Leukemia vs benign"):
        assert expected in text, expected
    assert "24" in text and "test" in text  # what the numbers are on


def test_model_card_says_what_the_numbers_are_on(synthetic_eval, tmp_path):
    result = result_dict(synthetic_eval["metrics"])
    path = write_model_card(tmp_path / "MODEL_CARD.md", model_info=result["model"], metrics=result,
                            data_summary=result["data_summary"], config={"seed": 3, "protocol": "finetune"})
    card = path.read_text(encoding="utf-8")
    assert card.startswith("---\n") and "model-index:" in card
    for section in ("## Intended use", "## Out-of-scope use", "## Training data", "## Evaluation data and protocol",
                    "## Metrics", "## Known limitations"):
        assert section in card
    assert "the `test` part, **24 images**" in card
    assert "no patient identifiers" in card and "One hospital, one microscope" in card
    assert DISCLAIMER in card
    assert "| Accuracy |" in card and "[" in card  # interval column
    # the export calls it with much less: nothing may be required
    minimal = write_model_card(tmp_path / "min.md", model_info={}, metrics={}, data_summary={}, config={})
    assert DISCLAIMER in minimal.read_text(encoding="utf-8")
    assert "seed 3" in card and "Distilled from" not in card


def test_model_card_names_a_split_file_and_the_teachers_of_a_distilled_model(synthetic_eval, tmp_path):
    result = result_dict(synthetic_eval["metrics"])
    config = {"seed": 1, "split_csv": "bundle/split.csv", "soft_targets": "t/a.csv,t/b.csv", "soft_target_weight": 0.5}
    card = write_model_card(tmp_path / "MODEL_CARD.md", model_info=result["model"], metrics=result,
                            data_summary=result["data_summary"], config=config).read_text(encoding="utf-8")
    assert "read from the split file bundle/split.csv" in card and "seed 1" not in card
    assert "Distilled from:** t/a.csv,t/b.csv (weight 0.5)" in card


def comparison() -> dict:
    headline = {"accuracy": {"label": "Accuracy", "value": 0.9, "low": 0.85, "high": 0.94}}
    runs = [{"name": "a", "headline": headline, "n_images": 100, "part": "test", "train_seconds": 65.0,
             "eval_seconds": 3.2},
            {"name": "b", "headline": {}, "n_images": 100, "part": "test", "train_seconds": None, "eval_seconds": 2.0}]
    tests = [{"a": "a", "b": "b", "n": 100, "a_only": 7, "b_only": 1, "accuracy_a": 0.9, "accuracy_b": 0.84,
              "p_value": 0.0703}]
    return {"title": "Comparison of a, b", "runs": runs, "tests": tests, "notes": []}


def test_comparison_markdown_and_html(tmp_path):
    markdown = write_comparison(tmp_path / "compare.md", comparison()).read_text(encoding="utf-8")
    assert "| Accuracy | 0.900 [0.850, 0.940] | n/a |" in markdown
    assert "| a | b | 100 | 7 | 1 | 0.0703 |" in markdown
    html = write_comparison(tmp_path / "compare.html", comparison()).read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(html)
    assert parser.external == [] and "0.0703" in html and "65.0" in html
    with pytest.raises(ValueError, match=r"\.html or \.md"):
        write_comparison(tmp_path / "compare.txt", comparison())


def perfect_result(review: dict | None = None) -> dict:
    """460 of 460 right (115 per class), as the evaluation of a perfect sample stores it."""
    y = np.repeat(np.arange(4), 115)
    probs = np.full((460, 4), 0.1)
    probs[np.arange(460), y] = 0.7
    return {**result_dict(compute_metrics(y, probs, classes=CLASSES, n_bootstrap=50)), "review": review}


def test_report_and_card_say_which_method_made_each_interval(synthetic_eval, figures, tmp_path):
    review = {"n": 460, "flagged": 3, "wrong": 0, "wrong_flagged": 0, "wrong_not_flagged": 0,
              "unflagged_accuracy": 1.0, "reasons": {}, "n_benign": 115, "n_leukemia": 345,
              "benign_called_leukemia_not_flagged": 0, "leukemia_called_benign_not_flagged": 0,
              "rates": {"flagged": proportion(3, 460), "wrong_not_flagged": proportion(0, 460),
                        "benign_called_leukemia_not_flagged": proportion(0, 115),
                        "leukemia_called_benign_not_flagged": proportion(0, 345)}}
    result = perfect_result(review)
    html = write_report_html(tmp_path / "report.html", result=result, figures=figures[:1]).read_text(encoding="utf-8")
    card = write_model_card(tmp_path / "MODEL_CARD.md", model_info=result["model"], metrics=result,
                            data_summary=result["data_summary"], config={}).read_text(encoding="utf-8")
    for text in (html, card):
        assert "exact Clopper-Pearson intervals for the proportions (Accuracy" in text
        assert "percentile bootstrap intervals over 50 resamples" in text and "Macro F1" in text
        assert "[0.992, 1.000]" in text
        assert "0 of 345 (0.0%, exact interval 0.0% to 1.1%)" in text  # missed cases, with an upper bound above 0
        assert "3 of 460 (0.7%, exact interval 0.1% to 1.9%)" in text  # review flags
    assert "| Accuracy | 1.000 | [0.992, 1.000] | exact (Clopper-Pearson) |" in card
    assert "| Macro F1 | 1.000 | [1.000, 1.000] | percentile bootstrap |" in card
    assert "one of zero width means no resample differed" in card  # why [1.000, 1.000] is not certainty
    assert "<td>[0.992, 1.000]</td><td>exact (Clopper-Pearson)</td>" in html
    assert "| Pro-B | 115 | 1.000 [0.968, 1.000] | 1.000 [0.968, 1.000] |" in card  # per-class precision, recall


def test_results_saved_before_interval_methods_still_render(synthetic_eval, tmp_path):
    old = result_dict(synthetic_eval["metrics"])
    old["leukemia_vs_benign"] = {k: v for k, v in old["leukemia_vs_benign"].items() if k != "rates"}
    old["headline"] = {k: {key: h[key] for key in ("label", "value", "low", "high")}
                       for k, h in old["headline"].items()}
    old["per_class"] = {k: {key: v for key, v in c.items() if key != "intervals"} for k, c in old["per_class"].items()}
    card = write_model_card(tmp_path / "MODEL_CARD.md", model_info=old["model"], metrics=old,
                            data_summary=old["data_summary"], config={}).read_text(encoding="utf-8")
    assert "percentile bootstrap intervals over 50 resamples" in card and "Clopper-Pearson" not in card
    lv = old["leukemia_vs_benign"]
    assert f"**{lv['leukemia_called_benign']} of {lv['n_leukemia']}**" in card  # plain counts, no interval


def test_templates_are_package_data_and_only_html_is_escaped(synthetic_eval, tmp_path):
    from importlib import resources

    shipped = {p.name for p in resources.files("leukoscope.evaluation").joinpath("templates").iterdir()}
    assert {"report.html.j2", "compare.html.j2", "model_card.md.j2", "report.css"} <= shipped
    result = result_dict(synthetic_eval["metrics"], ["<b>R&D</b> note"])
    result["model"]["name"] = "tiny <run> & co"
    html = write_report_html(tmp_path / "report.html", result=result, figures=[]).read_text(encoding="utf-8")
    assert "&lt;b&gt;R&amp;D&lt;/b&gt; note" in html and "<b>R&D</b>" not in html
    assert "Evaluation of tiny &lt;run&gt; &amp; co" in html
    assert "font-family:system-ui" in html and "&#34;Segoe UI&#34;" in html  # the CSS inlined, escaped as before
    card = write_model_card(tmp_path / "MODEL_CARD.md", model_info=result["model"], metrics=result,
                            data_summary=result["data_summary"], config={}).read_text(encoding="utf-8")
    assert "# Model card: tiny <run> & co" in card  # Markdown is not HTML-escaped


def test_where_the_model_looks_in_report_and_card_and_background_said_plainly(synthetic_eval, figures, tmp_path):
    from leukoscope.evaluation.localisation import CORRECT_LEUKEMIA, Localisation, summarise

    hit = Localisation("ok", 0.6, 0.1, (5, 5), 0.0, True)
    miss = Localisation("ok", 0.05, 0.1, (200, 200), 40.0, False)
    y, predicted = [0, 1, 2, 3], [0, 1, 2, 3]
    for results, background in (([hit, hit, hit, hit], False), ([hit, miss, miss, hit], True)):
        result = {**result_dict(synthetic_eval["metrics"]), "localisation": summarise(results, y, predicted, CLASSES)}
        card = write_model_card(tmp_path / "card.md", model_info=result["model"], metrics=result,
                                data_summary=result["data_summary"], config={}).read_text(encoding="utf-8")
        html = write_report_html(tmp_path / "report.html", result=result, figures=figures).read_text(encoding="utf-8")
        for text in (card, html):
            assert "Where the model looks" in text and CORRECT_LEUKEMIA in text
            assert ("not met" in text) == background and ("looks at the background" in text) == background
        assert ("**The model looks at the background, not at the white cells**" in card) == background
        assert "**" not in html
    plain = result_dict(synthetic_eval["metrics"])
    card = write_model_card(tmp_path / "plain.md", model_info=plain["model"], metrics=plain,
                            data_summary=plain["data_summary"], config={}).read_text(encoding="utf-8")
    assert "Where the model looks" not in card
