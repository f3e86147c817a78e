"""Find the toy world's subjects in decoded video frames: which identities are present, and where.

    detector = Detector()                        # the whole catalogue, or Detector(held_out_identities())
    per_frame = detector.detect(frames)          # frames (F, H, W, 3) uint8 -> F lists of Detection
    per_frame[0][0].identity.name, .centre, .box # "red_star_dots", (x, y), (x0, y0, x1, y1)

It relies on the world's rules (catalogue.py): subjects are saturated and in one of six well separated hues,
backgrounds are greyish, and one frame shows at most one subject of each colour. Per frame:

1. Colour: a pixel belongs to a subject when its HSV saturation ≥ MIN_SATURATION and value ≥ MIN_VALUE, and to
   the catalogue colour nearest in hue, if within MAX_HUE_DISTANCE degrees. Hue and saturation do not change
   under the lighting factor (a scale on RGB) nor the pattern's darker shade, and H.264 keeps them away from edges.
2. Regions: 8-connected components of each colour; those below the minimum area (MIN_AREA_FRACTION of the frame,
   at least MIN_AREA pixels) are noise; the rest of one colour are one subject's visible pixels. A region of more
   than MAX_AREA_FRACTION of the frame, or one touching three frame edges, is a background, not a subject.
3. Shape: the region is normalised (centred on its centroid, scaled so that its area matches each shape's area)
   and compared with that shape's outline rendered at every ROTATION_STEP degrees (soft intersection over union);
   the best shape and rotation win. Pixels of other subjects (dilated by one pixel) and outside the frame count
   as unknown, not as background. A region next to unknown pixels may be partly hidden: it is also fitted with
   outlines OCCLUDED_GROWTH times larger whose centre is shifted OCCLUDED_SHIFT radii towards the unknown pixels.
   Such a region is reported only when the fit is clear (HIDDEN_MIN_SCORE, HIDDEN_MIN_MARGIN over the second
   shape, not the largest growth); a best score below MIN_SHAPE_SCORE: no subject.
4. Pattern, from the brightness inside the region (eroded by 1 pixel, relative to its 90th percentile): plain
   when few pixels are dark; else stripes when the brightness gradients share one orientation (structure-tensor
   coherence ≥ STRIPE_COHERENCE); else dots or checker by the fraction of dark pixels, split per shape between
   the fractions the two patterns cover on that outline (`pattern_fraction`: dots 18 % of a square, 30 % of a
   cross; checker 50 %).
5. Tracking (`detect`, on by default): a hidden region that is not clear in a frame takes the shape that the
   clip's clear frames agree on for its colour (one subject per colour per clip) if that shape fits this frame
   nearly as well as the best one; `detect(frames, track=False)` and `detect_frame` judge each frame alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kaleido.toyworld.catalogue import (
    ALL_IDENTITIES,
    COLOURS,
    PATTERNS,
    SHAPES,
    SYMMETRY,
    Identity,
    colour_hue,
    outline,
)
from kaleido.toyworld.render import inside_polygon, pattern_mask

MIN_SATURATION = 0.45
MIN_VALUE = 50
MAX_HUE_DISTANCE = 16.0
MIN_AREA = 12
MIN_AREA_FRACTION = 0.003
MAX_AREA_FRACTION = 0.6
ROTATION_STEP = 5.0
MIN_SHAPE_SCORE = 0.6
OCCLUDED_GROWTH = (1.0, 1.1, 1.2, 1.32, 1.45)  # radius hypotheses for a partly hidden region
OCCLUDED_SHIFT = (0.1, 0.2, 0.3, 0.42)  # centre shifts towards the hidden side, in radii
# A region that may be partly hidden is reported only when its fit is good and clear: best soft IoU ≥
# HIDDEN_MIN_SCORE, ahead of the second shape by HIDDEN_MIN_MARGIN, and not the largest growth (which says that
# about half of it or more is hidden). Set from 60 held-out clips of seed 555 (not the validation seed).
HIDDEN_MIN_SCORE = 0.7
HIDDEN_MIN_MARGIN = 0.02
# Tracking (Detector.detect): the clip's shape for a colour needs this many clear frames and, in a hidden frame, a
# soft IoU within TRACK_SLACK of that frame's best shape.
TRACK_MIN_FRAMES = 3
TRACK_SLACK = 0.05
TEMPLATE_SIZE = 33  # pixels of the normalised grid; the outline's radius is TEMPLATE_RADIUS
TEMPLATE_RADIUS = 13.0
# Thresholds set from 422 subjects of 25 held-out clips decoded from mp4 (docs/toyworld.md, 'Detector').
DARK = 0.8  # brightness below this × the region's 90th percentile is the pattern's shade (SHADE = 0.6) ...
DARKER = 0.7  # ... and this surely is (compression darkens edges a little, not this much)
PLAIN_DARK_FRACTION = 0.1
PLAIN_DARKER_FRACTION = 0.03
STRIPE_COHERENCE = 0.6
DOTS_DARK_FRACTION = 0.27
DOTS_CHECKER_SPLIT = 0.6


@dataclass(frozen=True)
class Detection:
    """One subject found in one frame. centre (x, y) = the visible region's centroid in pixels, box (x0, y0, x1,
    y1) its bounding box (x1, y1 exclusive), shape_score the soft IoU of the best outline, rotation in degrees."""

    identity: Identity
    centre: tuple[float, float]
    box: tuple[int, int, int, int]
    area: int
    shape_score: float
    rotation: float


def hsv(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue in degrees, saturation, value 0-255) of an (H, W, 3) uint8 RGB frame, float32 each (H, W)."""
    rgb = frame.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(-1), rgb.min(-1)
    span = high - low
    safe = np.where(span > 0, span, 1.0)
    hue = np.where(high == r, (g - b) / safe, np.where(high == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = (hue * 60.0) % 360.0
    saturation = np.where(high > 0, span / np.maximum(high, 1.0), 0.0)
    return hue.astype(np.float32), saturation.astype(np.float32), high


def _shifts(mask: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.maximum / np.minimum) over the 3×3 neighbourhood of each pixel (edges padded with 0)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    out = padded[1 : height + 1, 1 : width + 1].copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out = reduce(out, padded[dy : dy + height, dx : dx + width])
    return out


def components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a boolean mask: int array, 0 = background, each component one label > 0."""
    labels = np.where(mask, np.arange(1, mask.size + 1, dtype=np.int64).reshape(mask.shape), 0)
    while True:  # every pixel takes the largest label around it until nothing changes
        grown = np.where(mask, _shifts(labels, np.maximum), 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose whole 3×3 neighbourhood is in `mask` (outside the frame counts as outside the mask)."""
    return _shifts(mask.astype(np.uint8), np.minimum).astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every hole (a part of its complement that does not reach the box's edge) filled."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)  # a border of outside that every non-hole reaches
    outside = components(~crop)
    filled = crop | (outside != outside[0, 0])
    result = mask.copy()
    result[y0:y1, x0:x1] = filled[1:-1, 1:-1]
    return result


def _unit_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _area_centroid(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    return np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)


@dataclass(frozen=True)
class _Templates:
    """Per shape: its outline's area (radius 1), area centroid, and coverage masks over rotations."""

    area: float
    centroid: np.ndarray  # (2,) unit coordinates, unrotated
    rotations: np.ndarray  # (R,) degrees
    masks: np.ndarray  # (R, T, T) float32 coverage on the normalised grid, centred on the area centroid


def _grid(size: int = TEMPLATE_SIZE, supersample: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Sample offsets (in template pixels) from the grid centre, supersampled: (size*s, size*s) each."""
    steps = (np.arange(size * supersample) + 0.5) / supersample - size / 2
    return np.meshgrid(steps, steps)


def _build_templates() -> dict[str, _Templates]:
    gx, gy = _grid()
    s = 3
    templates = {}
    for shape in SHAPES:
        points = outline(shape)
        centroid = _area_centroid(points)
        period = 1.0 if shape == "circle" else SYMMETRY[shape]  # the circle: one template
        rotations = np.arange(0.0, period, ROTATION_STEP)
        masks = []
        for rotation in rotations:
            angle = np.radians(rotation)
            cos, sin = np.cos(angle), np.sin(angle)
            # The grid is centred on the rotated area centroid; undo the rotation to test the unit outline.
            cx, cy = cos * centroid[0] - sin * centroid[1], sin * centroid[0] + cos * centroid[1]
            dx, dy = gx / TEMPLATE_RADIUS + cx, gy / TEMPLATE_RADIUS + cy
            u, v = cos * dx + sin * dy, -sin * dx + cos * dy
            inside = inside_polygon(u, v, points)
            masks.append(inside.reshape(TEMPLATE_SIZE, s, TEMPLATE_SIZE, s).mean(axis=(1, 3)))
        templates[shape] = _Templates(_unit_area(points), centroid, rotations, np.asarray(masks, np.float32))
    return templates


_TEMPLATES: dict[str, _Templates] | None = None


def templates() -> dict[str, _Templates]:
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = _build_templates()
    return _TEMPLATES


def _sample(padded: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of (..., H, W) float images at pixel-centre coordinates (x, y), given the images padded by
    one pixel of their value beyond the frame, (..., H + 2, W + 2): the caller pads once for many samplings."""
    height, width = padded.shape[-2] - 2, padded.shape[-1] - 2
    px, py = np.clip(x - 0.5 + 1, 0, width + 1), np.clip(y - 0.5 + 1, 0, height + 1)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    x1, y1 = np.minimum(x0 + 1, width + 1), np.minimum(y0 + 1, height + 1)
    fx, fy = px - x0, py - y0
    flat = padded.reshape(*padded.shape[:-2], -1)  # one gather per corner over flat indices: the fastest in numpy
    row0, row1 = y0 * (width + 2), y1 * (width + 2)
    top = flat.take(row0 + x0, axis=-1) * (1 - fx) + flat.take(row0 + x1, axis=-1) * fx
    bottom = flat.take(row1 + x0, axis=-1) * (1 - fx) + flat.take(row1 + x1, axis=-1) * fx
    return top * (1 - fy) + bottom * fy


def dilate(mask: np.ndarray) -> np.ndarray:
    """Pixels with any 3×3 neighbour in `mask`."""
    return _shifts(mask.astype(np.uint8), np.maximum).astype(bool)


def _poses(region: np.ndarray, unknown: np.ndarray) -> list[tuple[float, float]]:
    """(growth, shift) hypotheses for the whole subject behind a visible `region`: growth = the whole outline's
    radius over the radius that the visible area alone gives, shift = how far (in those radii) the whole subject's
    centre lies from the visible centroid, towards where it may hide (other subjects, the frame's outside).
    A region with no such neighbour is whole: [(1, 0)]."""
    height, width = region.shape
    hidden = dilate(dilate(region)) & unknown
    ys, xs = np.nonzero(region)
    edge = (xs.min() == 0) or (ys.min() == 0) or (xs.max() == width - 1) or (ys.max() == height - 1)
    if hidden.sum() < 2 and not edge:
        return [(1.0, 0.0)]
    return [(1.0, 0.0)] + [(g, t) for g in OCCLUDED_GROWTH for t in OCCLUDED_SHIFT]


def _direction(region: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Unit vector from the region's centroid towards the pixels that may hide the rest of it."""
    height, width = region.shape
    ys, xs = np.nonzero(region)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    hy, hx = np.nonzero(dilate(dilate(region)) & unknown)
    points = [np.stack([hx + 0.5, hy + 0.5], axis=1)] if len(hx) else []
    # Region pixels on the frame's border pull towards the outside.
    border = np.concatenate(
        [
            np.stack([np.full((xs == 0).sum(), -0.5), ys[xs == 0] + 0.5], 1),
            np.stack([np.full((xs == width - 1).sum(), width + 0.5), ys[xs == width - 1] + 0.5], 1),
            np.stack([xs[ys == 0] + 0.5, np.full((ys == 0).sum(), -0.5)], 1),
            np.stack([xs[ys == height - 1] + 0.5, np.full((ys == height - 1).sum(), height + 0.5)], 1),
        ]
    )
    points.append(border)
    points = np.concatenate(points)
    if not len(points):
        return np.zeros(2)
    vector = points.mean(0) - centre
    norm = np.hypot(*vector)
    return vector / norm if norm > 0 else np.zeros(2)


def fit_shapes(region: np.ndarray, unknown: np.ndarray) -> tuple[dict[str, tuple[float, float, float]], bool]:
    """({shape: (rotation in degrees, soft IoU, growth)} of each shape's best outline, whether the region may be
    partly hidden) for a boolean region (H, W); `unknown` (H, W) marks pixels that may hide the subject (other
    subjects); the frame's outside is unknown too. A region next to unknown pixels is also fitted with larger
    outlines whose centre is shifted towards them (`_poses`); growth is the fitted radius over the radius that
    the visible area alone gives."""
    ys, xs = np.nonzero(region)
    area = float(len(xs))
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    steps = np.arange(TEMPLATE_SIZE) + 0.5 - TEMPLATE_SIZE / 2
    gx, gy = np.meshgrid(steps, steps)
    unknown = dilate(unknown) & ~region  # compression blurs the border between two subjects
    # the region (0 beyond the frame) and the unknown pixels (the frame's outside is unknown), sampled together
    padded = np.stack(
        [
            np.pad(region.astype(np.float32), 1, constant_values=0.0),
            np.pad(unknown.astype(np.float32), 1, constant_values=1.0),
        ]
    )
    poses = _poses(region, unknown)
    direction = _direction(region, unknown) if len(poses) > 1 else np.zeros(2)
    fits = {}
    for shape, t in templates().items():
        base = np.sqrt(area / t.area)  # pixels per unit, if the whole subject were visible
        best = (0.0, -1.0, 1.0)
        for growth, shift in poses:
            radius = base * growth
            ox, oy = cx + direction[0] * shift * base, cy + direction[1] * shift * base
            cell = radius / TEMPLATE_RADIUS
            x, y = ox + gx * cell, oy + gy * cell
            seen, hidden = _sample(padded, x, y)
            known = 1.0 - hidden
            missed = max(0.0, area / cell**2 - float(seen.sum()))  # region beyond the grid
            inter = (np.minimum(t.masks, seen) * known).sum(axis=(1, 2))
            union = (np.maximum(t.masks, seen) * known).sum(axis=(1, 2)) + missed
            scores = inter / np.maximum(union, 1e-6)
            k = int(np.argmax(scores))
            if scores[k] > best[1]:
                best = (float(t.rotations[k]), float(scores[k]), growth)
        fits[shape] = best
    return fits, len(poses) > 1


def classify_shape(region: np.ndarray, unknown: np.ndarray) -> tuple[str, float, float]:
    """(shape, rotation in degrees, soft IoU) of the best outline (`fit_shapes`)."""
    fits, _ = fit_shapes(region, unknown)
    shape = max(fits, key=lambda s: fits[s][1])
    return shape, fits[shape][0], fits[shape][1]


_PATTERN_FRACTIONS: dict[str, dict[str, float]] = {}


def pattern_fraction(shape: str, pattern: str) -> float:
    """The fraction of the outline of `shape` that `pattern`'s darker shade covers (the pattern turns and scales
    with the subject, so this depends on neither): dots cover 14 % of a square but 38 % of a cross, whose arms hold
    the lattice's centre and four neighbours."""
    if shape not in _PATTERN_FRACTIONS:
        steps = np.arange(-1.0, 1.0, 0.005) + 0.0025
        u, v = np.meshgrid(steps, steps)
        inside = inside_polygon(u, v, outline(shape))
        _PATTERN_FRACTIONS[shape] = {p: float(pattern_mask(p, u, v)[inside].mean()) for p in PATTERNS}
    return _PATTERN_FRACTIONS[shape][pattern]


def classify_pattern(value: np.ndarray, region: np.ndarray, shape: str | None = None) -> str:
    """'plain', 'stripes', 'dots' or 'checker' from the brightness `value` (H, W) inside `region` (module doc).
    Given the region's `shape`, dots and checker are told apart at the midpoint of their dark fractions on that
    outline (`pattern_fraction`, DOTS_CHECKER_SPLIT of the way from dots to checker: eroding the region drops
    undotted edge pixels, so dots measure a little above their whole-outline fraction); without it, at DOTS_DARK_FRACTION."""
    inner = erode(region)
    if inner.sum() < 6:
        inner = region
    level = np.percentile(value[inner], 90)
    relative = value / max(level, 1.0)
    dark = float((relative[inner] < DARK).mean())
    darker = float((relative[inner] < DARKER).mean())
    if dark < PLAIN_DARK_FRACTION and darker < PLAIN_DARKER_FRACTION:
        return "plain"
    core = erode(inner) if erode(inner).sum() >= 8 else inner  # gradients away from the outline's edge
    # Structure tensor of the brightness over pixels whose neighbours are inside too (no outline edges).
    gy, gx = np.gradient(np.where(region, relative, 1.0))
    jxx, jyy, jxy = (gx * gx)[core].sum(), (gy * gy)[core].sum(), (gx * gy)[core].sum()
    trace = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / trace if trace > 0 else 0.0
    if coherence >= STRIPE_COHERENCE:
        return "stripes"
    if shape is None:
        threshold = DOTS_DARK_FRACTION
    else:
        dots, checker = pattern_fraction(shape, "dots"), pattern_fraction(shape, "checker")
        threshold = dots + DOTS_CHECKER_SPLIT * (checker - dots)
    return "dots" if dark < threshold else "checker"


HUES = {colour: colour_hue(colour) for colour in COLOURS}


def colour_labels(frame: np.ndarray) -> np.ndarray:
    """(H, W) int: 1 + index of the catalogue colour of each subject pixel, 0 elsewhere (module doc, step 1)."""
    hue, saturation, value = hsv(frame)
    distances = np.stack([np.abs((hue - h + 180.0) % 360.0 - 180.0) for h in HUES.values()])
    nearest = distances.argmin(0)
    ok = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE) & (distances.min(0) <= MAX_HUE_DISTANCE)
    return np.where(ok, nearest + 1, 0)


class Detector:
    """Finds identities of `catalogue` (default: all) in frames; see the module docstring."""

    def __init__(self, catalogue: tuple[Identity, ...] | list[Identity] = ALL_IDENTITIES):
        self.by_attributes = {(i.shape, i.colour, i.pattern): i for i in catalogue}
        templates()  # build once up front

    def detect(self, frames: np.ndarray, track: bool = True) -> list[list[Detection]]:
        """(F, H, W, 3) uint8 -> per frame, the detections (at most one per colour).

        With `track` (the default), a colour whose region is partly hidden and ambiguous in a frame (see
        detect_frame) takes the shape that the clip's clear frames agree on for that colour, when that shape
        fits this frame well too (soft IoU ≥ HIDDEN_MIN_SCORE, within TRACK_SLACK of the best shape, not the
        largest growth); its pattern is still read in this frame. A clip shows one subject per colour (the
        world's rule), so this is tracking, not a guess: the frame's own pixels must support the shape."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames: expected (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        analysed = [self._analyse(frame) for frame in frames]
        votes: dict[str, dict[str, int]] = {}
        for candidates in analysed:
            for c in candidates:
                if c["clear"]:
                    votes.setdefault(c["colour"], {}).setdefault(c["shape"], 0)
                    votes[c["colour"]][c["shape"]] += 1
        result = []
        for candidates in analysed:
            found = []
            for c in candidates:
                if not c["clear"] and track and c["colour"] in votes:
                    tally = votes[c["colour"]]
                    shape = max(tally, key=tally.get)
                    rotation, score, growth = c["fits"][shape]
                    best = max(fit[1] for fit in c["fits"].values())
                    if (
                        tally[shape] >= TRACK_MIN_FRAMES
                        and score >= HIDDEN_MIN_SCORE
                        and score >= best - TRACK_SLACK
                        and growth < OCCLUDED_GROWTH[-1]
                    ):
                        c = dict(c, shape=shape, rotation=rotation, score=score, clear=True)
                detection = self._identify(c) if c["clear"] else None
                if detection is not None:
                    found.append(detection)
            result.append(found)
        return result

    def detect_frame(self, frame: np.ndarray) -> list[Detection]:
        """The detections in one (H, W, 3) uint8 frame, on its own (no tracking)."""
        return [d for c in self._analyse(frame) if c["clear"] for d in [self._identify(c)] if d is not None]

    def _identify(self, c: dict) -> Detection | None:
        identity = self.by_attributes.get(
            (c["shape"], c["colour"], classify_pattern(c["value"], c["region"], c["shape"]))
        )
        if identity is None:
            return None
        return Detection(identity, c["centre"], c["box"], c["area"], c["score"], c["rotation"])

    def _analyse(self, frame: np.ndarray) -> list[dict]:
        """Per subject region of the frame: its colour, shape fits and best shape, and whether it is clear (a
        region that may be partly hidden is clear only when its fit is good and unambiguous)."""
        height, width = frame.shape[:2]
        labels = colour_labels(frame)
        value = frame.max(-1).astype(np.float32)
        min_area = max(MIN_AREA, MIN_AREA_FRACTION * height * width)
        regions = {}
        for k, colour in enumerate(COLOURS):
            mask = labels == k + 1
            if mask.sum() < min_area:
                continue
            parts = components(mask)
            ids, counts = np.unique(parts[parts > 0], return_counts=True)
            keep = ids[counts >= min_area]
            if len(keep):
                # The pattern's dark shade can fall below MIN_VALUE after compression: fill those holes.
                regions[colour] = fill_holes(np.isin(parts, keep))
        subjects = labels > 0
        candidates = []
        for colour, region in regions.items():
            area = int(region.sum())
            ys, xs = np.nonzero(region)
            edges = (xs.min() == 0) + (ys.min() == 0) + (xs.max() == width - 1) + (ys.max() == height - 1)
            if area > MAX_AREA_FRACTION * height * width or edges >= 3:
                continue  # a coloured background or a whole-frame colour, not a subject
            fits, hidden = fit_shapes(region, subjects & ~region)
            ranked = sorted(fits, key=lambda s: -fits[s][1])
            shape, (rotation, score, growth) = ranked[0], fits[ranked[0]]
            if score < MIN_SHAPE_SCORE and not hidden:
                continue
            margin = score - fits[ranked[1]][1]
            # Partly hidden and ambiguous, or most of it seems hidden: not clear (detect may still track it).
            ambiguous = score < HIDDEN_MIN_SCORE or margin < HIDDEN_MIN_MARGIN or growth >= OCCLUDED_GROWTH[-1]
            candidates.append(
                {
                    "colour": colour,
                    "region": region,
                    "value": value,
                    "fits": fits,
                    "shape": shape,
                    "rotation": rotation,
                    "score": score,
                    "clear": not (hidden and ambiguous),
                    "area": area,
                    "box": (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                    "centre": (float(xs.mean() + 0.5), float(ys.mean() + 0.5)),
                }
            )
        return candidates


# ------------------------------------------------------------------------------------------------------------
# Scoring against the world's ground truth (meta/<id>.json)

PRESENT_VISIBLE = 0.5  # a subject counts as present in a frame when at least half of it is visible
BOX_SLACK = 2  # pixels a detection's centre may lie outside the subject's visible box


@dataclass
class Score:
    """Per-frame detection counts over clips. A detection is a true positive when its identity is a present
    subject's and its centre lies in that subject's visible box (± BOX_SLACK); a detection of a subject that is
    visible but below PRESENT_VISIBLE counts neither way; any other detection is a false positive, and a present
    subject without a true positive is a miss. `confusions` counts (true name, detected name) for detections of
    the right colour but another identity."""

    true_positives: int = 0
    false_positives: int = 0
    misses: int = 0
    frames: int = 0
    confusions: dict | None = None

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        present = self.true_positives + self.misses
        return self.true_positives / present if present else 1.0

    def add(self, detections: list[list[Detection]], meta: dict) -> None:
        """Count one clip: detections per frame against meta["subjects"] (writer.py's ground truth)."""
        if self.confusions is None:
            self.confusions = {}
        for f, found in enumerate(detections):
            self.frames += 1
            present, partly = {}, set()
            for subject in meta["subjects"]:
                visible = subject["visible"][f]
                if visible >= PRESENT_VISIBLE:
                    present[subject["identity"]] = subject["box"][f]
                elif visible > 0:
                    partly.add(subject["identity"])
            matched = set()
            for detection in found:
                name = detection.identity.name
                box = present.get(name)
                x, y = detection.centre
                if box is not None and name not in matched and _near(box, x, y):
                    matched.add(name)
                    self.true_positives += 1
                elif name not in partly:
                    self.false_positives += 1
                    for truth in present:
                        if truth.split("_")[0] == detection.identity.colour and truth != name:
                            key = f"{truth} -> {name}"
                            self.confusions[key] = self.confusions.get(key, 0) + 1
            self.misses += len(set(present) - matched)


def _near(box, x: float, y: float) -> bool:
    x0, y0, x1, y1 = box
    return x0 - BOX_SLACK <= x <= x1 + BOX_SLACK and y0 - BOX_SLACK <= y <= y1 + BOX_SLACK
