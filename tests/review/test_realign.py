"""Realignment views and the choice among them (leukoscope.review.realign)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from leukoscope.data.shifts import magnify, rotate_hue
from leukoscope.review.realign import MAX_VIEWS, RealignRule, View


def field(side: int = 64) -> np.ndarray:
    """A dark disc (a cell) on a pale background, with a pink ring so that hue rotations show."""
    y, x = np.mgrid[:side, :side]
    r = np.hypot(y - side / 2, x - side / 2)
    image = np.full((side, side, 3), (225, 215, 220), np.uint8)
    image[r < side / 3] = (200, 120, 170)
    image[r < side / 5] = (90, 40, 120)
    return image


def test_views_are_the_shift_family_undone() -> None:
    image = field()
    zoom_in, zoom_out, hue = View(scale=2.0), View(scale=0.5), View(hue=-20.0)
    assert np.array_equal(zoom_in.apply(image), np.asarray(magnify(Image.fromarray(image), 2.0)))
    assert np.array_equal(hue.apply(image), np.asarray(rotate_hue(Image.fromarray(image), -20.0)))
    both = View(scale=0.5, hue=10.0).apply(image)
    assert np.array_equal(both, np.asarray(magnify(rotate_hue(Image.fromarray(image), 10.0), 0.5)))
    out = zoom_out.apply(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (225, 215, 220)  # padded with the background colour
    assert (zoom_in.apply(image)[..., 0] < 150).mean() > (image[..., 0] < 150).mean()  # the cell fills more
    assert "smaller" in zoom_in.describe() and "larger" in zoom_out.describe() and "-20" in hue.describe()
    assert zoom_in.describe(why=False) == "resized x2"  # the benign check's views: no cause claimed


@pytest.mark.parametrize("kwargs", [{"scale": 0.1}, {"scale": 5.0}, {"scale": math.nan}, {"hue": 200.0},
                                    {"hue": math.inf}, {}])
def test_bad_views_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        View(**kwargs)


def test_rules_round_trip_and_refuse_bad_sections() -> None:
    rule = RealignRule.from_dict({"views": [{"scale": 0.5}, {"hue": 10}], "margin": 5})
    assert rule.views == (View(scale=0.5), View(hue=10.0)) and rule.margin == 5.0
    assert RealignRule.from_dict(rule.to_dict()) == rule
    for bad in ({"views": []}, {"views": "x2"}, [], {"views": [{"scale": 2, "gamma": 1}]}, {"views": [3]},
                {"views": [{"scale": 2}] * (MAX_VIEWS + 1)}, {"views": [{"scale": 2}], "margin": -1},
                {"views": [{"scale": 2}], "margin": math.nan}):
        with pytest.raises((ValueError, TypeError)):
            RealignRule.from_dict(bad)


def test_view_batch_is_image_major() -> None:
    rule = RealignRule((View(scale=2.0), View(hue=20.0)))
    images = np.stack([field(), field()[::-1]])
    batch = rule.view_batch(images)
    assert batch.shape == (4, 64, 64, 3)
    assert np.array_equal(batch[2], View(scale=2.0).apply(images[1]))
    assert np.array_equal(batch[3], View(hue=20.0).apply(images[1]))


def test_the_lowest_view_wins_only_by_more_than_the_margin() -> None:
    rule = RealignRule((View(scale=0.5), View(scale=2.0), View(hue=10.0)), margin=5.0)
    given = np.array([100.0, 100.0, 100.0, 50.0])
    views = np.array([[90.0, 80.0, 99.0],  # x2 wins
                      [96.0, 97.0, 95.5],  # best is within the margin: keep the image as given
                      [94.9, 120.0, 130.0],  # x0.5 wins by just over the margin
                      [60.0, 70.0, 55.0]])  # every view is worse
    assert rule.choose(given, views).tolist() == [1, -1, 0, -1]
    assert RealignRule(rule.views).choose(given, views).tolist() == [1, 2, 0, -1]
