"""Synthetic blood-smear fields for the segmentation tests: pink background, red-cell-like rings, and dark
purple discs where the white cells are, with the drawn discs returned as the truth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BACKGROUND = (240, 222, 228)  # pink slide background: purple score 12
RED_CELL = (230, 190, 200)  # salmon-pink red cell: purple score 25, below a white cell's
RED_CELL_CENTRE = (236, 206, 214)  # the paler centre of a biconcave red cell
NUCLEUS = (110, 60, 160)  # dark purple chromatin: purple score 75
CYTOPLASM = (175, 160, 225)  # pale blue-lilac cytoplasm: purple score 40, lighter than the nucleus
RED_CELLS = ((40, 40), (40, 180), (180, 40), (190, 190), (112, 30), (30, 112), (200, 112), (112, 200))


def disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean disc of `radius` around (x, y) in an image of (height, width)."""
    ys, xs = np.ogrid[: size[0], : size[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2


def field(cells: Sequence[tuple[float, float, float]] = (), *, size: int = 224, seed: int = 0,
          red_cells: Sequence[tuple[int, int]] = RED_CELLS, nucleus_radius: float | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 field, truth mask of the white cells). `cells` are (x, y, radius); with `nucleus_radius`
    each cell is a nucleus of that radius inside cytoplasm, else all nucleus."""
    shape = (size, size)
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUND
    for x, y in red_cells:
        image[disc(shape, (x, y), 13)] = RED_CELL
        image[disc(shape, (x, y), 6)] = RED_CELL_CENTRE
    truth = np.zeros(shape, bool)
    for x, y, radius in cells:
        body = disc(shape, (x, y), radius)
        image[body] = CYTOPLASM if nucleus_radius else NUCLEUS
        if nucleus_radius:
            image[disc(shape, (x, y), nucleus_radius)] = NUCLEUS
        truth |= body
    noise = np.random.default_rng(seed).normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8), truth
