"""Scenes of the synthetic world: textured stuff regions with coloured shapes drawn over them.

A scene is sampled from one ``numpy.random.Generator`` and is a pure function of it. Geometry is given
for a 256-px image and scaled with the image side. Images are ``(H, W, 3)`` ``uint8`` RGB and masks
``(H, W)`` bool, row ``y`` down and column ``x`` to the right.

Every drawn shape is annotated: a placement is refused (and redrawn) when it would leave an earlier
shape with too little visible area, with a hole, or would itself be mostly outside the image, so the
visible masks of the things and of the stuff tile the image with no unlabelled pixel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .geometry import has_holes, mask_centroid

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 40),
    "green": (36, 168, 64),
    "blue": (40, 78, 220),
    "yellow": (244, 214, 36),
    "purple": (136, 58, 186),
    "orange": (246, 138, 28),
}
SIZES = ("small", "large")
STUFF = ("sky", "grass", "water", "sand", "wall")
UPPER_STUFF = ("sky", "wall")
LOWER_STUFF = ("grass", "water", "sand")
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("purple", "star"),
    ("orange", "hexagon"),
    ("green", "cross"),
    ("yellow", "triangle"),
)
"""Colour-shape pairs never drawn in train / val / test; the open-vocabulary split shows them."""

REFERENCE_SIDE = 256
RADII = {"small": (12.0, 22.0), "large": (30.0, 48.0)}
"""Shape radius ranges in pixels at :data:`REFERENCE_SIDE` (circumradius for polygons)."""
MIN_AREA = 60
"""Fewest visible pixels of an annotated shape at :data:`REFERENCE_SIDE` (scaled by area)."""
MIN_VISIBLE_FRACTION = 0.5
"""An earlier shape must keep at least this share of its pixels visible when later ones cover it."""
MAX_THINGS = 5
SAME_SHAPE_PROBABILITY = 0.3
SAME_PAIR_PROBABILITY = 0.15
SINGLE_STUFF_PROBABILITY = 0.2
_PLACEMENT_TRIES = 20
_SCENE_TRIES = 100

_STUFF_BASE: dict[str, tuple[int, int, int]] = {
    "sky": (150, 192, 240),
    "grass": (82, 148, 56),
    "water": (46, 104, 164),
    "sand": (214, 190, 140),
    "wall": (164, 86, 66),
}


@dataclass(frozen=True, eq=False)
class Thing:
    """One visible shape instance: its attributes and the ``(H, W)`` mask of its visible pixels.

    Compared by identity: two shapes with the same attributes are still two shapes."""

    shape: str
    colour: str
    size: str
    mask: np.ndarray = field(repr=False)

    @property
    def composition(self) -> str:
        """``"<colour> <shape>"``, the open-vocabulary category name."""
        return f"{self.colour} {self.shape}"

    @property
    def is_held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT

    @functools.cached_property
    def centroid(self) -> tuple[float, float]:
        """``(x, y)`` mean position of the visible pixels."""
        return mask_centroid(self.mask)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True, eq=False)
class StuffRegion:
    """One stuff class of a scene and the ``(H, W)`` mask of its visible pixels (things removed)."""

    name: str
    mask: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene.

    Attributes:
        image: ``(H, W, 3)`` ``uint8`` RGB.
        stuff: the stuff classes present, upper region first; at least one pixel each.
        things: the shapes, back to front (later ones drawn over earlier ones); at least one.
    """

    image: np.ndarray = field(repr=False)
    stuff: tuple[StuffRegion, ...]
    things: tuple[Thing, ...]

    @property
    def side(self) -> int:
        return int(self.image.shape[0])


def sample_scene(rng: np.random.Generator, side: int, *, open_vocabulary: bool = False) -> Scene:
    """Draw one ``side`` x ``side`` scene.

    Args:
        rng: the scene's own generator (every random number is drawn from it).
        side: image height and width in pixels.
        open_vocabulary: allow the :data:`HELD_OUT` colour-shape pairs and require at least one of them
            (the ``ov_test`` split); otherwise they never appear.

    Raises:
        RuntimeError: no valid scene in many tries (only for absurdly small ``side``).
    """
    for _ in range(_SCENE_TRIES):
        stuff = _sample_stuff_layout(rng, side)
        attributes = _sample_attributes(rng, open_vocabulary=open_vocabulary)
        placed = _place_things(rng, side, attributes)
        if placed and (not open_vocabulary or any(pair in HELD_OUT for pair, _, _ in placed)):
            return _render(rng, side, stuff, placed)
    raise RuntimeError(f"could not place shapes in a {side}x{side} image; use a larger image size")


# --- attributes and placement --------------------------------------------------------------------


def allowed_pairs(*, open_vocabulary: bool) -> list[tuple[str, str]]:
    """The colour-shape pairs a split may draw, colours-major."""
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    return pairs if open_vocabulary else [pair for pair in pairs if pair not in HELD_OUT]


