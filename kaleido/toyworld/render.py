"""Drawing subjects of the toy world (kaleido/toyworld/catalogue.py) onto RGB canvases, antialiased.

    canvas  (H, W, 3) float32 in [0, 255] (modified in place; convert with to_uint8 at the end)
    pose    centre (x, y) in pixels (x right, y down, pixel centres at i + 0.5), scale = the subject's size as a
            fraction of the canvas height (the diameter of the circle around its outline), rotation in degrees
            (clockwise on screen), lighting = a factor on the subject's colour (1.0 = catalogue colour)

Each pixel is sampled on a SUPERSAMPLE × SUPERSAMPLE grid; the shape's inside test and its pattern are both
evaluated in the subject's own coordinates, so the pattern turns and scales with the subject, and edges (outline
and pattern) get fractional coverage. `draw_subject` returns that coverage (the subject's alpha, before any later
subject covers it), which the world uses for visibility and the tests for ground truth.

Patterns, in unit coordinates (u, v) of the outline (radius 1), drawn in catalogue.SHADE × the colour:
    plain    none
    stripes  bands of width STRIPE / 2 across u
    dots     discs of radius DOT_RADIUS on a square lattice of spacing DOT_SPACING
    checker  squares of side CHECKER
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from kaleido.toyworld.catalogue import CIRCLE_RADIUS, SHADE, SYMMETRY, Identity, outline

SUPERSAMPLE = 4
STRIPE = 0.8
DOT_SPACING = 0.75
DOT_RADIUS = 0.2
CHECKER = 0.5


@dataclass(frozen=True)
class Pose:
    """Where and how a subject is drawn (module docstring for units)."""

    centre: tuple[float, float]
    scale: float
    rotation: float = 0.0
    lighting: float = 1.0


def inside_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Boolean array (shape of x): points strictly inside `polygon` (V, 2) by the even-odd crossing rule."""
    inside = np.zeros(x.shape, dtype=bool)
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue  # a horizontal edge is never crossed by a horizontal ray
        crosses = (ay > y) != (by > y)
        at = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < at)
    return inside


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean array: where the pattern's darker shade is drawn, at unit coordinates (u, v)."""
    if pattern == "plain":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "stripes":
        return np.floor(u / (STRIPE / 2)).astype(np.int64) % 2 == 1
    if pattern == "dots":
        du = u - DOT_SPACING * np.round(u / DOT_SPACING)
        dv = v - DOT_SPACING * np.round(v / DOT_SPACING)
        return du * du + dv * dv < DOT_RADIUS**2
    if pattern == "checker":
        return (np.floor(u / CHECKER) + np.floor(v / CHECKER)).astype(np.int64) % 2 == 1
    raise ValueError(f"pattern: unknown {pattern!r}")


def subject_layer(
    identity: Identity, size: tuple[int, int], pose: Pose
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """The subject alone: (box (y0, y1, x0, x1) in pixels, premultiplied colour (h, w, 3) float32, coverage
    (h, w) float32 in [0, 1]) over the box, the part of the canvas of `size` (H, W) that the subject can touch.
    An empty box (subject entirely off the canvas) gives zero-size arrays."""
    height, width = size
    radius = pose.scale * height / 2
    cx, cy = pose.centre
    y0, y1 = max(0, int(np.floor(cy - radius)) - 1), min(height, int(np.ceil(cy + radius)) + 1)
    x0, x1 = max(0, int(np.floor(cx - radius)) - 1), min(width, int(np.ceil(cx + radius)) + 1)
    box = (y0, max(y0, y1), x0, max(x0, x1))
    h, w = box[1] - box[0], box[3] - box[2]
    if h == 0 or w == 0 or radius <= 0:
        return box, np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32)
    s = SUPERSAMPLE
    ys = y0 + (np.arange(h * s) + 0.5) / s
    xs = x0 + (np.arange(w * s) + 0.5) / s
    dx, dy = np.meshgrid(xs - cx, ys - cy)
    angle = np.radians(pose.rotation)
    cos, sin = np.cos(angle), np.sin(angle)
    # Screen = R(rotation) · local (a clockwise turn on a y-down screen), so local = R(-rotation) · screen.
    u = (cos * dx + sin * dy) / radius
    v = (-sin * dx + cos * dy) / radius
    if identity.shape == "circle":  # the exact disc (the 64-gon outline is for templates and areas)
        inside = u * u + v * v < CIRCLE_RADIUS**2
    else:
        inside = inside_polygon(u, v, outline(identity.shape))
    base = np.asarray(identity.rgb, np.float32) * pose.lighting
    shade = np.where(pattern_mask(identity.pattern, u, v), np.float32(SHADE), np.float32(1.0))
    colour = (inside * shade)[..., None] * base  # (h*s, w*s, 3) premultiplied
    coverage = inside.reshape(h, s, w, s).mean(axis=(1, 3), dtype=np.float32)
    premultiplied = colour.reshape(h, s, w, s, 3).mean(axis=(1, 3), dtype=np.float32)
    return box, premultiplied, coverage


