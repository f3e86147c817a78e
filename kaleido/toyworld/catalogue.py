"""The subject identities of the toy world: shape × colour × pattern, and the fixed train / held-out split.

    identity name   "<colour>_<shape>_<pattern>", e.g. "red_star_dots"
    identity index  position in ALL_IDENTITIES (shape-major, then colour, then pattern): stable across versions
                    as long as the three tuples below only grow at their ends

6 shapes × 6 colours × 4 patterns = 144 identities. The split is a fixed rule, not a random draw, so that it can
be read off a name:

    held out  <=>  (shape index + colour index + pattern index) % 4 == 0

Every (shape, colour) pair has exactly one held-out pattern, so exactly 25 % (36) of the identities are held out,
and every shape, every colour and every pattern occurs both in training and in the held-out set: evaluation asks
for new *combinations* of attributes the model has seen, never for an unseen attribute.

World rule that the detector relies on: subjects are saturated (HSV saturation ≥ 0.8 at any lighting), their
colours are ≥ 29° apart in hue, and backgrounds are greyish (saturation ≤ 0.25). Patterns are drawn in a darker
shade (SHADE × the colour) of the same hue, so a subject's pixels all share one hue.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
# Base RGB of each colour at lighting 1.0 (hue in degrees: red 357, orange 26, yellow 57, green 124, blue 225,
# purple 280). Kept below 245 so that the brightest lighting factor does not clip (clipping shifts the hue).
COLOURS = {
    "red": (220, 30, 40),
    "orange": (240, 110, 10),
    "yellow": (225, 215, 20),
    "green": (30, 170, 45),
    "blue": (35, 80, 220),
    "purple": (150, 40, 205),
}
PATTERNS = ("plain", "stripes", "dots", "checker")
SHADE = 0.5  # the pattern's colour: SHADE × the subject's colour (same hue, darker)
HELD_OUT_MODULUS = 4
CIRCLE_RADIUS = 0.92  # in units of the outline circle


@dataclass(frozen=True)
class Identity:
    """One subject identity. `index` is its position in ALL_IDENTITIES."""

    shape: str
    colour: str
    pattern: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}_{self.pattern}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def held_out(self) -> bool:
        return is_held_out(self.shape, self.colour, self.pattern)

    def __str__(self) -> str:
        return self.name


def is_held_out(shape: str, colour: str, pattern: str) -> bool:
    """The split rule (module docstring): (shape index + colour index + pattern index) % 4 == 0."""
    s, c, p = SHAPES.index(shape), list(COLOURS).index(colour), PATTERNS.index(pattern)
    return (s + c + p) % HELD_OUT_MODULUS == 0


ALL_IDENTITIES: tuple[Identity, ...] = tuple(
    Identity(shape, colour, pattern, index=(si * len(COLOURS) + ci) * len(PATTERNS) + pi)
    for si, shape in enumerate(SHAPES)
    for ci, colour in enumerate(COLOURS)
    for pi, pattern in enumerate(PATTERNS)
)
_BY_NAME = {identity.name: identity for identity in ALL_IDENTITIES}


def all_identities() -> tuple[Identity, ...]:
    return ALL_IDENTITIES


def training_identities() -> tuple[Identity, ...]:
    """The 108 identities training clips may use (in catalogue order)."""
    return tuple(i for i in ALL_IDENTITIES if not i.held_out)


def held_out_identities() -> tuple[Identity, ...]:
    """The 36 identities reserved for evaluation (in catalogue order)."""
    return tuple(i for i in ALL_IDENTITIES if i.held_out)


def identities(split: str) -> tuple[Identity, ...]:
    """ "train" -> training_identities(), "eval" -> held_out_identities()."""
    if split == "train":
        return training_identities()
    if split == "eval":
        return held_out_identities()
    raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")


def identity(name: str) -> Identity:
    """The identity called `name` ("red_star_dots"); ValueError naming the parts otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown identity {name!r}: expected '<colour>_<shape>_<pattern>' with colour in {list(COLOURS)}, "
            f"shape in {list(SHAPES)}, pattern in {list(PATTERNS)}"
        ) from None


def catalogue_words() -> frozenset[str]:
    """Every word that names an attribute (shape, colour, pattern, with common plural/variant forms): captions
    must contain none of them, so that the identity reaches the model only through the reference images."""
    words = set(SHAPES) | set(COLOURS) | set(PATTERNS)
    words |= {"circles", "circular", "round", "squares", "triangles", "triangular", "stars", "crosses", "hearts"}
    words |= {"stripe", "striped", "dot", "dotted", "spotted", "checkered", "checked", "chequered", "plaid"}
    words |= {"reddish", "greenish", "bluish", "yellowish", "purplish", "violet", "gold", "golden"}
    return frozenset(words)


def colour_hue(colour: str) -> float:
    """Hue of the colour in degrees [0, 360)."""
    r, g, b = (v / 255 for v in COLOURS[colour])
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


# ------------------------------------------------------------------------------------------------------------
# Shape outlines: polygons in unit coordinates (x right, y down), inside the unit circle, centred on the origin.
# A subject of size d pixels is its outline scaled by d / 2 (d = the diameter of the circle around it).

SYMMETRY = {"circle": 360.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0, "heart": 360.0}
"""Rotation (degrees) that maps the outline onto itself; 360 for the circle means 'any' (see outline())."""


def _regular(n: int, radius: float, start: float) -> np.ndarray:
    angles = np.radians(start + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5, 1.0, -90.0)  # first point straight up
    inner = _regular(5, 0.45, -90.0 + 36.0)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _cross() -> np.ndarray:
    a, w = 0.95, 0.33  # arm length, arm half width
    return np.array(
        [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w)]
        + [
            (-a, -w),
            (-w, -w),
        ]
    )


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # y down: the point at the bottom
    points = np.stack([x, y], axis=1)
    points -= (points.max(0) + points.min(0)) / 2  # centre the bounding box
    return points / np.hypot(points[:, 0], points[:, 1]).max()


def _outline(shape: str) -> np.ndarray:
    if shape == "circle":
        return _regular(64, CIRCLE_RADIUS, 0.0)
    if shape == "square":
        return _regular(4, 0.98, 45.0)  # half side 0.69
    if shape == "triangle":
        return _regular(3, 1.0, -90.0)  # apex up, centroid at the origin
    if shape == "star":
        return _star()
    if shape == "cross":
        return _cross()
    if shape == "heart":
        return _heart()
    raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")


OUTLINES: dict[str, np.ndarray] = {shape: _outline(shape) for shape in SHAPES}


def outline(shape: str) -> np.ndarray:
    """(V, 2) float64 polygon of `shape` in unit coordinates (x right, y down); read-only."""
    if shape not in OUTLINES:
        raise ValueError(f"shape: expected one of {list(SHAPES)}, got {shape!r}")
    points = OUTLINES[shape]
    points.flags.writeable = False
    return points