def _sample_attributes(
    rng: np.random.Generator, *, open_vocabulary: bool
) -> list[tuple[tuple[str, str], str]]:
    """``((colour, shape), size)`` of 1…MAX_THINGS shapes, back to front.

    After the first, a shape repeats an earlier one's shape (:data:`SAME_SHAPE_PROBABILITY`) or its
    colour and shape (:data:`SAME_PAIR_PROBABILITY`), so referring expressions often need a colour, a
    size or a relation, as RefCOCO's do. In the open-vocabulary split the front shape is made a
    held-out pair when no other is (drawn last, it is never hidden).
    """
    pairs = allowed_pairs(open_vocabulary=open_vocabulary)
    chosen: list[tuple[tuple[str, str], str]] = []
    for _ in range(int(rng.integers(1, MAX_THINGS + 1))):
        draw, size = rng.random(), SIZES[int(rng.integers(2))]
        earlier = chosen[int(rng.integers(len(chosen)))][0] if chosen else None
        if earlier is not None and draw < SAME_PAIR_PROBABILITY:
            pair = earlier
        elif earlier is not None and draw < SAME_PAIR_PROBABILITY + SAME_SHAPE_PROBABILITY:
            same_shape = [candidate for candidate in pairs if candidate[1] == earlier[1]]
            pair = same_shape[int(rng.integers(len(same_shape)))]
        else:
            pair = pairs[int(rng.integers(len(pairs)))]
        chosen.append((pair, size))
    if open_vocabulary and not any(pair in HELD_OUT for pair, _ in chosen):
        chosen[-1] = (HELD_OUT[int(rng.integers(len(HELD_OUT)))], chosen[-1][1])
    return chosen


def _place_things(
    rng: np.random.Generator, side: int, attributes: list[tuple[tuple[str, str], str]]
) -> list[tuple[tuple[str, str], str, np.ndarray]]:
    """Place shapes back to front; returns ``(pair, size, full mask)`` of those that found a spot.

    A spot is refused when the shape shows too few pixels or when it would leave an earlier shape with
    less than :data:`MIN_VISIBLE_FRACTION` of its pixels, fewer than the minimum area, or a hole (a
    ReasonSeg polygon cannot carry holes).
    """
    scale = side / REFERENCE_SIDE
    min_area = MIN_AREA * scale**2
    placed: list[tuple[tuple[str, str], str, np.ndarray]] = []
    visible: list[np.ndarray] = []
    for pair, size in attributes:
        for _ in range(_PLACEMENT_TRIES):
            mask = _shape_mask(rng, pair[1], size, side)
            if mask.sum() < min_area:
                continue
            uncovered = [earlier & ~mask for earlier in visible]
            if all(
                _still_visible(after, full, min_area)
                for after, (_, _, full) in zip(uncovered, placed, strict=True)
            ):
                placed.append((pair, size, mask))
                visible = [*uncovered, mask]
                break
    return placed


def _still_visible(visible: np.ndarray, full: np.ndarray, min_area: float) -> bool:
    area = visible.sum()
    return area >= min_area and area >= MIN_VISIBLE_FRACTION * full.sum() and not has_holes(visible)


def _shape_mask(rng: np.random.Generator, shape: str, size: str, side: int) -> np.ndarray:
    """The full ``(side, side)`` mask of one shape at a random radius, position and small rotation."""
    scale = side / REFERENCE_SIDE
    low, high = RADII[size]
    radius = rng.uniform(low, high) * scale
    centre_x, centre_y = rng.uniform(0.8 * radius, side - 0.8 * radius, size=2)
    turn = rng.uniform(0, math.pi / 3) if shape == "hexagon" else rng.uniform(-0.2, 0.2)
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius], fill=1)
    else:
        cos, sin = math.cos(turn), math.sin(turn)
        vertices = [
            (centre_x + radius * (x * cos - y * sin), centre_y + radius * (x * sin + y * cos))
            for x, y in _UNIT_POLYGONS[shape]
        ]
        draw.polygon(vertices, fill=1)
    return np.asarray(canvas, dtype=bool)


def _regular(
    corners: int, start_degrees: float, radii: tuple[float, ...] = (1.0,)
) -> list[tuple[float, float]]:
    """Vertices on circles of ``radii`` (cycled), evenly spaced in angle, clockwise on screen."""
    angles = [math.radians(start_degrees) + 2 * math.pi * k / corners for k in range(corners)]
    return [
        (radii[k % len(radii)] * math.cos(a), radii[k % len(radii)] * math.sin(a))
        for k, a in enumerate(angles)
    ]


def _cross(arm: float) -> list[tuple[float, float]]:
    """A plus sign reaching 1 in each direction, its arms ``2·arm`` wide, clockwise from the top."""
    return [
        (-arm, -1.0), (arm, -1.0), (arm, -arm), (1.0, -arm), (1.0, arm), (arm, arm),
        (arm, 1.0), (-arm, 1.0), (-arm, arm), (-1.0, arm), (-1.0, -arm), (-arm, -arm),
    ]  # fmt: skip


