"""Mask geometry the synthetic world needs, in numpy alone (no scipy, no OpenCV).

Masks are ``(H, W)`` bool arrays in the image frame: row ``y`` down, column ``x`` to the right. Points
and polygons are written ``(x, y)`` in pixel units, pixel centres at integer coordinates, as the public
formats write them (COCO ``bbox`` is ``[x, y, width, height]``, LabelMe polygons ``[[x, y], ...]``).
"""

from __future__ import annotations

import math

import numpy as np

from ...processing import drop_collinear, trace_outline
from ..formats.visual_prompts import box_slices, dilate_whole


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, width, height]`` of the mask's pixels (``[0, 0, 0, 0]`` when empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` mean pixel position of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


def _spread_along_rows(reached: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Every free pixel lying in a horizontal run of free pixels that holds a reached pixel."""
    starts = np.ones(free.shape, dtype=bool)
    starts[:, 1:] = free[:, 1:] != free[:, :-1]
    run = np.cumsum(starts.ravel()) - 1
    hit = np.bincount(run, weights=reached.ravel()) > 0
    return hit[run].reshape(free.shape) & free


def has_holes(mask: np.ndarray) -> bool:
    """Whether some background pixels are cut off from the image border by the mask (4-connected
    background, so a diagonal gap in the mask does not close a hole)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return False
    # a 1-px frame of background around the mask's box stands for "everything outside"
    free = ~np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    reached = np.zeros_like(free)
    reached[[0, -1], :] = free[[0, -1], :]
    reached[:, [0, -1]] = free[:, [0, -1]]
    # alternate row and column sweeps: each lets the reached set turn one more corner
    while True:
        grown = _spread_along_rows(reached, free)
        grown = _spread_along_rows(grown.T, free.T).T
        if np.array_equal(grown, reached):
            return bool((free & ~reached).any())
        reached = grown


def outline_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """One polygon ``[[x, y], ...]`` (vertices at pixel centres) per 8-connected component of a
    hole-free mask, in raster order of the components' first pixels.

    Filled the way ReasonSeg's ground truth is painted (edges drawn, interior filled), each polygon
    gives back its component. Components of one or two pixels
    are left out.
    """
    from xsam.data.formats.reasonseg import rasterize_polygon

    remaining = np.array(mask, dtype=bool)
    height, width = remaining.shape
    polygons = []
    while remaining.any():
        start = divmod(int(np.flatnonzero(remaining)[0]), width)
        outline = trace_outline(remaining, start)
        vertices = drop_collinear(outline)
        if len(vertices) < 3:  # a straight line of pixels: keep every pixel so it still draws itself
            vertices = outline
        points = [[col, row] for row, col in vertices]
        if len(points) >= 3:
            polygons.append(points)
            remaining &= ~rasterize_polygon(points, height, width)
        for row, col in vertices:  # also clears components too thin for a polygon
            remaining[row, col] = False
    return polygons


def erode_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """The pixels of ``mask`` whose whole disk of ``radius`` lies in the mask (outside the image
    counts as outside the mask)."""
    mask = np.asarray(mask, dtype=bool)
    eroded = np.zeros_like(mask)
    box = box_slices(mask, 0)
    if box is not None:
        reach = math.floor(radius)
        local = np.pad(mask[box], reach)  # background all round the box, image border included
        eroded[box] = ~dilate_whole(~local, radius)[reach : -reach or None, reach : -reach or None]
    return eroded


def box_blur(mask: np.ndarray, radius: int) -> np.ndarray:
    """``(H, W)`` float mean of ``mask`` over the ``(2·radius+1)²`` window around each pixel (zero
    padding outside the image)."""
    size = 2 * radius + 1
    padded = np.pad(np.asarray(mask, dtype=np.float64), radius)
    sums = np.pad(padded.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    window = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size]
    return window / size**2
