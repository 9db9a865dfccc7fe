"""Jinja2 templates of the evaluation report, the comparison page and the model card.

Kept as Python strings (not package data files) so they ship with the code in every install, and so the
report stays one self-contained HTML file: inline CSS, figures as data URIs, no external CSS/JS/fonts.
"""

from __future__ import annotations

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,"Liberation Sans","DejaVu Sans",
sans-serif;margin:0 auto;
max-width:1100px;padding:1.2em 2em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}
.disclaimer{background:#fff4e5;border:1px solid #f0a020;padding:.7em 1em;border-radius:4px}
.leak{background:#fde8e8;border:2px solid #c0392b;padding:.7em 1em;border-radius:4px;font-weight:600}
.note{color:#555;font-size:.92em}figure{margin:1em 0}figcaption{color:#444;font-size:.92em}
img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
.muted{color:#777}table.kv td{text-align:left}
"""

REPORT_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><style>{{ css }}</style></head>
<body>
<h1>{{ title }}</h1>
<p class="muted">leukoscope {{ version }} &middot; {{ created }}</p>
<p class="disclaimer"><strong>Disclaimer.</strong> {{ disclaimer }}</p>
<p>Numbers below are on {% if on.part == "all" %}all <strong>{{ on.n_images }}</strong> images{% else %}the
<strong>{{ on.part }}</strong> part: <strong>{{ on.n_images }}</strong> images{% endif %}
from <code>{{ on.data_root }}</code>{% if on.split_csv %} (split file <code>{{ on.split_csv }}</code>){% endif %}.
{{ intervals_text }}</p>
{% for w in warnings %}<p class="{{ 'leak' if 'LEAKAGE' in w else 'disclaimer' }}">{{ w }}</p>{% endfor %}

<h2>Headline metrics</h2>
<table><tr><th>metric</th><th>value</th><th>{{ (100 * m.bootstrap.level) | round(0) | int }}% interval</th>
<th>interval method</th></tr>
{% for name, h in m.headline.items() %}<tr><td>{{ h.label }}</td><td>{{ fmt(h.value) }}</td>
<td>{{ interval(h) }}</td><td>{{ method_name(h) }}</td></tr>
{% endfor %}
<tr><td>Log loss</td><td>{{ fmt(m.log_loss) }}</td><td></td><td></td></tr>
<tr><td>Brier score (multi-class, 0&ndash;2)</td><td>{{ fmt(m.brier) }}</td><td></td><td></td></tr>
<tr><td>Macro PR-AUC</td><td>{{ fmt(m.macro_pr_auc) }}</td><td></td><td></td></tr>
<tr><td>Weighted F1</td><td>{{ fmt(m.weighted_f1) }}</td><td></td><td></td></tr>
</table>
{% if m.leukemia_vs_benign %}{% set lv = m.leukemia_vs_benign %}
<h2>Leukemia vs benign</h2>
<p>Any of the three B-ALL subtypes counts as leukemia. Leukemia images called benign (missed cases):
<strong>{{ rate(lv.rates.leukemia_called_benign, lv.leukemia_called_benign, lv.n_leukemia) }}</strong>.
Benign images called leukemia: {{ rate(lv.rates.benign_called_leukemia, lv.benign_called_leukemia, lv.n_benign) }}.
Sensitivity {{ fmt(lv.sensitivity) }},
specificity {{ fmt(lv.specificity) }}, ROC-AUC {{ fmt(lv.roc_auc) }}.</p>
{% endif %}
{% if m.review %}{% set rv = m.review %}
<h2>Review flag</h2>
<p>The package's review rules (confidence threshold, out-of-distribution score, image quality), applied as
<code>leukoscope predict</code> applies them. Flagged for review: <strong>{{ rate(rv.rates.flagged, rv.flagged, rv.n) }}</strong>.
Wrong calls: {{ rv.wrong }}, of which flagged {{ rv.wrong_flagged }} and <strong>not flagged
{{ rv.wrong_not_flagged }}</strong>; accuracy on the unflagged images {{ fmt(rv.unflagged_accuracy) }}.
{% if rv.n_benign is not none %}Benign images called leukemia without a flag (confident false alarms):
<strong>{{ rate(rv.rates.benign_called_leukemia_not_flagged, rv.benign_called_leukemia_not_flagged, rv.n_benign)
}}</strong>; leukemia images called benign without a flag (confident missed cases): <strong>{{
rate(rv.rates.leukemia_called_benign_not_flagged, rv.leukemia_called_benign_not_flagged, rv.n_leukemia)
}}</strong>.{% endif %}</p>
{% if rv.reasons %}<table><tr><th>review reason</th><th>images</th></tr>
{% for reason, count in rv.reasons.items() %}<tr><td>{{ reason }}</td><td>{{ count }}</td></tr>
{% endfor %}</table>{% endif %}
{% endif %}

<h2>Per class</h2>
<table><tr><th>class</th><th>support</th><th>precision</th><th>recall (sensitivity)</th><th>specificity</th>
<th>F1</th><th>ROC-AUC</th><th>PR-AUC</th></tr>
{% for name, c in m.per_class.items() %}<tr><td>{{ name }}</td><td>{{ c.support }}</td>
<td>{{ with_interval(c.precision, c.intervals.precision) }}</td><td>{{ with_interval(c.recall, c.intervals.recall) }}</td>
<td>{{ with_interval(c.specificity, c.intervals.specificity) }}</td><td>{{ fmt(c.f1) }}</td><td>{{ fmt(c.roc_auc) }}</td>
<td>{{ fmt(c.pr_auc) }}</td></tr>
{% endfor %}
<tr><td><em>macro</em></td><td></td><td>{{ fmt(m.macro.precision) }}</td><td>{{ fmt(m.macro.recall) }}</td><td></td>
<td>{{ fmt(m.macro.f1) }}</td><td>{{ fmt(m.macro.roc_auc) }}</td><td>{{ fmt(m.macro.pr_auc) }}</td></tr>
<tr><td><em>weighted</em></td><td></td><td>{{ fmt(m.weighted.precision) }}</td><td>{{ fmt(m.weighted.recall) }}</td>
<td></td><td>{{ fmt(m.weighted.f1) }}</td><td></td><td></td></tr>
</table>
<p class="note">Precision, recall and specificity with their exact (Clopper-Pearson) intervals in brackets.
"n/a": undefined, e.g. the ROC-AUC of a class with no image in this part.</p>

<h2>Calibration</h2>
{% if cal %}<table><tr><th></th><th>before</th><th>after</th></tr>
<tr><td>Expected calibration error ({{ cal.n_bins }} bins)</td><td>{{ fmt(cal.ece_before) }}</td>
<td>{{ fmt(cal.ece_after) }}</td></tr>
<tr><td>Brier score</td><td>{{ fmt(cal.brier_before) }}</td><td>{{ fmt(cal.brier_after) }}</td></tr>
<tr><td>Log loss</td><td>{{ fmt(cal.log_loss_before) }}</td><td>{{ fmt(cal.log_loss_after) }}</td></tr></table>
<p>Probabilities: {{ cal.description }} Metrics above use the calibrated probabilities; temperature
scaling never changes which class is predicted.</p>{% endif %}

<h2>Figures</h2>
{% for f in figures %}<figure><img src="data:image/png;base64,{{ f.data }}" alt="{{ f.title }}">
<figcaption><strong>{{ f.title }}.</strong> {{ f.caption }}</figcaption></figure>
{% endfor %}

<h2>Data</h2>
<table class="kv"><tr><th>item</th><th>value</th></tr>
{% for key, value in data_rows %}<tr><td>{{ key }}</td><td>{{ value }}</td></tr>{% endfor %}
</table>

<h2>Model</h2>
<table class="kv">{% for key, value in model_rows %}<tr><td>{{ key }}</td><td>{{ value }}</td></tr>{% endfor %}</table>

<h2>Run configuration</h2>
{% if config_text %}<pre>{{ config_text }}</pre>{% else %}<p class="note">No configuration recorded.</p>{% endif %}
<p class="disclaimer">{{ disclaimer }}</p>
</body></html>
"""

COMPARE_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ css }}</style></head>
<body><h1>{{ title }}</h1>
<p class="muted">leukoscope {{ version }} &middot; {{ created }}</p>
<table><tr><th>metric</th>{% for r in runs %}<th>{{ r.name }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}
</table>
<h2>Paired tests (exact McNemar on shared test images)</h2>
{% if tests %}<table><tr><th>A</th><th>B</th><th>shared images</th><th>A right, B wrong</th>
<th>B right, A wrong</th><th>accuracy A</th><th>accuracy B</th><th>p-value</th></tr>
{% for t in tests %}<tr><td>{{ t.a }}</td><td>{{ t.b }}</td><td>{{ t.n }}</td><td>{{ t.a_only }}</td>
<td>{{ t.b_only }}</td><td>{{ fmt(t.accuracy_a) }}</td><td>{{ fmt(t.accuracy_b) }}</td><td>{{ pval(t.p_value) }}</td></tr>
{% endfor %}</table>
<p class="note">A p-value below 0.05 suggests the accuracy difference on these images is not chance alone.</p>
{% else %}<p class="note">No pair of runs shares test images; no paired test possible.</p>{% endif %}
{% for n in notes %}<p class="note">{{ n }}</p>{% endfor %}
<p class="disclaimer">{{ disclaimer }}</p>
</body></html>
"""

MODEL_CARD_MD = """---
license: apache-2.0
library_name: leukoscope
pipeline_tag: image-classification
tags:
- medical-imaging
- blood-smear
- acute-lymphoblastic-leukemia
- research-only
{% if headline_yaml %}model-index:
- name: {{ name }}
  results:
  - task:
      type: image-classification
    dataset:
      name: {{ dataset_name }}
      type: image-folder
      split: {{ on.part }}
    metrics:
{% for key, value in headline_yaml %}    - type: {{ key }}
      value: {{ value }}
{% endfor %}{% endif %}---

# Model card: {{ name }}

> **{{ disclaimer }}**

{{ name }} classifies a peripheral blood smear image into {{ classes | join(", ") }}{% if benign %}, i.e.
benign (hematogones) or one of the B-lineage acute lymphoblastic leukemia (ALL) subtypes{% endif %}.

## Model details
{% for key, value in model_rows %}- **{{ key }}:** {{ value }}
{% endfor %}
## Intended use
- Research on automated screening and subtyping of ALL in blood smear images, and teaching.
- As a second reader whose output a qualified hematologist or cytologist always reviews.
- Benchmarking other methods on the same public data.

## Out-of-scope use
- Diagnosis, treatment decisions or triage of real patients without expert review: this is not a
  certified medical device.
- Images from other microscopes, cameras, stains, magnifications or labs without first validating on
  them: accuracy there is unknown and confidence can stay high on unfamiliar cells.
- Bone marrow aspirates, other leukemias (AML, CLL, CML, T-ALL) or non-leukemic disease: the model only
  knows the classes above and will always answer with one of them.
- Single-cell crops, if the training images were whole smear fields (or the reverse).

## Training data
{% for key, value in training_rows %}- **{{ key }}:** {{ value }}
{% endfor %}
## Evaluation data and protocol
- **Evaluated on:** {{ evaluated_on }}{% if on.data_root %}, from
  `{{ on.data_root }}`{% endif %}{% if on.split_csv %}, split file `{{ on.split_csv }}`{% endif %}.
{% for name, count in class_counts %}- {{ name }}: {{ count }} images
{% endfor %}- {{ intervals_text }}
- Probabilities: {{ calibration_text }}
{% if leakage_text %}- **{{ leakage_text }}**
{% endif %}
## Metrics
| metric | value | {{ level_pct }}% interval | interval method |
|---|---|---|---|
{% for label, value, interval, method in metric_rows %}| {{ label }} | {{ value }} | {{ interval }} | {{ method }} |
{% endfor %}
{% if lv %}Leukemia (any subtype) vs benign: leukemia images called benign (missed cases):
**{{ rate(lv.rates.leukemia_called_benign, lv.leukemia_called_benign, lv.n_leukemia) }}**; benign images called
leukemia: {{ rate(lv.rates.benign_called_leukemia, lv.benign_called_leukemia, lv.n_benign) }}.
{% endif %}{% if rv %}
Review flag (the package's rules, as `leukoscope predict` applies them): images flagged:
{{ rate(rv.rates.flagged, rv.flagged, rv.n) }}; wrong calls not flagged: **{{ rate(rv.rates.wrong_not_flagged,
rv.wrong_not_flagged, rv.n) }}**{% if rv.n_benign is not none %}; benign images called leukemia without a flag: **{{
rate(rv.rates.benign_called_leukemia_not_flagged, rv.benign_called_leukemia_not_flagged, rv.n_benign) }}**; leukemia
images called benign without a flag: **{{ rate(rv.rates.leukemia_called_benign_not_flagged,
rv.leukemia_called_benign_not_flagged, rv.n_leukemia) }}**{% endif %}.
{% endif %}
Per class (precision, recall and specificity with exact intervals):

| class | support | precision | recall | specificity | F1 | ROC-AUC |
|---|---|---|---|---|---|---|
{% for name, c in per_class %}| {{ name }} | {{ c.support }} | {{ with_interval(c.precision, c.intervals.precision) }} \
| {{ with_interval(c.recall, c.intervals.recall) }} | {{ with_interval(c.specificity, c.intervals.specificity) }} \
| {{ fmt(c.f1) }} | {{ fmt(c.roc_auc) }} |
{% endfor %}
## Known limitations
- **Image-level split, no patient identifiers.** The public data carries no patient ids, so images of one
  patient can sit in both the training and the test part. Test scores are therefore optimistic for new
  patients. Exact and near-duplicate images were kept within one part, which removes copies but not
  different fields of the same smear.
- **One hospital, one microscope, one stain.** All images come from one laboratory's acquisition setup;
  performance on other labs is untested and may be much lower. Before use, score the model on labelled
  images of your own lab (`leukoscope evaluate default MY_LAB/`, one subfolder per class, e.g. only
  `Benign/`) and read its review-flag counts.
- **Small test set.** With a few hundred test images, the intervals above are wide for the rarer classes;
  differences between models inside those intervals are not evidence.
- **Softmax confidence is not an out-of-distribution detector:** on cells from another lab the model can
  be confidently wrong.
{% if benign %}- The main confusion is between Benign (hematogones) and Early Pre-B ALL, which look alike.
{% endif %}
## How to reproduce
{% if command %}```
{{ command }}
```
{% else %}Training command not recorded.
{% endif %}
---
{{ disclaimer }}
"""
