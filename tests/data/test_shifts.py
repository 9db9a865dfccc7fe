"""leukoscope.data.shifts: the second-lab transform family (seeded determinism, ranges, sizes, what each
component does to the pixels)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from leukoscope.data.imaging import jpeg_quality
from leukoscope.data.shifts import (
    HUE_SHIFTS,
    MAGNIFICATION_SHIFTS,
    NAMED,
    RANGES,
    Shift,
    background_colour,
    magnify,
    sample_shift,
    sample_shifts,
    stain_jitter,
)


def smear(size: int = 64, seed: int = 0) -> Image.Image:
    """A pale background with a few dark purple discs (cells) and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.float32)
    image[:] = (235, 225, 240)
    for cx, cy, r in rng.uniform((0, 0, size / 12), (size, size, size / 6), (5, 3)):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        image[inside] = (120, 60, 170)
    image += rng.normal(0, 4, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def test_sampling_is_deterministic_by_seed():
    assert sample_shifts(5, 3) == sample_shifts(5, 3)
    assert sample_shifts(5, 3) != sample_shifts(5, 4)
    a, b = sample_shift(np.random.default_rng(9)), sample_shift(np.random.default_rng(9))
    assert a == b
    image = smear()
    assert a.encode(image) == b.encode(image)
    assert np.array_equal(np.asarray(a.apply(image)), np.asarray(b.apply(image)))


def test_samples_stay_inside_the_ranges_and_use_them():
    shifts = sample_shifts(400, 0)
    for name, (low, high) in RANGES.items():
        values = np.array([getattr(s, name) for s in shifts], dtype=float)
        assert values.min() >= low and values.max() <= high, name
        assert values.max() - values.min() > 0.8 * (high - low), name  # the whole range is drawn from
    assert all(isinstance(s.jpeg_quality, int) for s in shifts)
    magnification = np.log([s.magnification for s in shifts])
    assert abs(float(np.median(magnification))) < 0.15  # log-uniform: as many zoomed out as in


def test_named_shifts_sit_in_the_ranges_and_out_of_range_values_are_refused():
    for name, shift in NAMED.items():
        assert shift != Shift(), name
    assert set(HUE_SHIFTS) | set(MAGNIFICATION_SHIFTS) <= set(NAMED)
    for field, value in (("hue_degrees", 45.0), ("magnification", 3.0), ("jpeg_quality", 10), ("stain_h", 0.2)):
        with pytest.raises(ValueError, match=field):
            Shift(**{field: value})


@pytest.mark.parametrize("name", list(NAMED))
def test_every_named_shift_keeps_size_mode_and_dtype(name):
    image = smear(48).resize((60, 40))
    out = NAMED[name].apply(image)
    assert out.size == (60, 40) and out.mode == "RGB"
    assert np.asarray(out).dtype == np.uint8
    decoded = Image.open(io.BytesIO(NAMED[name].encode(image)))
    assert decoded.size == (60, 40)


def test_the_identity_changes_nothing_and_is_saved_losslessly():
    image = smear()
    assert np.array_equal(np.asarray(Shift().apply(image)), np.asarray(image))
    data = Shift().encode(image)
    assert data[:4] == b"\x89PNG"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), np.asarray(image))
    assert np.array_equal(np.asarray(stain_jitter(image, 1.0, 1.0)), np.asarray(image))
    assert Shift().describe() == "none"


def test_jpeg_shift_writes_a_jpeg_of_that_quality():
    data = Shift(jpeg_quality=50).encode(smear())
    assert data[:2] == b"\xff\xd8"
    assert jpeg_quality(data) == pytest.approx(50, abs=2)


def test_zoom_in_crops_the_centre_and_zoom_out_pads_with_the_background():
    image = smear(64)
    centre = np.asarray(image)[16:48, 16:48]
    zoomed = np.asarray(magnify(image, 2.0).resize((32, 32), Image.Resampling.BOX)).astype(float)
    assert np.abs(zoomed - centre).mean() < 12
    out = np.asarray(magnify(image, 0.5))
    assert np.array_equal(out[0, 0], np.asarray(background_colour(image), np.uint8))
    assert np.array_equal(out[:15, :], np.broadcast_to(out[0, 0], out[:15, :].shape))  # a padded band
    small = np.asarray(image.resize((32, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(out[16:48, 16:48], small)  # every cell kept, at half the size


def test_stain_and_hue_shifts_change_colour_not_geometry():
    image = smear()
    gray = np.asarray(image.convert("L"), float)
    for shift in (NAMED["hue +20 deg"], NAMED["stain H x1.3, E x0.7"], NAMED["white balance warm (R x1.15, B x0.85)"]):
        out = np.asarray(shift.apply(image))
        assert not np.array_equal(out, np.asarray(image))
        assert np.corrcoef(np.asarray(Image.fromarray(out).convert("L"), float).ravel(), gray.ravel())[0, 1] > 0.9


def test_stain_jitter_matches_scikit_image_where_it_does_not_clip():
    color = pytest.importorskip("skimage.color")
    image = smear()
    rgb = np.asarray(image) / 255
    hed = color.rgb2hed(rgb)
    unclipped = (hed > 0).all(axis=2)
    hed[..., 0] *= 1.2
    hed[..., 1] *= 0.8
    expected = color.hed2rgb(hed)
    ours = np.asarray(stain_jitter(image, 1.2, 0.8)) / 255
    assert unclipped.any()
    assert np.abs(ours[unclipped] - expected[unclipped]).max() <= 1 / 255 + 1e-9
