"""Sample-level calls: the images of one sample (one smear, one patient) aggregated into one answer.

Clinicians decide per patient, not per image, and the costly mistake is a missed leukemia. So the sample
rule leads with leukemia vs benign, never with an average that many benign-looking cells can outvote:
- "leukemia suspected" as soon as one usable image is called a leukemia subtype; the subtype is the most
  frequent call among those leukemic images only (ties: the higher summed probability);
- "Benign" only when every usable image is called Benign;
- no call when no image is usable.
Unusable and unreadable images never count; the same image (same sha256) given twice counts once. The
sample is flagged for review when its call rests only on flagged images, when a Benign call includes a
flagged image, when leukemic images disagree on the subtype, when many images are flagged, or when
images were unusable or unreadable.

`leukoscope predict --group-by folder`, the web app's per-upload summary and its API all use `sample_call`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from leukoscope.data.classes import BENIGN_CLASS

LEUKEMIA, BENIGN = "leukemia", "benign"
DEFAULT_REVIEW_FRACTION = 0.25


class SampleImage(Protocol):
    """What a sample call needs of one image: a Prediction, a stored prediction, or any such record."""

    @property
    def label(self) -> str | None: ...
    @property
    def review(self) -> bool: ...
    @property
    def status(self) -> str: ...  # ok | unusable | error
    @property
    def sha256(self) -> str: ...
    @property
    def probabilities(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class SampleCall:
    """The call on one sample; `to_json` for the API, `to_row` for CSV."""

    call: str | None  # "leukemia" | "benign" | None (no usable image)
    label: str | None  # the leukemia subtype, the benign class, or None
    headline: str  # plain words: "leukemia suspected: Pre-B", "Benign", "no call"
    summary: str  # plain words: "leukemic-looking cells in 3 of 4 usable images (Pre-B in 3)"
    confidence: float  # mean P(leukemia) over the leukemic images, or mean P(benign) over the usable ones
    review: bool
    review_codes: list[str]
    review_reasons: list[str]
    images: int  # everything given, duplicates included
    usable: int  # distinct images with a class
    unusable: int
    failed: int
    duplicates: int
    leukemic_images: int
    flagged_images: int  # usable images flagged for review
    counts: dict[str, int] = field(default_factory=dict)  # usable images per class
    mean_probabilities: dict[str, float] = field(default_factory=dict)  # over the usable images

    def to_json(self) -> dict[str, Any]:
        return {"call": self.call, "label": self.label, "headline": self.headline, "summary": self.summary,
                "confidence": round(self.confidence, 6), "review": self.review,
                "review_codes": list(self.review_codes), "review_reasons": list(self.review_reasons),
                "images": self.images, "predicted": self.usable, "usable": self.usable, "unusable": self.unusable,
                "failed": self.failed, "duplicates": self.duplicates, "leukemic_images": self.leukemic_images,
                "flagged_images": self.flagged_images, "counts": dict(self.counts),
                "mean_probabilities": {c: round(p, 6) for c, p in self.mean_probabilities.items()}}

    def to_row(self, *, nested: bool = False) -> dict[str, Any]:
        """Flat columns (p_<class> mean probabilities, n_<class> counts); `nested` keeps lists for JSON."""
        row = self.to_json()
        row["label"] = row["label"] if nested else row["label"] or ""
        row["call"] = row["call"] if nested else row["call"] or ""
        if not nested:
            row["review_codes"] = "; ".join(self.review_codes)
            row["review_reasons"] = "; ".join(self.review_reasons)
        del row["predicted"]
        row.update({f"p_{c}": p for c, p in row.pop("mean_probabilities").items()})
        row.update({f"n_{c}": n for c, n in row.pop("counts").items()})
        return row


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def sample_call(images: Iterable[SampleImage], classes: Sequence[str], *, failed: int = 0,
                benign_class: str = BENIGN_CLASS, review_fraction: float = DEFAULT_REVIEW_FRACTION) -> SampleCall:
    """The call on one sample (module docstring); `failed` adds files that never became a prediction."""
    given = list(images)
    extra = failed  # files that never became a prediction (the web app's unreadable uploads)
    seen: set[str] = set()
    distinct = []
    for image in given:
        if image.sha256 and image.sha256 in seen:
            continue
        seen.add(image.sha256)
        distinct.append(image)
    usable = [i for i in distinct if i.status == "ok" and i.label is not None]
    unusable = sum(i.status == "unusable" for i in distinct)
    failed += sum(i.status == "error" for i in distinct)
    leukemic = [i for i in usable if i.label != benign_class]
    flagged = sum(bool(i.review) for i in usable)
    counts = {c: sum(i.label == c for i in usable) for c in classes}
    mean = {c: sum(float(i.probabilities.get(c, 0.0)) for i in usable) / len(usable) if usable else 0.0
            for c in classes}
    codes: dict[str, str] = {}
    if leukemic:
        votes = Counter(i.label for i in leukemic)
        mass = defaultdict(float, {c: sum(float(i.probabilities.get(c, 0.0)) for i in leukemic) for c in votes})
        subtype = max(votes, key=lambda c: (votes[c], mass[c]))
        call, label, headline = LEUKEMIA, subtype, f"leukemia suspected: {subtype}"
        confidence = sum(1.0 - float(i.probabilities.get(benign_class, 0.0)) for i in leukemic) / len(leukemic)
        split = ", ".join(f"{c} in {votes[c]}" for c in classes if votes.get(c))
        summary = f"leukemic-looking cells in {len(leukemic)} of {_plural(len(usable), 'usable image')} ({split})"
        if all(i.review for i in leukemic):
            codes["leukemia_flagged"] = ("every leukemic-looking image is flagged for review: a specialist should "
                                         "look at them before this call is used")
        if len(votes) > 1:
            codes["mixed_subtypes"] = (f"the leukemic-looking images disagree on the subtype ({split}): "
                                       "a specialist should decide the subtype")
    elif usable:
        call, label, headline = BENIGN, benign_class, benign_class
        confidence = mean.get(benign_class, 0.0)
        summary = f"all {_plural(len(usable), 'usable image')} look benign"
        if flagged:
            codes["benign_flagged"] = (f"{flagged} of {len(usable)} benign-looking images flagged for review: "
                                       "check them for leukemic cells before calling the sample benign")
    else:
        call, label, headline, confidence = None, None, "no call", 0.0
        summary = "no usable image"
        codes["no_usable_images"] = "no image could be analysed: take new images of the smear"
    if usable and flagged > review_fraction * len(usable):
        codes["many_flagged"] = f"{flagged} of {len(usable)} usable images are flagged for review: check them"
    if unusable:
        codes["unusable_images"] = (f"{_plural(unusable, 'image')} showed nothing to analyse and did not "
                                    "count: see each image's reason")
    if failed:
        codes["failed_images"] = f"{_plural(failed, 'file')} could not be read and did not count: check the files"
    extras = [f"{unusable} unusable" if unusable else "", f"{failed} unreadable" if failed else "",
              f"{_plural(len(given) - len(distinct), 'duplicate image')} counted once" if len(given) > len(distinct)
              else ""]
    summary = "; ".join([summary, *(e for e in extras if e)])
    review = bool(codes)
    return SampleCall(call, label, headline + (" (to review)" if review else ""), summary, confidence, review,
                      list(codes), list(codes.values()), len(given) + extra, len(usable), unusable, failed,
                      len(given) - len(distinct), len(leukemic), flagged, counts, mean)


def group_by_folder(predictions: Iterable[SampleImage | Any], classes: Sequence[str], *,
                    benign_class: str = BENIGN_CLASS, review_fraction: float = DEFAULT_REVIEW_FRACTION,
                    nested: bool = False) -> list[dict[str, Any]]:
    """One sample call per folder of the predictions' `source` paths, as rows (`SampleCall.to_row`)."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for prediction in predictions:
        groups[str(Path(prediction.source).parent)].append(prediction)
    return [{"folder": folder, **sample_call(groups[folder], classes, benign_class=benign_class,
                                             review_fraction=review_fraction).to_row(nested=nested)}
            for folder in sorted(groups)]