def draw_subject(canvas: np.ndarray, identity: Identity, pose: Pose) -> np.ndarray:
    """Composite the subject over `canvas` (H, W, 3) float32, in place; return its coverage (H, W) float32."""
    height, width = canvas.shape[:2]
    (y0, y1, x0, x1), premultiplied, coverage = subject_layer(identity, (height, width), pose)
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - coverage[..., None]
    region += premultiplied
    np.clip(region, 0.0, 255.0, out=region)
    full = np.zeros((height, width), np.float32)
    full[y0:y1, x0:x1] = coverage
    return full


def full_area(pose: Pose, identity: Identity, height: int) -> float:
    """The subject's area in pixels if nothing covered it and the canvas were unbounded (for visible fractions)."""
    points = outline(identity.shape)
    x, y = points[:, 0], points[:, 1]
    unit_area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return float(unit_area * (pose.scale * height / 2) ** 2)


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def rotation_distance(a: float, b: float, period: float) -> float:
    """Smallest angle (degrees) between rotations a and b of an outline that repeats every `period` degrees."""
    d = (a - b) % period
    return float(min(d, period - d))


REFERENCE_SCALE = (0.55, 0.75)  # of the reference's shorter side
REFERENCE_LIGHTING = (0.8, 1.05)
MIN_ROTATION_GAP = 20.0  # degrees between the reference's rotation and every rotation the clip shows
MIN_LIGHTING_GAP = 0.08


def reference_pose(
    identity: Identity,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    clip_rotations: tuple[float, ...] | list[float] = (),
    clip_lighting: float | None = None,
) -> Pose:
    """The pose `render_reference` draws the subject in (same arguments): centred, scale as a fraction of H."""
    height, width = (size, size) if isinstance(size, int) else size
    if height < 8 or width < 8:
        raise ValueError(f"reference size: expected at least 8×8 pixels, got {height}×{width}")
    rng = np.random.default_rng([seed, identity.index])
    scale = rng.uniform(*REFERENCE_SCALE) * min(height, width) / height
    period = SYMMETRY[identity.shape]
    candidates = rng.uniform(0.0, 360.0, 64)
    if len(clip_rotations):
        gaps = np.array([min(rotation_distance(c, r, period) for r in clip_rotations) for c in candidates])
        good = np.flatnonzero(gaps >= min(MIN_ROTATION_GAP, period / 4))
        rotation = float(candidates[good[0]] if len(good) else candidates[int(np.argmax(gaps))])
    else:
        rotation = float(candidates[0])
    lightings = rng.uniform(*REFERENCE_LIGHTING, 64)
    if clip_lighting is not None:
        far = np.flatnonzero(np.abs(lightings - clip_lighting) >= MIN_LIGHTING_GAP)
        lighting = float(lightings[far[0]] if len(far) else lightings[np.argmax(np.abs(lightings - clip_lighting))])
    else:
        lighting = float(lightings[0])
    return Pose((width / 2, height / 2), scale, rotation, lighting)


def render_reference(
    identity: Identity,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    clip_rotations: tuple[float, ...] | list[float] = (),
    clip_lighting: float | None = None,
) -> Image.Image:
    """The subject alone, centred on white, as an RGB PIL image of `size` (H, W) (an int: square).

    Pose from `seed`: scale 0.55-0.75 of the shorter side, any rotation, lighting 0.8-1.05. Given the clip's
    rotations and lighting, the reference is drawn in a pose the clip never shows: its rotation is at least
    MIN_ROTATION_GAP degrees (modulo the outline's symmetry) from every rotation of the clip, when the clip leaves
    such a gap (else the rotation farthest from all of them), and its lighting at least MIN_LIGHTING_GAP away.
    It is never a crop of the clip: a different scale, pose and background (white).
    """
    height, width = (size, size) if isinstance(size, int) else size
    pose = reference_pose(identity, size, seed, clip_rotations, clip_lighting)
    canvas = np.full((height, width, 3), 255.0, np.float32)
    draw_subject(canvas, identity, pose)
    return Image.fromarray(to_uint8(canvas), mode="RGB")