# unit shapes: radius 1, y down, pointing up where that matters
_UNIT_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": _regular(3, -90.0),
    "star": _regular(10, -90.0, (1.0, 0.45)),
    "hexagon": _regular(6, 0.0),
    "cross": _cross(0.32),
}


# --- stuff layout and rendering ------------------------------------------------------------------


def _sample_stuff_layout(rng: np.random.Generator, side: int) -> list[tuple[str, np.ndarray]]:
    """``(name, full mask)`` of the stuff regions, upper first: one class filling the image, or an
    upper class (sky, wall) above a lower one (grass, water, sand) along a wavy horizon."""
    if rng.random() < SINGLE_STUFF_PROBABILITY:
        return [(STUFF[int(rng.integers(len(STUFF)))], np.ones((side, side), dtype=bool))]
    upper = UPPER_STUFF[int(rng.integers(len(UPPER_STUFF)))]
    lower = LOWER_STUFF[int(rng.integers(len(LOWER_STUFF)))]
    scale = side / REFERENCE_SIDE
    columns = np.arange(side)
    level = rng.uniform(0.35, 0.6) * side
    amplitude, waves, phase = rng.uniform(2, 8) * scale, rng.uniform(0.5, 2.0), rng.uniform(0, 2 * math.pi)
    # a smoothed random walk on top of the sine makes the horizon look hand-drawn, not periodic
    wobble = np.convolve(rng.normal(0, scale, side).cumsum(), np.ones(9) / 9, mode="same")
    horizon = level + amplitude * np.sin(2 * math.pi * waves * columns / side + phase) + wobble
    upper_mask = np.arange(side)[:, None] < horizon[None, :]
    return [(upper, upper_mask), (lower, ~upper_mask)]


def _texture(rng: np.random.Generator, name: str, side: int) -> np.ndarray:
    """A full ``(side, side, 3)`` float texture of one stuff class: its base colour (jittered per image)
    plus a pattern of its own, so classes differ in texture as well as colour."""
    scale = side / REFERENCE_SIDE
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    base = np.asarray(_STUFF_BASE[name], dtype=np.float64) + rng.uniform(-8, 8, 3)
    noise = rng.normal(0, 1, (side, side))
    if name == "sky":  # brighter towards the horizon, almost flat
        shade = 40 * rows / side - 20 + 2 * noise
    elif name == "grass":  # vertical blades: streaks that vary along x only, plus fine grain
        streaks = np.convolve(rng.normal(0, 1, side), np.ones(3) / 3, mode="same")
        shade = 14 * streaks[None, :] + 6 * np.sin(cols * 1.7 / scale) + 5 * noise
    elif name == "water":  # horizontal ripples bent by a slow swell
        swell = 1.5 * np.sin(2 * math.pi * cols / (40 * scale) + rng.uniform(0, 2 * math.pi))
        shade = 18 * np.sin(2 * math.pi * rows / (9 * scale) + swell) + 3 * noise
    elif name == "sand":  # speckles
        shade = 14 * noise - 30 * (rng.random((side, side)) < 0.03)
    else:  # wall: bricks with light mortar joints, every other course shifted by half a brick
        return _bricks(rng, base, rows, cols, scale) + 3 * noise[..., None]
    return base + shade[..., None]


def _bricks(
    rng: np.random.Generator, base: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: float
) -> np.ndarray:
    course_height, brick_width = 16 * scale, 32 * scale
    joint = max(1.0, 2 * scale)
    course = np.floor(rows / course_height)
    shifted = cols + (course % 2) * brick_width / 2
    brick = np.floor(shifted / brick_width)
    in_joint = (rows % course_height < joint) | (shifted % brick_width < joint)
    # one shade per brick, looked up by its (course, brick) index
    shades = rng.uniform(-14, 14, (int(course.max()) + 1, int(brick.max()) + 1))
    texture = base + shades[course.astype(int), brick.astype(int)][..., None]
    return np.where(in_joint[..., None], np.asarray([206.0, 198.0, 186.0]), texture)


def _render(
    rng: np.random.Generator,
    side: int,
    stuff: list[tuple[str, np.ndarray]],
    placed: list[tuple[tuple[str, str], str, np.ndarray]],
) -> Scene:
    """Paint stuff, then shapes back to front; cut each mask down to its visible pixels."""
    image = np.zeros((side, side, 3), dtype=np.float64)
    for name, mask in stuff:
        image[mask] = _texture(rng, name, side)[mask]
    covered = np.zeros((side, side), dtype=bool)
    things = []
    for (colour, shape), size, mask in reversed(placed):  # front to back: each loses what is in front
        things.append(Thing(shape, colour, size, mask & ~covered))
        covered |= mask
    for (colour, _), _, mask in placed:  # paint back to front
        tint = np.asarray(COLOURS[colour], dtype=np.float64) + rng.uniform(-12, 12, 3)
        image[mask] = tint + rng.normal(0, 3, (int(mask.sum()), 3))
    regions = tuple(StuffRegion(name, mask & ~covered) for name, mask in stuff if (mask & ~covered).any())
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(pixels, regions, tuple(reversed(things)))
